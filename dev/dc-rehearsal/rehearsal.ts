// Two active datacenters and an etcd witness on one machine, behind a real
// HAProxy running deploy/lb/haproxy.cfg. Each site is a network namespace
// (netns.ts); each datacenter runs an app node (APISIX with the real runner,
// the CMS, the decision API, and a RAG stand-in that says which site
// answered, and an LLM stub behind the LLM route) and an etcd member; the
// witness runs the third member with deploy/etcd's configs, and the Vault
// (dev mode) that holds the projects' LLM keys. Every process is started detached with its output in
// a log file, so that `npm run dc:up` can leave the rehearsal running.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../../runtime/paths.js';
import { findApisix } from '../apisix/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { CMS_USER, GATEWAY_USER, enableEtcdAuth } from '../../deploy/etcd-auth/roles.js';
import { pointRoutesAt } from '../local-stack/index.js';
import { vaultBinary } from '../local-vault/index.js';
import { localEtcdConfig, localHaproxyConfig, ETCD_MEMBERS, loadInventory, type EtcdMember, type LocalEtcdAddress } from './deploy-files.js';
import { ensureSigningKeys, type SigningKeyFiles } from '../signing-keys.js';
import { createNetwork, destroyNetwork, hostAddress, namespaceName, setLink, siteAddress, SITES, type NetworkPlan, type Site } from './netns.js';

export type Datacenter = 'dc1' | 'dc2';
export const DATACENTERS: Datacenter[] = ['dc1', 'dc2'];
const APP_PROCESSES = ['rag', 'llm', 'decision', 'cms', 'gateway'] as const;
const LLM_PORT = 8083;
const VAULT_PORT = 8200;
type AppProcess = (typeof APP_PROCESSES)[number];

export interface RehearsalOptions extends NetworkPlan {
  workDir: string;
  /** JWT_* variables for the CMS, the decision API and the runner. */
  identityEnv: Record<string, string>;
  opaPath: string;
  /** HAProxy's frontend port on the host side of the bridge (default 8080). */
  frontendPort?: number;
  logLevel?: string;
}

export interface SiteUrls {
  ip: string;
  /** The datacenter's own gateway (APISIX), bypassing HAProxy. */
  gateway: string;
  cms: string;
  runnerHealth: string;
}

export interface RehearsalState extends NetworkPlan {
  workDir: string;
  haproxyPid: number | null;
}

export interface Rehearsal {
  /** HAProxy's frontend: what clients use. */
  url: string;
  statsUrl: string;
  sites: Record<Datacenter, SiteUrls>;
  etcdEndpoints: string[];
  /**
   * etcd has auth on, as in deploy/: the CMS's user reads and writes
   * policies, the gateways' (runner, decision API) only reads them, root
   * does anything.
   */
  etcdUsers: Record<'root' | 'cms' | 'gateway', { username: string; password: string }>;
  /** The witness's Vault (dev mode, KV v2 at secret/): the LLM route's keys, `secret/llm/<project>`. */
  vault: { addr: string; token: string };
  /** The policy signing key pair (in the work directory): both CMSs sign with it, every gateway checks it. */
  signingKeys: SigningKeyFiles;
  /** SIGKILL every process of a datacenter's app node (a crashed VM). */
  killAppNode(dc: Datacenter): void;
  startAppNode(dc: Datacenter): Promise<void>;
  stopEtcd(member: EtcdMember): Promise<void>;
  startEtcd(member: EtcdMember): Promise<void>;
  /** Takes a site's only link down (or up): a datacenter cut off the network. */
  setSiteLink(site: Site, up: boolean): void;
  /** HAProxy's view: backend/server -> status (UP, DOWN, ...). */
  serverStatus(): Promise<Record<string, string>>;
  stop(): Promise<void>;
}

const ports = () => loadInventory().ports as Record<string, number>;

function stateFile(workDir: string): string {
  return join(workDir, 'state.json');
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, logHint: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  throw new Error(`${what} did not come up within ${timeoutMs} ms\n${logHint()}`);
}

async function answers(url: string, okOnly: boolean): Promise<boolean> {
  const response = await fetch(url, { signal: AbortSignal.timeout(1_000) });
  await response.arrayBuffer();
  return okOnly ? response.ok : response.status < 500;
}

function tail(path: string): string {
  return existsSync(path) ? `--- ${path}\n${readFileSync(path, 'utf8').slice(-2_000)}` : '';
}

/** Stops whatever an earlier rehearsal with this prefix left behind. */
export function teardown(state: RehearsalState): void {
  if (state.haproxyPid) {
    try {
      // HAProxy's command line names this rehearsal's config: only then is the pid still ours.
      const cmdline = readFileSync(`/proc/${state.haproxyPid}/cmdline`, 'utf8');
      if (cmdline.includes(state.workDir)) process.kill(state.haproxyPid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  destroyNetwork(state);
}

export function teardownFromStateFile(workDir: string): boolean {
  const file = stateFile(workDir);
  if (!existsSync(file)) return false;
  teardown(JSON.parse(readFileSync(file, 'utf8')) as RehearsalState);
  rmSync(file, { force: true });
  return true;
}

export async function startRehearsal(options: RehearsalOptions): Promise<Rehearsal> {
  const root = packageRoot();
  // The app nodes run the real APISIX (dev/apisix).
  if (!findApisix(root)) throw new Error('this machine has no APISIX: run `npm run setup`, or set APISIX_HOME');
  const p = ports();
  const work = options.workDir;
  teardownFromStateFile(work);
  // Leftovers of a run that died before writing its state.
  destroyNetwork(options);
  mkdirSync(work, { recursive: true });
  // Signed policies, as in production: the CMSs sign every version, the gateways load nothing else.
  const signingKeys = ensureSigningKeys(work, 'gatehouse-rehearsal-1');
  const signingEnv = { POLICY_SIGNING_KEY_FILE: signingKeys.privateKeyFile, POLICY_SIGNING_KEY_ID: signingKeys.kid };
  const verifyEnv = { POLICY_VERIFY_KEYS_FILE: signingKeys.jwksFile };
  const state: RehearsalState = { prefix: options.prefix, subnet: options.subnet, workDir: work, haproxyPid: null };
  const saveState = () => writeFileSync(stateFile(work), JSON.stringify(state, null, 2));
  saveState();
  createNetwork(options);

  const pids = new Map<string, number>();
  const logLevel = options.logLevel ?? 'warn';

  /** Starts a process in a site's namespace (or the host's, for null), in its own process group. */
  function launch(name: string, site: Site | null, argv: string[], env: Record<string, string>): void {
    const logPath = join(work, 'logs', `${name}.log`);
    mkdirSync(join(work, 'logs'), { recursive: true });
    const fd = openSync(logPath, 'a');
    const [cmd, ...args] = site ? ['ip', 'netns', 'exec', namespaceName(options, site), ...argv] : argv;
    const child = spawn(cmd!, args, {
      cwd: root,
      detached: true,
      stdio: ['ignore', fd, fd],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/root', ...env },
    });
    closeSync(fd);
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start ${name}`);
    pids.set(name, child.pid);
  }

  function killGroup(name: string): void {
    const pid = pids.get(name);
    pids.delete(name);
    if (pid === undefined) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }

  const etcdAddresses = Object.fromEntries(
    ETCD_MEMBERS.map((member) => [member, { ip: siteAddress(options, member), clientPort: p.etcd_client!, peerPort: p.etcd_peer! }]),
  ) as Record<EtcdMember, LocalEtcdAddress>;
  const endpointOf = (member: EtcdMember) => `http://${etcdAddresses[member].ip}:${etcdAddresses[member].clientPort}`;
  const etcdEndpoints = ETCD_MEMBERS.map(endpointOf);
  const password = () => randomBytes(18).toString('base64url');
  const etcdUsers = {
    root: { username: 'root', password: password() },
    cms: { username: CMS_USER, password: password() },
    gateway: { username: GATEWAY_USER, password: password() },
  };
  const asUser = (user: { username: string; password: string }) => ({ ETCD_USERNAME: user.username, ETCD_PASSWORD: user.password });

  async function startEtcd(member: EtcdMember): Promise<void> {
    const dataDir = join(work, `etcd-${member}`);
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    const configFile = join(work, `etcd-${member}.conf.yml`);
    // TLS is left out here; test/deploy starts the same configs with TLS.
    writeFileSync(configFile, localEtcdConfig(member, { addresses: etcdAddresses, dataDir, tls: null }));
    launch(`etcd-${member}`, member, ['etcd', '--config-file', configFile], {});
  }

  async function stopEtcd(member: EtcdMember): Promise<void> {
    killGroup(`etcd-${member}`);
  }

  // Vault on the witness, reachable from both datacenters; the runners read with its token.
  const vault = { addr: `http://${siteAddress(options, 'witness')}:${VAULT_PORT}`, token: `root-${randomBytes(12).toString('hex')}` };
  function startVault(): void {
    launch(
      'vault',
      'witness',
      [
        vaultBinary,
        'server',
        '-dev',
        `-dev-listen-address=${siteAddress(options, 'witness')}:${VAULT_PORT}`,
        `-dev-root-token-id=${vault.token}`,
        '-dev-no-store-token',
        '-log-level=warn',
      ],
      {
        HOME: work,
      },
    );
  }

  const sites = Object.fromEntries(
    DATACENTERS.map((dc) => {
      const ip = siteAddress(options, dc);
      return [dc, { ip, gateway: `http://${ip}:${p.gateway}`, cms: `http://${ip}:${p.cms}`, runnerHealth: `http://${ip}:${p.runner_health}` }];
    }),
  ) as Record<Datacenter, SiteUrls>;

  async function startAppNode(dc: Datacenter): Promise<void> {
    const dir = join(work, dc);
    mkdirSync(dir, { recursive: true });
    const own = dc as EtcdMember;
    // As in production (deploy/app-node/*.env): Gatehouse's processes talk to
    // the three members directly, this datacenter's listed first (the client
    // spreads calls over all of them and fails over between them). TLS is
    // left out here, as for the members.
    const members = [endpointOf(own), ...ETCD_MEMBERS.filter((m) => m !== own).map(endpointOf)].join(',');
    const common = { ...options.identityEnv, ETCD_ENDPOINTS: members, OPA_PATH: options.opaPath, LOG_LEVEL: logLevel, GATEHOUSE_DATACENTER: dc };
    const gatewayUser = asUser(etcdUsers.gateway);
    const routesPath = join(dir, 'apisix.yaml');
    const template = readFileSync(join(root, 'apisix-conf', 'apisix.yaml'), 'utf8');
    writeFileSync(
      routesPath,
      pointRoutesAt(template, {
        cms: `127.0.0.1:${p.cms}`,
        'decision-api': `127.0.0.1:${p.decision}`,
        rag: '127.0.0.1:8082',
        llm: `http://127.0.0.1:${LLM_PORT}`,
      }),
    );
    const node = process.execPath;
    launch(`${dc}-rag`, dc, [node, join(root, 'dist/dev/dc-rehearsal/echo-upstream.js')], { SITE: dc, PORT: '8082' });
    launch(`${dc}-llm`, dc, [node, join(root, 'dist/dev/dc-rehearsal/llm-upstream.js')], { PORT: String(LLM_PORT) });
    launch(`${dc}-decision`, dc, [node, join(root, 'dist/decision-api/main.js')], {
      ...common,
      ...gatewayUser,
      ...verifyEnv,
      DECISION_HOST: '127.0.0.1',
      DECISION_PORT: String(p.decision),
      DECISION_STATE_DIR: join(dir, 'decision-state'),
    });
    launch(`${dc}-cms`, dc, [node, join(root, 'dist/cms/main.js')], {
      ...common,
      ...asUser(etcdUsers.cms),
      ...signingEnv,
      HOST: '0.0.0.0',
      PORT: String(p.cms),
    });
    const gatewayArgs = ['--config', join(root, 'apisix-conf', 'config.yaml'), '--routes', routesPath, '--port', String(p.gateway)];
    // nginx's workers (nobody, under a root master) pass through to the socket in the prefix.
    for (const path of [work, dir]) chmodSync(path, 0o711);
    const gatewayCommand = [node, join(root, 'dist/dev/apisix/main.js'), ...gatewayArgs, '--host', '0.0.0.0', '--prefix', join(dir, 'apisix')];
    launch(`${dc}-gateway`, dc, gatewayCommand, {
      ...common,
      ...gatewayUser,
      ...verifyEnv,
      GATEWAY_HOST: '0.0.0.0',
      RUNNER_METRICS_HOST: sites[dc].ip,
      RUNNER_METRICS_PORT: String(p.runner_health),
      RUNNER_STATE_DIR: join(dir, 'runner-state'),
      VAULT_ADDR: vault.addr,
      VAULT_TOKEN: vault.token,
    });
    const hint = () => APP_PROCESSES.map((name) => tail(join(work, 'logs', `${dc}-${name}.log`))).join('\n');
    await waitFor(`${dc} runner`, () => answers(`${sites[dc].runnerHealth}/readyz`, true), 30_000, hint);
    await waitFor(`${dc} CMS`, () => answers(`${sites[dc].cms}/healthz`, true), 30_000, hint);
    await waitFor(`${dc} gateway`, () => answers(`${sites[dc].gateway}/`, false), 30_000, hint);
  }

  function killAppNode(dc: Datacenter): void {
    for (const name of APP_PROCESSES) killGroup(`${dc}-${name}`);
  }

  const statsPort = 8404;
  const statsUrl = `http://${hostAddress(options)}:${statsPort}/stats`;
  async function serverStatus(): Promise<Record<string, string>> {
    const response = await fetch(`${statsUrl};csv`, { signal: AbortSignal.timeout(2_000) });
    const lines = (await response.text()).split('\n');
    const header = (lines[0] ?? '').replace(/^# /, '').split(',');
    const status = header.indexOf('status');
    const out: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const cols = line.split(',');
      if (cols.length < 2 || cols[1] === 'FRONTEND' || cols[1] === 'BACKEND') continue;
      out[`${cols[0]}/${cols[1]}`] = cols[status] ?? '';
    }
    return out;
  }

  const frontendPort = options.frontendPort ?? 8080;
  const url = `http://${hostAddress(options)}:${frontendPort}`;

  const stop = async () => {
    for (const name of [...pids.keys()]) killGroup(name);
    teardown(state);
    rmSync(stateFile(work), { force: true });
  };

  try {
    for (const member of ETCD_MEMBERS) await startEtcd(member);
    for (const member of ETCD_MEMBERS) {
      await waitFor(
        `etcd ${member}`,
        async () => {
          const response = await fetch(`${endpointOf(member)}/health`, { signal: AbortSignal.timeout(1_000) });
          return ((await response.json()) as { health?: string }).health === 'true';
        },
        30_000,
        () => tail(join(work, 'logs', `etcd-${member}.log`)),
      );
    }
    startVault();
    await waitFor(
      'Vault on the witness',
      () => answers(`${vault.addr}/v1/sys/health`, true),
      30_000,
      () => tail(join(work, 'logs', 'vault.log')),
    );
    // Access control as deploy/ sets it up (deploy/etcd-auth/roles.ts), before any service connects.
    const setup = createEtcdClient(etcdEndpoints);
    try {
      await enableEtcdAuth(setup, { rootPassword: etcdUsers.root.password, cmsPassword: etcdUsers.cms.password, gatewayPassword: etcdUsers.gateway.password });
    } finally {
      setup.close();
    }
    await Promise.all(DATACENTERS.map(startAppNode));

    const haproxyConfig = join(work, 'haproxy.cfg');
    writeFileSync(
      haproxyConfig,
      // The app nodes' addresses of the inventory become the namespaces' addresses.
      localHaproxyConfig({
        bind: { ip: hostAddress(options), port: frontendPort },
        statsBind: { ip: hostAddress(options), port: statsPort },
        statsSocket: join(work, 'haproxy.sock'),
        appNodes: { 'app-dc1': sites.dc1.ip, 'app-dc2': sites.dc2.ip },
      }),
    );
    launch('haproxy', null, ['haproxy', '-db', '-f', haproxyConfig], {});
    state.haproxyPid = pids.get('haproxy') ?? null;
    saveState();
    await waitFor(
      'HAProxy with both app nodes up',
      async () => {
        const status = await serverStatus();
        return ['gateway', 'cms'].every((backend) => DATACENTERS.every((dc) => status[`${backend}/app-${dc}`] === 'UP'));
      },
      30_000,
      () => tail(join(work, 'logs', 'haproxy.log')),
    );
  } catch (error) {
    await stop();
    throw error;
  }

  return {
    url,
    statsUrl,
    sites,
    etcdEndpoints,
    etcdUsers,
    vault,
    signingKeys,
    killAppNode,
    startAppNode,
    stopEtcd,
    startEtcd,
    setSiteLink: (site, up) => setLink(options, site, up),
    serverStatus,
    stop,
  };
}

export { SITES };
