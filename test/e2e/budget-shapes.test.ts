// Every request shape an LLM route accepts is priced the way the LLM bills
// it, or refused: through the real APISIX (apisix-conf/apisix.yaml's LLM
// route, and a copy of it whose llm-budget conf allows all four priced
// endpoints), with an LLM stub that bills as OpenAI's API documents: one
// completion per prompt of a `prompt` array, `best_of` candidates billed,
// one token per token id, embeddings' and responses' `input`. Each shape
// that once spent several times its budget in one call (20 prompts x 500,
// best_of 8, 2,500 token ids) is shown to be refused or reserved at least
// what it is billed, and a burst of mixed shapes ends with the LLM's bill
// within the budget.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parseDocument, type YAMLSeq } from 'yaml';
import type { Etcd3 } from 'etcd3';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startVault, type TestVault } from '../support/vault.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { runnerHasReadBudgets, spendTheRest } from '../support/budget-client.js';
import { repoRoot } from '../support/runner-process.js';
import { startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';
import { startLocalStack, standaloneRoutesText, type LocalStack } from '../../dev/local-stack/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { BudgetStore } from '../../budget/store.js';
import { ledgerKey, type Allocation } from '../../budget/keys.js';
import { windowBounds } from '../../budget/definition.js';
import { LLM_ENDPOINTS } from '../../budget/call.js';
import { freePort } from '../../dev/local-etcd/index.js';

// The budget decides alone: every call is allowed by policy.
const POLICY = `package project.authz
import rego.v1

default allow := true
`;
/** As in the report: a budget of 3,000 tokens. */
const BUDGET = 3_000;
/** The stub's canned answer: long enough that every completion runs to its limit. */
const ANSWER = Array.from({ length: 1_000 }, (_, i) => `w${i}`).join(' ');

let keys: TestKeys;
let vault: TestVault;
let etcd: TestEtcd;
let admin: Etcd3;
let llm: LlmStub;
let stack: LocalStack;
let metricsPort: number;
const tokens: Record<string, string> = {};

interface CallResult {
  status: number;
  text: string;
  headers: Headers;
}

async function post(path: string, project: string, body: unknown, method = 'POST'): Promise<CallResult> {
  const res = await fetch(`${stack.gateway.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${tokens[project]}`, 'content-type': 'application/json' },
    ...(method === 'GET' ? {} : { body: JSON.stringify(body) }),
  });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

/** The route whose llm-budget allows every priced endpoint. */
const all = (endpoint: string) => `/llm-all${endpoint}`;

function problem(result: CallResult, status: number): Record<string, unknown> {
  expect(result.status, result.text).toBe(status);
  expect(result.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  return JSON.parse(result.text) as Record<string, unknown>;
}

/** What the stub billed for one project's calls (each project calls its own model name). */
function billed(project: string): number {
  return llm.usage.filter((u) => u.model === `m-${project}`).reduce((n, u) => n + u.totalTokens, 0);
}

async function allocation(project: string): Promise<Allocation | null> {
  const text = await admin.get(ledgerKey(project, '*', 'day', windowBounds('day', Date.now()).start)).string();
  return text ? (JSON.parse(text) as Allocation) : null;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every call settled: the ledger charged exactly what the LLM billed, and holds nothing for calls in flight. */
async function settled(project: string): Promise<void> {
  await until(`${project}'s calls to be settled`, async () => {
    const record = await allocation(project);
    return record !== null && record.consumed === billed(project);
  });
}

/** apisix.yaml, plus a copy of its LLM route at /llm-all whose llm-budget serves every priced endpoint. */
function routesTemplate(dir: string): string {
  const doc = parseDocument(readFileSync(join(repoRoot, 'apisix-conf', 'apisix.yaml'), 'utf8'));
  const routes = (doc.toJS() as { routes: Record<string, unknown>[] }).routes;
  const route = structuredClone(routes.find((r) => r.id === 'llm')) as {
    id: string;
    uris: string[];
    plugins: Record<string, { conf: { name: string; value: string }[] }>;
  };
  route.id = 'llm-all';
  route.uris = ['/llm-all', '/llm-all/*'];
  for (const entry of route.plugins['ext-plugin-pre-req']!.conf) {
    if (entry.name === 'llm-budget') entry.value = JSON.stringify({ ...JSON.parse(entry.value), path_prefix: '/llm-all', endpoints: [...LLM_ENDPOINTS] });
    if (entry.name === 'path-rewrite') entry.value = JSON.stringify({ strip_prefix: '/llm-all' });
  }
  (doc.get('routes') as YAMLSeq).add(doc.createNode(route));
  const path = join(dir, 'routes-template.yaml');
  writeFileSync(path, standaloneRoutesText(doc));
  return path;
}

beforeAll(async () => {
  keys = await createTestKeys();
  vault = await startVault();
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  const projects = ['sh-prompts', 'sh-bestof', 'sh-ids', 'sh-mix', 'sh-misc'];
  for (const project of projects) await vault.kvPut('secret', `llm/${project}`, { api_key: `sk-${project}` });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }', { tokenTtl: '60s' });
  llm = await startLlmStub({ answer: ANSWER });
  const workDir = mkdtempSync(join(tmpdir(), 'gh-budget-shapes-'));
  metricsPort = await freePort();
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdEndpoints: etcd.endpoints,
    upstreams: { llm: llm.url, rag: llm.url },
    routesTemplate: routesTemplate(workDir),
    workDir,
    opaPath,
    ports: { runnerMetrics: metricsPort },
    runnerEnv: { VAULT_ADDR: vault.addr, VAULT_ROLE_ID: approle.roleId, VAULT_SECRET_ID: approle.secretId, RUNNER_WORKERS: '1', GATEWAY_ID: 'gateway-shapes' },
    logger: pino({ level: 'silent' }),
  });
  const writer = new EtcdPolicyWriter(admin);
  const budgets = new BudgetStore(admin);
  for (const project of projects) {
    await writer.put(project, POLICY);
    const budget =
      project === 'sh-misc'
        ? { windows: [{ per: 'day' as const, tokens: 1_000_000 }], default_max_tokens: 20 }
        : { windows: [{ per: 'day' as const, tokens: BUDGET }] };
    await budgets.put(project, budget, 'test');
    tokens[project] = await keys.token({ sub: `rag-${project}`, role: 'rag-service', project });
  }
  await until('the runner to have read the policies and the budgets', () => runnerHasReadBudgets(metricsPort), 30_000);
  const hello = { model: 'm-sh-misc', max_tokens: 5, messages: [{ role: 'user', content: 'hello' }] };
  await until('the gateway to allow a call', async () => (await post('/llm/v1/chat/completions', 'sh-misc', hello)).status === 200, 30_000);
}, 240_000);

afterAll(async () => {
  await stack?.stop().catch(() => undefined);
  await llm?.close();
  admin?.close();
  await etcd?.stop();
  await vault?.stop();
  await keys?.cleanup();
});

describe('LLM request shapes through APISIX', () => {
  it('the production LLM route serves chat completions only: another endpoint is 404, another method 405, and nothing reaches the LLM', async () => {
    const before = llm.requests.length;
    const body = { model: 'm-sh-misc', max_tokens: 5, prompt: 'hello', input: 'hello', messages: [{ role: 'user', content: 'hello' }] };
    // llm-budget sees the path before path-rewrite takes /llm off: its conf's path_prefix is /llm.
    for (const path of [
      '/llm/v1/completions',
      '/llm/v1/embeddings',
      '/llm/v1/responses',
      '/llm/v1/models',
      '/llm',
      '/llm/v1/chat/completions/',
      '/llm/x/v1/chat/completions',
    ]) {
      const refused = problem(await post(path, 'sh-misc', body), 404);
      expect(refused.path).toBe(path);
      expect(refused.endpoints).toEqual(['/llm/v1/chat/completions']);
    }
    const get = await post('/llm/v1/chat/completions', 'sh-misc', null, 'GET');
    problem(get, 405);
    expect(get.headers.get('allow')).toBe('POST');
    expect(llm.requests.length).toBe(before);
    // The one endpoint it serves reaches the LLM at the upstream's path.
    expect((await post('/llm/v1/chat/completions', 'sh-misc', body)).status).toBe(200);
    expect(llm.requests.slice(before).map((r) => r.url)).toEqual(['/v1/chat/completions']);
  });

  it('20 prompts x 500 max_tokens in one completion call (billed 10,020 when it was admitted) is priced as 20 completions: too large for a 3,000 budget', async () => {
    const prompt = Array.from({ length: 20 }, (_, i) => `prompt ${i}`);
    const refused = problem(await post(all('/v1/completions'), 'sh-prompts', { model: 'm-sh-prompts', prompt, max_tokens: 500 }), 400);
    expect(refused.cost).toBeGreaterThanOrEqual(10_020);
    expect(refused.budget).toMatchObject({ tokens: BUDGET });
    expect(billed('sh-prompts')).toBe(0);
    // Prompt arrays that fit are admitted, and the window is spent to its end, not past it.
    await spendTheRest(() => post(all('/v1/completions'), 'sh-prompts', { model: 'm-sh-prompts', prompt: ['one two', 'three'], max_tokens: 150 }));
    expect(llm.usage.filter((u) => u.model === 'm-sh-prompts').every((u) => u.completionTokens === 2 * 150)).toBe(true);
    expect(billed('sh-prompts')).toBeGreaterThan(BUDGET / 2);
    expect(billed('sh-prompts')).toBeLessThanOrEqual(BUDGET);
    await settled('sh-prompts');
  }, 60_000);

  it('best_of 8 (billed 4,001 when it was admitted) is priced as 8 completions: too large for a 3,000 budget', async () => {
    const refused = problem(await post(all('/v1/completions'), 'sh-bestof', { model: 'm-sh-bestof', prompt: 'hi', max_tokens: 500, best_of: 8 }), 400);
    expect(refused.cost).toBeGreaterThanOrEqual(4_001);
    expect(billed('sh-bestof')).toBe(0);
    // A burst of best_of calls that each fit: the LLM bills each candidate, and the window still holds.
    const burst = await Promise.all(
      Array.from({ length: 12 }, () => post(all('/v1/completions'), 'sh-bestof', { model: 'm-sh-bestof', prompt: 'hi', max_tokens: 100, n: 2, best_of: 4 })),
    );
    expect(burst.filter((r) => r.status !== 200 && r.status !== 429).map((r) => r.text)).toEqual([]);
    expect(burst.filter((r) => r.status === 429).length).toBeGreaterThan(0);
    expect(llm.usage.filter((u) => u.model === 'm-sh-bestof').every((u) => u.completionTokens === 4 * 100)).toBe(true);
    expect(billed('sh-bestof')).toBeLessThanOrEqual(BUDGET);
    await settled('sh-bestof');
  }, 60_000);

  it('token-id prompts (2,500 ids counted as 0 bytes, billed 2,510 each) are one token an id: three at once, one admitted', async () => {
    const ids = Array.from({ length: 2_500 }, (_, i) => 1_000 + i);
    const results = await Promise.all(
      Array.from({ length: 3 }, () => post(all('/v1/completions'), 'sh-ids', { model: 'm-sh-ids', prompt: ids, max_tokens: 10 })),
    );
    expect(results.map((r) => r.status).sort()).toEqual([200, 429, 429]);
    expect(JSON.parse(results.find((r) => r.status === 429)!.text).cost).toBeGreaterThanOrEqual(2_510);
    expect(billed('sh-ids')).toBe(2_510);
    // Arrays of token-id arrays are several prompts, each billed its completion.
    await spendTheRest(() => post(all('/v1/completions'), 'sh-ids', { model: 'm-sh-ids', prompt: [ids.slice(0, 30), ids.slice(0, 20)], max_tokens: 10 }));
    expect(billed('sh-ids')).toBeGreaterThan(2_510);
    expect(billed('sh-ids')).toBeLessThanOrEqual(BUDGET);
    await settled('sh-ids');
  }, 60_000);

  it('a burst of mixed shapes on every priced endpoint ends with the LLM having billed no more than the budget', async () => {
    const ids = (n: number, from = 7) => Array.from({ length: n }, (_, i) => from + i);
    const model = 'm-sh-mix';
    const shapes: [string, unknown][] = [
      ['/v1/chat/completions', { model, max_tokens: 60, n: 3, messages: [{ role: 'user', content: 'three answers please' }] }],
      ['/v1/completions', { model, prompt: ['a b', 'c d', 'e'], max_tokens: 50, best_of: 2 }],
      ['/v1/completions', { model, prompt: ids(300), max_tokens: 20, suffix: 'and so on' }],
      ['/v1/completions', { model, prompt: [ids(50), ids(60)], max_tokens: 30, n: 2 }],
      ['/v1/embeddings', { model, input: ['one document', 'another document', 'a third', 'four', 'five'] }],
      ['/v1/embeddings', { model, input: [ids(200), ids(100)] }],
      [
        '/v1/responses',
        {
          model,
          instructions: 'Be brief.',
          input: [{ role: 'user', content: [{ type: 'input_text', text: 'summarise the documents' }] }],
          max_output_tokens: 80,
        },
      ],
      ['/v1/responses', { model, input: 'a plain question', max_output_tokens: 40 }],
    ];
    const shape = (i: number) => post(all(shapes[i % shapes.length]![0]), 'sh-mix', shapes[i % shapes.length]![1]);
    // One call of each endpoint first, one at a time, so each is admitted and billed whatever order
    // the burst's calls arrive in (a burst can spend the budget before an endpoint's first call).
    for (const i of [0, 1, 4, 6]) {
      const first = await shape(i);
      expect(first.status, first.text).toBe(200);
    }
    const burst = await Promise.all(Array.from({ length: 32 }, (_, i) => shape(i)));
    expect(burst.filter((r) => r.status !== 200 && r.status !== 429).map((r) => `${r.status} ${r.text}`)).toEqual([]);
    expect(burst.filter((r) => r.status === 429).length).toBeGreaterThan(0);
    await spendTheRest((i) => shape(i + 1));
    const used = llm.usage.filter((u) => u.model === model);
    // Every endpoint was called and billed...
    for (const kind of ['chatcmpl-', 'cmpl-', 'embd-', 'resp-']) expect(used.some((u) => u.id.startsWith(kind))).toBe(true);
    // ...and the LLM's bill stays within the budget (bound: 0 tokens over), settled exactly.
    expect(billed('sh-mix')).toBeLessThanOrEqual(BUDGET);
    expect(billed('sh-mix')).toBeGreaterThan(BUDGET / 2);
    await settled('sh-mix');
  }, 90_000);

  it('what the gateway cannot price is refused with 400 naming the member, before the LLM', async () => {
    const before = llm.requests.length;
    const model = 'm-sh-misc';
    const cases: [string, unknown, string][] = [
      [
        '/v1/chat/completions',
        {
          model,
          max_tokens: 5,
          messages: [
            {
              role: 'user',
              content: [
                { type: 'text', text: 'hear this' },
                { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
              ],
            },
          ],
        },
        '/messages/0/content/1/type',
      ],
      [
        '/v1/chat/completions',
        { model, max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'file', file: { file_id: 'file-1' } }] }] },
        '/messages/0/content/0/type',
      ],
      ['/v1/chat/completions', { model, max_tokens: 5, audio: { voice: 'alloy', format: 'wav' }, messages: [] }, '/audio'],
      ['/v1/completions', { model, max_tokens: 5, prompt: ['text', 42] }, '/prompt/1'],
      [
        '/v1/completions',
        {
          model,
          max_tokens: 5,
          prompt: [
            [1, 2],
            [3, -4],
          ],
        },
        '/prompt/1/1',
      ],
      ['/v1/embeddings', { model }, '/input'],
      ['/v1/responses', { model, input: 'go on', previous_response_id: 'resp_123' }, '/previous_response_id'],
      ['/v1/responses', { model, input: 'search', tools: [{ type: 'web_search' }] }, '/tools/0/type'],
      ['/v1/responses', { model, input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file-1' }] }] }, '/input/0/content/0/type'],
    ];
    for (const [endpoint, body, pointer] of cases) {
      const refused = problem(await post(all(endpoint), 'sh-misc', body), 400);
      expect(refused.errors, `${endpoint} ${JSON.stringify(body)}`).toEqual([{ pointer, message: refused.detail }]);
    }
    expect(llm.requests.length).toBe(before);
  });

  it("a call without a completion limit is sent the budget's default in its endpoint's own field; an embedding needs none", async () => {
    const before = llm.requests.length;
    const model = 'm-sh-misc';
    expect((await post(all('/v1/completions'), 'sh-misc', { model, prompt: ['a', 'b'] })).status).toBe(200);
    expect((await post(all('/v1/responses'), 'sh-misc', { model, input: 'hello' })).status).toBe(200);
    expect((await post(all('/v1/embeddings'), 'sh-misc', { model, input: 'hello' })).status).toBe(200);
    expect((await post(all('/v1/chat/completions'), 'sh-misc', { model, n: 2, messages: [{ role: 'user', content: 'hi' }] })).status).toBe(200);
    const sent = llm.requests.slice(before).map((r) => ({ url: r.url, body: JSON.parse(r.body) as Record<string, unknown> }));
    expect(sent.map((r) => r.url)).toEqual(['/v1/completions', '/v1/responses', '/v1/embeddings', '/v1/chat/completions']);
    expect(sent[0]!.body.max_tokens).toBe(20);
    expect(sent[1]!.body).toMatchObject({ max_output_tokens: 20 });
    expect(sent[1]!.body).not.toHaveProperty('max_tokens');
    expect(sent[2]!.body).not.toHaveProperty('max_tokens');
    expect(sent[3]!.body.max_tokens).toBe(20);
    // Billed as the stub bills: two prompts x 20, 20 output tokens, no completion, two choices x 20.
    expect(llm.usage.slice(-4).map((u) => u.completionTokens)).toEqual([40, 20, 0, 40]);
  });
});
