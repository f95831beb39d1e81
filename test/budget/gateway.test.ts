// A gateway process's budgets against a real etcd: the budgets it follows
// (written by the CMS's store), and how a call is settled from its response.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startTcpProxy, hostPort } from '../support/tcp-proxy.js';
import { createEtcdClient } from '../../etcd/index.js';
import { GatewayBudgets, USAGE_OVERRUN } from '../../budget/gateway.js';
import { usageOfAnswer } from '../../budget/answer-usage.js';
import { BudgetStore } from '../../budget/store.js';
import { readUsage } from '../../budget/usage.js';
import { budgetKey, ledgerKey, type Allocation } from '../../budget/keys.js';
import { readLlmCall } from '../../budget/call.js';
import { windowBounds, type Budget } from '../../budget/definition.js';

let etcd: TestEtcd;
let admin: Etcd3;
let gateway: GatewayBudgets;
const events: string[] = [];
const BUDGET: Budget = { windows: [{ per: 'day', tokens: 1_000 }], default_max_tokens: 50 };
const id = (n: number) => n.toString(16).padStart(32, '0');

/** Settles as the settle port does with an http-logger entry: the client's status, the upstream's ($upstream_status, null: none contacted), the body. */
const settle = (callId: string, status: number, body: string, upstreamStatus: string | null = String(status)) =>
  gateway.settle(callId, { status, upstreamStatus, usage: usageOfAnswer(body) });

async function until(check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  await new BudgetStore(admin).put('alpha', BUDGET, 'test');
  gateway = new GatewayBudgets({
    client: createEtcdClient(etcd.endpoints),
    gateway: 'test-gateway',
    log: pino({ level: 'silent' }),
    settleTimeoutMs: 300,
    events: {
      settled: (project, model, usage) =>
        events.push(`${project} ${model} ${usage.prompt}+${usage.completion} charged ${usage.charged} ${usage.seen ? 'seen' : 'unseen'}`),
      refused: (project, reason) => events.push(`${project} refused ${reason}`),
      usageRefused: (project, reason) => events.push(`${project} usage ${reason}`),
    },
  });
  await gateway.start();
}, 60_000);

afterAll(async () => {
  await gateway?.stop();
  admin?.close();
  await etcd?.stop();
});

describe('gateway budgets', () => {
  it('follows the budgets written through the store: created, changed, deleted', async () => {
    expect(gateway.isLoaded).toBe(true);
    expect(gateway.budget('alpha')).toEqual(BUDGET);
    const store = new BudgetStore(admin);
    await store.put('beta', BUDGET, 'test');
    await until(() => gateway.budget('beta') !== null);
    await store.put('beta', { windows: [{ per: 'minute', tokens: 5 }] }, 'test');
    await until(() => gateway.budget('beta')?.windows[0]?.per === 'minute');
    await store.delete('beta', 'test');
    await until(() => gateway.budget('beta') === null);
  });

  it('fails closed on a damaged budget: the project has none', async () => {
    await admin.put(budgetKey('gamma')).value('{"budget": {"windows": "lots"}}');
    await new BudgetStore(admin).put('delta', BUDGET, 'test');
    await until(() => gateway.budget('delta') !== null);
    expect(gateway.budget('gamma')).toBeNull();
  });

  it('settles to the usage of an answer, charges nothing when the upstream refused without usage (recorded under (other): the LLM did not take the model), keeps the reservation when the usage cannot be seen', async () => {
    const call = readLlmCall(new TextEncoder().encode(JSON.stringify({ model: 'm1', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] })));
    const cost = GatewayBudgets.cost(call, 50);
    for (const n of [1, 2, 3]) expect(await gateway.reserve(id(n), 'alpha', BUDGET, 'm1', cost)).toEqual({ ok: true });
    expect(gateway.callsInFlight).toBe(3);
    events.length = 0;
    expect(settle(id(1), 200, JSON.stringify({ usage: { prompt_tokens: 4, completion_tokens: 6 } }))).toBe(true);
    expect(settle(id(2), 400, '{"error": {"message": "bad request"}}')).toBe(true);
    expect(settle(id(3), 200, 'data: {"choices": []}\n\n')).toBe(true);
    // Once only; an id naming no call changes nothing.
    expect(settle(id(1), 200, JSON.stringify({ usage: { prompt_tokens: 0, completion_tokens: 0 } }))).toBe(false);
    expect(settle(id(99), 200, '')).toBe(false);
    expect(events).toEqual([`alpha m1 4+6 charged 10 seen`, `alpha (other) 0+0 charged 0 seen`, `alpha m1 0+0 charged ${cost} unseen`]);
    await gateway.usage.flush();
    const usage = await readUsage(admin, 'alpha', Date.now() - 3_600_000, Date.now() + 1);
    expect(usage.models.m1).toEqual({ requests: 2, prompt_tokens: 4, completion_tokens: 6, charged_tokens: 10 + cost, unsettled: 1 });
    expect(usage.models['(other)']).toEqual({ requests: 1, prompt_tokens: 0, completion_tokens: 0, charged_tokens: 0, unsettled: 0 });
  });

  it('settles on what the upstream answered: an abandoned call, a 5xx or no answer keep their reservation; nothing only when the upstream refused, or none was reached', async () => {
    const budget: Budget = { windows: [{ per: 'day', tokens: 100_000 }] };
    await new BudgetStore(admin).put('omega', budget, 'test');
    const cases: { status: number; upstream: string | null; body?: string; charged: 'reservation' | number }[] = [
      // The client left before the answer (nginx's 499): the upstream had the call, and no status line yet.
      { status: 499, upstream: '-', charged: 'reservation' },
      // ...or mid-answer: the status was sent, the body (and its usage) never completed.
      { status: 200, upstream: '200', body: '', charged: 'reservation' },
      // The client left, and the upstream then answered: it ran.
      { status: 499, upstream: '200', charged: 'reservation' },
      // The upstream failed or timed out: it may have run the call.
      { status: 502, upstream: '502', body: '<html>bad gateway</html>', charged: 'reservation' },
      { status: 504, upstream: '504', charged: 'reservation' },
      { status: 500, upstream: '500', body: '{"error": {"message": "overloaded"}}', charged: 'reservation' },
      // Retried: the first attempt failed after the upstream may have taken it.
      { status: 404, upstream: '502, 404', charged: 'reservation' },
      // A 5xx that reports usage is charged the usage.
      { status: 500, upstream: '500', body: '{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}', charged: 7 },
      // The upstream itself refused: nothing ran.
      { status: 429, upstream: '429', body: '{"error": {"message": "rate limited"}}', charged: 0 },
      { status: 401, upstream: '401, 401', charged: 0 },
      // No upstream was reached (a later plugin refused, the client left before the request was sent).
      { status: 503, upstream: null, charged: 0 },
      { status: 499, upstream: null, charged: 0 },
    ];
    let n = 2_000;
    for (const c of cases) {
      const callId = id(++n);
      expect(await gateway.reserve(callId, 'omega', budget, 'm1', 500)).toEqual({ ok: true });
      events.length = 0;
      expect(settle(callId, c.status, c.body ?? '', c.upstream)).toBe(true);
      const charged = c.charged === 'reservation' ? 500 : c.charged;
      expect(events, JSON.stringify(c)).toEqual([expect.stringMatching(new RegExp(`^omega \\S+ \\d+\\+\\d+ charged ${charged} (un)?seen$`))]);
    }
  });

  it('refuses usage that is not finite, negative or implausible: the call keeps its reservation, counted and logged, and the ledger stays whole', async () => {
    const budget: Budget = { windows: [{ per: 'day', tokens: 10_000 }] };
    await new BudgetStore(admin).put('sigma', budget, 'test');
    const reserved = 1_000;
    const bound = Math.ceil(reserved * (1 + USAGE_OVERRUN.share)) + USAGE_OVERRUN.tokens;
    const answers = [
      ['{"usage": {"prompt_tokens": 1e400, "completion_tokens": 1}}', 'invalid'],
      [`{"usage": {"prompt_tokens": ${Number.MAX_VALUE}, "completion_tokens": ${Number.MAX_VALUE}}}`, 'invalid'],
      ['{"usage": {"prompt_tokens": -5000, "completion_tokens": 1}}', 'invalid'],
      ['data: {"choices": [], "usage": {"prompt_tokens": 1e999, "completion_tokens": 0}}\n\ndata: [DONE]\n\n', 'invalid'],
      // Above the window's limit, and above what the call could cost.
      ['{"usage": {"prompt_tokens": 1e15, "completion_tokens": 0}}', 'implausible'],
      [`{"usage": {"prompt_tokens": 0, "completion_tokens": ${bound + 1}}}`, 'implausible'],
    ] as const;
    let n = 3_000;
    for (const [body, reason] of answers) {
      const callId = id(++n);
      expect(await gateway.reserve(callId, 'sigma', budget, 'm1', reserved)).toEqual({ ok: true });
      events.length = 0;
      expect(settle(callId, 200, body)).toBe(true);
      expect(events, body).toEqual([`sigma usage ${reason}`, `sigma m1 0+0 charged ${reserved} unseen`]);
    }
    // Within what a provider can exceed a reservation by, the usage is charged as reported.
    const within = id(++n);
    expect(await gateway.reserve(within, 'sigma', budget, 'm1', reserved)).toEqual({ ok: true });
    events.length = 0;
    settle(within, 200, `{"usage": {"prompt_tokens": 0, "completion_tokens": ${bound}}}`);
    expect(events).toEqual([`sigma m1 0+${bound} charged ${bound} seen`]);
    // The ledger record holds finite numbers: the refused calls cost their reservation, the last its usage.
    const key = ledgerKey('sigma', '*', 'day', windowBounds('day', Date.now()).start);
    const record = async () => {
      const text = await admin.get(key).string();
      return text ? (JSON.parse(text) as Allocation) : null;
    };
    await until(async () => (await record())?.consumed === answers.length * reserved + bound && Object.keys((await record())!.held).length === 0, 10_000);
    // And the window goes on admitting by what it holds.
    const rest = id(++n);
    expect(await gateway.reserve(rest, 'sigma', budget, 'm1', 10_000 - answers.length * reserved - bound)).toEqual({ ok: true });
    expect((await gateway.reserve(id(++n), 'sigma', budget, 'm1', 1)).ok).toBe(false);
    expect(settle(rest, 200, '{"usage": {"prompt_tokens": 0, "completion_tokens": 0}}')).toBe(true);
    await gateway.usage.flush();
    const usage = await readUsage(admin, 'sigma', Date.now() - 3_600_000, Date.now() + 1);
    expect(usage.models.m1).toMatchObject({
      requests: answers.length + 2,
      prompt_tokens: 0,
      completion_tokens: bound,
      charged_tokens: answers.length * reserved + bound,
      unsettled: answers.length,
    });
  });

  it('records usage under at most 64 models per project and hour, besides the ones its budget names; models the LLM refused under (other)', async () => {
    const budget: Budget = { windows: [{ per: 'day', tokens: 1_000_000 }], models: { named: { windows: [{ per: 'day', tokens: 1_000_000 }] } } };
    await new BudgetStore(admin).put('kappa', budget, 'test');
    let n = 1_000;
    const call = async (model: string, status: number, body: string) => {
      const callId = id(++n);
      expect(await gateway.reserve(callId, 'kappa', budget, model, 10)).toEqual({ ok: true });
      expect(settle(callId, status, body)).toBe(true);
    };
    const answered = JSON.stringify({ usage: { prompt_tokens: 1, completion_tokens: 1 } });
    // A caller names 500 models the LLM does not know: each refused, none gets a record of its own.
    for (let i = 0; i < 500; i++) await call(`bogus-${i}`, 404, '{"error": {"message": "no such model"}}');
    // 70 models the LLM answers: the first 64 get their own; the budget's own model always does.
    for (let i = 0; i < 70; i++) await call(`real-${i}`, 200, answered);
    await call('named', 200, answered);
    await gateway.usage.flush();
    const usage = await readUsage(admin, 'kappa', Date.now() - 3_600_000, Date.now() + 1);
    const models = Object.keys(usage.models);
    expect(models.filter((m) => m.startsWith('real-'))).toHaveLength(64);
    expect(models).toContain('named');
    expect(models.filter((m) => m.startsWith('bogus-'))).toEqual([]);
    expect(usage.models['(other)']).toMatchObject({ requests: 500 + 6, charged_tokens: 6 * 2 });
    expect(usage.total.requests).toBe(571);
  });

  it('charges a call never settled its reservation once the settle timeout passes', async () => {
    events.length = 0;
    expect(await gateway.reserve(id(10), 'alpha', BUDGET, 'm2', 40)).toEqual({ ok: true });
    await until(() => events.length > 0, 15_000);
    expect(events).toEqual(['alpha m2 0+0 charged 40 unseen']);
    expect(settle(id(10), 200, '{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}')).toBe(false);
  });

  it('refuses a call that does not fit and names the limit', async () => {
    const result = await gateway.reserve(id(20), 'alpha', BUDGET, 'm1', 2_000);
    expect(result).toMatchObject({ ok: false, reason: 'exhausted', limit: { scope: '*', per: 'day', tokens: 1_000 } });
    expect(events).toContain('alpha refused exhausted');
  });
});

describe('gateway budgets when etcd compacts what a cut-off watch missed', () => {
  it('a call that comes before the budgets are read waits for them, and is told they are not loaded only when they do not come', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    proxy.cut();
    const client = createEtcdClient([proxy.url], { callTimeoutMs: 300 });
    const budgets = new GatewayBudgets({ client, gateway: 'late', log: pino({ level: 'silent' }) });
    try {
      const starting = budgets.start();
      expect(await budgets.whenLoaded(200)).toBe(false);
      const waiting = budgets.whenLoaded(10_000);
      proxy.restore();
      expect(await waiting).toBe(true);
      expect(budgets.budget('alpha')).toEqual(BUDGET);
      await starting;
      expect(await budgets.whenLoaded(0)).toBe(true);
    } finally {
      await budgets.stop();
      client.close();
      await proxy.close();
    }
  }, 20_000);

  it('reads every budget again and enforces what is current', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    const client = createEtcdClient([proxy.url], { callTimeoutMs: 500 });
    const budgets = new GatewayBudgets({ client, gateway: 'cut-off', log: pino({ level: process.env.DEBUG_BUDGETS ? 'debug' : 'silent' }) });
    try {
      await budgets.start();
      const store = new BudgetStore(admin);
      await store.put('epsilon', BUDGET, 'test');
      await until(() => budgets.budget('epsilon') !== null);
      proxy.cut();
      // While it is away: one budget changes, one goes, one comes; then etcd compacts its history.
      await store.put('epsilon', { windows: [{ per: 'hour', tokens: 7 }] }, 'test');
      await store.delete('alpha', 'test');
      await store.put('zeta', BUDGET, 'test');
      const { header } = await admin.get('/anything').exec();
      await admin.kv.compact({ revision: header.revision, physical: true });
      proxy.restore();
      await until(() => budgets.budget('zeta') !== null && budgets.budget('alpha') === null && budgets.budget('epsilon')?.windows[0]?.per === 'hour', 20_000);
      // And it follows changes again.
      await store.put('eta', BUDGET, 'test');
      await until(() => budgets.budget('eta') !== null);
    } finally {
      await budgets.stop();
      client.close();
      await proxy.close();
    }
  }, 40_000);
});
