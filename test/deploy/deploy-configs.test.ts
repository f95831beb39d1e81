// The production files under deploy/, checked with the real tools where this
// machine has them: haproxy -c, keepalived -t, systemd-analyze verify, and
// the three etcd member configs started as one cluster (mutual TLS, with
// certificates from deploy/tls/make-lab-certs.sh) on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../etcd/index.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { freePort } from '../../dev/local-etcd/index.js';
import { ETCD_MEMBERS, loadInventory, localEtcdConfig, type EtcdMember, type LocalEtcdAddress } from '../../dev/dc-rehearsal/deploy-files.js';
import { repoRoot } from '../support/runner-process.js';
import { randomBytes } from 'node:crypto';
import { enableEtcdAuth } from '../../deploy/etcd-auth/roles.js';
import { deploymentAuthSetup } from '../../deploy/etcd-auth/setup.js';

const deploy = join(repoRoot, 'deploy');
const read = (path: string) => readFileSync(join(repoRoot, path), 'utf8');
let work: string;
let certs: string;

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'gh-deploy-'));
  certs = join(work, 'certs');
  const made = spawnSync('sh', [join(deploy, 'tls', 'make-lab-certs.sh'), certs], { encoding: 'utf8' });
  expect(made.status, made.stderr).toBe(0);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('load balancer pair', () => {
  function haproxyCheck(text: string) {
    const path = join(work, `haproxy-${Math.random().toString(36).slice(2)}.cfg`);
    writeFileSync(path, text);
    return spawnSync('haproxy', ['-c', '-f', path], { encoding: 'utf8' });
  }
  // Only the certificate path changes: the real one lives on the load balancers.
  const withLabCert = () => read('deploy/lb/haproxy.cfg').replace('/etc/haproxy/tls/gatehouse.pem', join(certs, 'gatehouse.pem'));

  it('haproxy -c accepts deploy/lb/haproxy.cfg, and refuses it with a broken health check', () => {
    const ok = haproxyCheck(withLabCert());
    expect(ok.status, ok.stdout + ok.stderr).toBe(0);
    expect(ok.stdout + ok.stderr).toMatch(/Configuration file is valid/);
    expect(ok.stdout + ok.stderr).not.toMatch(/\[WARNING\]/);
    const broken = haproxyCheck(withLabCert().replace('http-check expect status 200', 'http-check expect sometimes 200'));
    expect(broken.status).not.toBe(0);
  });

  it("checks every app node of the inventory on the runner's and the CMS's /readyz", () => {
    const inventory = loadInventory();
    const cfg = read('deploy/lb/haproxy.cfg');
    const backend = (name: string) => cfg.split(/^backend /m).find((part) => part.startsWith(`${name}\n`)) ?? '';
    for (const name of ['gateway', 'cms']) {
      const section = backend(name);
      expect(section).toContain(`http-check connect port ${inventory.ports.runner_health}`);
      for (const [node, { ip }] of Object.entries(inventory.app_nodes))
        expect(section).toMatch(new RegExp(`server ${node} ${ip}:${inventory.ports.gateway} check`));
    }
    expect(backend('cms')).toContain(`http-check connect port ${inventory.ports.cms}`);
    expect(backend('gateway')).not.toContain(`port ${inventory.ports.cms}`);
  });

  it('keepalived -t accepts both nodes of the pair, which share the VIP and point at each other', () => {
    const inventory = loadInventory();
    const confs = ['lb1', 'lb2'].map((lb) => read(`deploy/lb/keepalived-${lb}.conf`));
    for (const [i, lb] of ['lb1', 'lb2'].entries()) {
      const result = spawnSync('keepalived', ['-t', '-f', join(deploy, 'lb', `keepalived-${lb}.conf`)], { encoding: 'utf8' });
      expect(result.status, result.stderr).toBe(0);
      const conf = confs[i]!;
      expect(conf).toContain(`${inventory.vip}/24`);
      const self = (inventory as unknown as { load_balancers: Record<string, { ip: string }> }).load_balancers;
      const other = lb === 'lb1' ? 'lb2' : 'lb1';
      expect(conf).toContain(`unicast_src_ip ${self[lb]!.ip}`);
      expect(conf).toMatch(new RegExp(`unicast_peer \\{\\s*${self[other]!.ip.replace(/\./g, '\\.')}\\s*\\}`));
    }
    expect(confs[0]!.match(/virtual_router_id (\d+)/)![1]).toBe(confs[1]!.match(/virtual_router_id (\d+)/)![1]);
    const broken = join(work, 'keepalived-broken.conf');
    writeFileSync(broken, confs[0]!.replace('virtual_router_id 51', 'virtual_router_id 999'));
    expect(spawnSync('keepalived', ['-t', '-f', broken]).status).not.toBe(0);
  });
});

describe('systemd units', () => {
  // systemd-analyze verify runs here without systemd as PID 1. APISIX is not
  // installed, so its package unit is stood in by a minimal one to check the drop-in against.
  function verify(dir: string, units: string[]) {
    return spawnSync('systemd-analyze', ['verify', ...units.map((unit) => join(dir, unit))], {
      encoding: 'utf8',
      env: { ...process.env, SYSTEMD_UNIT_PATH: `${dir}:`, SYSTEMD_LOG_LEVEL: 'notice' },
    });
  }
  function unitDir(): string {
    const dir = mkdtempSync(join(work, 'units-'));
    for (const unit of readdirSync(join(deploy, 'app-node')).filter((f) => f.endsWith('.service'))) cpSync(join(deploy, 'app-node', unit), join(dir, unit));
    cpSync(join(deploy, 'etcd', 'etcd.service'), join(dir, 'etcd.service'));
    cpSync(join(deploy, 'app-node', 'apisix.service.d'), join(dir, 'apisix.service.d'), { recursive: true });
    writeFileSync(
      join(dir, 'apisix.service'),
      '[Unit]\nDescription=APISIX (stand-in for the package unit)\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n',
    );
    return dir;
  }
  const units = ['gatehouse-cms.service', 'gatehouse-decision.service', 'etcd.service', 'apisix.service'];
  // Lines about our units; systemd also reports on unrelated units of the host.
  const aboutOurs = (output: string) => output.split('\n').filter((line) => /gatehouse|etcd\.service|apisix/.test(line));

  it('systemd-analyze verify finds nothing wrong in the units and the APISIX drop-in', () => {
    const result = verify(unitDir(), units);
    expect(aboutOurs(result.stdout + result.stderr)).toEqual([]);
    expect(result.status, result.stderr).toBe(0);
  });

  it('and it does read them: a bad key in the drop-in or a unit is reported', () => {
    const dir = unitDir();
    writeFileSync(join(dir, 'apisix.service.d', 'gatehouse.conf'), `${read('deploy/app-node/apisix.service.d/gatehouse.conf')}\nEnvironmentFiel=/nowhere\n`);
    writeFileSync(
      join(dir, 'gatehouse-cms.service'),
      read('deploy/app-node/gatehouse-cms.service').replace('ExecStart=/usr/bin/node', 'ExecStart=/usr/bin/no-such-node'),
    );
    const output = (({ stdout, stderr }) => stdout + stderr)(verify(dir, units));
    expect(output).toMatch(/gatehouse\.conf.*EnvironmentFiel/);
    expect(output).toMatch(/no-such-node/);
  });

  it('units name the binaries of package.json and env files that exist in deploy/', () => {
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> };
    expect(read('deploy/app-node/gatehouse-cms.service')).toContain(`/opt/gatehouse/${pkg.bin['gatehouse-cms']}`);
    expect(read('deploy/app-node/gatehouse-decision.service')).toContain(`/opt/gatehouse/${pkg.bin['gatehouse-decision']}`);
    const files = readdirSync(join(deploy, 'app-node'));
    for (const unit of ['gatehouse-cms.service', 'gatehouse-decision.service', 'apisix.service.d/gatehouse.conf']) {
      for (const [, path] of read(`deploy/app-node/${unit}`).matchAll(/^EnvironmentFile=-?(\/etc\/gatehouse\/[^\s]+)$/gm)) {
        const name = path!.replace('/etc/gatehouse/secrets/apisix.env', 'apisix-secrets.env.example').replace('/etc/gatehouse/', '');
        expect(files).toContain(name);
      }
    }
  });

  it('no secret is committed: the secrets template is empty and env files hold no key or password', () => {
    for (const line of read('deploy/app-node/apisix-secrets.env.example')
      .split('\n')
      .filter((l) => l && !l.startsWith('#')))
      expect(line).toMatch(/^[A-Z_]+=$/);
    for (const file of readdirSync(join(deploy, 'app-node')).filter((f) => f.endsWith('.env'))) {
      expect(read(`deploy/app-node/${file}`)).not.toMatch(/^(APISIX_ADMIN_KEY|VAULT_TOKEN|VAULT_SECRET_ID)=/m);
    }
  });
});

/** The variables an APISIX config lets through to its runner (nginx_config.envs, `NAME` or `NAME=value`). */
const envsOf = (file: string): string[] =>
  ((parse(read(file)) as { nginx_config: { envs?: string[] } }).nginx_config.envs ?? []).map((entry) => entry.split('=')[0]!);

describe('APISIX traditional-mode config', () => {
  const traditional = () => parse(read('apisix-conf/config-traditional.yaml'));

  it('runs the runner, in traditional mode, routes under /apisix in the etcd cluster of the inventory over TLS', () => {
    const doc = traditional();
    expect((doc['ext-plugin'].cmd as string[]).at(-1)).toMatch(/\/dist\/plugins\/runner\/main\.js$/);
    expect(doc.deployment.role).toBe('traditional');
    expect(doc.deployment.role_traditional.config_provider).toBe('etcd');
    expect(doc.deployment.etcd.prefix).toBe('/apisix');
    const inventory = loadInventory();
    expect(doc.deployment.etcd.host).toEqual(ETCD_MEMBERS.map((m) => `https://${inventory.etcd_members[m].host}:${inventory.ports.etcd_client}`));
    expect(doc.deployment.etcd.tls.verify).toBe(true);
  });

  it('has no default admin key: the key is read from the environment', () => {
    const keys = traditional().deployment.admin.admin_key as { key: string; role: string }[];
    expect(keys.length).toBeGreaterThan(0);
    for (const key of keys) expect(key.key).toMatch(/^\$\{\{[A-Z_]+\}\}$/);
    expect(traditional().deployment.admin.admin_key_required).toBe(true);
  });

  it("lets through every variable standalone config.yaml lets through, and every runner variable of the app node's env file", () => {
    const envs = envsOf('apisix-conf/config-traditional.yaml');
    expect(envs.length).toBeGreaterThan(0);
    for (const name of envsOf('apisix-conf/config.yaml')) expect(envs).toContain(name);
    // Except what config-traditional.yaml itself reads as ${{NAME}} (APISIX's CLI substitutes it, e.g. the metrics address).
    const forApisix = new Set([...read('apisix-conf/config-traditional.yaml').matchAll(/\$\{\{([A-Z_]+)/g)].map((m) => m[1]));
    for (const [, name] of read('deploy/app-node/apisix.env').matchAll(/^([A-Z_]+)=/gm)) if (!forApisix.has(name)) expect(envs).toContain(name);
    expect(forApisix).toContain('APISIX_METRICS_HOST');
  });
});

describe('etcd: the three member configs form one cluster', () => {
  const members: Partial<Record<EtcdMember, ChildProcess>> = {};
  const clients: Etcd3[] = [];
  let addresses: Record<EtcdMember, LocalEtcdAddress>;
  const output: string[] = [];
  const tlsFor = (member: EtcdMember) => ({
    caFile: join(certs, 'ca.crt'),
    certFile: join(certs, `etcd-${member}.crt`),
    keyFile: join(certs, `etcd-${member}.key`),
  });

  /**
   * Gatehouse's etcd client over TLS to one member, with the operators'
   * client certificate unless told otherwise (as the services connect: a
   * write that meets a change of access control is tried again).
   */
  function client(member: EtcdMember, withCert: boolean | string = true): Etcd3 {
    const cert = typeof withCert === 'string' ? withCert : 'gatehouse-etcd-client';
    const created = createEtcdClient([`https://127.0.0.1:${addresses[member].clientPort}`], {
      callTimeoutMs: 3_000,
      tls: { caFile: join(certs, 'ca.crt'), ...(withCert ? { certFile: join(certs, `${cert}.crt`), keyFile: join(certs, `${cert}.key`) } : {}) },
    });
    clients.push(created);
    return created;
  }

  async function healthy(member: EtcdMember): Promise<boolean> {
    const probe = client(member);
    try {
      await probe.get('/health-probe').string();
      return true;
    } catch {
      return false;
    } finally {
      probe.close();
    }
  }

  beforeAll(async () => {
    addresses = {} as Record<EtcdMember, LocalEtcdAddress>;
    for (const member of ETCD_MEMBERS) addresses[member] = { ip: '127.0.0.1', clientPort: await freePort(), peerPort: await freePort() };
    const tls = Object.fromEntries(ETCD_MEMBERS.map((m) => [m, tlsFor(m)])) as Record<EtcdMember, ReturnType<typeof tlsFor>>;
    for (const member of ETCD_MEMBERS) {
      const dataDir = join(work, `etcd-${member}`);
      mkdirSync(dataDir, { recursive: true, mode: 0o700 });
      const configFile = join(work, `etcd-${member}.conf.yml`);
      writeFileSync(configFile, localEtcdConfig(member, { addresses, dataDir, tls }));
      const child = spawn('etcd', ['--config-file', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
      child.stderr.on('data', (chunk: Buffer) => output.push(`${member}: ${chunk.toString()}`));
      members[member] = child;
    }
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if ((await Promise.all(ETCD_MEMBERS.map(healthy))).every(Boolean)) return;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    throw new Error(`the cluster did not become healthy:\n${output.join('').slice(-3000)}`);
  }, 60_000);

  afterAll(() => {
    for (const created of clients) created.close();
    for (const child of Object.values(members)) child?.kill('SIGKILL');
  });

  it('has three voting members, named after the three sites', async () => {
    const list = (await client('dc1').cluster.memberList({})).members;
    expect(list.map((m) => m.name).sort()).toEqual([...ETCD_MEMBERS].sort());
    expect(list.every((m) => !m.isLearner)).toBe(true);
  });

  it('replicates: written on dc1, read on the witness', async () => {
    await client('dc1').put('/policies/probe').value('v1');
    expect(await client('witness').get('/policies/probe').string()).toBe('v1');
  });

  it('refuses a client without a certificate signed by the CA', async () => {
    await expect(client('dc2', false).get('/policies/probe').string()).rejects.toThrow();
  });

  it('keeps quorum without any one site: dc1 stopped, dc2 and the witness still take writes', async () => {
    const dc1 = members.dc1!;
    const exited = new Promise((resolve) => dc1.once('exit', resolve));
    dc1.kill('SIGKILL');
    await exited;
    const writer = client('dc2');
    let written = false;
    const deadline = Date.now() + 15_000;
    // If dc1 led, a new leader is elected within the election timeout.
    while (Date.now() < deadline && !written) {
      written = await writer
        .put('/policies/probe')
        .value('v2')
        .then(
          () => true,
          () => false,
        );
      if (!written) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(written).toBe(true);
    expect(await client('witness').get('/policies/probe').string()).toBe('v2');
  });

  // Last: it turns access control on for this cluster.
  it("with access control on, the certificates' common names are the users: the CMS writes, gateways only read", async () => {
    await enableEtcdAuth(client('dc2'), deploymentAuthSetup(randomBytes(24).toString('hex')));
    const gateway = client('dc2', 'gatehouse-gateway-etcd-client');
    expect(await gateway.get('/policies/probe').string()).toBe('v2');
    await expect(gateway.put('/policies/probe').value('allow-all')).rejects.toThrow(/permission denied/i);
    await expect(gateway.put('/policy-index/evil').value('x')).rejects.toThrow(/permission denied/i);
    const cms = client('witness', 'gatehouse-cms-etcd-client');
    await cms.put('/policies/probe').value('v3');
    expect(await gateway.get('/policies/probe').string()).toBe('v3');
    await expect(cms.put('/apisix/routes/1').value('{}')).rejects.toThrow(/permission denied/i);
    const apisix = client('dc2', 'apisix-etcd-client');
    await apisix.put('/apisix/routes/1').value('{}');
    await expect(apisix.get('/policies/probe').string()).rejects.toThrow(/permission denied/i);
    // The operators' certificate is root.
    await client('witness').put('/policies/probe').value('v4');
  });
});

describe('what nginx lets through to the runner', () => {
  // The files whose settings the runner reads from its environment.
  const runnerSources = [
    'plugins/runner/config.ts',
    'plugins/runner/main.ts',
    'plugins/runner/worker.ts',
    'identity/config.ts',
    'plugins/vault/config.ts',
    'etcd/client.ts',
    'policy/engine/cache.ts',
    'policy/engine/index.ts',
    'policy/engine/pool.ts',
    'runtime/tracing.ts',
  ];
  // Set by APISIX itself when it starts the runner, not passed from its own environment.
  // Set by APISIX, or by the runner's primary for its own workers (cluster.ts).
  const setByApisix = new Set(['APISIX_LISTEN_ADDRESS', 'APISIX_CONF_EXPIRE_TIME', 'RUNNER_WORKER_INDEX', 'RUNNER_WORKER_RESPAWN']);

  it('every variable the runner reads is listed in nginx_config.envs of both configs', () => {
    const used = new Set<string>();
    for (const file of runnerSources) {
      for (const match of read(file).matchAll(/\b(?:env|process\.env)\.([A-Z][A-Z0-9_]+)\b|['"`]((?:ETCD|JWT|VAULT|RUNNER|OPA|LOG)_[A-Z0-9_]+)['"`]/g)) {
        used.add((match[1] ?? match[2])!);
      }
    }
    for (const name of setByApisix) used.delete(name);
    expect(used.size).toBeGreaterThan(20);
    for (const config of ['apisix-conf/config.yaml', 'apisix-conf/config-traditional.yaml']) {
      const envs = envsOf(config);
      expect(
        [...used].filter((name) => !envs.includes(name)),
        config,
      ).toEqual([]);
    }
  });
});

describe("the runner socket's directory", () => {
  it("is locked to root and the workers' group, which is the group the workers run as", () => {
    const lines = read('deploy/app-node/gatehouse.tmpfiles.conf')
      .split('\n')
      .filter((line) => line.trim() && !line.startsWith('#'));
    const lock = lines.map((line) => line.trim().split(/\s+/)).find((fields) => fields[1] === '/usr/local/apisix/conf');
    expect(lock, 'a tmpfiles line for /usr/local/apisix/conf').toBeDefined();
    const [type, , mode, owner, group] = lock!;
    expect(['d', 'z', 'Z']).toContain(type);
    expect(mode).toBe('0750');
    expect(owner).toBe('root');
    const user = (parse(read('apisix-conf/config-traditional.yaml')) as { nginx_config?: { user?: string } }).nginx_config?.user ?? '';
    const [, workerGroup] = user.split(/\s+/);
    expect(workerGroup, "nginx_config.user names the workers' group").toBe(group);
  });
});
