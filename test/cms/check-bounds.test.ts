// The checks before a write are bounded, so a submitted policy cannot hold
// the CMS:
// - the load check (the compiled policy evaluated once on an empty input)
//   runs in the gateways' evaluation pool, off the request thread, under
//   their fuel, deadline and memory ceiling: a runaway policy is 422
//   (policy-evaluation-bound) and /healthz answers meanwhile;
// - `opa test` runs under a memory limit (OPA_MEMORY_MAX_MB) and the opa
//   deadline, at most CMS_TEST_CONCURRENCY runs at once: tests that need
//   more are stopped, 422 (policy-tests-stopped).
// Real opa, real etcd; nothing is written on any refusal.
import { readdirSync, readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Cms, type Harness, type Response } from './harness.js';
import { evaluationFuel, policyMemoryMaxBytes } from '../../policy/engine/index.js';

let harness: Harness;

// Memory runs out first: each step allocates, 64 MiB (the default ceiling) is reached in a fraction of a second.
const GREEDY = `package team.authz
import rego.v1
default allow := false
allow if count(numbers.range(1, 1e8)) > 0
`;
// n * n steps: under a high memory ceiling it runs for half a minute, so time runs out first.
const SLOW = `package team.authz
import rego.v1
default allow := false
r := numbers.range(1, 20000)
allow if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;
const CALM = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles\n';
const data = { valid_roles: ['admin'] };

const CALM_TESTS = `package team.authz_test
import rego.v1
import data.team.authz

test_admin_allowed if authz.allow with input as {"user": {"role": "admin"}}
test_viewer_denied if not authz.allow with input as {"user": {"role": "viewer"}}
# Some work that fits easily within the memory limit.
test_a_range if count(numbers.range(1, 100000)) == 100000
`;
// Memory grows with the range: about 0.6 GiB for five million.
const GREEDY_TESTS = `package team.authz_test
import rego.v1

test_big_range if count(numbers.range(1, 5e6)) > 0
`;
// Seconds of work in little memory.
const busyTests = (n: number) => `package team.authz_test
import rego.v1

r := numbers.range(1, ${n})
test_busy if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;

const body = (rego: string, tests?: Record<string, string>) => JSON.stringify({ rego, data, ...(tests ? { tests } : {}) });

beforeAll(async () => {
  harness = await startHarness();
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

/** A CMS started with these environment variables (read as cms/config.ts reads them: the load check's fuel and memory ceiling). */
async function startCmsWith(env: Record<string, string>, options: Parameters<Harness['startCms']>[0] = {}): Promise<Cms> {
  return harness.startCms({ policyMemoryMaxBytes: policyMemoryMaxBytes(env), evalFuel: evaluationFuel(env), ...options });
}

/** Runs `work` while asking the same CMS for /healthz again and again; gives each answer's latency. */
async function probingHealth<T>(cms: Cms, work: () => Promise<T>): Promise<{ result: T; latencies: number[] }> {
  let done = false;
  const latencies: number[] = [];
  const probing = (async () => {
    while (!done) {
      const started = performance.now();
      const res = await cms.request('GET', '/healthz');
      latencies.push(performance.now() - started);
      expect(res.status).toBe(200);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  })();
  try {
    return { result: await work(), latencies };
  } finally {
    done = true;
    await probing;
  }
}

/**
 * /healthz answered within 50 ms while the check ran. A blocked thread shows
 * as one probe that waits the whole evaluation (a second and more here:
 * none may pass 250 ms); on a shared 2-core machine a probe may now and then
 * wait 50 ms for the CPU alone, so a few such are tolerated (a tenth of the
 * probes, at least two).
 */
function expectResponsive(latencies: number[]): void {
  const shown = `healthz latencies (ms): ${latencies.map((l) => l.toFixed(0)).join(' ')}`;
  expect(latencies.length, shown).toBeGreaterThan(10);
  expect(Math.max(...latencies), shown).toBeLessThan(250);
  expect(latencies.filter((l) => l >= 50).length, shown).toBeLessThanOrEqual(Math.max(2, Math.floor(latencies.length / 10)));
}

function expectProblem(res: Response, status: number, type: string): Record<string, unknown> {
  expect(res.status, res.text).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const problem = res.json() as Record<string, unknown>;
  expect(problem).toMatchObject({ status, type });
  return problem;
}

describe('the load check runs under the gateways bounds, off the request thread', () => {
  it('a policy past the deadline: PUT and check are 422 within it, nothing written, /healthz answers within 50 ms meanwhile', async () => {
    // A deadline of a second, and a memory ceiling and fuel high enough that
    // time runs out first (POLICY_MEMORY_MAX_MB, POLICY_EVAL_FUEL, as a
    // gateway with them has them): unbounded, this evaluation would hold the
    // thread for half a minute.
    const cms = await startCmsWith({ POLICY_MEMORY_MAX_MB: '1024', POLICY_EVAL_FUEL: '2147483647' }, { evalTimeoutMs: 1_000 });
    try {
      const before = await harness.snapshot();
      for (const [method, path] of [
        ['PUT', '/policies/team-a'],
        ['POST', '/policies/team-a/check'],
      ] as const) {
        const started = performance.now();
        const { result, latencies } = await probingHealth(cms, () => cms.request(method, path, { token: harness.tokens.admin, body: body(SLOW) }));
        const elapsed = performance.now() - started;
        const problem = expectProblem(result, 422, 'urn:gatehouse:problem:policy-evaluation-bound');
        expect(problem.bound).toBe('time');
        expect(problem.detail).toMatch(/exceeded the gateways' time bound \(policy evaluation ran past 1000 ms\)/);
        // Compile (a few opa processes) plus the deadline, not the half minute the evaluation would take.
        expect(elapsed).toBeLessThan(15_000);
        expectResponsive(latencies);
      }
      expect(await harness.snapshot()).toEqual(before);
      // The pool goes on: a calm policy is checked and written.
      expect((await cms.request('PUT', '/policies/team-a', { token: harness.tokens.admin, body: body(CALM) })).status).toBe(201);
    } finally {
      await cms.stop();
    }
  });

  it('a policy that burns the fuel (the default POLICY_EVAL_FUEL): 422 naming the fuel bound, long before the deadline, nothing written', async () => {
    const cms = await startCmsWith({ POLICY_MEMORY_MAX_MB: '1024' }, { evalTimeoutMs: 10_000 });
    try {
      const before = await harness.snapshot();
      const { result, latencies } = await probingHealth(cms, async () => {
        const started = performance.now();
        const res = await cms.request('POST', '/policies/team-a/check', { token: harness.tokens.admin, body: body(SLOW) });
        return { res, elapsed: performance.now() - started };
      });
      const problem = expectProblem(result.res, 422, 'urn:gatehouse:problem:policy-evaluation-bound');
      expect(problem.bound).toBe('fuel');
      expect(problem.detail).toMatch(/exceeded the gateways' fuel bound \(policy evaluation burned its fuel \(10000000\)/);
      // Compile plus a fraction of a second of evaluation: the 10 s deadline is never reached.
      expect(result.elapsed).toBeLessThan(8_000);
      expectResponsive(latencies);
      expect(await harness.snapshot()).toEqual(before);
    } finally {
      await cms.stop();
    }
  });

  it('a policy past the memory ceiling (the default 64 MiB): 422 naming the memory bound, nothing written, /healthz answers meanwhile', async () => {
    // Fuel as high as it goes, so that memory is what runs out.
    const cms = await startCmsWith({ POLICY_EVAL_FUEL: '2147483647' });
    try {
      const before = await harness.snapshot();
      const { result, latencies } = await probingHealth(cms, () =>
        cms.request('POST', '/policies/team-b/check', { token: harness.tokens.admin, body: body(GREEDY) }),
      );
      const problem = expectProblem(result, 422, 'urn:gatehouse:problem:policy-evaluation-bound');
      expect(problem.bound).toBe('memory');
      expect(problem.detail).toMatch(/memory bound \(policy evaluation needed more than 64 MiB/);
      expectResponsive(latencies);
      const put = await cms.request('PUT', '/policies/team-b', { token: harness.tokens.admin, body: body(GREEDY) });
      expect(expectProblem(put, 422, 'urn:gatehouse:problem:policy-evaluation-bound').bound).toBe('memory');
      expect(await harness.snapshot()).toEqual(before);
    } finally {
      await cms.stop();
    }
  });
});

/** The opa processes this process started that run `opa test` now (opa is exec'd by prlimit, so its parent is us). */
function runningOpaTests(): number {
  let count = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid !== process.pid) continue;
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (argv.some((arg) => arg.endsWith('/opa')) && argv.includes('test')) count++;
    } catch {
      // gone meanwhile
    }
  }
  return count;
}

describe('opa test is bounded', () => {
  let cms: Cms;
  beforeAll(async () => {
    cms = await harness.startCms();
  });
  afterAll(async () => {
    await cms?.stop();
  });

  it('tests that need more memory than a test run may have are stopped: 422, nothing written; a normal suite still passes', async () => {
    const before = await harness.snapshot();
    for (const [method, path] of [
      ['PUT', '/policies/team-c'],
      ['POST', '/policies/team-c/check'],
    ] as const) {
      const res = await cms.request(method, path, {
        token: harness.tokens.admin,
        body: body(CALM, { 'authz_test.rego': CALM_TESTS, 'big_test.rego': GREEDY_TESTS }),
      });
      const problem = expectProblem(res, 422, 'urn:gatehouse:problem:policy-tests-stopped');
      expect(problem.bound).toBe('memory');
      expect(problem.detail).toMatch(/the policy tests were stopped: opa test needed more than 256 MiB of memory/);
    }
    expect(await harness.snapshot()).toEqual(before);

    const res = await cms.request('PUT', '/policies/team-c', { token: harness.tokens.admin, body: body(CALM, { 'authz_test.rego': CALM_TESTS }) });
    expect(res.status, res.text).toBe(201);
    expect(cms.logLines.some((line) => /"operation":"create".*"testsPassed":3/.test(line))).toBe(true);
  });

  it('a test run past the opa deadline is stopped: 422, nothing written', async () => {
    const quick = await harness.startCms({ compileTimeoutMs: 5_000 });
    try {
      const before = await harness.snapshot();
      const started = performance.now();
      // opa's own per-test timeout is 10 s: the run's deadline comes first.
      const res = await quick.request('PUT', '/policies/team-d', { token: harness.tokens.admin, body: body(CALM, { 'busy_test.rego': busyTests(20_000) }) });
      const problem = expectProblem(res, 422, 'urn:gatehouse:problem:policy-tests-stopped');
      expect(problem.bound).toBe('time');
      expect(problem.detail).toMatch(/opa test needed more than 5000 ms/);
      expect(performance.now() - started).toBeLessThan(15_000);
      expect(await harness.snapshot()).toEqual(before);
    } finally {
      await quick.stop();
    }
  });

  it('test runs at once are bounded (CMS_TEST_CONCURRENCY): three checks at once run their tests one after another', async () => {
    const one = await harness.startCms({ testConcurrency: 1, compileConcurrency: 3 });
    try {
      let most = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          most = Math.max(most, runningOpaTests());
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      })();
      const checks = await Promise.all(
        [0, 1, 2].map(() =>
          one.request('POST', '/policies/team-e/check', { token: harness.tokens.admin, body: body(CALM, { 'busy_test.rego': busyTests(800) }) }),
        ),
      );
      sampling = false;
      await sampler;
      for (const check of checks) expect(check.status, check.text).toBe(200);
      expect(most).toBe(1);
    } finally {
      await one.stop();
    }
  });
});
