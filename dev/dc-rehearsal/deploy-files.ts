// The production files under deploy/, adapted to one machine: the same
// etcd member configs and HAProxy config, with the inventory's addresses
// mapped to local ones. Every rewrite must find what it rewrites, so a
// change in deploy/ that the rehearsal does not understand stops it loudly
// instead of rehearsing something else.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { packageRoot } from '../../runtime/paths.js';

export const ETCD_MEMBERS = ['dc1', 'dc2', 'witness'] as const;
export type EtcdMember = (typeof ETCD_MEMBERS)[number];

export interface Inventory {
  vip: string;
  app_nodes: Record<string, { site: string; ip: string; host: string }>;
  etcd_members: Record<EtcdMember, { site: string; ip: string; host: string }>;
  ports: Record<string, number>;
}

export function deployDir(): string {
  return join(packageRoot(), 'deploy');
}

export function loadInventory(dir = deployDir()): Inventory {
  return parse(readFileSync(join(dir, 'inventory.example.yaml'), 'utf8')) as Inventory;
}

export interface LocalEtcdAddress {
  ip: string;
  clientPort: number;
  peerPort: number;
}

export interface EtcdTlsFiles {
  caFile: string;
  /** The member's certificate and key (server and peer usages). */
  certFile: string;
  keyFile: string;
}

const URL_FIELDS = ['listen-client-urls', 'advertise-client-urls', 'listen-peer-urls', 'initial-advertise-peer-urls', 'initial-cluster'];

/**
 * deploy/etcd/etcd-<member>.conf.yml with every member's address replaced by
 * a local one, the data dir moved, metrics off, and TLS either kept with the
 * given files or dropped (http).
 */
export function localEtcdConfig(
  member: EtcdMember,
  options: { addresses: Record<EtcdMember, LocalEtcdAddress>; dataDir: string; tls: Record<EtcdMember, EtcdTlsFiles> | null; dir?: string },
): string {
  const dir = options.dir ?? deployDir();
  const inventory = loadInventory(dir);
  const doc = parse(readFileSync(join(dir, 'etcd', `etcd-${member}.conf.yml`), 'utf8')) as Record<string, unknown>;
  if (doc.name !== member) throw new Error(`etcd-${member}.conf.yml names the member ${String(doc.name)}`);
  const portRole: Record<string, 'clientPort' | 'peerPort'> = {
    [String(inventory.ports.etcd_client)]: 'clientPort',
    [String(inventory.ports.etcd_peer)]: 'peerPort',
  };
  const scheme = options.tls ? 'https' : 'http';

  const mapUrl = (raw: string, field: string): string | null => {
    const url = new URL(raw);
    const role = portRole[url.port];
    if (!role) throw new Error(`${field}: ${raw} uses a port the inventory does not name`);
    // The loopback listener is for etcdctl on the member itself: locally it would clash.
    if (url.hostname === '127.0.0.1') return null;
    const owner = ETCD_MEMBERS.find((m) => inventory.etcd_members[m].host === url.hostname || inventory.etcd_members[m].ip === url.hostname);
    if (!owner) throw new Error(`${field}: ${raw} is not an etcd member of the inventory`);
    const local = options.addresses[owner];
    return `${scheme}://${local.ip}:${local[role]}`;
  };

  for (const field of URL_FIELDS) {
    const value = doc[field];
    if (typeof value !== 'string') throw new Error(`etcd-${member}.conf.yml has no ${field}`);
    const parts = value.split(',').map((part) => {
      const eq = field === 'initial-cluster' ? part.indexOf('=') : -1;
      const url = mapUrl(part.slice(eq + 1), field);
      return url === null ? null : `${part.slice(0, eq + 1)}${url}`;
    });
    doc[field] = parts.filter((part): part is string => part !== null).join(',');
  }
  doc['data-dir'] = options.dataDir;
  delete doc['listen-metrics-urls'];
  for (const section of ['client-transport-security', 'peer-transport-security']) {
    const tls = doc[section] as Record<string, unknown> | undefined;
    if (!tls) throw new Error(`etcd-${member}.conf.yml has no ${section}`);
    if (!options.tls) {
      delete doc[section];
      continue;
    }
    const files = options.tls[member];
    doc[section] = { ...tls, 'cert-file': files.certFile, 'key-file': files.keyFile, 'trusted-ca-file': files.caFile };
  }
  doc['log-level'] = 'warn';
  return stringify(doc);
}

export interface LocalHaproxyOptions {
  /** Where the frontend listens (plain HTTP: the rehearsal has no public certificate). */
  bind: { ip: string; port: number };
  statsBind: { ip: string; port: number };
  statsSocket: string;
  /** App node name (inventory) -> its local address. */
  appNodes: Record<string, string>;
  dir?: string;
}

function replaceOnce(text: string, pattern: RegExp, replacement: string, what: string): string {
  const matches = text.match(new RegExp(pattern.source, pattern.flags.includes('g') ? pattern.flags : `${pattern.flags}g`));
  if (!matches || matches.length === 0) throw new Error(`deploy/lb/haproxy.cfg: ${what} not found`);
  return text.replace(new RegExp(pattern.source, `${pattern.flags.replace('g', '')}g`), replacement);
}

/** deploy/lb/haproxy.cfg for the rehearsal: same frontends, backends and checks; local addresses, no TLS, no privilege drop. */
export function localHaproxyConfig(options: LocalHaproxyOptions): string {
  const dir = options.dir ?? deployDir();
  const inventory = loadInventory(dir);
  let text = readFileSync(join(dir, 'lb', 'haproxy.cfg'), 'utf8');
  text = replaceOnce(text, /^\s*log \/dev\/log.*$/m, '    log stderr format short local0 notice', 'the syslog target');
  text = replaceOnce(text, /^\s*user haproxy\n\s*group haproxy\n/m, '', 'user/group');
  // Each connection takes two descriptors; stay under a small container's open-files limit.
  text = replaceOnce(text, /^(\s*maxconn) \d+$/m, '$1 2000', 'the global maxconn');
  text = replaceOnce(text, /^\s*stats socket \S+/m, `    stats socket ${options.statsSocket}`, 'the stats socket');
  const vip = inventory.vip.replace(/\./g, '\\.');
  text = replaceOnce(text, new RegExp(`^\\s*bind ${vip}:443 ssl .*$`, 'm'), `    bind ${options.bind.ip}:${options.bind.port}`, 'the TLS frontend bind');
  text = replaceOnce(text, new RegExp(`^\\s*bind ${vip}:80\\n`, 'm'), '', 'the plain HTTP bind');
  text = replaceOnce(text, /^\s*http-request redirect scheme https.*\n/m, '', 'the HTTPS redirect');
  text = replaceOnce(text, /^\s*bind :8404$/m, `    bind ${options.statsBind.ip}:${options.statsBind.port}`, 'the stats bind');
  text = replaceOnce(text, /^\s*http-request deny unless \{ src .*\n/m, '', 'the stats ACL');
  for (const [name, node] of Object.entries(inventory.app_nodes)) {
    const local = options.appNodes[name];
    if (!local) throw new Error(`no local address for app node ${name}`);
    text = replaceOnce(text, new RegExp(`(server ${name} )${node.ip.replace(/\./g, '\\.')}(:\\d+)`, 'm'), `$1${local}$2`, `server ${name}`);
  }
  return text;
}
