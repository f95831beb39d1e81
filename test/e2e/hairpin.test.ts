// The RAG -> LLM hairpin end to end: APISIX and the real runner
// (jwt -> opa with the JSON body -> vault -> path-rewrite), a real Vault
// (AppRole, KV v2), a real etcd and compiled policies, and an LLM stub that
// records what reached it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startVault, type TestVault } from '../support/vault.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { BudgetStore } from '../../budget/store.js';

// The seed's example policy, extended for the LLM route with a model
// allow-list and a max_tokens limit read from the JSON body.
const PROJECT_POLICY = `package project.authz
import rego.v1

default allow := false

llm_call if startswith(input.request.path, "/llm/")

allow if {
	not llm_call
	input.user.role == "admin"
}

allow if {
	llm_call
	input.user.role in data.llm_roles
	input.body.model in data.models
	input.body.max_tokens <= data.max_tokens
}

reason := "model not allowed for this project" if {
	llm_call
	not input.body.model in data.models
}
`;
const PROJECT_DATA = { llm_roles: ['admin', 'rag-service'], models: ['gpt-4o-mini', 'llama-3'], max_tokens: 2048 };
const KEYS = { 'team-a': 'sk-team-a-0001', 'team-b': 'sk-team-b-0001' };
const SECRET_TTL_SECONDS = 1;
const MAX_STALENESS_SECONDS = 3;

let keys: TestKeys;
let vault: TestVault;
let llm: LlmStub;
let stack: LocalStack;
let metricsPort: number;
const logLines: string[] = [];
const tokens = { ragA: '', ragB: '', viewerA: '' };

const chat = (model: string, maxTokens = 256) => JSON.stringify({ model, max_tokens: maxTokens, messages: [{ role: 'user', content: 'hello' }] });

async function callLlm(token: string | null, body: string, extraHeaders: Record<string, string> = {}) {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...extraHeaders };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${stack.gateway.url}/llm/v1/chat/completions`, { method: 'POST', headers, body });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

beforeAll(async () => {
  keys = await createTestKeys();
  vault = await startVault();
  for (const [project, key] of Object.entries(KEYS)) await vault.kvPut('secret', `llm/${project}`, { api_key: key });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }', { tokenTtl: '60s' });
  llm = await startLlmStub();
  metricsPort = await freePort();
  const capture = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(chunk.toString());
      done();
    },
  });
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdDataRoot: 'test-etcd',
    upstreams: { llm: llm.url, rag: llm.url },
    workDir: mkdtempSync(join(tmpdir(), 'gh-hairpin-')),
    opaPath,
    ports: { runnerMetrics: metricsPort },
    runnerEnv: {
      LOG_LEVEL: 'debug',
      VAULT_ADDR: vault.addr,
      VAULT_ROLE_ID: approle.roleId,
      VAULT_SECRET_ID: approle.secretId,
      VAULT_SECRET_TTL_SECONDS: String(SECRET_TTL_SECONDS),
      VAULT_MAX_STALENESS_SECONDS: String(MAX_STALENESS_SECONDS),
    },
    logger: pino({ level: 'debug' }, capture),
  });
  const etcd = createEtcdClient(stack.etcdEndpoints);
  const writer = new EtcdPolicyWriter(etcd);
  await writer.put('team-a', PROJECT_POLICY, PROJECT_DATA);
  await writer.put('team-b', PROJECT_POLICY, PROJECT_DATA);
  // The LLM route holds every call to its project's token budget (test/e2e/budgets.test.ts): a generous one here.
  const budgets = new BudgetStore(etcd);
  for (const project of ['team-a', 'team-b']) await budgets.put(project, { windows: [{ per: 'day', tokens: 10_000_000 }] }, 'test');
  etcd.close();
  tokens.ragA = await keys.token({ sub: 'rag-a', role: 'rag-service', project: 'team-a' });
  tokens.ragB = await keys.token({ sub: 'rag-b', role: 'rag-service', project: 'team-b' });
  tokens.viewerA = await keys.token({ sub: 'v', role: 'viewer', project: 'team-a' });
  // Wait until the runner has the policies.
  const deadline = Date.now() + 15_000;
  while ((await callLlm(tokens.ragA, chat('llama-3'))).status !== 200) {
    if (Date.now() > deadline) throw new Error('the LLM route never allowed the first request');
    await new Promise((r) => setTimeout(r, 50));
  }
}, 180_000);

afterAll(async () => {
  await stack?.stop();
  await llm?.close();
  await vault?.stop();
  await keys?.cleanup();
});

describe('RAG -> gateway -> LLM', () => {
  it("an allowed request reaches the LLM with the project's Vault-held key, never the client's credentials", async () => {
    llm.requests.length = 0;
    const res = await callLlm(tokens.ragA, chat('gpt-4o-mini'), { 'api-key': 'client-own-key', 'x-api-key': 'another', 'x-gatehouse-role': 'platform_admin' });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).choices[0].message.content).toMatch(/stub/);
    expect(llm.requests).toHaveLength(1);
    const seen = llm.requests[0]!;
    expect(seen.url).toBe('/v1/chat/completions');
    expect(seen.headers.authorization).toBe(`Bearer ${KEYS['team-a']}`);
    expect(seen.headers['api-key']).toBeUndefined();
    expect(seen.headers['x-api-key']).toBeUndefined();
    expect(Object.keys(seen.headers).filter((h) => h.startsWith('x-gatehouse-'))).toEqual([]);
    expect(JSON.parse(seen.body).model).toBe('gpt-4o-mini');
  });

  it('a disallowed model, or too many tokens, gets 403 and never reaches the LLM', async () => {
    llm.requests.length = 0;
    const wrongModel = await callLlm(tokens.ragA, chat('gpt-5-enormous'));
    expect(wrongModel.status).toBe(403);
    expect(JSON.parse(wrongModel.text).detail).toBe('model not allowed for this project');
    expect((await callLlm(tokens.ragA, chat('llama-3', 100_000))).status).toBe(403);
    expect((await callLlm(tokens.viewerA, chat('llama-3'))).status).toBe(403);
    expect(llm.requests).toHaveLength(0);
  });

  it('a missing or forged token gets 401 and never reaches the LLM', async () => {
    llm.requests.length = 0;
    expect((await callLlm(null, chat('llama-3'))).status).toBe(401);
    const forged = await keys.badSignatureToken({ sub: 'x', role: 'rag-service', project: 'team-a' });
    const res = await callLlm(forged, chat('llama-3'));
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/invalid_token/);
    expect(llm.requests).toHaveLength(0);
  });

  it("a project's key is never used for another project", async () => {
    llm.requests.length = 0;
    expect((await callLlm(tokens.ragB, chat('llama-3'))).status).toBe(200);
    expect((await callLlm(tokens.ragA, chat('llama-3'))).status).toBe(200);
    expect(llm.requests.map((r) => r.headers.authorization)).toEqual([`Bearer ${KEYS['team-b']}`, `Bearer ${KEYS['team-a']}`]);
  });

  it('a rotated secret is picked up within the TTL', async () => {
    const rotated = 'sk-team-a-0002';
    await vault.kvPut('secret', 'llm/team-a', { api_key: rotated });
    const rotatedAt = Date.now();
    let seenKey = '';
    while (Date.now() - rotatedAt < (SECRET_TTL_SECONDS + 2) * 1000) {
      llm.requests.length = 0;
      expect((await callLlm(tokens.ragA, chat('llama-3'))).status).toBe(200);
      seenKey = llm.requests[0]!.headers.authorization ?? '';
      if (seenKey === `Bearer ${rotated}`) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(seenKey).toBe(`Bearer ${rotated}`);
    KEYS['team-a'] = rotated;
  });

  it('Vault stopped: the cached key is served until the maximum staleness, then 503', async () => {
    // Let the cached entry expire so the next request fetches it afresh: the
    // stale window below then starts now, not up to one TTL ago.
    await new Promise((r) => setTimeout(r, SECRET_TTL_SECONDS * 1000 + 100));
    expect((await callLlm(tokens.ragA, chat('llama-3'))).status).toBe(200);
    await vault.stop();
    const stoppedAt = Date.now();
    llm.requests.length = 0;
    // Within TTL + max staleness (4 s) the cached key keeps working...
    while (Date.now() - stoppedAt < (SECRET_TTL_SECONDS + MAX_STALENESS_SECONDS - 1.5) * 1000) {
      expect((await callLlm(tokens.ragA, chat('llama-3'))).status).toBe(200);
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(llm.requests.every((r) => r.headers.authorization === `Bearer ${KEYS['team-a']}`)).toBe(true);
    // ...and past it the gateway refuses rather than sending no key.
    let status = 0;
    const deadline = stoppedAt + (SECRET_TTL_SECONDS + MAX_STALENESS_SECONDS + 5) * 1000;
    while (Date.now() < deadline) {
      const res = await callLlm(tokens.ragA, chat('llama-3'));
      status = res.status;
      if (status === 503) {
        expect(JSON.parse(res.text)).toMatchObject({ status: 503, detail: 'the upstream credential is unavailable' });
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(status).toBe(503);
  });

  it('no log line and no metric contains a secret', async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toMatch(/gatehouse_vault_secret_lookups_total\{outcome="stale"\}/);
    const everything = [...logLines, stack.gateway.runnerOutput(), metrics].join('\n');
    expect(everything.length).toBeGreaterThan(1000); // the runner logged at debug level
    for (const secret of ['sk-team-a-0001', 'sk-team-a-0002', 'sk-team-b-0001', 'client-own-key']) {
      expect(everything).not.toContain(secret);
    }
    expect(everything).not.toContain(vault.rootToken);
  });
});
