/** Demo content for the local stack: seeding through the store, tokens the CMS accepts. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCmsApp } from '../../cms/app.js';
import { createDemoIdentity, DEMO_PROJECT, demoCurlCommands, seedDemoPolicies, type DemoIdentity } from '../../dev/demo.js';
import { loadPolicyEngine } from '../../policy/engine/index.js';
import { PolicyStore } from '../../policy/store/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { OPA_PATH, rawRequest } from './harness.js';
import { EtcdPolicyWriter } from '../support/policies.js';

let etcd: TestEtcd;
let dir: string;
let identity: DemoIdentity;

beforeAll(async () => {
  etcd = await startEtcd();
  dir = await mkdtemp(join(tmpdir(), 'gatehouse-demo-'));
  identity = await createDemoIdentity(dir);
});
afterAll(async () => {
  await etcd?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('demo seeding', () => {
  it('writes the platform policy and the demo project once', async () => {
    expect(await seedDemoPolicies({ etcdEndpoints: etcd.endpoints, opaPath: OPA_PATH })).toEqual(['platform', DEMO_PROJECT]);
    expect(await seedDemoPolicies({ etcdEndpoints: etcd.endpoints, opaPath: OPA_PATH })).toEqual([]);
  });

  it('brings an older seeded version up to date, but keeps what a user wrote', async () => {
    const client = createEtcdClient(etcd.endpoints);
    const writer = new EtcdPolicyWriter(client);
    try {
      await writer.put(DEMO_PROJECT, 'package project.authz\nimport rego.v1\ndefault allow := false\n', {}, 'gatehouse-demo');
      expect(await seedDemoPolicies({ etcdEndpoints: etcd.endpoints, opaPath: OPA_PATH })).toEqual([DEMO_PROJECT]);
      const userRego = 'package project.authz\nimport rego.v1\ndefault allow := true\n';
      await writer.put(DEMO_PROJECT, userRego, {}, 'ada');
      expect(await seedDemoPolicies({ etcdEndpoints: etcd.endpoints, opaPath: OPA_PATH })).toEqual([]);
      expect((await writer.store.get(DEMO_PROJECT))?.rego).toBe(userRego);
      // Put the seed back for the next test.
      await writer.put(DEMO_PROJECT, 'package project.authz\nimport rego.v1\ndefault allow := false\n', {}, 'gatehouse-demo');
      expect(await seedDemoPolicies({ etcdEndpoints: etcd.endpoints, opaPath: OPA_PATH })).toEqual([DEMO_PROJECT]);
    } finally {
      client.close();
    }
  });

  it('seeds policies that decide as documented', async () => {
    const client = createEtcdClient(etcd.endpoints);
    try {
      const store = new PolicyStore(client);
      const platform = (await store.get('platform', { withWasm: true }))!;
      const engine = await loadPolicyEngine(platform.wasm!, { data: platform.dataText });
      const decide = (input: unknown) => engine.evaluate(input, platform.meta.entrypoint) as Record<string, unknown>;
      expect(decide({ request: { path: '/x' }, user: null })).toMatchObject({ allow: false, status_code: 401 });
      expect(decide({ request: { path: '/x' }, user: { sub: 'ada' } })).toMatchObject({ allow: true });
      expect(decide({ request: { path: '/internal/x' }, user: { sub: 'ada' } })).toMatchObject({ allow: false });
      const demo = (await store.get(DEMO_PROJECT, { withWasm: true }))!;
      const demoEngine = await loadPolicyEngine(demo.wasm!, { data: demo.dataText });
      const demoDecision = (input: unknown) => demoEngine.evaluate(input, demo.meta.entrypoint);
      expect(demoDecision({ request: { path: '/rag/ask' }, user: { role: 'project_user' } })).toMatchObject({ allow: true });
      expect(demoDecision({ request: { path: '/rag/ask' }, user: { role: 'guest' } })).toMatchObject({ allow: false });
      expect(demoDecision({ request: { path: '/rag/ask' }, user: { role: 'admin' } })).toMatchObject({ allow: true });
      const llm = (model: string, maxTokens: number) =>
        demoDecision({ request: { path: '/llm/v1/chat/completions' }, user: { role: 'project_user' }, body: { model, max_tokens: maxTokens } });
      expect(llm('llama-3', 256)).toMatchObject({ allow: true });
      expect(llm('gpt-5', 256)).toMatchObject({ allow: false, reason: 'model not allowed for this project' });
      expect(llm('llama-3', 4096)).toMatchObject({ allow: false, reason: "max_tokens is above this project's limit" });
    } finally {
      client.close();
    }
  });

  it('demo tokens work against a CMS configured with the demo identity', async () => {
    const app = await buildCmsApp({ etcdEndpoints: etcd.endpoints, identity: identity.identityConfig, opaPath: OPA_PATH, logger: pino({ level: 'silent' }) });
    try {
      const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' });
      expect((await rawRequest(baseUrl, 'GET', '/policies/platform', { token: identity.tokens.platformAdmin })).status).toBe(200);
      expect((await rawRequest(baseUrl, 'GET', `/policies/${DEMO_PROJECT}`, { token: identity.tokens.projectUser })).status).toBe(200);
      expect((await rawRequest(baseUrl, 'GET', `/policies/${DEMO_PROJECT}`, { token: identity.tokens.otherProjectUser })).status).toBe(403);
      expect(demoCurlCommands(baseUrl, identity.tokens)).toContain(`${baseUrl}/policies/${DEMO_PROJECT}`);
    } finally {
      await app.close();
    }
  });
});
