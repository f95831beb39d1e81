// The rehearsal's network: one Linux network namespace per site (dc1, dc2,
// witness), each joined by a veth pair to a bridge in the host namespace,
// where HAProxy and the clients run. Taking a site's veth down cuts every
// link of that site at once, as a datacenter outage does, while processes
// keep running on the other side.
import { execFileSync, spawnSync } from 'node:child_process';

export const SITES = ['dc1', 'dc2', 'witness'] as const;
export type Site = (typeof SITES)[number];

export interface NetworkPlan {
  prefix: string;
  /** First three octets of a /24 that nothing else on the machine uses. */
  subnet: string;
}

const HOST_OCTET = 1;
const SITE_OCTET: Record<Site, number> = { dc1: 11, dc2: 12, witness: 13 };

export const bridgeName = (plan: NetworkPlan) => `${plan.prefix}-br`;
export const namespaceName = (plan: NetworkPlan, site: Site) => `${plan.prefix}-${site === 'witness' ? 'wit' : site}`;
/** The host side of a site's veth (15 characters at most). */
export const hostLink = (plan: NetworkPlan, site: Site) => `${plan.prefix}-${site === 'witness' ? 'wit' : site}h`;
export const hostAddress = (plan: NetworkPlan) => `${plan.subnet}.${HOST_OCTET}`;
export const siteAddress = (plan: NetworkPlan, site: Site) => `${plan.subnet}.${SITE_OCTET[site]}`;

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function createNetwork(plan: NetworkPlan): void {
  const bridge = bridgeName(plan);
  ip('link', 'add', bridge, 'type', 'bridge');
  ip('addr', 'add', `${hostAddress(plan)}/24`, 'dev', bridge);
  ip('link', 'set', bridge, 'up');
  for (const site of SITES) {
    const ns = namespaceName(plan, site);
    const outside = hostLink(plan, site);
    const inside = `${outside.slice(0, -1)}n`;
    ip('netns', 'add', ns);
    ip('link', 'add', outside, 'type', 'veth', 'peer', 'name', inside);
    ip('link', 'set', inside, 'netns', ns);
    ip('link', 'set', outside, 'master', bridge);
    ip('link', 'set', outside, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'link', 'set', inside, 'name', 'eth0');
    ip('-n', ns, 'addr', 'add', `${siteAddress(plan, site)}/24`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
  }
}

/** Pids of the processes living in a site's namespace. */
export function namespacePids(plan: NetworkPlan, site: Site): number[] {
  const result = spawnSync('ip', ['netns', 'pids', namespaceName(plan, site)], { encoding: 'utf8' });
  if (result.status !== 0) return [];
  return result.stdout.split(/\s+/).filter(Boolean).map(Number);
}

/** Removes what createNetwork made (whatever part of it exists), after killing what runs inside. */
export function destroyNetwork(plan: NetworkPlan): void {
  for (const site of SITES) {
    for (const pid of namespacePids(plan, site)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    spawnSync('ip', ['link', 'del', hostLink(plan, site)], { stdio: 'ignore' });
    spawnSync('ip', ['netns', 'del', namespaceName(plan, site)], { stdio: 'ignore' });
  }
  spawnSync('ip', ['link', 'del', bridgeName(plan)], { stdio: 'ignore' });
}

export function setLink(plan: NetworkPlan, site: Site, up: boolean): void {
  ip('link', 'set', hostLink(plan, site), up ? 'up' : 'down');
}

export function netnsAvailable(): boolean {
  return spawnSync('ip', ['netns', 'list'], { stdio: 'ignore' }).status === 0 && process.getuid?.() === 0;
}
