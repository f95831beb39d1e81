// The decision memo (policy/engine/decision-memo.ts): a decision whose
// projected input repeats is answered as it was, never across versions,
// tenants or whole inputs, never for a failed evaluation, and within its
// bounds. The integration half runs real compiled policies from a real etcd
// through a watcher, counting what reaches the evaluator.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter, NESTED_LOOP_REGO, untilWatcherAt } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { policySubmission } from '../../cms/rego-compiler.js';
import { SerialisedInput } from '../../policy/engine/serialised-input.js';
import { DecisionMemo, MAX_MEMO_CHARS, MEMO_REST_WINDOWS, MEMO_WINDOW } from '../../policy/engine/decision-memo.js';
import { EngineCache } from '../../policy/engine/cache.js';
import { EvaluationBudgetError } from '../../policy/engine/index.js';
import { ThreadEvaluator, type Evaluator } from '../../policy/engine/evaluator.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';

const input = (value: unknown) => new SerialisedInput(value);

describe('the decision memo', () => {
  it('answers a repeated input of the same tenant and version with the same frozen result, and nothing else', () => {
    const memo = new DecisionMemo(1024 * 1024);
    const version = memo.scope();
    const other = memo.scope();
    const result = { allow: true, reason: { why: ['role'] } };
    expect(version.lookup('team-a', input({ user: { role: 'admin' } }))).toBeUndefined();
    version.remember('team-a', input({ user: { role: 'admin' } }), result);
    const hit = version.lookup('team-a', input({ user: { role: 'admin' } }));
    expect(hit?.result).toBe(result);
    expect(Object.isFrozen(result) && Object.isFrozen(result.reason) && Object.isFrozen(result.reason.why)).toBe(true);
    // Another tenant, input or version: not this decision.
    expect(version.lookup('team-b', input({ user: { role: 'admin' } }))).toBeUndefined();
    expect(version.lookup('team-a', input({ user: { role: 'viewer' } }))).toBeUndefined();
    expect(other.lookup('team-a', input({ user: { role: 'admin' } }))).toBeUndefined();
    // A tenant's name cannot run into the input: "team-a" + "1{..." is not "team-a1" + "{...".
    version.remember('team-a', input([1]), 'short');
    expect(version.lookup('team-a[', input(1))).toBeUndefined();
    // An undefined result (no rule matched) is remembered as one.
    version.remember('team-a', input({ user: null }), undefined);
    expect(version.lookup('team-a', input({ user: null }))).toEqual({ result: undefined });
    expect(memo.stats).toMatchObject({ hits: 2, entries: 3 });
  });

  it('keeps within its bytes, and does not remember inputs or results past MAX_MEMO_CHARS', () => {
    const memo = new DecisionMemo(256 * 1024);
    const version = memo.scope();
    for (let i = 0; i < 5000; i++) version.remember('t', input({ n: i, pad: 'x'.repeat(100) }), { allow: true });
    expect(memo.stats.bytes).toBeLessThanOrEqual(256 * 1024);
    expect(memo.stats.entries).toBeGreaterThan(100);
    expect(memo.stats.entries).toBeLessThan(5000);
    // The most recent are kept, the oldest went.
    expect(version.lookup('t', input({ n: 4999, pad: 'x'.repeat(100) }))).toBeDefined();
    expect(version.lookup('t', input({ n: 0, pad: 'x'.repeat(100) }))).toBeUndefined();

    const long = input({ pad: 'x'.repeat(MAX_MEMO_CHARS) });
    version.remember('t', long, true);
    expect(version.lookup('t', long)).toBeUndefined();
    const small = input({ n: 'small' });
    version.remember('t', small, { big: 'y'.repeat(MAX_MEMO_CHARS) });
    expect(version.lookup('t', small)).toBeUndefined();
  });

  it('rests a version whose inputs rarely repeat, then remembers it again', () => {
    const memo = new DecisionMemo(1024 * 1024);
    const version = memo.scope();
    const repeated = input({ user: 'ada' });
    version.remember('t', repeated, true);
    // A window of distinct inputs: one hit in it, far under one in 16.
    for (let i = 0; i < MEMO_WINDOW - 1; i++) version.lookup('t', input({ n: i }));
    expect(version.lookup('t', repeated)).toBeDefined();
    expect(memo.stats.rests).toBe(1);
    // Resting: neither answered nor remembered.
    expect(version.lookup('t', repeated)).toBeUndefined();
    version.remember('t', input({ user: 'bob' }), true);
    expect(memo.stats.entries).toBe(1);
    for (let i = 0; i < MEMO_WINDOW * MEMO_REST_WINDOWS; i++) version.lookup('t', repeated);
    expect(version.lookup('t', repeated)).toBeDefined();
    // A version whose inputs repeat never rests.
    const busy = memo.scope();
    busy.remember('t', repeated, true);
    for (let i = 0; i < 4 * MEMO_WINDOW; i++) busy.lookup('t', i % 8 === 0 ? input({ n: i }) : repeated);
    expect(memo.stats.rests).toBe(1);
  });
});

describe('a gateway with the decision memo', () => {
  let etcd: TestEtcd;
  let admin: Etcd3;
  let writer: EtcdPolicyWriter;
  let watcher: PolicyWatcher;
  const evaluated: string[] = [];
  const memo = new DecisionMemo(1024 * 1024);

  // Reads the role and its data; its compiled refs name input.user.role.
  const ROLE_POLICY = 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role in data.roles\n';

  beforeAll(async () => {
    etcd = await startEtcd();
    admin = createEtcdClient(etcd.endpoints);
    writer = new EtcdPolicyWriter(admin);
    // Little fuel: the nested loop with n = 30 is stopped, with n = 2 it is not.
    const engines = new EngineCache({ fuel: 20_000 });
    const thread = new ThreadEvaluator({ engines });
    // The real evaluator, counted: what reaches it was not answered by the memo.
    const counted: Evaluator = {
      evaluate: (tenant, target, shown, options) => {
        evaluated.push(tenant);
        return thread.evaluate(tenant, target, shown, options);
      },
      prepare: (target) => thread.prepare(target),
      stats: () => thread.stats(),
      close: () => thread.close(),
    };
    watcher = new PolicyWatcher({ client: createEtcdClient(etcd.endpoints), log: pino({ level: 'silent' }), engines, pool: counted, memo });
    await watcher.start();
  }, 30_000);

  afterAll(async () => {
    await watcher?.stop();
    admin?.close();
    await etcd?.cleanup();
  });

  async function write(name: string, rego: string, data: unknown, options: { wholeInput?: boolean } = {}): Promise<void> {
    const compiled = await writer.compiler.compile(rego, JSON.stringify(data));
    const submission = policySubmission(rego, JSON.stringify(data), compiled, 'test');
    if (options.wholeInput) delete submission.inputRefs;
    const { revision } = await writer.store.put(name, submission);
    await untilWatcherAt(watcher, revision);
  }

  const decide = (name: string, tenant: string, value: unknown) => watcher.current.get(name)!.evaluate(tenant, input(value));
  const request = (role: string) => ({ request: { path: '/rag/ask', headers: { 'x-request-id': String(Math.random()) } }, user: { role } });

  it('evaluates a projected input once per tenant and version, and a new version afresh', async () => {
    await write('team-a', ROLE_POLICY, { roles: ['admin'] });
    evaluated.length = 0;
    // Headers the policy does not read differ on every request: the projection repeats all the same.
    expect(await decide('team-a', 'team-a', request('admin'))).toEqual({ allow: true });
    expect(await decide('team-a', 'team-a', request('admin'))).toEqual({ allow: true });
    expect(await decide('team-a', 'team-a', request('viewer'))).toEqual({ allow: false });
    expect(await decide('team-a', 'team-b', request('admin'))).toEqual({ allow: true });
    expect(evaluated).toEqual(['team-a', 'team-a', 'team-b']);

    // New data, a new version: its decision is its own, never the one remembered for the old.
    await write('team-a', ROLE_POLICY, { roles: ['viewer'] });
    evaluated.length = 0;
    expect(await decide('team-a', 'team-a', request('admin'))).toEqual({ allow: false });
    expect(await decide('team-a', 'team-a', request('viewer'))).toEqual({ allow: true });
    expect(await decide('team-a', 'team-a', request('viewer'))).toEqual({ allow: true });
    expect(evaluated).toEqual(['team-a', 'team-a']);
  });

  it('evaluates every decision of a version shown the whole input, and every plain input', async () => {
    await write('whole', ROLE_POLICY, { roles: ['admin'] }, { wholeInput: true });
    evaluated.length = 0;
    for (let i = 0; i < 3; i++) expect(await decide('whole', 'whole', request('admin'))).toEqual({ allow: true });
    // A plain document is not serialised: nothing to key it by.
    for (let i = 0; i < 2; i++) expect(await watcher.current.get('team-a')!.evaluate('team-a', { user: { role: 'viewer' } })).toEqual({ allow: true });
    expect(evaluated).toHaveLength(5);
  });

  it('never remembers a stopped evaluation: the same input is evaluated, and stopped, again', async () => {
    await write('loops', NESTED_LOOP_REGO, {});
    evaluated.length = 0;
    const heavy = { request: { query: { n: '30' } } };
    await expect(decide('loops', 'loops', heavy)).rejects.toBeInstanceOf(EvaluationBudgetError);
    // The tenant waits out its penalty, then is evaluated and stopped again.
    await expect(decide('loops', 'loops', heavy)).rejects.toBeInstanceOf(EvaluationBudgetError);
    expect(evaluated).toEqual(['loops', 'loops']);
    expect(await decide('loops', 'loops', { request: { query: { n: '2' } } })).toEqual({ allow: true, r: [1, 2] });
    expect(await decide('loops', 'loops', { request: { query: { n: '2' } } })).toEqual({ allow: true, r: [1, 2] });
    expect(evaluated).toEqual(['loops', 'loops', 'loops']);
    expect(watcher.memoStats).toMatchObject({ hits: expect.any(Number) as number, misses: expect.any(Number) as number });
  });
});
