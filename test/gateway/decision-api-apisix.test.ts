// APISIX's built-in `opa` plugin pointed at the decision API, as the README
// invites: real APISIX (the plugin as it ships, added to this instance's
// plugin list only), a running decision API on real etcd and compiled
// policies. The plugin turns any answer but 200 into 503, so the decision API
// answers a client's refusal as a decision: APISIX then answers 401 or 403.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';
import { apisixInstallation } from '../support/gateway.js';
import { repoRoot } from '../support/runner-process.js';
import { createEtcdClient } from '../../etcd/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { createIdentityVerifier } from '../../identity/index.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import { buildDecisionApp } from '../../decision-api/app.js';
import { freePort, startApisix, type ApisixHandle } from '../../dev/apisix/index.js';

let etcd: TestEtcd;
let client: Etcd3;
let watcher: PolicyWatcher;
let decisionApi: FastifyInstance;
let keys: TestKeys;
let upstream: RecordingUpstream;
let gateway: ApisixHandle;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
  keys = await createTestKeys();
  await new EtcdPolicyWriter(client).put('team-a', 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "admin"\n');
  watcher = new PolicyWatcher({ client, log: pino({ level: 'silent' }) });
  await watcher.start();
  decisionApi = await buildDecisionApp({
    watcher,
    verifier: createIdentityVerifier(keys.identityConfig),
    access: await loadAccessPolicy(defaultAccessPolicyWasmPath()),
    log: pino({ level: 'silent' }),
    registry: new Registry(),
  });
  await decisionApi.listen({ host: '127.0.0.1', port: 0 });
  const decisionPort = (decisionApi.server.address() as AddressInfo).port;
  upstream = await startRecordingUpstream({ status: 200, body: 'answered by the upstream' });

  const routesPath = join(mkdtempSync(join(tmpdir(), 'gh-apisix-opa-')), 'apisix.yaml');
  writeFileSync(
    routesPath,
    [
      'routes:',
      '  - id: rag',
      '    uri: /rag/*',
      '    plugins:',
      '      opa:',
      `        host: "http://127.0.0.1:${decisionPort}"`,
      '        policy: "team-a/project/authz"',
      '    upstream:',
      '      type: roundrobin',
      '      nodes:',
      `        "127.0.0.1:${upstream.port}": 1`,
      '#END',
      '',
    ].join('\n'),
  );
  gateway = await startApisix({
    installation: apisixInstallation(),
    repoRoot,
    routesPath,
    port: await freePort(),
    workerProcesses: 1,
    env: { PATH: process.env.PATH ?? '' },
    // APISIX's own `opa` plugin added to this instance's plugin list only; no runner.
    edit: (config) => {
      config.addIn(['plugins'], 'opa');
      config.deleteIn(['ext-plugin']);
    },
    expectRunner: false,
    logger: pino({ level: 'silent' }),
  });
}, 120_000);

afterAll(async () => {
  await gateway?.stop();
  await upstream?.close();
  await decisionApi?.close();
  await watcher?.stop();
  client?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

describe("APISIX's built-in opa plugin on the decision API", () => {
  const ask = (token?: string) => fetch(`${gateway.url}/rag/ask?q=1`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });

  it('no token: 401 with WWW-Authenticate and a problem document; the upstream is not reached', async () => {
    upstream.reset();
    const res = await ask();
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer realm="gatehouse"');
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(await res.json()).toMatchObject({ status: 401, title: 'Unauthorized' });
    expect(upstream.requests).toHaveLength(0);
  });

  it('a forged or malformed token: 401, invalid_token', async () => {
    upstream.reset();
    for (const token of [await keys.badSignatureToken({ sub: 'x', role: 'admin', project: 'team-a' }), 'not-a-jwt']) {
      const res = await ask(token);
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toBe('Bearer realm="gatehouse", error="invalid_token"');
      expect(await res.json()).toMatchObject({ status: 401 });
    }
    expect(upstream.requests).toHaveLength(0);
  });

  it("another project's token: 403 (it may not query this policy); the upstream is not reached", async () => {
    upstream.reset();
    const res = await ask(await keys.token({ sub: 'bob', role: 'admin', project: 'team-b' }));
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ status: 403, detail: 'you may not query this policy' });
    expect(upstream.requests).toHaveLength(0);
  });

  it("the project's own tokens: the policy decides (admin through to the upstream, viewer 403)", async () => {
    upstream.reset();
    let res = await ask(await keys.token({ sub: 'ada', role: 'admin', project: 'team-a' }));
    expect(res.status).toBe(200);
    expect(await res.text()).toBe('answered by the upstream');
    expect(upstream.last().url).toBe('/rag/ask?q=1');
    res = await ask(await keys.token({ sub: 'val', role: 'viewer', project: 'team-a' }));
    expect(res.status).toBe(403);
    expect(upstream.requests).toHaveLength(1);
  });
});
