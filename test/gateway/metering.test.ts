// Evaluation is bounded on the gateway's own thread by fuel: the policy's
// wasm is rewritten when it is compiled (policy/engine/meter.ts) to count
// loop iterations and calls, and an evaluation that burns its fuel
// (POLICY_EVAL_FUEL) traps, is denied and counted, and its instance is
// replaced. The rewrite changes no decision; ordinary policies burn a tiny
// share of the fuel; a tenant whose evaluations run away is made to wait, so
// other tenants' decisions go on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import type { Etcd3 } from 'etcd3';
import { RegoCompiler } from '../../cms/rego-compiler.js';
import { DEMO_PLATFORM_POLICY, DEMO_PROJECT_POLICY, EXAMPLE_POLICY } from '../../dev/demo.js';
import { DEFAULT_EVAL_FUEL, EvaluationBudgetError, evaluationFuel, loadPolicyEngine } from '../../policy/engine/index.js';
import { FUEL_GLOBAL, meterPolicyWasm } from '../../policy/engine/meter.js';
import { EngineCache } from '../../policy/engine/cache.js';
import { EvaluationWouldWaitError, ThreadEvaluator, createEvaluator, evaluationSettings, type AbortReason } from '../../policy/engine/evaluator.js';
import { EvaluationPool } from '../../policy/engine/pool.js';
import { defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import { generateInputs } from '../support/input-generator.js';
import { opaPath, EtcdPolicyWriter, NESTED_LOOP_REGO } from '../support/policies.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { createEtcdClient } from '../../etcd/index.js';
import { freePort } from '../../dev/local-etcd/index.js';

// n * n steps that allocate little: only fuel (or a deadline) stops it. Unbounded, n = 4000 runs for seconds.
const SLOW = NESTED_LOOP_REGO;
const RUNAWAY_N = 4000;
const CALM = `package project.authz
import rego.v1
default allow := false
allow if input.user.role == "r"
`;
// Comprehensions, strings, regex, objects: a spread of the wasm's code.
const MIXED = `package project.authz
import rego.v1
default allow := false
roles := {r | some r in data.roles; startswith(r, "a")}
headers := {lower(k): v | some k, v in object.get(input.request, "headers", {})}
allow if {
  input.user.role in roles
  regex.match("^/(rag|llm)/", input.request.path)
  count([m | some m in data.models; contains(m, "l")]) > 0
}
reason := sprintf("%v %v", [input.request.method, input.request.path])
`;
const MIXED_DATA = { roles: ['admin', 'auditor', 'viewer'], models: ['llama-3', 'gpt-4o-mini'] };

const compiler = new RegoCompiler({ opaPath, metered: false }); // the gateway's own metering is under test: modules as opa builds them
const sha256 = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('hex');
const slowInput = (n: number) => ({ request: { query: { n: String(n) } } });

async function compiled(rego: string, data: unknown = {}) {
  const { wasm } = await compiler.compile(rego, JSON.stringify(data));
  return { wasm, dataText: JSON.stringify(data) };
}

describe('the metered wasm', () => {
  it('decides exactly as the wasm opa built, on generated inputs, and burns a tiny share of the fuel', async () => {
    const cases: { name: string; wasm: Uint8Array; dataText: string; entrypoint: string }[] = [];
    for (const [name, policy] of [
      ['example', EXAMPLE_POLICY],
      ['demo project', DEMO_PROJECT_POLICY],
      ['mixed', { rego: MIXED, data: MIXED_DATA }],
      ['calm', { rego: CALM, data: {} }],
    ] as const) {
      cases.push({ name, ...(await compiled(policy.rego, policy.data)), entrypoint: 'project/authz' });
    }
    cases.push({ name: 'platform', ...(await compiled(DEMO_PLATFORM_POLICY.rego, DEMO_PLATFORM_POLICY.data)), entrypoint: 'gatehouse/platform' });
    cases.push({ name: 'cms access', wasm: await readFile(defaultAccessPolicyWasmPath()), dataText: '{}', entrypoint: 'gatehouse/cms/access' });

    const inputs = generateInputs(7, 150);
    let most = 0;
    for (const c of cases) {
      const metered = await loadPolicyEngine(c.wasm, { data: c.dataText });
      // The wasm as opa built it, loaded by the SDK itself: no rewrite.
      const plain = await loadPolicy(new Uint8Array(c.wasm).buffer as ArrayBuffer);
      plain.setData(JSON.parse(c.dataText) as object);
      for (const input of inputs) {
        const expected = (plain.evaluate(input, c.entrypoint) as Array<{ result: unknown }>)[0]?.result;
        expect(metered.evaluate(input, c.entrypoint), `${c.name}: ${JSON.stringify(input)}`).toEqual(expected);
        // Metered: every evaluation burns some fuel (calls), far from the budget.
        expect(metered.fuelUsed, c.name).toBeGreaterThan(0);
        most = Math.max(most, metered.fuelUsed);
      }
    }
    expect(most).toBeLessThan(DEFAULT_EVAL_FUEL / 100);
  });

  it('exports the fuel and keeps the imports and exports the SDK uses; compiled once per module in well under a second', async () => {
    const { wasm } = await compiled(MIXED, MIXED_DATA);
    const original = await WebAssembly.compile(new Uint8Array(wasm));
    await meterPolicyWasm(wasm); // binaryen warmed up
    const started = performance.now();
    const metered = await WebAssembly.compile(await meterPolicyWasm(wasm));
    const elapsed = performance.now() - started;
    expect(elapsed).toBeLessThan(1_000);
    const exports = (m: WebAssembly.Module) => WebAssembly.Module.exports(m).map((e) => `${e.kind}:${e.name}`);
    const imports = (m: WebAssembly.Module) => WebAssembly.Module.imports(m).map((e) => `${e.kind}:${e.module}.${e.name}`);
    // The same names (binaryen may order them otherwise; the SDK looks them up by name).
    expect(exports(metered).sort()).toEqual([...exports(original), `global:${FUEL_GLOBAL}`].sort());
    expect(imports(metered).sort()).toEqual(imports(original).sort());
  });

  it('a runaway evaluation on this thread is stopped when its fuel is burned: EvaluationBudgetError, about the calibrated time', async () => {
    const { wasm, dataText } = await compiled(SLOW);
    const engine = await loadPolicyEngine(wasm, { data: dataText, maxMemoryBytes: 1024 * 1024 * 1024 });
    expect(engine.evaluate(slowInput(10), 'project/authz')).toMatchObject({ allow: true });
    const started = performance.now();
    let error: unknown;
    try {
      engine.evaluate(slowInput(RUNAWAY_N), 'project/authz');
    } catch (caught) {
      error = caught;
    }
    // The thread was held for this long (the evaluation is synchronous).
    const held = performance.now() - started;
    expect(error).toBeInstanceOf(EvaluationBudgetError);
    expect(engine.fuelUsed).toBe(DEFAULT_EVAL_FUEL);
    // Calibrated to about 100 ms here; unbounded this input runs for seconds.
    expect(held).toBeLessThan(1_500);
  });

  it('POLICY_EVAL_FUEL sets the budget; nonsense is refused', async () => {
    expect(evaluationFuel({})).toBe(DEFAULT_EVAL_FUEL);
    expect(evaluationFuel({ POLICY_EVAL_FUEL: '50000' })).toBe(50_000);
    expect(evaluationFuel({ POLICY_EVAL_FUEL: 'off' })).toBeNull();
    for (const bad of ['0', '-5', '1.5', 'lots', '99999999999']) expect(() => evaluationFuel({ POLICY_EVAL_FUEL: bad })).toThrow(/POLICY_EVAL_FUEL/);
    const { wasm, dataText } = await compiled(SLOW);
    const engine = await loadPolicyEngine(wasm, { data: dataText, fuel: 50_000 });
    expect(engine.evaluate(slowInput(5), 'project/authz')).toMatchObject({ allow: true });
    expect(() => engine.evaluate(slowInput(200), 'project/authz')).toThrow(EvaluationBudgetError);
    expect(engine.fuelUsed).toBe(50_000);
  });
});

describe('evaluation on the calling thread (the default evaluator)', () => {
  it('is what the environment gives without POLICY_EVAL_WORKERS; the pool with it', async () => {
    const engines = new EngineCache();
    expect(evaluationSettings({})).toEqual({
      workers: 0,
      fuel: DEFAULT_EVAL_FUEL,
      memoryMaxBytes: 64 * 1024 * 1024,
      timeoutMs: 500,
      decisionCacheBytes: 16 * 1024 * 1024,
    });
    expect(evaluationSettings({ POLICY_DECISION_CACHE_MB: '0' }).decisionCacheBytes).toBe(0);
    expect(() => evaluationSettings({ POLICY_DECISION_CACHE_MB: '-1' })).toThrow(/POLICY_DECISION_CACHE_MB/);
    expect(() => evaluationSettings({ POLICY_DECISION_CACHE_MB: 'lots' })).toThrow(/POLICY_DECISION_CACHE_MB/);
    expect(createEvaluator({ ...evaluationSettings({}), engines, cacheBytes: 64 * 1024 * 1024 })).toBeInstanceOf(ThreadEvaluator);
    const pool = createEvaluator({ ...evaluationSettings({ POLICY_EVAL_WORKERS: '2' }), engines, cacheBytes: 64 * 1024 * 1024 });
    expect(pool).toBeInstanceOf(EvaluationPool);
    await pool.close();
    expect(() => evaluationSettings({ POLICY_EVAL_FUEL: 'x' })).toThrow(/POLICY_EVAL_FUEL/);
    expect(() => evaluationSettings({ POLICY_EVAL_WORKERS: '-1' })).toThrow(/POLICY_EVAL_WORKERS/);
  });

  it('denies and counts a runaway evaluation, replaces the instance, makes that tenant wait and not the others', async () => {
    const slow = await compiled(SLOW);
    const calm = await compiled(CALM);
    const target = (c: { wasm: Uint8Array; dataText: string }) => ({
      source: { wasmSha256: sha256(c.wasm), wasm: c.wasm, dataSha256: sha256(c.dataText), dataText: c.dataText },
      entrypoint: 'project/authz',
    });
    const engines = new EngineCache({ maxMemoryBytes: 1024 * 1024 * 1024 });
    const aborts: [AbortReason, string][] = [];
    const evaluator = new ThreadEvaluator({ engines, onAbort: (reason, tenant) => aborts.push([reason, tenant]) });
    expect(await evaluator.evaluate('a', target(slow), slowInput(10))).toMatchObject({ allow: true });
    expect(await evaluator.evaluate('b', target(calm), { user: { role: 'r' } })).toMatchObject({ allow: true });
    const before = engines.ready(target(slow).source);

    let started = performance.now();
    await expect(evaluator.evaluate('a', target(slow), slowInput(RUNAWAY_N))).rejects.toBeInstanceOf(EvaluationBudgetError);
    const held = performance.now() - started;
    expect(aborts).toEqual([['budget', 'a']]);
    // The instance it ran in is not used again.
    expect(engines.ready(target(slow).source)).toBeUndefined();

    // Another tenant is served at once.
    started = performance.now();
    expect(await evaluator.evaluate('b', target(calm), { user: { role: 'r' } })).toMatchObject({ allow: true });
    expect(performance.now() - started).toBeLessThan(held);

    // Asked not to wait (a candidate's shadow evaluation), the runaway tenant's next one is refused at once; another tenant's is made.
    started = performance.now();
    await expect(evaluator.evaluate('a', target(slow), slowInput(10), { wait: false })).rejects.toBeInstanceOf(EvaluationWouldWaitError);
    expect(performance.now() - started).toBeLessThan(held);
    expect(await evaluator.evaluate('b', target(calm), { user: { role: 'r' } }, { wait: false })).toMatchObject({ allow: true });

    // The runaway tenant's next decision waits (nine times what the runaway held), then is right, in a fresh instance.
    started = performance.now();
    expect(await evaluator.evaluate('a', target(slow), slowInput(10))).toMatchObject({ allow: true });
    expect(performance.now() - started).toBeGreaterThanOrEqual(held * 5);
    expect(engines.ready(target(slow).source)).not.toBe(before);
    expect(aborts).toHaveLength(1);
  });
});

describe('in the runner (evaluation on its own thread, the default)', () => {
  let etcd: TestEtcd;
  let admin: Etcd3;
  let keys: TestKeys;
  let runner: RunnerProcess;
  let metricsPort = 0;

  beforeAll(async () => {
    etcd = await startEtcd();
    admin = createEtcdClient(etcd.endpoints);
    const writer = new EtcdPolicyWriter(admin);
    keys = await createTestKeys();
    await writer.put('slow', SLOW);
    await writer.put('calm', CALM);
    metricsPort = await freePort();
    runner = await startRunner({
      env: {
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ...keys.env,
        RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-metering-')),
        RUNNER_METRICS_PORT: String(metricsPort),
        // Memory is not what stops the runaway here.
        POLICY_MEMORY_MAX_MB: '1024',
      },
    });
  }, 60_000);

  afterAll(async () => {
    await runner?.stop();
    admin?.close();
    await etcd?.cleanup();
    await keys?.cleanup();
  });

  async function decide(n: number, project: string): Promise<number | 'pass'> {
    const conf = [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: JSON.stringify({ policies: ['caller-project'] }) },
    ];
    const bearer = await keys.token({ sub: 'u', role: 'r', project });
    return chainStatus(runner.socketPath, conf, { bearer, args: [{ name: 'n', value: String(n) }] });
  }

  it("denies a runaway tenant's requests (500), counts them, and goes on serving another tenant meanwhile", async () => {
    const deadline = Date.now() + 20_000;
    while ((await decide(0, 'calm')) !== 'pass' || (await decide(3, 'slow')) !== 'pass') {
      if (Date.now() > deadline) throw new Error('policies did not load');
      await new Promise((r) => setTimeout(r, 50));
    }
    // The runaway tenant keeps two requests in flight.
    let running = true;
    const runawayStatuses: (number | 'pass')[] = [];
    const runaways = [0, 1].map(async () => {
      while (running) runawayStatuses.push(await decide(RUNAWAY_N, 'slow'));
    });
    await new Promise((r) => setTimeout(r, 100));
    const latencies: number[] = [];
    const calm: (number | 'pass')[] = [];
    for (let i = 0; i < 40; i++) {
      const started = performance.now();
      calm.push(await decide(0, 'calm'));
      latencies.push(performance.now() - started);
    }
    running = false;
    await Promise.all(runaways);
    expect(calm.every((status) => status === 'pass')).toBe(true);
    expect(runawayStatuses.length).toBeGreaterThanOrEqual(2);
    expect(runawayStatuses.every((status) => status === 500)).toBe(true);
    // Each calm decision waited at most for one runaway evaluation (about 100 ms), never for seconds.
    expect(Math.max(...latencies), latencies.map((l) => l.toFixed(0)).join(' ')).toBeLessThan(1_000);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(Number(/gatehouse_policy_evaluations_aborted_total\{reason="budget"\} (\d+)/.exec(metrics)?.[1])).toBe(runawayStatuses.length);
    // The runaway tenant's ordinary requests are served again once it has waited.
    await new Promise((r) => setTimeout(r, 2_000));
    expect(await decide(3, 'slow')).toBe('pass');
  }, 60_000);
});
