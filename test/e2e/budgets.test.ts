// LLM budgets end to end: two gateways (each APISIX with its own runner, one
// of them with two worker processes) in front of one LLM stub, sharing one
// etcd, a real Vault and compiled policies. Calls reserve their worst case
// from blocks each runner process leases in etcd; APISIX's http-logger posts
// each response back and the call is settled to what the LLM reported.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startVault, type TestVault } from '../support/vault.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { runnerHasReadBudgets, spendTheRest } from '../support/budget-client.js';
import { startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { BudgetStore } from '../../budget/store.js';
import { readUsage } from '../../budget/usage.js';
import { HOLDERS_PREFIX, ledgerKey, type Allocation } from '../../budget/keys.js';
import { windowBounds, type Budget } from '../../budget/definition.js';
import { freePort } from '../../dev/local-etcd/index.js';

const POLICY = `package project.authz
import rego.v1

default allow := false

# Calls see their budget; a project low on it is routed to the cheaper model.
allow if input.budget != null

# (for the project without a budget: the gateway refuses it all the same)
allow if data.allow_without_budget

# The package's document is the decision: {"allow": true, "model": "llama-3"}.
model := "llama-3" if input.budget.remaining_tokens < data.cheap_below
`;
const HOLDER_TTL_SECONDS = 2;

let keys: TestKeys;
let vault: TestVault;
let etcd: TestEtcd;
let admin: Etcd3;
let llm: LlmStub;
const stacks: LocalStack[] = [];
const workDirs: string[] = [];
const metricsPorts: number[] = [];
const tokens: Record<string, string> = {};

interface CallResult {
  status: number;
  text: string;
  headers: Headers;
}

function chat(project: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: `m-${project}`, max_tokens: 40, messages: [{ role: 'user', content: 'hello there' }], ...extra });
}

async function call(gateway: number, project: string, body = chat(project)): Promise<CallResult> {
  const res = await fetch(`${stacks[gateway]!.gateway.url}/llm/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${tokens[project]}`, 'content-type': 'application/json' },
    body,
  });
  return { status: res.status, text: await res.text(), headers: res.headers };
}

async function allocation(project: string): Promise<Allocation | null> {
  const text = await admin.get(ledgerKey(project, '*', 'day', windowBounds('day', Date.now()).start)).string();
  return text ? (JSON.parse(text) as Allocation) : null;
}

/** What the LLM stub reported for calls of one project (each project calls its own model name). */
function reported(project: string) {
  return llm.usage.filter((u) => u.model === `m-${project}`);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The runner processes a stack started (found by their state directory). */
function runnerPids(workDir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const environ = readFileSync(`/proc/${entry}/environ`, 'utf8');
      if (cmdline.includes('runner/main.js') && environ.includes(`RUNNER_STATE_DIR=${join(workDir, 'runner-state')}`)) pids.push(Number(entry));
    } catch {
      // gone, or not ours
    }
  }
  return pids;
}

beforeAll(async () => {
  keys = await createTestKeys();
  vault = await startVault();
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  const projects = ['team-a', 'team-b', 'team-c', 'team-d'];
  for (const project of projects) await vault.kvPut('secret', `llm/${project}`, { api_key: `sk-${project}` });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }', { tokenTtl: '60s' });
  llm = await startLlmStub();
  for (const [i, workers] of [1, 2].entries()) {
    const workDir = mkdtempSync(join(tmpdir(), `gh-budgets-${i}-`));
    workDirs.push(workDir);
    metricsPorts.push(await freePort());
    stacks.push(
      await startLocalStack({
        identity: keys.identityConfig,
        etcdEndpoints: etcd.endpoints,
        upstreams: { llm: llm.url, rag: llm.url },
        workDir,
        opaPath,
        ports: { runnerMetrics: metricsPorts[i]! },
        runnerEnv: {
          VAULT_ADDR: vault.addr,
          VAULT_ROLE_ID: approle.roleId,
          VAULT_SECRET_ID: approle.secretId,
          RUNNER_WORKERS: String(workers),
          GATEWAY_ID: `gateway-${i}`,
          BUDGET_HOLDER_TTL_SECONDS: String(HOLDER_TTL_SECONDS),
        },
        logger: pino({ level: 'silent' }),
      }),
    );
  }
  const writer = new EtcdPolicyWriter(admin);
  const budgets = new BudgetStore(admin);
  const small: Budget = { windows: [{ per: 'day', tokens: 1_500 }], block_tokens: 150 };
  for (const project of projects) {
    // team-c's policy lets every call through, so that the budget alone judges its calls.
    await writer.put(project, POLICY, { cheap_below: project === 'team-d' ? 500 : 0, allow_without_budget: project === 'team-c' });
    await budgets.put(project, project === 'team-b' ? { windows: [{ per: 'day', tokens: 100_000 }], default_max_tokens: 30 } : small, 'test');
    tokens[project] = await keys.token({ sub: `rag-${project}`, role: 'rag-service', project });
  }
  tokens['no-budget'] = await keys.token({ sub: 'rag-x', role: 'rag-service', project: 'team-x' });
  await writer.put('team-x', POLICY, { cheap_below: 0, allow_without_budget: true });
  // Both gateways enforce the policies and know the budgets: every runner worker says so.
  for (const port of metricsPorts) {
    await until(`runner on ${port} to have read the policies and the budgets`, () => runnerHasReadBudgets(port), 30_000);
  }
  for (const gateway of [0, 1]) await until(`gateway ${gateway} to allow a call`, async () => (await call(gateway, 'team-b')).status === 200, 30_000);
}, 240_000);

afterAll(async () => {
  for (const stack of stacks) await stack.stop().catch(() => undefined);
  await llm?.close();
  admin?.close();
  await etcd?.stop();
  await vault?.stop();
  await keys?.cleanup();
});

describe('LLM budgets across gateways', () => {
  it('concurrent callers on both gateways are admitted up to the budget and not one token more, and usage matches the LLM', async () => {
    const results = await Promise.all(Array.from({ length: 40 }, (_, i) => call(i % 2, 'team-a')));
    const admitted = results.filter((r) => r.status === 200).length;
    const refused = results.filter((r) => r.status === 429);
    const unexpected = results.filter((r) => r.status !== 200 && r.status !== 429);
    expect(unexpected.map((r) => `${r.status} ${r.text}`)).toEqual([]);
    expect(admitted).toBeGreaterThan(0);
    expect(refused.length).toBeGreaterThan(0);
    const problem = JSON.parse(refused[0]!.text);
    expect(refused[0]!.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(Number(refused[0]!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(problem.budget).toMatchObject({ project: 'team-a', scope: '*', per: 'day', tokens: 1_500 });

    // Spend what is left, one call at a time, until the budget says it is spent.
    await spendTheRest((i) => call(i % 2, 'team-a'));
    const used = reported('team-a');
    const total = used.reduce((n, u) => n + u.totalTokens, 0);
    // Not one token more than the budget...
    expect(total).toBeLessThanOrEqual(1_500);
    // ...and settled to exactly what the LLM reported, in the ledger and in the usage records.
    await until(
      'every call to be settled',
      async () => (await allocation('team-a'))?.consumed === total && Object.keys((await allocation('team-a'))!.held).length === 0,
    );
    await until('usage to be written', async () => (await readUsage(admin, 'team-a', Date.now() - 3_600_000, Date.now() + 1)).total.requests === used.length);
    const usage = await readUsage(admin, 'team-a', Date.now() - 3_600_000, Date.now() + 1);
    expect(usage.total).toMatchObject({
      requests: used.length,
      prompt_tokens: used.reduce((n, u) => n + u.promptTokens, 0),
      completion_tokens: used.reduce((n, u) => n + u.completionTokens, 0),
      charged_tokens: total,
      unsettled: 0,
    });
    // ...up to the budget: what is left cannot pay for one more call's worst case (prompt bound 31 + max_tokens 40).
    expect(1_500 - total).toBeLessThan(71);
    // The runners' metrics count the same, summed over both gateways (and the second one's two workers).
    const counted = { charged: 0, prompt: 0, completion: 0, requests: 0 };
    for (const port of metricsPorts) {
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      for (const line of text.split('\n')) {
        const tokens = /^gatehouse_llm_tokens_total\{(.*)\} (\d+)$/.exec(line);
        if (tokens && tokens[1]!.includes('project="team-a"')) {
          const kind = /kind="(\w+)"/.exec(tokens[1]!)![1] as 'charged' | 'prompt' | 'completion';
          counted[kind] += Number(tokens[2]);
        }
        const requests = /^gatehouse_llm_requests_total\{(.*)\} (\d+)$/.exec(line);
        if (requests && requests[1]!.includes('project="team-a"')) counted.requests += Number(requests[2]);
      }
    }
    expect(counted).toEqual({ charged: total, prompt: usage.total.prompt_tokens, completion: usage.total.completion_tokens, requests: used.length });
  }, 120_000);

  it('a streamed completion through the gateway arrives incrementally and is charged what the LLM reported', async () => {
    const before = llm.usage.length;
    const res = await fetch(`${stacks[1]!.gateway.url}/llm/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens['team-b']}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm-team-b', stream: true, stub_chunk_delay_ms: 40, messages: [{ role: 'user', content: 'stream please' }] }),
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/event-stream/);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let firstAt: number | null = null;
    let reads = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      reads++;
      text += decoder.decode(value, { stream: true });
      if (firstAt === null && text.includes('data:')) firstAt = Date.now();
    }
    const stub = llm.usage[before]!;
    expect(stub.streamed).toBe(true);
    // The first token reached the client before the LLM wrote its last.
    expect(firstAt!).toBeLessThan(stub.lastChunkAt!);
    expect(reads).toBeGreaterThan(3);
    // The call had no max_tokens: the budget's default went upstream, and the gateway asked for the usage chunk.
    expect(stub.completionTokens).toBe(30);
    expect(stub.usageReported).toBe(true);
    expect(text).toContain('"usage":{"prompt_tokens"');
    // Charged what the LLM reported, for this call as for every other of the project (the warm-up calls too).
    const expected = () => reported('team-b').reduce((n, u) => n + u.totalTokens, 0);
    await until(
      'the streamed call to be charged',
      async () => (await readUsage(admin, 'team-b', Date.now() - 3_600_000, Date.now() + 1)).total.charged_tokens === expected(),
    );
    const usage = await readUsage(admin, 'team-b', Date.now() - 3_600_000, Date.now() + 1);
    expect(usage.total.requests).toBe(reported('team-b').length);
    expect(usage.total.unsettled).toBe(0);
  }, 60_000);

  it('a policy sees the remaining budget and routes a project low on it to another model', async () => {
    const models: string[] = [];
    for (let i = 0; i < 25; i++) {
      const before = llm.requests.length;
      const r = await call(i % 2, 'team-d');
      if (r.status === 429) break;
      expect(r.status).toBe(200);
      models.push(JSON.parse(llm.requests[before]!.body).model as string);
    }
    expect(models[0]).toBe('m-team-d');
    expect(models).toContain('llama-3');
    // Once routed, it stays routed: the remaining budget only shrinks.
    expect(models.slice(models.indexOf('llama-3')).every((m) => m === 'llama-3')).toBe(true);
  }, 60_000);

  it('refuses a project without a budget, a call without max_tokens when the budget has no default, and bad bodies', async () => {
    const none = await call(0, 'no-budget');
    expect(none.status).toBe(403);
    expect(JSON.parse(none.text).detail).toMatch(/no LLM budget/);
    const noMax = await call(0, 'team-c', JSON.stringify({ model: 'm-team-c', messages: [{ role: 'user', content: 'x' }] }));
    expect(noMax.status).toBe(400);
    expect(JSON.parse(noMax.text).detail).toMatch(/max_tokens/);
    const broken = await call(1, 'team-c', '{"model": 1');
    expect(broken.status).toBe(400);
    expect(JSON.parse(broken.text).detail).toMatch(/not JSON/);
    const wrongType = await call(1, 'team-c', JSON.stringify({ model: 'm-team-c', max_tokens: 'lots', messages: [] }));
    expect(wrongType.status).toBe(400);
    expect(JSON.parse(wrongType.text).detail).toMatch(/max_tokens/);
    const huge = await call(1, 'team-c', chat('team-c', { max_tokens: 5_000 }));
    expect(huge.status).toBe(400);
    expect(JSON.parse(huge.text).budget).toMatchObject({ per: 'day', tokens: 1_500 });
  });

  it("a killed gateway's block is held until its lease expires, then charged in full and the rest handed out", async () => {
    // Gateway 1 takes a block of 150 for team-c, then its runner is killed before it can give it back.
    expect((await call(1, 'team-c')).status).toBe(200);
    const pids = runnerPids(workDirs[1]!);
    expect(pids.length).toBeGreaterThan(0);
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    const held = await allocation('team-c');
    const deadHolders = Object.keys(held!.held);
    expect(deadHolders.length).toBeGreaterThan(0);
    const deadBlock = Object.values(held!.held).reduce((n, t) => n + t, 0);
    // Until the lease expires the block stays out of reach...
    expect((await admin.getAll().prefix(HOLDERS_PREFIX).keys()).some((k) => deadHolders.some((h) => k.endsWith(h)))).toBe(true);
    await until(
      'the dead holder lease to expire',
      async () => !(await admin.getAll().prefix(HOLDERS_PREFIX).keys()).some((k) => deadHolders.some((h) => k.endsWith(h))),
      30_000,
    );
    // ...then the other gateway reclaims it: charged in full, never handed out twice.
    const afterKill = reported('team-c').length;
    await spendTheRest(() => call(0, 'team-c'));
    await until('gateway 0 to settle and give back', async () => {
      const record = await allocation('team-c');
      return record !== null && Object.keys(record.held).length === 0;
    });
    const record = (await allocation('team-c'))!;
    expect(deadHolders.some((h) => h in record.held)).toBe(false);
    expect(record.consumed).toBeLessThanOrEqual(1_500);
    // The dead block charged whole (its one call's usage inside it), plus what gateway 0's calls used.
    const afterwards = reported('team-c')
      .slice(afterKill)
      .reduce((n, u) => n + u.totalTokens, 0);
    expect(record.consumed).toBe(deadBlock + afterwards);
    expect(1_500 - record.consumed).toBeLessThan(71);
  }, 120_000);
});
