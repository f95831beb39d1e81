// More policies than one etcd response can carry: a runner and the decision
// API (real processes, built from dist/) start against them and enforce
// every one, with an engine cache small enough that most engines are evicted
// and built again along the way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { repoRoot, startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { createEtcdClient } from '../../etcd/index.js';

// Three distinct modules; every project runs one of them with data of its own,
// so a project's decision depends on its own data: a mix-up between projects
// sharing a module would show.
const MODULES = [
  `package project.authz
import rego.v1
default allow := false
allow if input.user.role in data.roles`,
  `package project.authz
import rego.v1
default allow := false
allow if {
  some grant in data.grants
  grant.role == input.user.role
}`,
  `package project.authz
import rego.v1
default allow := false
allow if data.owner == input.user.role
reason := sprintf("owned by %s", [data.owner])`,
];

const PROJECTS = 48;
const projectName = (i: number) => `proj-${String(i).padStart(2, '0')}`;
const roleOf = (i: number) => `role-${i}`;
function dataOf(i: number): unknown {
  switch (i % 3) {
    case 0:
      return { roles: [roleOf(i)] };
    case 1:
      return { grants: [{ role: roleOf(i) }] };
    default:
      return { owner: roleOf(i) };
  }
}

let etcd: TestEtcd;
let admin: Etcd3;
let keys: TestKeys;
let runner: RunnerProcess;
let decision: ChildProcess | null = null;
let decisionUrl = '';
let decisionLog = '';
let runnerMetricsUrl = '';

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  keys = await createTestKeys();
  const writer = new EtcdPolicyWriter(admin);
  for (let i = 0; i < PROJECTS; i += 8) {
    await Promise.all(Array.from({ length: Math.min(8, PROJECTS - i) }, (_, k) => writer.put(projectName(i + k), MODULES[(i + k) % 3]!, dataOf(i + k))));
  }
  const env = {
    ETCD_ENDPOINTS: etcd.endpoints.join(','),
    ...keys.env,
  };
  // 8 MiB over two evaluation workers: each holds the three modules and about nine of the 48 projects' instances.
  const metricsPort = await freePort();
  runnerMetricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  runner = await startRunner({
    env: {
      ...env,
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-scale-')),
      RUNNER_POLICY_CACHE_MB: '8',
      POLICY_EVAL_WORKERS: '2',
      // Every decision evaluated: the second round below must rebuild the engines the first evicted.
      POLICY_DECISION_CACHE_MB: '0',
      RUNNER_METRICS_PORT: String(metricsPort),
    },
  });
  const port = await freePort();
  decisionUrl = `http://127.0.0.1:${port}`;
  decision = spawn(process.execPath, [join(repoRoot, 'dist/decision-api/main.js')], {
    env: {
      PATH: process.env.PATH ?? '',
      ...env,
      DECISION_HOST: '127.0.0.1',
      DECISION_PORT: String(port),
      DECISION_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-scale-decision-')),
      DECISION_POLICY_CACHE_MB: '4',
      POLICY_EVAL_WORKERS: '2',
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  decision.stderr!.on('data', (chunk: Buffer) => (decisionLog += chunk.toString()));
  await until(async () => (await fetch(`${decisionUrl}/readyz`)).ok, `the decision API to be ready: ${decisionLog}`);
}, 120_000);

afterAll(async () => {
  decision?.kill('SIGTERM');
  await runner?.stop();
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

async function gatewayDecision(project: number, role: number): Promise<number | 'pass'> {
  const conf = [
    { name: 'jwt', value: '{}' },
    { name: 'opa', value: JSON.stringify({ policies: ['platform', 'caller-project'] }) },
  ];
  return chainStatus(runner.socketPath, conf, { bearer: await keys.token({ sub: `u${role}`, role: roleOf(role), project: projectName(project) }) });
}

async function apiDecision(project: number, role: number): Promise<unknown> {
  // The decision API puts the verified identity in the input: the token's role decides.
  const bearer = await keys.token({ sub: `rag-${project}`, role: roleOf(role), project: projectName(project) });
  const response = await fetch(`${decisionUrl}/v1/data/${projectName(project)}/project/authz/allow`, {
    method: 'POST',
    headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
    body: JSON.stringify({ input: {} }),
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { result?: unknown }).result;
}

describe('ten times more policies than one etcd response can carry', () => {
  it('the policies really exceed one 4 MiB gRPC response', async () => {
    // What the runner did before reading in pages: one range over /policies/.
    await expect(admin.getAll().prefix('/policies/').exec()).rejects.toThrow(/RESOURCE_EXHAUSTED|larger than max|exceeds/i);
  });

  it('the runner enforces every project by its own data, evicted engines included', async () => {
    await until(async () => (await gatewayDecision(0, 0)) === 'pass', 'the runner to load the policies');
    // Two rounds over all projects: with room for nine engines, the second
    // round rebuilds the engines the first one evicted.
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < PROJECTS; i++) {
        expect(await gatewayDecision(i, i), `${projectName(i)} allows its own role`).toBe('pass');
        expect(await gatewayDecision(i, (i + 1) % PROJECTS), `${projectName(i)} denies another project's role`).toBe(403);
      }
    }
    const metrics = await (await fetch(runnerMetricsUrl)).text();
    const counter = (event: string) => Number(new RegExp(`gatehouse_policy_engine_events_total\\{event="${event}"\\} (\\d+)`).exec(metrics)?.[1]);
    // Engines were evicted and built again; the three modules were compiled once per worker.
    expect(counter('evictions')).toBeGreaterThan(PROJECTS);
    expect(counter('instantiations')).toBeGreaterThan(PROJECTS);
    expect(counter('compiles')).toBeLessThanOrEqual(6);
  }, 120_000);

  it('the decision API answers for every project from its own data', async () => {
    for (let i = 0; i < PROJECTS; i++) {
      expect(await apiDecision(i, i), projectName(i)).toBe(true);
      expect(await apiDecision(i, (i + 1) % PROJECTS), projectName(i)).toBe(false);
    }
  }, 120_000);
});
