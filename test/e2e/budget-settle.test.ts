// Settling LLM calls to their actual usage through the gateway (real APISIX
// under test, its http-logger posting every answer back to the runner): calls
// their client abandoned, calls the upstream refused, and answers far larger
// than any one post could be held to, batched with small calls of other
// projects, and usage an LLM reports that cannot be believed. The LLM stub
// answers one long word (1,200 characters) a token, so a few tens of
// thousands of tokens make an answer of tens of megabytes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startVault, type TestVault } from '../support/vault.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startLlmStub, type LlmStub, type LlmStubUsage } from '../../dev/llm-stub/index.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { BudgetStore } from '../../budget/store.js';
import { readUsage } from '../../budget/usage.js';
import { ledgerKey, type Allocation } from '../../budget/keys.js';
import { windowBounds, type Budget } from '../../budget/definition.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { runnerHasReadBudgets } from '../support/budget-client.js';

const POLICY = `package project.authz
import rego.v1

default allow := false

allow if input.budget != null
`;

/** Words of the stub's answer: 40,000 of 1,200 characters each (one token each). */
const WORD_CHARS = 1_200;
const ANSWER_WORDS = 40_000;

let keys: TestKeys;
let vault: TestVault;
let etcd: TestEtcd;
let admin: Etcd3;
let llm: LlmStub;
let stack: LocalStack;
let metricsPort: number;
const tokens: Record<string, string> = {};
const PROJECTS = ['abandon', 'large', 'small', 'liar'] as const;

function body(project: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: `m-${project}`, max_tokens: 20, messages: [{ role: 'user', content: 'hello there' }], ...extra });
}

function post(project: string, text: string, signal?: AbortSignal): Promise<Response> {
  return fetch(`${stack.gateway.url}/llm/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${tokens[project]}`, 'content-type': 'application/json' },
    body: text,
    ...(signal ? { signal } : {}),
  });
}

async function allocation(project: string): Promise<Allocation | null> {
  const text = await admin.get(ledgerKey(project, '*', 'day', windowBounds('day', Date.now()).start)).string();
  return text ? (JSON.parse(text) as Allocation) : null;
}

/** The ledger once every call of the project was settled and its blocks given back. */
async function settled(project: string, timeoutMs = 30_000): Promise<Allocation> {
  let record: Allocation | null = null;
  await until(
    `${project}'s calls to be settled and its blocks given back`,
    async () => {
      record = await allocation(project);
      return record !== null && Object.keys(record.held).length === 0;
    },
    timeoutMs,
  );
  return record!;
}

/** What the LLM stub billed for calls of one project (each project calls its own model name). */
function billed(project: string): LlmStubUsage[] {
  return llm.usage.filter((u) => u.model === `m-${project}`);
}

const total = (usage: LlmStubUsage[]) => usage.reduce((n, u) => n + u.totalTokens, 0);

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  keys = await createTestKeys();
  vault = await startVault();
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  for (const project of PROJECTS) await vault.kvPut('secret', `llm/${project}`, { api_key: `sk-${project}` });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }', { tokenTtl: '60s' });
  llm = await startLlmStub({ answer: Array.from({ length: ANSWER_WORDS }, (_, i) => `${i}`.padEnd(WORD_CHARS, 'x')).join(' ') });
  metricsPort = await freePort();
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdEndpoints: etcd.endpoints,
    upstreams: { llm: llm.url, rag: llm.url },
    workDir: mkdtempSync(join(tmpdir(), 'gh-budget-settle-')),
    opaPath,
    ports: { runnerMetrics: metricsPort },
    runnerEnv: { VAULT_ADDR: vault.addr, VAULT_ROLE_ID: approle.roleId, VAULT_SECRET_ID: approle.secretId, GATEWAY_ID: 'settle-gateway' },
    logger: pino({ level: 'silent' }),
  });
  const writer = new EtcdPolicyWriter(admin);
  const budgets = new BudgetStore(admin);
  const budget: Budget = { windows: [{ per: 'day', tokens: 1_000_000 }] };
  for (const project of PROJECTS) {
    await writer.put(project, POLICY, {});
    await budgets.put(project, budget, 'test');
    tokens[project] = await keys.token({ sub: `rag-${project}`, role: 'rag-service', project });
  }
  await until('the runner to have read the policies and the budgets', () => runnerHasReadBudgets(metricsPort), 30_000);
  // One call the gateway lets through (policies, budgets, Vault all in place), then nothing of it is left in flight.
  await until(
    'the gateway to allow a call',
    async () => {
      const r = await post('small', body('small', { max_tokens: 1 }));
      await r.text();
      return r.status === 200;
    },
    30_000,
  );
  await settled('small');
}, 240_000);

afterAll(async () => {
  await stack?.stop().catch(() => undefined);
  await llm?.close();
  admin?.close();
  await etcd?.stop();
  await vault?.stop();
  await keys?.cleanup();
});

describe('settling LLM calls through the gateway', () => {
  it('a call whose client left, before the answer or in the middle of it, is charged at least what the LLM billed; one the LLM refused, nothing', async () => {
    // Before the answer: the LLM runs the call and bills it, the client is gone after 300 ms.
    const before = [body('abandon', { stub_answer_delay_ms: 1_500 }), body('abandon', { stream: true, stub_answer_delay_ms: 1_500 })];
    const results = await Promise.allSettled(before.map((text) => post('abandon', text, AbortSignal.timeout(300)).then((r) => r.text())));
    expect(results.map((r) => (r.status === 'fulfilled' ? r.value.slice(0, 300) : 'left'))).toEqual(['left', 'left']);
    // In the middle of a stream: a few chunks read, then the connection closed.
    const midway = new AbortController();
    const res = await post('abandon', body('abandon', { stream: true, stub_chunk_delay_ms: 100 }), midway.signal);
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    for (let got = 0; got < 3 * WORD_CHARS;) got += (await reader.read()).value?.length ?? 0;
    midway.abort();
    // The LLM took all three and billed them; none was answered whole.
    await until('the LLM to have seen each client leave', async () => billed('abandon').length === 3 && billed('abandon').every((u) => u.aborted));
    // Refused by the LLM itself (stream_options without stream): nothing ran.
    const refused = await post('abandon', body('abandon', { stream_options: { include_usage: true } }));
    expect(refused.status).toBe(400);
    await refused.text();
    const record = await settled('abandon');
    expect(record.consumed).toBeGreaterThanOrEqual(total(billed('abandon')));
    // Each abandoned call is charged its reservation (at most 20 completion tokens and a small prompt bound), the refused one nothing.
    expect(record.consumed).toBeLessThanOrEqual(3 * 100);
    await until('usage to be written', async () => (await readUsage(admin, 'abandon', Date.now() - 3_600_000, Date.now() + 1)).total.requests === 4);
    expect((await readUsage(admin, 'abandon', Date.now() - 3_600_000, Date.now() + 1)).total).toMatchObject({
      requests: 4,
      charged_tokens: record.consumed,
      unsettled: 3,
    });
  }, 60_000);

  it('answers of tens of megabytes (past any cap on one post) and small calls of another project posted with them are each settled to what the LLM reported', async () => {
    // A stream and a whole answer of 34,000 tokens (over 40 MB each), then small calls right after them: one http-logger batch.
    const large = [body('large', { max_tokens: 34_000, stream: true }), body('large', { max_tokens: 34_000 })];
    const answers = await Promise.all(
      large.map(async (text) => {
        const r = await post('large', text);
        return { status: r.status, length: (await r.arrayBuffer()).byteLength };
      }),
    );
    const small = await Promise.all(
      [1, 2, 3].map(async (n) => {
        const r = await post('small', body('small', { max_tokens: n }));
        return { status: r.status, text: await r.text() };
      }),
    );
    expect(answers.map((a) => a.status)).toEqual([200, 200]);
    expect(answers.every((a) => a.length > 32 * 1024 * 1024)).toBe(true);
    expect(small.map((s) => s.status)).toEqual([200, 200, 200]);
    expect(billed('large').map((u) => u.completionTokens)).toEqual([34_000, 34_000]);
    // Settled to exactly what the LLM reported: none kept its reservation.
    await until('the large calls to be settled', async () => (await allocation('large'))?.consumed === total(billed('large')), 60_000);
    await until('the small calls to be settled', async () => (await allocation('small'))?.consumed === total(billed('small')), 30_000);
    const usage = await readUsage(admin, 'small', Date.now() - 3_600_000, Date.now() + 1);
    await until('usage to be written', async () => (await readUsage(admin, 'large', Date.now() - 3_600_000, Date.now() + 1)).total.requests === 2);
    expect((await readUsage(admin, 'large', Date.now() - 3_600_000, Date.now() + 1)).total).toMatchObject({
      requests: 2,
      completion_tokens: 68_000,
      unsettled: 0,
    });
    expect(usage.total.unsettled).toBe(0);
  }, 180_000);

  it('usage the LLM reports that cannot be believed (1e400, two counts past Number.MAX_VALUE, negative, above the window) leaves the ledger whole: each call charged its reservation, counted', async () => {
    const lies: [string, 'invalid' | 'implausible'][] = [
      ['{"prompt_tokens": 1e400, "completion_tokens": 1}', 'invalid'],
      [`{"prompt_tokens": ${Number.MAX_VALUE}, "completion_tokens": ${Number.MAX_VALUE}}`, 'invalid'],
      ['{"prompt_tokens": -5000, "completion_tokens": 1}', 'invalid'],
      ['{"prompt_tokens": 1e15, "completion_tokens": 0}', 'implausible'],
    ];
    for (const [usage] of lies) {
      const r = await post('liar', body('liar', { stub_usage: usage }));
      expect(r.status).toBe(200);
      expect(await r.text()).toContain(`"usage":${usage}`);
    }
    const record = await settled('liar');
    // A number, never null: each call kept its reservation (at least what the LLM billed, at most a small prompt bound and 20 completion tokens).
    expect(typeof record.consumed).toBe('number');
    expect(record.consumed).toBeGreaterThanOrEqual(total(billed('liar')));
    expect(record.consumed).toBeLessThanOrEqual(lies.length * 100);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    for (const reason of ['invalid', 'implausible']) {
      const count = lies.filter(([, why]) => why === reason).length;
      expect(metrics).toMatch(new RegExp(`^gatehouse_llm_usage_refused_total\\{[^}]*project="liar"[^}]*reason="${reason}"[^}]*\\} ${count}$`, 'm'));
    }
    await until('usage to be written', async () => (await readUsage(admin, 'liar', Date.now() - 3_600_000, Date.now() + 1)).total.requests === lies.length);
    expect((await readUsage(admin, 'liar', Date.now() - 3_600_000, Date.now() + 1)).total).toMatchObject({
      requests: lies.length,
      charged_tokens: record.consumed,
      unsettled: lies.length,
    });
    // And the window goes on admitting, by what it holds.
    const next = await post('liar', body('liar'));
    expect(next.status).toBe(200);
    await next.text();
  }, 60_000);
});
