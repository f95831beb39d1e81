// etcd's access control changes while the CMS and a gateway run: an operator
// grants a role a permission, adds a user. etcd then refuses with "revision
// of auth store is old" the writes that were in flight, and every call made
// with a JWT token issued before the change. The CMS and the gateway (the
// runner, with its policy watch, fleet report and budget calls) go on without
// a restart: their etcd client authenticates again and retries
// (etcd/client.ts, isAuthStoreChanged).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { Range, type Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../etcd/index.js';
import { buildCmsApp } from '../../cms/app.js';
import { CMS_USER, GATEWAY_USER, POLICY_READER_ROLE, POLICY_WRITER_ROLE, type EtcdAuthSetup } from '../../deploy/etcd-auth/roles.js';
import { startLocalEtcd, type LocalEtcd } from '../../dev/local-etcd/index.js';
import { startEtcd, withAccessControl } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';

const password = () => randomBytes(12).toString('hex');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Lets the viewers of project "flip" in, or not.
const policy = (allowed: string) => `package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "${allowed}"\n`;

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe('etcd with JWT tokens: every token issued before a change of access control is refused', () => {
  let dir: string;
  let etcd: LocalEtcd;
  let setup: EtcdAuthSetup;
  let keys: TestKeys;
  let cms: FastifyInstance;
  let runner: RunnerProcess;
  let changes = 0;

  /** One change, as an operator makes it: a client of its own, logged in as root. */
  async function operator(change: (root: Etcd3) => Promise<unknown>): Promise<void> {
    const root = createEtcdClient(etcd.endpoints, { auth: { username: 'root', password: setup.rootPassword } });
    try {
      await change(root);
      changes++;
    } finally {
      root.close();
    }
  }
  const unrelated = (role: string) => ({ permission: 'Read' as const, range: Range.prefix(`/unrelated-to-${role}/`) });

  async function cmsPut(allowed: string): Promise<{ status: number; body: string }> {
    const admin = await keys.token({ sub: 'ada', role: 'platform_admin' });
    const res = await cms.inject({
      method: 'PUT',
      url: '/policies/flip',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ rego: policy(allowed), data: {} }),
    });
    return { status: res.statusCode, body: res.body };
  }

  /** What the gateway decides for a viewer of project flip: 'pass' or the status it stops with. */
  async function viewerDecision(): Promise<number | 'pass'> {
    const conf = [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: JSON.stringify({ policies: ['caller-project'] }) },
    ];
    return chainStatus(runner.socketPath, conf, { bearer: await keys.token({ sub: 'vic', role: 'viewer', project: 'flip' }) });
  }

  /** The CMS's view of the gateways: every one of them (at least one) reports enforcing flip's current version. */
  async function fleetEnforces(): Promise<boolean> {
    const admin = await keys.token({ sub: 'ada', role: 'platform_admin' });
    const res = await cms.inject({ method: 'GET', url: '/policies/flip/status', headers: { authorization: `Bearer ${admin}` } });
    if (res.statusCode !== 200) return false;
    const status = res.json() as { enforcedBy: number; gateways: unknown[] };
    return status.gateways.length > 0 && status.enforcedBy === status.gateways.length;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'gh-etcd-jwt-'));
    const pair = generateKeyPairSync('rsa', {
      modulusLength: 2048,
      publicKeyEncoding: { type: 'spki', format: 'pem' },
      privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
    });
    writeFileSync(join(dir, 'jwt.pub'), pair.publicKey);
    writeFileSync(join(dir, 'jwt.key'), pair.privateKey, { mode: 0o600 });
    etcd = await startLocalEtcd({
      dataRoot: 'test-etcd',
      extraArgs: ['--auth-token', `jwt,pub-key=${join(dir, 'jwt.pub')},priv-key=${join(dir, 'jwt.key')},sign-method=RS256,ttl=10m`],
    });
    setup = await withAccessControl(etcd.endpoints);
    keys = await createTestKeys();
    cms = await buildCmsApp({
      etcdEndpoints: etcd.endpoints,
      etcdAuth: { username: CMS_USER, password: setup.cmsPassword },
      identity: keys.identityConfig,
      opaPath,
      logger: pino({ level: 'silent' }),
    });
    runner = await startRunner({
      env: {
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ETCD_USERNAME: GATEWAY_USER,
        ETCD_PASSWORD: setup.gatewayPassword,
        ...keys.env,
        RUNNER_STATE_DIR: join(dir, 'runner-state'),
      },
    });
  }, 60_000);

  afterAll(async () => {
    await runner?.stop();
    await cms?.close();
    await etcd?.cleanup();
    await keys?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the CMS writes, and the gateway enforces and reports what it writes, across changes of roles and users', async () => {
    expect((await cmsPut('admin')).status).toBe(201);
    await until(async () => (await viewerDecision()) === 403, 'the gateway to enforce the first version');
    await until(fleetEnforces, 'the gateway to report the first version');

    // A role gets an unrelated permission: the CMS's next write comes with the token it had.
    await operator((root) => root.role(POLICY_WRITER_ROLE).grant(unrelated(POLICY_WRITER_ROLE)));
    const written = await cmsPut('viewer');
    expect(written, written.body).toMatchObject({ status: 200 });
    await until(async () => (await viewerDecision()) === 'pass', 'the gateway to enforce the second version');
    await until(fleetEnforces, 'the gateway to report the second version');

    // A user is added, and the gateways' role changes; meanwhile nobody writes
    // policies, so the gateway's quiet watch stream is checked with a new watch
    // (every second), and replaced when that watch is refused: its new stream
    // must carry a new token, or every watch on it is refused in turn.
    await operator(async (root) => root.user('auditor').create(password()));
    await operator((root) => root.role(POLICY_READER_ROLE).grant(unrelated(POLICY_READER_ROLE)));
    await sleep(4_000);
    const again = await cmsPut('admin');
    expect(again, again.body).toMatchObject({ status: 200 });
    await until(async () => (await viewerDecision()) === 403, 'the gateway to enforce the third version');
    await until(fleetEnforces, 'the gateway to report the third version');

    // The same once more, the policy written by an operator this time: only
    // the gateway's own client has to get over the change.
    await operator((root) => root.role(POLICY_READER_ROLE).revoke(unrelated(POLICY_READER_ROLE)));
    await sleep(4_000);
    await operator((root) => new EtcdPolicyWriter(root).put('flip', policy('viewer')));
    await until(async () => (await viewerDecision()) === 'pass', 'the gateway to enforce the fourth version');
    await until(fleetEnforces, 'the gateway to report the fourth version');
    expect(changes).toBe(5);
  }, 120_000);

  it('a watch refused for a token older than the change is followed by one that gets through', async () => {
    const gateway = createEtcdClient(etcd.endpoints, { auth: { username: GATEWAY_USER, password: setup.gatewayPassword } });
    // Watches /policies/ as PolicyWatcher, GatewayBudgets and BudgetLedger
    // do, on a stream of its own; resolves with 'connected' or why not.
    const watch = () =>
      new Promise<string>((resolve) => {
        const watcher = gateway.namespace('').watch().prefix('/policies/').watcher();
        watcher.once('connected', () => {
          resolve('connected');
          void watcher.cancel().catch(() => undefined);
        });
        watcher.once('error', (err: Error) => resolve(err.message));
      });
    try {
      expect(await watch()).toBe('connected');
      await operator((root) => root.role(POLICY_READER_ROLE).grant(unrelated('a watch')));
      // The owner of a canceled watch watches again at once (BudgetLedger
      // makes no other call in between): the new one must not be refused too.
      expect(await watch()).toMatch(/revision of auth store is old/);
      expect(await watch()).toBe('connected');
    } finally {
      gateway.close();
    }
  }, 60_000);
});

describe('etcd with simple tokens (the default) or certificates: a write in flight while access control changes', () => {
  it('is not refused: writes running all along a series of changes all succeed', async () => {
    const etcd = await startEtcd();
    const setup = await withAccessControl(etcd.endpoints);
    // A generous deadline: this is about refusals, not a busy machine's slow answers.
    const cms = createEtcdClient(etcd.endpoints, { auth: { username: CMS_USER, password: setup.cmsPassword }, callTimeoutMs: 10_000 });
    const root = createEtcdClient(etcd.endpoints, { auth: { username: 'root', password: setup.rootPassword } });
    try {
      let stop = false;
      let written = 0;
      const refused: string[] = [];
      // Several writers at once: each write's check against the auth store
      // may be overtaken by a change before it is applied.
      const writers = [0, 1, 2, 3].map(async (writer) => {
        while (!stop) {
          await cms
            .put(`/policies/probe-${writer}`)
            .value(String(written))
            .then(
              () => written++,
              (err: Error) => refused.push(err.message),
            );
        }
      });
      // At least 20 changes with writes among them, however slow the machine, then
      // the writers go on to 40 writes in all. The changes stop at 200: a change
      // every 50 ms without end can keep a write from ever finding the store
      // still, on a machine slow enough. Past a minute it fails with what it saw,
      // rather than running out the test's time.
      let changes = 0;
      const deadline = Date.now() + 60_000;
      while ((changes < 20 || written < 10) && changes < 200 && Date.now() < deadline) {
        await root.role(POLICY_WRITER_ROLE).grant({ permission: 'Read', range: Range.prefix(`/unrelated-${changes}/`) });
        changes++;
        await sleep(50);
      }
      while (written < 40 && Date.now() < deadline) await sleep(50);
      stop = true;
      const writersDone = await Promise.race([Promise.all(writers).then(() => true), sleep(30_000).then(() => false)]);
      const seen = `${changes} changes, ${written} writes; refused: ${JSON.stringify(refused)}`;
      expect(writersDone, `every writer's last write answered within 30 s (${seen})`).toBe(true);
      expect(refused.filter((message) => message.includes('revision of auth store is old'))).toEqual([]);
      expect(changes, seen).toBeGreaterThanOrEqual(20);
      expect(written, seen).toBeGreaterThanOrEqual(40);
    } finally {
      cms.close();
      root.close();
      await etcd.cleanup();
    }
  }, 120_000);
});
