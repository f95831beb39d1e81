// npm run bench:gateway — the gateway end to end, every way of putting a
// decision in front of an API side by side in one run: real APISIX 3.9.1 (two
// nginx workers) in front of the same upstream (bench/go/upstream: 200 "ok",
// or a whole chat completion with usage for the LLM route), driven by the
// same compiled HTTP load generator (bench/go/httpload: N keep-alive
// connections, one request at a time on each).
//
//   no plugins                          the floor: the load generator must drive it well above every other row
//   APISIX opa -> opa run --server      APISIX's built-in `opa` plugin asking an OPA server whose Rego verifies
//                                       the JWT (io.jwt.decode_verify) and applies the platform and project rules
//   APISIX opa -> decision API          the same plugin asking Gatehouse's decision API (project policy, the
//                                       client's token read from the plugin's input)
//   Go runner: pass-through             the official Go runner (bench/go/go-runner) with its no-op plugin,
//                                       on an APISIX instance of its own (ext-plugin.cmd is per instance)
//   Gatehouse: example (pass-through)   Gatehouse's runner, `example {}`
//   Gatehouse: jwt alone                the chain's first plugin alone: the token verified, the identity forwarded
//   Gatehouse: jwt + opa                /rag/ask as apisix-conf/apisix.yaml has it: platform + caller's project
//   Gatehouse: jwt + opa, shadowed     the same route for a project whose policy has a candidate evaluated
//                                       after every decision (sample_percent 100) that agrees with it; and for
//                                       one whose candidate runs until its fuel is burned (a runaway candidate)
//   Gatehouse: jwt + opa, whole input   the same chain for a project whose policies (the platform's Rego stored as
//                                       a project's, and the project's) were stored without their input refs:
//                                       each shown the whole input document, as before gateways showed a policy
//                                       only the parts it reads
//   Gatehouse: jwt + opa, traced        the jwt + opa row on a runner of its own exporting spans (OTEL_*) to a
//                                       real OpenTelemetry Collector (dev/otelcol, spans dropped there)
//   Gatehouse, other workers: example, jwt + opa   the same two rows on an instance whose runner has one
//                                       worker (two where the runner's count is one): what a second worker
//                                       buys or costs where APISIX's nginx workers share the cores
//   Gatehouse: LLM route with budgets   /llm/v1/chat/completions as apisix.yaml has it: jwt, opa (body, budget),
//                                       llm-budget, vault (real Vault, cached key), path-rewrite, http-logger settle
//
// Rows alternate within each round (the first one rotating), and the median
// of each figure over rounds is reported: req/s, p50/p99/p99.9, the CPU per
// request of the process that decides (the runner's processes, primary and
// workers; the OPA server; the decision API), of APISIX's nginx processes, and
// of the load generator, each from /proc (utime + stime) over the round,
// divided by the requests served in it; and how often the deciding process's
// threads went to sleep and were woken, per request (voluntary context
// switches): a process woken for each request pays the wake-up each time.
//
// Env: BENCH_CONNECTIONS (8), BENCH_SECONDS per row and round (3),
// BENCH_ROUNDS (3), BENCH_ROWS=<key,...> only those rows (and the floor; keys as in
// Scenario, e.g. example,jwtOpa,exampleOther,jwtOpaOther), RUNNER_WORKERS for Gatehouse's runner (default: the runner's own, half the cores),
// BENCH_CPU_PROF=<dir>: afterwards, a third APISIX instance whose runner runs
// under `node --cpu-prof` (its one process, or primary and workers: cluster passes execArgv on)
// takes the jwt + opa load alone (or BENCH_CPU_PROF_ROW's, a Gatehouse row's key); the profiles
// are written to <dir> and the top functions by self time printed.
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { Document, parseDocument } from 'yaml';
import { createDemoIdentity, DEMO_PLATFORM_POLICY, DEMO_PROJECT_POLICY } from '../dev/demo.js';
import { pointRoutesAt, standaloneRoutesText } from '../dev/local-stack/index.js';
import { startLocalVault } from '../dev/local-vault/index.js';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { startLocalCollector } from '../dev/otelcol/index.js';
import { findApisix, freePort, startApisix, type ApisixHandle, type ApisixInstallation } from '../dev/apisix/index.js';
import { processTable, processTree, treeVoluntarySwitches } from '../dev/proc.js';
import { workerCount } from '../plugins/runner/config.js';
import { createEtcdClient } from '../etcd/index.js';
import { BudgetStore } from '../budget/store.js';
import { readUsage } from '../budget/usage.js';
import { candidateName, PLATFORM_POLICY_NAME } from '../policy/store/index.js';
import { readCandidateReports } from '../policy/candidate/index.js';
import { answers, buildGoTools, expectStatus, status, tcpAccepts } from './gateway-stack.js';
import {
  CLOCK_TICKS,
  benchOpaPath,
  machineLine,
  median,
  otherWorkerCount,
  benchRunnerEnv,
  runBench,
  startProcess,
  storeBenchPolicy,
  treeCpuMicros,
  type BenchProcess,
  type BenchScope,
} from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const workers = workerCount(process.env.RUNNER_WORKERS);
const otherWorkers = otherWorkerCount(workers);
const otherCount = `${otherWorkers} worker${otherWorkers === 1 ? '' : 's'}`;
const profileDir = process.env.BENCH_CPU_PROF ? resolve(process.env.BENCH_CPU_PROF) : null;
const profileRow = process.env.BENCH_CPU_PROF_ROW?.trim() || 'jwtOpa';
const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const execFileAsync = promisify(execFile);
const PROJECT = 'bench';
/** Projects deciding as PROJECT does, whose policy has a candidate shadowed on every decision. */
const SHADOW_PROJECT = 'bench-shadow';
const RUNAWAY_PROJECT = 'bench-runaway';
/** A project deciding as PROJECT does, with policies stored without input refs (shown the whole input). */
const WHOLE_INPUT_PROJECT = 'bench-whole-input';
/** The platform policy's Rego, stored as a project's without input refs, for WHOLE_INPUT_PROJECT's route. */
const WHOLE_INPUT_PLATFORM = 'bench-whole-input-platform';
/** A candidate that evaluates until the gateway's fuel bound stops it. */
const RUNAWAY_CANDIDATE = `package project.authz
import rego.v1
default allow := false
r := numbers.range(1, 100000)
allow if {
	every a in r {
		every b in r {
			a + b > 0
		}
	}
}
`;

/**
 * What Gatehouse's /rag/ask chain decides, for APISIX's built-in `opa` plugin
 * and an OPA server: the caller's JWT verified (ES256, issuer, audience,
 * expiry: the runner's `jwt` plugin), then the platform policy's rule (a
 * verified caller, no /internal/ path) and the project policy's (the
 * caller's project, a role it lets in, not an LLM call), as dev/demo.ts
 * writes them.
 */
const OPA_SERVER_POLICY = `package gatehouse.bench

import rego.v1

default allow := false

bearer := substring(input.request.headers.authorization, 7, -1) if startswith(input.request.headers.authorization, "Bearer ")

claims := payload if {
	[valid, _, payload] := io.jwt.decode_verify(bearer, {"cert": data.jwks, "iss": data.issuer, "aud": data.audience, "alg": "ES256"})
	valid
}

# The platform policy.
platform_allow if {
	claims.sub
	not startswith(input.request.path, "/internal/")
}

# The caller's project policy (this one project's).
project_allow if {
	claims.project == data.project
	claims.role == "admin"
}

project_allow if {
	claims.project == data.project
	not startswith(input.request.path, "/llm/")
	claims.role in data.valid_roles
}

allow if {
	platform_allow
	project_allow
}

status_code := 401 if not claims
`;

/** CPU µs of an nginx instance's processes (its process group) other than the runner's tree. */
function apisixCpuMicros(apisix: ApisixHandle): number {
  const runner = apisix.runnerPid();
  const table = processTable();
  const runnerTree = new Set(runner === null ? [] : processTree(runner, table));
  const ticks = table.filter((p) => p.pgrp === apisix.pid && !runnerTree.has(p.pid)).reduce((n, p) => n + p.cpuTicks, 0);
  return (ticks * 1e6) / CLOCK_TICKS;
}

interface LoadResult {
  calls: number;
  seconds: number;
  callsPerSecond: number;
  served: number;
  errors: number;
  statuses: Record<string, number>;
  reconnects: number;
  p50Us: number;
  p99Us: number;
  p999Us: number;
  cpuMicrosPerCall: number;
}

interface Row {
  name: string;
  reqPerSecond: number;
  p50: number;
  p99: number;
  p999: number;
  /** CPU µs per request of the process that decides (runner, OPA, decision API); null for none. */
  deciderCpu: number | null;
  /** Voluntary context switches per request of that process's threads (dev/proc.ts): how often it was put to sleep and woken. */
  deciderWakeups: number | null;
  apisixCpu: number;
  loadCpu: number;
}

interface Scenario {
  key:
    | 'direct'
    | 'opaServer'
    | 'opaDecision'
    | 'goRunner'
    | 'example'
    | 'jwtOnly'
    | 'jwtOpa'
    | 'jwtOpaShadow'
    | 'jwtOpaRunaway'
    | 'jwtOpaTraced'
    | 'exampleOther'
    | 'jwtOpaOther'
    | 'jwtOpaWholeInput'
    | 'jwtOpaNoMemo'
    | 'llm';
  name: string;
  /** Which process decides (its CPU per request is reported). */
  decider: string;
  apisix: ApisixHandle;
  deciderPid: (() => number | null) | null;
  path: string;
  method?: string;
  headers: string[];
  body?: string;
}

async function drive(load: string, scenario: Scenario, secondsToRun: number, warmup = 0.5): Promise<Row> {
  const deciderPid = scenario.deciderPid?.() ?? null;
  if (scenario.deciderPid && deciderPid === null) throw new Error(`${scenario.name}: its deciding process is not running`);
  const deciderBefore = deciderPid === null ? 0 : treeCpuMicros(deciderPid);
  const wakeupsBefore = deciderPid === null ? 0 : treeVoluntarySwitches(deciderPid);
  const apisixBefore = apisixCpuMicros(scenario.apisix);
  const args = [
    '-url',
    `${scenario.apisix.url}${scenario.path}`,
    '-connections',
    String(connections),
    '-seconds',
    String(secondsToRun),
    '-warmup',
    String(warmup),
  ];
  if (scenario.method) args.push('-method', scenario.method);
  for (const header of scenario.headers) args.push('-header', header);
  if (scenario.body !== undefined) args.push('-body', scenario.body);
  const { stdout } = await execFileAsync(load, args, { maxBuffer: 16 * 1024 * 1024 });
  const deciderAfter = deciderPid === null ? 0 : treeCpuMicros(deciderPid);
  const wakeupsAfter = deciderPid === null ? 0 : treeVoluntarySwitches(deciderPid);
  const apisixAfter = apisixCpuMicros(scenario.apisix);
  const result = JSON.parse(stdout) as LoadResult;
  // Fast and wrong is worthless: every answer must be the upstream's 200.
  if (result.errors > 0 || result.calls === 0)
    throw new Error(`${scenario.name}: ${result.errors} of ${result.calls + result.errors} requests failed (statuses ${JSON.stringify(result.statuses)})`);
  return {
    name: scenario.name,
    reqPerSecond: result.callsPerSecond,
    p50: result.p50Us,
    p99: result.p99Us,
    p999: result.p999Us,
    deciderCpu: deciderPid === null ? null : (deciderAfter - deciderBefore) / result.served,
    deciderWakeups: deciderPid === null ? null : (wakeupsAfter - wakeupsBefore) / result.served,
    apisixCpu: (apisixAfter - apisixBefore) / result.served,
    loadCpu: result.cpuMicrosPerCall,
  };
}

function medianRow(rows: Row[]): Row {
  const pick = (f: (r: Row) => number) => median(rows.map(f));
  return {
    name: rows[0]!.name,
    reqPerSecond: pick((r) => r.reqPerSecond),
    p50: pick((r) => r.p50),
    p99: pick((r) => r.p99),
    p999: pick((r) => r.p999),
    deciderCpu: rows[0]!.deciderCpu === null ? null : pick((r) => r.deciderCpu!),
    deciderWakeups: rows[0]!.deciderWakeups === null ? null : pick((r) => r.deciderWakeups!),
    apisixCpu: pick((r) => r.apisixCpu),
    loadCpu: pick((r) => r.loadCpu),
  };
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

/**
 * Self time by function over .cpuprofile files (Chrome's format, as node
 * --cpu-prof writes it), counting only the samples taken between `from` and
 * `to` (µs of the monotonic clock, which V8's sample times and
 * process.hrtime share): the load, not the start-up. Functions of the
 * evaluation pool's threads (a file's thread id other than 0) are marked.
 */
function summariseProfiles(files: string[], top: number, from: number, to: number): { lines: string[]; totalMs: number } {
  const self = new Map<string, number>();
  let total = 0;
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as { nodes: ProfileNode[]; startTime: number; samples: number[]; timeDeltas: number[] };
    const thread = basename(file).split('.')[4] === '0' ? '' : '[eval thread] ';
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    let at = profile.startTime;
    profile.samples.forEach((id, i) => {
      const delta = Math.max(0, profile.timeDeltas[i] ?? 0);
      at += delta;
      if (at < from || at > to) return;
      const frame = byId.get(id)!.callFrame;
      const where = frame.url
        ? ` ${frame.url
            .replace(/^file:\/\//, '')
            .replace(root, '')
            .replace(/^.*\/node_modules\//, 'node_modules/')}:${frame.lineNumber + 1}`
        : '';
      const key = `${thread}${frame.functionName || '(anonymous)'}${where}`;
      self.set(key, (self.get(key) ?? 0) + delta);
      total += delta;
    });
  }
  const idle = [...self.entries()].filter(([key]) => key.endsWith('(idle)')).reduce((n, [, us]) => n + us, 0);
  const lines = [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(
      ([key, us], i) =>
        `| ${i + 1} | \`${key}\` | ${(us / 1000).toFixed(0)} | ${((100 * us) / total).toFixed(1)}% | ${key.endsWith('(idle)') ? '' : `${((100 * us) / (total - idle)).toFixed(1)}%`} |`,
    );
  return { lines, totalMs: total / 1000 };
}

async function main({ processes, cleanups }: BenchScope) {
  const installation: ApisixInstallation | null = findApisix(root);
  if (!installation) throw new Error('no APISIX on this machine: `npm run setup` builds it from the APISIX kit, or set APISIX_HOME');
  const tools = buildGoTools();
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-gateway-'));
  const logger = pino({ level: 'warn' });
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  cleanups.unshift(() => etcd.cleanup());
  const vault = await startLocalVault();
  cleanups.unshift(() => vault.stop());
  await vault.kvPut('secret', `llm/${PROJECT}`, { api_key: 'sk-bench-0001' });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }');
  const identity = await createDemoIdentity(join(work, 'identity'));
  const identityEnv = {
    JWT_JWKS_FILE: identity.jwksFile,
    JWT_ISSUER: identity.identityConfig.issuer,
    JWT_AUDIENCE: identity.identityConfig.audience.join(','),
    JWT_ALGORITHMS: identity.identityConfig.algorithms.join(','),
  };
  const token = await identity.sign({ sub: 'dev', role: 'project_user', project: PROJECT });
  const outsider = await identity.sign({ sub: 'eve', role: 'project_user', project: 'other-team' });
  const shadowBearer = `authorization: Bearer ${await identity.sign({ sub: 'dev', role: 'project_user', project: SHADOW_PROJECT })}`;
  const runawayBearer = `authorization: Bearer ${await identity.sign({ sub: 'dev', role: 'project_user', project: RUNAWAY_PROJECT })}`;
  const wholeInputBearer = `authorization: Bearer ${await identity.sign({ sub: 'dev', role: 'project_user', project: WHOLE_INPUT_PROJECT })}`;

  // The policies of /rag/ask and /llm: the platform's and the project's, compiled by the real opa.
  await storeBenchPolicy(etcd.endpoints, PLATFORM_POLICY_NAME, DEMO_PLATFORM_POLICY.rego, JSON.stringify(DEMO_PLATFORM_POLICY.data));
  await storeBenchPolicy(etcd.endpoints, PROJECT, DEMO_PROJECT_POLICY.rego, JSON.stringify(DEMO_PROJECT_POLICY.data));
  const wholeInput = { wholeInput: true };
  await storeBenchPolicy(etcd.endpoints, WHOLE_INPUT_PLATFORM, DEMO_PLATFORM_POLICY.rego, JSON.stringify(DEMO_PLATFORM_POLICY.data), undefined, wholeInput);
  await storeBenchPolicy(etcd.endpoints, WHOLE_INPUT_PROJECT, DEMO_PROJECT_POLICY.rego, JSON.stringify(DEMO_PROJECT_POLICY.data), undefined, wholeInput);
  const shadowed = { samplePercent: 100, enforcePercent: 0 };
  for (const project of [SHADOW_PROJECT, RUNAWAY_PROJECT]) {
    await storeBenchPolicy(etcd.endpoints, project, DEMO_PROJECT_POLICY.rego, JSON.stringify(DEMO_PROJECT_POLICY.data));
  }
  await storeBenchPolicy(etcd.endpoints, candidateName(SHADOW_PROJECT), DEMO_PROJECT_POLICY.rego, JSON.stringify(DEMO_PROJECT_POLICY.data), shadowed);
  await storeBenchPolicy(etcd.endpoints, candidateName(RUNAWAY_PROJECT), RUNAWAY_CANDIDATE, '{}', shadowed);
  // A budget that never runs out: what is measured is the checking, reserving and settling.
  const budgets = createEtcdClient(etcd.endpoints);
  await new BudgetStore(budgets).put(PROJECT, { windows: [{ per: 'day', tokens: 1e12 }], block_tokens: 1e9 }, 'bench');
  budgets.close();

  const start = async (command: string, args: string[], env: Record<string, string>, ready: () => Promise<boolean>) => {
    const started = await startProcess(command, args, env, ready);
    processes.push(started);
    return started;
  };
  const upstreamPort = await freePort();
  await start(tools.upstream, ['-addr', `127.0.0.1:${upstreamPort}`], {}, () => tcpAccepts(upstreamPort));
  const upstream = `127.0.0.1:${upstreamPort}`;

  // opa run --server with the same decision, JWT verification in Rego, and
  // OPA's cache of io.jwt verification results on (the runner keeps one too).
  const opaDir = join(work, 'opa');
  mkdirSync(opaDir);
  writeFileSync(join(opaDir, 'bench.rego'), OPA_SERVER_POLICY);
  writeFileSync(
    join(opaDir, 'data.json'),
    JSON.stringify({
      jwks: readFileSync(identity.jwksFile, 'utf8'),
      issuer: identity.identityConfig.issuer,
      audience: identity.identityConfig.audience[0],
      project: PROJECT,
      valid_roles: DEMO_PROJECT_POLICY.data.valid_roles,
    }),
  );
  writeFileSync(join(opaDir, 'config.yaml'), 'caching:\n  inter_query_builtin_value_cache:\n    named:\n      io_jwt:\n        max_num_entries: 10000\n');
  const opaPort = await freePort();
  const opa = await start(
    benchOpaPath,
    [
      'run',
      '--server',
      '--addr',
      `127.0.0.1:${opaPort}`,
      '--skip-version-check',
      '--log-level',
      'error',
      '--config-file',
      join(opaDir, 'config.yaml'),
      join(opaDir, 'bench.rego'),
      join(opaDir, 'data.json'),
    ],
    {},
    () => answers(`http://127.0.0.1:${opaPort}/health`),
  );

  // Gatehouse's decision API, as deployed: its own process on the same etcd.
  const decisionPort = await freePort();
  const decision = await start(
    // Its log goes to stdout: onto stderr, where startProcess keeps the last lines for its errors (exec: the pid stays node's).
    '/bin/sh',
    ['-c', 'exec "$0" "$@" 1>&2', process.execPath, join(here, '..', 'decision-api', 'main.js')],
    {
      ...identityEnv,
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      DECISION_PORT: String(decisionPort),
      DECISION_HOST: '127.0.0.1',
      DECISION_STATE_DIR: join(work, 'decision-state'),
      LOG_LEVEL: 'warn',
    },
    () => answers(`http://127.0.0.1:${decisionPort}/readyz`),
  );

  // Gatehouse's instance: the repository's routes (rag, llm) and the rows' own, on one upstream. Every
  // row but the floor runs APISIX's prometheus plugin, as the repository's routes do: rows differ in how
  // they decide, nothing else.
  const routes = parseDocument(pointRoutesAt(readFileSync(join(root, 'apisix-conf', 'apisix.yaml'), 'utf8'), { rag: upstream, llm: upstream }));
  routes.addIn(['routes'], { id: 'direct', uris: ['/direct/*'], upstream_id: 'rag' });
  routes.addIn(['routes'], {
    id: 'opa-server',
    uris: ['/opa-server/*'],
    plugins: { prometheus: {}, opa: { host: `http://127.0.0.1:${opaPort}`, policy: 'gatehouse/bench' } },
    upstream_id: 'rag',
  });
  routes.addIn(['routes'], {
    id: 'opa-decision',
    uris: ['/opa-decision/*'],
    plugins: { prometheus: {}, opa: { host: `http://127.0.0.1:${decisionPort}`, policy: `${PROJECT}/project/authz` } },
    upstream_id: 'rag',
  });
  routes.addIn(['routes'], {
    id: 'example',
    uris: ['/example/*'],
    plugins: { prometheus: {}, 'ext-plugin-pre-req': { conf: [{ name: 'example', value: '{}' }], allow_degradation: false } },
    upstream_id: 'rag',
  });
  // The /rag/ask chain's first plugin alone: what verifying the token and forwarding the identity cost
  // (through the runner and APISIX, which applies the headers it sets), before any policy.
  routes.addIn(['routes'], {
    id: 'jwt-only',
    uris: ['/jwt-only/*'],
    plugins: { prometheus: {}, 'ext-plugin-pre-req': { conf: [{ name: 'jwt', value: '{}' }], allow_degradation: false } },
    upstream_id: 'rag',
  });
  // The /rag/ask chain with policies stored without their input refs: each shown the whole input, as
  // before gateways showed a policy only the parts it reads. The platform policy's Rego is stored as a
  // project's (the platform policy is one name for every route), so the route names it as project:.
  routes.addIn(['routes'], {
    id: 'whole-input',
    uris: ['/whole-input/*'],
    plugins: {
      prometheus: {},
      'ext-plugin-pre-req': {
        conf: [
          { name: 'jwt', value: '{}' },
          { name: 'opa', value: JSON.stringify({ policies: [`project:${WHOLE_INPUT_PLATFORM}`, 'caller-project'] }) },
        ],
        allow_degradation: false,
      },
    },
    upstream_id: 'rag',
  });
  const routesPath = join(work, 'apisix.yaml');
  writeFileSync(routesPath, standaloneRoutesText(routes));

  const runnerEnv = benchRunnerEnv({ etcdEndpoints: etcd.endpoints, workers, vault: { addr: vault.addr, ...approle }, extra: identityEnv });
  const startGatehouse = async (name: string, editCmd?: (config: Document) => void, extraEnv: Record<string, string> = {}) =>
    startApisix({
      installation,
      repoRoot: root,
      routesPath,
      port: await freePort(),
      workerProcesses: 2,
      // Its own settle port and state: the LLM route's http-logger posts to it.
      env: { ...runnerEnv, RUNNER_STATE_DIR: join(work, `${name}-state`), RUNNER_SETTLE_PORT: String(await freePort()), ...extraEnv },
      // APISIX's own `opa` plugin, as it ships, added to this instance's plugin list only.
      edit: (config) => {
        config.addIn(['plugins'], 'opa');
        editCmd?.(config);
      },
      logger,
    });
  const gatehouse = await startGatehouse('apisix-gatehouse');
  cleanups.unshift(() => gatehouse.stop());
  // The same, with traces on: every request's spans exported to a real collector.
  const collector = await startLocalCollector({ forward: false });
  cleanups.unshift(() => collector.stop());
  const traced = await startGatehouse('apisix-traced', undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint });
  cleanups.unshift(() => traced.stop());
  // The same with another number of runner workers: whether a second one pays, where APISIX shares the cores.
  const other = await startGatehouse('apisix-other-workers', undefined, { RUNNER_WORKERS: String(otherWorkers) });
  cleanups.unshift(() => other.stop());
  // The same with no decision memo: every decision evaluated, as when no input repeats.
  const noMemo = await startGatehouse('apisix-no-memo', undefined, { POLICY_DECISION_CACHE_MB: '0' });
  cleanups.unshift(() => noMemo.stop());

  // The Go runner's instance: the same config, its ext-plugin.cmd the Go runner.
  const goRoutesPath = join(work, 'apisix-go.yaml');
  writeFileSync(
    goRoutesPath,
    standaloneRoutesText(
      new Document({
        routes: [
          {
            id: 'go',
            uris: ['/go/*'],
            plugins: { prometheus: {}, 'ext-plugin-pre-req': { conf: [{ name: 'noop', value: '{}' }], allow_degradation: false } },
            upstream: { type: 'roundrobin', nodes: { [upstream]: 1 } },
          },
        ],
      }),
    ),
  );
  const goApisix = await startApisix({
    installation,
    repoRoot: root,
    routesPath: goRoutesPath,
    port: await freePort(),
    workerProcesses: 2,
    env: { PATH: process.env.PATH ?? '' },
    edit: (config) => config.setIn(['ext-plugin', 'cmd'], [tools.goRunner]),
    logger,
  });
  cleanups.unshift(() => goApisix.stop());

  const bearer = `authorization: Bearer ${token}`;
  const llmBody = JSON.stringify({ model: 'llama-3', max_tokens: 256, messages: [{ role: 'user', content: 'What does Gatehouse do?' }] });
  const runnerPid = (apisix: ApisixHandle) => () => apisix.runnerPid();
  const scenarios: Scenario[] = [
    { key: 'direct', name: 'no plugins', decider: '', apisix: gatehouse, deciderPid: null, path: '/direct/ask', headers: [bearer] },
    {
      key: 'opaServer',
      name: 'APISIX opa -> opa run --server (JWT + platform + project in Rego)',
      decider: 'opa',
      apisix: gatehouse,
      deciderPid: () => opa.child.pid ?? null,
      path: '/opa-server/ask',
      headers: [bearer],
    },
    {
      key: 'opaDecision',
      name: 'APISIX opa -> Gatehouse decision API (project policy)',
      decider: 'decision API',
      apisix: gatehouse,
      deciderPid: () => decision.child.pid ?? null,
      path: '/opa-decision/ask',
      headers: [bearer],
    },
    {
      key: 'goRunner',
      name: 'Go runner: pass-through (noop)',
      decider: 'Go runner',
      apisix: goApisix,
      deciderPid: runnerPid(goApisix),
      path: '/go/ask',
      headers: [bearer],
    },
    {
      key: 'example',
      name: 'Gatehouse runner: example (pass-through)',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/example/ask',
      headers: [bearer],
    },
    {
      key: 'jwtOnly',
      name: 'Gatehouse runner: jwt alone (the token verified, the identity forwarded)',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/jwt-only/ask',
      headers: [bearer],
    },
    {
      key: 'jwtOpa',
      name: 'Gatehouse runner: jwt + opa (platform + project, /rag/ask)',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/rag/ask',
      headers: [bearer],
    },
    {
      key: 'jwtOpaShadow',
      name: 'Gatehouse runner: jwt + opa, a candidate shadowed on every decision',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/rag/ask',
      headers: [shadowBearer],
    },
    {
      key: 'jwtOpaRunaway',
      name: 'Gatehouse runner: jwt + opa, a runaway candidate shadowed on every decision',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/rag/ask',
      headers: [runawayBearer],
    },
    {
      key: 'jwtOpaTraced',
      name: 'Gatehouse runner: jwt + opa, traced (OTLP to a collector)',
      decider: 'runner (traced)',
      apisix: traced,
      deciderPid: runnerPid(traced),
      path: '/rag/ask',
      headers: [bearer],
    },
    {
      key: 'exampleOther',
      name: `Gatehouse runner, ${otherCount}: example (pass-through)`,
      decider: `runner (${otherCount})`,
      apisix: other,
      deciderPid: runnerPid(other),
      path: '/example/ask',
      headers: [bearer],
    },
    {
      key: 'jwtOpaOther',
      name: `Gatehouse runner, ${otherCount}: jwt + opa (platform + project, /rag/ask)`,
      decider: `runner (${otherCount})`,
      apisix: other,
      deciderPid: runnerPid(other),
      path: '/rag/ask',
      headers: [bearer],
    },
    {
      key: 'jwtOpaWholeInput',
      name: 'Gatehouse runner: jwt + opa, every policy shown the whole input',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/whole-input/ask',
      headers: [wholeInputBearer],
    },
    {
      key: 'jwtOpaNoMemo',
      name: 'Gatehouse runner: jwt + opa, no decision memo (POLICY_DECISION_CACHE_MB=0)',
      decider: 'runner (no memo)',
      apisix: noMemo,
      deciderPid: runnerPid(noMemo),
      path: '/rag/ask',
      headers: [bearer],
    },
    {
      key: 'llm',
      name: 'Gatehouse runner: LLM route with budgets',
      decider: 'runner',
      apisix: gatehouse,
      deciderPid: runnerPid(gatehouse),
      path: '/llm/v1/chat/completions',
      method: 'POST',
      headers: [bearer, 'content-type: application/json'],
      body: llmBody,
    },
  ];

  // Fast and wrong is worthless: each row lets the caller through, and the
  // deciding ones refuse a caller of another project or without a token.
  const auth = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });
  for (const s of scenarios) {
    const init: RequestInit = {
      method: s.method ?? 'GET',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      ...(s.body ? { body: s.body } : {}),
    };
    await expectStatus(`${s.name}, the project's caller`, 200, () => status(s.apisix, s.path, init));
  }
  for (const key of ['opaServer', 'opaDecision', 'jwtOpa', 'jwtOpaWholeInput', 'jwtOpaOther', 'jwtOpaNoMemo'] as const) {
    const s = scenarios.find((x) => x.key === key)!;
    await expectStatus(`${s.name}, no token`, 401, () => status(s.apisix, s.path), 1);
    await expectStatus(`${s.name}, another project's caller`, 403, () => status(s.apisix, s.path, auth(outsider)), 1);
  }
  const jwtOnly = scenarios.find((x) => x.key === 'jwtOnly')!;
  await expectStatus(`${jwtOnly.name}, no token`, 401, () => status(jwtOnly.apisix, jwtOnly.path), 1);
  await expectStatus(
    'LLM route, a model the project does not allow',
    403,
    () =>
      status(gatehouse, '/llm/v1/chat/completions', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-5', max_tokens: 16, messages: [] }),
      }),
    1,
  );

  // What the deciding processes spend with no requests at all (watches, reports, timers): CPU per request includes it.
  const deciders = new Map(scenarios.filter((s) => s.deciderPid).map((s) => [s.decider, s.deciderPid!]));
  const idleBefore = new Map([...deciders].map(([name, pid]) => [name, treeCpuMicros(pid()!)]));
  await new Promise((r) => setTimeout(r, 2_000));
  const idle = [...deciders].map(([name, pid]) => `${name} ${((treeCpuMicros(pid()!) - idleBefore.get(name)!) / 2_000).toFixed(1)} ms/s`);

  // BENCH_ROWS: only these rows (and the floor), for a closer look at a few with more rounds.
  const only = process.env.BENCH_ROWS?.split(',').map((key) => key.trim());
  const measured = only ? scenarios.filter((s) => s.key === 'direct' || only.includes(s.key)) : scenarios;
  const results = new Map<string, Row[]>();
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < measured.length; i++) {
      const scenario = measured[(i + round) % measured.length]!;
      results.set(scenario.key, [...(results.get(scenario.key) ?? []), await drive(tools.load, scenario, seconds)]);
    }
  }
  const rows = new Map(measured.map((s) => [s.key, medianRow(results.get(s.key)!)]));
  const row = (key: Scenario['key']) => rows.get(key)!;
  const ran = (...keys: Scenario['key'][]) => keys.every((key) => rows.has(key));

  console.log(machineLine());
  console.log(
    `through APISIX 3.9.1 (2 nginx workers) to a Go upstream; load: bench/go/httpload, ${connections} connections; ${seconds}s x ${rounds} rounds (median); ` +
      `Gatehouse RUNNER_WORKERS=${workers}; loadavg at the end ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`,
  );
  console.log(`CPU with no requests (included in CPU per request): ${idle.join(', ')}\n`);
  const direct = row('direct');
  console.log(
    '| scenario | req/s | p50 µs | p99 µs | p99.9 µs | req/s vs no plugins | deciding process | its CPU µs/req | its wake-ups/req | APISIX CPU µs/req | load generator CPU µs/req |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|');
  for (const s of measured) {
    const r = row(s.key);
    console.log(
      `| ${r.name} | ${r.reqPerSecond.toFixed(0)} | ${r.p50.toFixed(0)} | ${r.p99.toFixed(0)} | ${r.p999.toFixed(0)} | ${(r.reqPerSecond / direct.reqPerSecond).toFixed(2)}x | ` +
        `${s.decider} | ${r.deciderCpu === null ? '' : r.deciderCpu.toFixed(1)} | ${r.deciderWakeups === null ? '' : r.deciderWakeups.toFixed(2)} | ${r.apisixCpu.toFixed(1)} | ${r.loadCpu.toFixed(1)} |`,
    );
  }

  const others = measured.filter((s) => s.key !== 'direct').map((s) => row(s.key).reqPerSecond);
  const floorRatio = direct.reqPerSecond / Math.max(...others);
  console.log(
    `\nload generator check: the no-plugin route went ${floorRatio.toFixed(2)}x the fastest other row ` +
      `${floorRatio >= 1.2 ? '(the load generator is not the limit)' : '(NOT well above: the load generator, or the machine, may be the limit; do not trust the ratios)'}`,
  );
  const ratio = (a: number, b: number) => a / b;
  const targets: [string, Scenario['key'], Scenario['key'], number][] = [
    ['decision API vs OPA server (req/s, both through APISIX opa)', 'opaDecision', 'opaServer', 1.0],
    ['jwt + opa route vs APISIX opa -> OPA server (req/s)', 'jwtOpa', 'opaServer', 1.5],
    ['Gatehouse pass-through vs Go runner pass-through (req/s)', 'example', 'goRunner', 1.0],
    ['jwt + opa with a candidate shadowed on every decision vs without (req/s)', 'jwtOpaShadow', 'jwtOpa', 0.9],
    // The evaluation bounds let a runaway tenant hold the thread about a tenth of the time (evaluator.ts).
    ['jwt + opa with a runaway candidate shadowed on every decision vs without (req/s), within the bounds', 'jwtOpaRunaway', 'jwtOpa', 0.9],
  ];
  console.log('\n| target | measured | wanted | |');
  console.log('|---|---:|---:|---|');
  for (const [what, a, b, wanted] of targets) {
    if (!ran(a, b)) continue;
    const got = ratio(row(a).reqPerSecond, row(b).reqPerSecond);
    console.log(`| ${what} | ${got.toFixed(2)}x | >= ${wanted.toFixed(1)}x | ${got >= wanted ? 'met' : 'NOT met'} |`);
  }
  if (ran('jwtOpa')) {
    const chainCpu = row('jwtOpa').deciderCpu!;
    console.log(`| runner CPU per request on the /rag/ask chain | ${chainCpu.toFixed(1)} µs | <= 60 µs | ${chainCpu <= 60 ? 'met' : 'NOT met'} |`);
  }
  const reported: [string, Scenario['key'], Scenario['key']][] = [
    ['jwt alone vs pass-through: what the token and its forwarded identity cost', 'jwtOnly', 'example'],
    ['jwt + opa vs jwt alone: what the two policies cost', 'jwtOpa', 'jwtOnly'],
    ['jwt + opa with traces on vs off', 'jwtOpaTraced', 'jwtOpa'],
    ['jwt + opa, each policy shown the parts of the input it reads vs the whole input', 'jwtOpa', 'jwtOpaWholeInput'],
    ['jwt + opa with the decision memo vs without (every request repeats the same input)', 'jwtOpa', 'jwtOpaNoMemo'],
    ['jwt + opa with no decision memo vs APISIX opa -> OPA server', 'jwtOpaNoMemo', 'opaServer'],
    [`pass-through with ${otherWorkers} runner worker(s) vs ${workers}`, 'exampleOther', 'example'],
    [`jwt + opa with ${otherWorkers} runner worker(s) vs ${workers}`, 'jwtOpaOther', 'jwtOpa'],
  ];
  for (const [what, a, b] of reported) {
    if (!ran(a, b)) continue;
    console.log(
      `| ${what} (req/s; the deciding process's CPU per request ${row(a).deciderCpu!.toFixed(1)} µs vs ${row(b).deciderCpu!.toFixed(1)} µs) | ${ratio(row(a).reqPerSecond, row(b).reqPerSecond).toFixed(2)}x | (reported) | |`,
    );
  }

  await new Promise((r) => setTimeout(r, 2_000)); // the last answers' settling and usage writes
  const reader = createEtcdClient(etcd.endpoints);
  const usage = await readUsage(reader, PROJECT, Date.now() - 3_600_000, Date.now() + 1);
  console.log(`\nLLM route: ${usage.total.requests} calls settled, ${usage.total.charged_tokens} tokens charged (${usage.total.unsettled} unsettled)`);
  // The shadowing happened: what the gateways reported of each candidate.
  for (const project of [SHADOW_PROJECT, RUNAWAY_PROJECT]) {
    const reports = await readCandidateReports(reader, project, 1);
    const sum = (field: 'evaluated' | 'diverged' | 'errors' | 'dropped') => reports.reduce((n, r) => n + r[field], 0);
    console.log(
      `candidate of ${project}: ${sum('evaluated')} evaluated, ${sum('diverged')} diverged, ${sum('errors')} stopped or failed, ${sum('dropped')} dropped (too many pending, or the candidate resting)`,
    );
  }
  reader.close();

  if (profileDir) {
    // A runner of its own under the profiler, so that the rows above are not.
    await gatehouse.stop();
    await traced.stop();
    await goApisix.stop();
    mkdirSync(profileDir, { recursive: true });
    const profiled = await startGatehouse('apisix-profiled', (config) => {
      const cmd = (config.toJS() as { 'ext-plugin': { cmd: string[] } })['ext-plugin'].cmd;
      config.setIn(['ext-plugin', 'cmd'], [cmd[0], '--cpu-prof', `--cpu-prof-dir=${profileDir}`, ...cmd.slice(1)]);
    });
    cleanups.unshift(() => profiled.stop());
    const row = scenarios.find((x) => x.key === profileRow && x.apisix === gatehouse);
    if (!row) throw new Error(`BENCH_CPU_PROF_ROW: ${profileRow} is not a row of Gatehouse's main instance`);
    const s = { ...row, apisix: profiled, deciderPid: runnerPid(profiled) };
    await expectStatus('profiled runner', 200, () => status(profiled, s.path, auth(token)));
    const primary = profiled.runnerPid()!;
    // The workers, or with one worker the runner's only process.
    const children = processTable()
      .filter((p) => p.ppid === primary)
      .map((p) => p.pid);
    const profiledPids = children.length > 0 ? children : [primary];
    const before = new Set(readdirSync(profileDir));
    const loadFrom = Number(process.hrtime.bigint() / 1000n) + 1_000_000; // after the load generator's 1 s warm-up
    const r = await drive(tools.load, s, seconds * rounds, 1);
    const loadTo = Number(process.hrtime.bigint() / 1000n);
    // The runner stops its workers (SIGTERM) and they write their profiles as they exit.
    process.kill(primary, 'SIGTERM');
    for (let waited = 0; waited < 15_000 && [primary, ...profiledPids].some((pid) => existsSync(`/proc/${pid}`)); waited += 100)
      await new Promise((res) => setTimeout(res, 100));
    await profiled.stop();
    const written = readdirSync(profileDir).filter((f) => !before.has(f) && f.endsWith('.cpuprofile'));
    const ofWorkers = written.filter((f) => profiledPids.some((pid) => basename(f).split('.')[3] === String(pid)));
    console.log(
      `\nCPU profile of the runner's deciding processes (pids ${profiledPids.join(', ')}) under the jwt + opa load: ${r.reqPerSecond.toFixed(0)} req/s for ${seconds * rounds}s (with the profiler on)`,
    );
    console.log(`profiles in ${profileDir}: ${ofWorkers.join(', ') || '(none written)'}`);
    if (ofWorkers.length > 0) {
      const { lines, totalMs } = summariseProfiles(
        ofWorkers.map((f) => join(profileDir, f)),
        25,
        loadFrom,
        loadTo,
      );
      console.log(
        `\nsampled ${totalMs.toFixed(0)} ms during the measured load, over ${ofWorkers.length} threads (workers' main threads and evaluation threads); top 25 by self time:\n`,
      );
      console.log('| # | function | self ms | % of all | % of non-idle |');
      console.log('|---:|---|---:|---:|---:|');
      for (const line of lines) console.log(line);
    }
  }
}

runBench(main);
