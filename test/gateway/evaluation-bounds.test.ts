// Evaluation is bounded: in memory (POLICY_MEMORY_MAX_MB: past it the
// decision fails closed and the instance is replaced) and, in the evaluation
// pool, in time (POLICY_EVAL_TIMEOUT_MS: past it the evaluation worker is
// stopped and replaced), and a tenant sending runaway requests holds at most
// one of the two evaluation workers, so other tenants' decisions go on
// meanwhile. The fuel bound (test/gateway/metering.test.ts) is set as high as
// it goes here, so that memory and time are what stop these evaluations.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter, NESTED_LOOP_REGO } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { createEtcdClient } from '../../etcd/index.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { loadPolicyEngine } from '../../policy/engine/index.js';

// The size of the range comes from the request: a client picks how much the evaluation allocates.
const RUNAWAY = `package project.authz
import rego.v1
default allow := false
allow if count(numbers.range(1, to_number(input.request.query.n))) > 0
`;
// n * n steps that allocate little: time, not memory, runs out.
const SLOW = NESTED_LOOP_REGO;
const CALM = `package project.authz
import rego.v1
default allow := false
allow if input.user.role == "r"
`;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;
let keys: TestKeys;
let runner: RunnerProcess;
/** A second runner whose memory ceiling is high, so that time runs out first. */
let timed: RunnerProcess;
let metricsPort = 0;

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
  keys = await createTestKeys();
  await writer.put('runaway', RUNAWAY);
  await writer.put('slow', SLOW);
  await writer.put('calm', CALM);
  const env = {
    ETCD_ENDPOINTS: etcd.endpoints.join(','),
    ...keys.env,
    POLICY_EVAL_WORKERS: '2',
    POLICY_EVAL_TIMEOUT_MS: '300',
    POLICY_EVAL_FUEL: '2147483647',
  };
  runner = await startRunner({
    env: { ...env, RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-bounds-')), POLICY_MEMORY_MAX_MB: '16' },
  });
  metricsPort = await freePort();
  // A deadline the runaway decisions (n = 20,000: seconds of work) always reach, but long
  // enough that twenty of the other tenant's decisions fit inside it on a loaded machine.
  timed = await startRunner({
    env: {
      ...env,
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-bounds-')),
      POLICY_MEMORY_MAX_MB: '1024',
      RUNNER_METRICS_PORT: String(metricsPort),
      POLICY_EVAL_TIMEOUT_MS: '1000',
    },
  });
});

afterAll(async () => {
  await runner?.stop();
  await timed?.stop();
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

async function decide(n: number, project = 'runaway', on: RunnerProcess = runner): Promise<number | 'pass'> {
  const conf = [
    { name: 'jwt', value: '{}' },
    { name: 'opa', value: JSON.stringify({ policies: ['caller-project'] }) },
  ];
  const bearer = await keys.token({ sub: 'u', role: 'r', project });
  return chainStatus(on.socketPath, conf, { bearer, args: [{ name: 'n', value: String(n) }] });
}

describe('evaluation memory', () => {
  it('an engine never grows past its ceiling: the evaluation that would is an error', async () => {
    const compiled = await writer.compiler.compile(RUNAWAY);
    const engine = await loadPolicyEngine(compiled.wasm, { data: '{}', maxMemoryBytes: 16 * 1024 * 1024, fuel: 2147483647 });
    const input = (n: number) => ({ request: { query: { n: String(n) } } });
    expect(engine.evaluate(input(1000), 'project/authz')).toMatchObject({ allow: true });
    expect(() => engine.evaluate(input(50_000_000), 'project/authz')).toThrow();
    expect(engine.memoryBytes).toBeLessThanOrEqual(16 * 1024 * 1024);
  });

  it('in the runner: the runaway request is denied (500), the next one of the same project is served by a fresh instance', async () => {
    const deadline = Date.now() + 10_000;
    while ((await decide(10)) !== 'pass') {
      if (Date.now() > deadline) throw new Error('policies did not load');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(await decide(50_000_000)).toBe(500);
    expect(await decide(10)).toBe('pass');
    expect(await decide(50_000_000)).toBe(500);
    expect(await decide(1000)).toBe('pass');
  });

  it('an evaluation past its deadline is stopped and denied; the tenant gets a fresh worker next time', async () => {
    expect(await decide(3, 'slow', timed)).toBe('pass');
    const started = Date.now();
    expect(await decide(20_000, 'slow', timed)).toBe(500);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(await decide(3, 'slow', timed)).toBe('pass');
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(Number(/gatehouse_policy_evaluations_aborted_total\{reason="timeout"\} (\d+)/.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1);
  });

  it("a tenant's runaway requests do not hold up another tenant's decisions", async () => {
    expect(await decide(0, 'calm', timed)).toBe('pass');
    // Two runaway requests at once from the same tenant: one runs, one waits for it, neither takes the other worker.
    let runawayDone = 0;
    const runaways = [decide(20_000, 'slow', timed), decide(20_000, 'slow', timed)].map((p) => p.finally(() => runawayDone++));
    await new Promise((r) => setTimeout(r, 50));
    const calm: (number | 'pass')[] = [];
    for (let i = 0; i < 20; i++) calm.push(await decide(0, 'calm', timed));
    // Twenty decisions of the other tenant, all served while the runaways still ran.
    expect(runawayDone).toBe(0);
    expect(calm.every((status) => status === 'pass')).toBe(true);
    expect(await Promise.all(runaways)).toEqual([500, 500]);
  });
});
