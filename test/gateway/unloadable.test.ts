// A policy that exists but cannot be loaded is never treated as absent: the
// CMS refuses to write one, and a gateway that meets one anyway (written
// past the CMS, or altered in etcd) denies every decision that needs it
// (for the platform policy: every request), and says so in /readyz and
// its metrics.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { policyKeys } from '../../policy/store/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { policyBody, startHarness, type Harness } from '../cms/harness.js';

const PLATFORM = `package platform
import rego.v1
default allow := true
allow := false if input.request.method == "DELETE"
tag := data.tag
`;
const PROJECT = `package project.authz
import rego.v1
default allow := false
allow if input.user.role == "admin"
`;
// Two complete definitions that disagree: opa builds it, evaluation aborts.
const CONFLICT = `package project.authz
import rego.v1
allow = true if true
allow = false if true
`;
// The data document as the CMS stores it: JSON text with a lone surrogate,
// which Go's parser (opa build) accepts and the wasm engine's refuses.
const LONE_SURROGATE_DATA = '{"tag":"\\ud800"}';

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;
let keys: TestKeys;
const runners: RunnerProcess[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
  keys = await createTestKeys();
  await writer.put('team-a', PROJECT);
});

afterAll(async () => {
  await Promise.all(runners.map((r) => r.stop()));
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

/** Writes a version through the store only (past the CMS's checks), with data given as text. */
async function writeRaw(name: string, rego: string, dataText: string): Promise<void> {
  const compiled = await writer.compiler.compile(rego, '{}');
  await writer.store.put(name, {
    rego,
    dataText,
    wasm: compiled.wasm,
    author: 'test',
    opaVersion: compiled.opaVersion,
    entrypoint: compiled.entrypoint,
    syntaxVersion: compiled.syntaxVersion,
  });
}

async function launch(): Promise<{ runner: RunnerProcess; metricsUrl: string }> {
  const port = await freePort();
  const runner = await startRunner({
    env: {
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      ...keys.env,
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-unloadable-')),
      RUNNER_METRICS_PORT: String(port),
    },
  });
  runners.push(runner);
  return { runner, metricsUrl: `http://127.0.0.1:${port}` };
}

async function status(runner: RunnerProcess): Promise<number | 'pass'> {
  const conf = [
    { name: 'jwt', value: '{}' },
    { name: 'opa', value: JSON.stringify({ policies: ['platform', 'caller-project'] }) },
  ];
  return chainStatus(runner.socketPath, conf, { bearer: await keys.token({ sub: 'ada', role: 'admin', project: 'team-a' }) });
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the CMS refuses what the engine cannot load', () => {
  let harness: Harness;
  beforeAll(async () => {
    harness = await startHarness();
  });
  afterAll(async () => {
    await harness?.close();
  });

  it('data the engine refuses, and a module whose evaluation aborts, are 400 and nothing is written', async () => {
    const cms = await harness.startCms();
    const before = await harness.snapshot();
    const surrogate = await cms.request('PUT', '/policies/team-x', {
      token: harness.tokens.admin,
      body: `{"rego":${JSON.stringify(PLATFORM)},"data":${LONE_SURROGATE_DATA}}`,
    });
    expect(surrogate.status).toBe(400);
    expect(surrogate.json()).toMatchObject({ type: 'urn:gatehouse:problem:policy-does-not-load' });
    const conflict = await cms.request('PUT', '/policies/team-x', { token: harness.tokens.admin, body: policyBody(CONFLICT) });
    expect(conflict.status).toBe(400);
    expect(conflict.json()).toMatchObject({ type: 'urn:gatehouse:problem:policy-does-not-load' });
    expect(await harness.snapshot()).toEqual(before);
  });
});

describe('a gateway that meets an unloadable policy denies for it', () => {
  it('a running gateway: a new platform version that cannot load denies every request, and says so', async () => {
    await writer.put('platform', PLATFORM, { tag: 'fine' });
    const { runner, metricsUrl } = await launch();
    await until(async () => (await status(runner)) === 'pass', 'the healthy platform policy');

    await writeRaw('platform', PLATFORM, LONE_SURROGATE_DATA);
    await until(async () => (await status(runner)) === 500, 'every request denied');
    const ready = (await (await fetch(`${metricsUrl}/readyz`)).json()) as { policies: { unloadable: { name: string }[] } };
    expect(ready.policies.unloadable.map((u) => u.name)).toEqual(['platform']);
    expect(await (await fetch(`${metricsUrl}/metrics`)).text()).toMatch(/^gatehouse_policies_unloadable 1$/m);

    // A version that loads replaces it, and requests go through again.
    await writer.put('platform', PLATFORM, { tag: 'fixed' });
    await until(async () => (await status(runner)) === 'pass', 'the fixed platform policy');
    expect(await (await fetch(`${metricsUrl}/metrics`)).text()).toMatch(/^gatehouse_policies_unloadable 0$/m);
  });

  it('a gateway started while the platform policy cannot load denies every request (it is not "absent")', async () => {
    await writeRaw('platform', PLATFORM, LONE_SURROGATE_DATA);
    const { runner, metricsUrl } = await launch();
    await until(async () => (await fetch(`${metricsUrl}/readyz`)).ok, 'policies loaded');
    for (let i = 0; i < 3; i++) expect(await status(runner)).toBe(500);
    const ready = (await (await fetch(`${metricsUrl}/readyz`)).json()) as { policies: { unloadable: { name: string }[] } };
    expect(ready.policies.unloadable.map((u) => u.name)).toEqual(['platform']);
    await writer.put('platform', PLATFORM, { tag: 'fixed' });
  });

  it('a wasm altered in etcd is unloadable, not skipped (found when its module is first read)', async () => {
    // A module of its own: had another policy the same one, its verified copy would serve both.
    await writer.put('altered', `${PROJECT}\nonly_here := true\n`);
    const wasm = (await admin.get(policyKeys('altered').wasm).buffer())!;
    wasm[wasm.length - 1] = wasm[wasm.length - 1]! ^ 0xff;
    await admin.put(policyKeys('altered').wasm).value(wasm);
    const client = createEtcdClient(etcd.endpoints);
    const watcher = new PolicyWatcher({ client, log: pino({ level: 'silent' }) });
    try {
      await watcher.start();
      // The start-up read takes no wasm: the module is checked when it is read, for its first decision.
      const policy = watcher.current.get('altered');
      expect(policy).toBeDefined();
      await expect(policy!.engine()).rejects.toThrow(/cannot be loaded.*sha256/);
      expect(watcher.status.unloadable.map((u) => u.name)).toContain('altered');
    } finally {
      await watcher.stop();
      client.close();
    }
  });
});
