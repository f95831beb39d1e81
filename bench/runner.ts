// npm run bench:runner — Gatehouse's runner beside the official Go runner
// (apache/apisix-go-plugin-runner v0.5.0, bench/go/go-runner: a no-op and a
// stop plugin), both driven by the same compiled load generator
// (bench/go/loadgen: N connections, one call at a time on each, as APISIX
// calls), and a bare echo server as the floor: the load generator must go
// faster against it than against either runner, or it is measuring itself.
//
// A second floor, a Node server that only reads each frame and writes a
// canned answer (bench/node-echo.ts), shows what Node's sockets alone cost per
// call: the least any Node runner can spend.
//
// For each scenario: calls/s, p50/p99/p99.9 latency, and CPU per call: the
// runner's own CPU time (its process tree: primary, workers, threads, from
// /proc) over the calls it answered. Scenarios alternate within each round
// so machine noise hits them alike; the median of each figure is reported.
//
// Paced rows: the same load at a fixed rate (BENCH_PACED_RATE calls/s over
// all connections, each connection on its own schedule), about what APISIX
// hands a runner in bench:gateway. Back to back, a runner's process is always
// busy reading; paced, it sleeps between calls and is woken for the next few
// (about one wake-up every two or three calls, as behind APISIX: bench:gateway
// counts them). The two together show what sleeping and waking cost. Each
// process's CPU with no calls is printed beside them (included in CPU/call).
//
// Two more rows of the jwt + opa chain: every call's path new (no input
// repeats: the decision memo misses, and the policy version soon rests), and
// a runner with the decision memo off (POLICY_DECISION_CACHE_MB=0).
//
// Env: BENCH_CONNECTIONS (8), BENCH_SECONDS per scenario and round (5),
// BENCH_ROUNDS (3), RUNNER_WORKERS for Gatehouse's runner (default: the runner's own, half the cores; a second
// runner has one process, or two workers where the first has one),
// BENCH_PACED_RATE (3000).
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { decodeHttpReqCallResponse, RpcType, type HttpReqCallRequest } from '../plugins/protocol/index.js';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { workerCount } from '../plugins/runner/config.js';
import {
  BENCH_PROJECT_DATA,
  BENCH_PROJECT_POLICY,
  benchIdentity,
  storeBenchPolicy,
  driveRunner,
  machineLine,
  median,
  otherWorkerCount,
  prepareConf,
  retryUntilReady,
  socketAccepts,
  startProcess,
  treeCpuMicros,
  type BenchProcess,
} from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const workers = workerCount(process.env.RUNNER_WORKERS);
const otherWorkers = otherWorkerCount(workers);
const servedBy = (n: number) => (n === 1 ? '1 process' : `${n} workers`);
const pacedRate = Number(process.env.BENCH_PACED_RATE ?? 3000);
const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const bin = join(root, '.local', 'bin');
const execFileAsync = promisify(execFile);

const POLICY = BENCH_PROJECT_POLICY;
const DATA = BENCH_PROJECT_DATA;

/** Builds the Go yardstick (cached by Go after the first time). */
function buildGoTools(): void {
  const dir = join(root, 'bench', 'go');
  for (const [out, pkg] of [
    ['gatehouse-bench-go-runner', './go-runner'],
    ['gatehouse-ext-plugin-load', './loadgen'],
    ['gatehouse-ext-plugin-echo', './echo'],
  ] as const) {
    execFileSync('go', ['build', '-o', join(bin, out), pkg], { cwd: dir, stdio: 'inherit' });
  }
}

interface LoadResult {
  calls: number;
  errors: number;
  seconds: number;
  callsPerSecond: number;
  p50Us: number;
  p99Us: number;
  p999Us: number;
}

interface Row {
  name: string;
  callsPerSecond: number;
  p50: number;
  p99: number;
  p999: number;
  cpuPerCall: number | null;
  errors: number;
}

interface Scenario {
  name: string;
  server: BenchProcess;
  conf: { name: string; value: string }[];
  extraArgs?: string[];
  /** CPU per call is measured for runners, not for the floor. */
  measureCpu: boolean;
}

async function drive(scenario: Scenario): Promise<Row> {
  const pid = scenario.server.child.pid!;
  const before = treeCpuMicros(pid);
  const { stdout } = await execFileAsync(join(bin, 'gatehouse-ext-plugin-load'), [
    '-socket',
    scenario.server.socketPath!,
    '-connections',
    String(connections),
    '-seconds',
    String(seconds),
    '-warmup',
    '0',
    '-conf',
    JSON.stringify(scenario.conf),
    ...(scenario.extraArgs ?? []),
  ]);
  const after = treeCpuMicros(pid);
  const result = JSON.parse(stdout) as LoadResult;
  if (result.errors > 0) throw new Error(`${scenario.name}: ${result.errors} calls failed`);
  return {
    name: scenario.name,
    callsPerSecond: result.callsPerSecond,
    p50: result.p50Us,
    p99: result.p99Us,
    p999: result.p999Us,
    // Includes the runner's share of the PrepareConf: one call among many.
    cpuPerCall: scenario.measureCpu ? (after - before) / result.calls : null,
    errors: result.errors,
  };
}

function medianRow(rows: Row[]): Row {
  const pick = (f: (r: Row) => number) => median(rows.map(f));
  return {
    name: rows[0]!.name,
    callsPerSecond: pick((r) => r.callsPerSecond),
    p50: pick((r) => r.p50),
    p99: pick((r) => r.p99),
    p999: pick((r) => r.p999),
    cpuPerCall: rows[0]!.cpuPerCall === null ? null : pick((r) => r.cpuPerCall!),
    errors: rows.reduce((n, r) => n + r.errors, 0),
  };
}

function printRows(rows: Row[], baselines: Map<string, Row>): void {
  console.log('| scenario | calls/s | p50 µs | p99 µs | p99.9 µs | CPU µs/call | calls/s vs Go | p99 vs Go | CPU/call vs Go |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  const f = (n: number) => n.toFixed(0);
  for (const row of rows) {
    const go = baselines.get(row.name);
    const vs = (a: number | null, b: number | null | undefined) => (a !== null && b ? `${(a / b).toFixed(2)}x` : '');
    console.log(
      `| ${row.name} | ${f(row.callsPerSecond)} | ${f(row.p50)} | ${f(row.p99)} | ${f(row.p999)} | ${row.cpuPerCall === null ? '' : row.cpuPerCall.toFixed(1)} | ${vs(row.callsPerSecond, go?.callsPerSecond)} | ${vs(row.p99, go?.p99)} | ${vs(row.cpuPerCall, go?.cpuPerCall)} |`,
    );
  }
}

/** The same scenarios at BENCH_PACED_RATE calls/s, named "... paced". */
function paced(scenarios: Scenario[]): Scenario[] {
  return scenarios.map((s) => ({
    ...s,
    name: `${s.name}, paced at ${pacedRate}/s`,
    extraArgs: [...(s.extraArgs ?? []), '-rate', String(pacedRate)],
  }));
}

/** A process tree's CPU with no calls, in ms per second (over one second). */
async function idleCpuMsPerSecond(pid: number): Promise<number> {
  const before = treeCpuMicros(pid);
  await new Promise((resolve) => setTimeout(resolve, 1000));
  return (treeCpuMicros(pid) - before) / 1000;
}

async function main() {
  buildGoTools();
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-runner-'));
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const processes: BenchProcess[] = [];
  const start = async (name: string, command: string, args: string[], env: Record<string, string>) => {
    const socketPath = join(work, `${name}.sock`);
    const started = await startProcess(command, args, { ...env, APISIX_LISTEN_ADDRESS: `unix:${socketPath}`, APISIX_CONF_EXPIRE_TIME: '3600' }, () =>
      socketAccepts(socketPath),
    );
    started.socketPath = socketPath;
    processes.push(started);
    return started;
  };
  try {
    const identity = await benchIdentity(work);
    const analyst = await identity.sign({ sub: 'ana', role: 'analyst', project: 'bench' });
    await storeBenchPolicy(etcd.endpoints, 'bench', POLICY, JSON.stringify(DATA));

    const floor = await start('floor', join(bin, 'gatehouse-ext-plugin-echo'), ['-socket', join(work, 'floor.sock')], {});
    // What a Node server pays per call before doing anything: Node's own floor.
    const nodeFloor = await start('node-floor', process.execPath, [join(here, 'node-echo.js'), join(work, 'node-floor.sock')], {});
    // The Go runner caches confs by PrepareConf's key: one process per conf.
    const goNoop = await start('go-noop', join(bin, 'gatehouse-bench-go-runner'), [], {});
    const goStop = await start('go-stop', join(bin, 'gatehouse-bench-go-runner'), [], {});
    const runnerEnv = {
      ...identity.env,
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      RUNNER_METRICS_PORT: 'off',
      RUNNER_STATE_DIR: join(work, 'state'),
      RUNNER_WORKERS: String(workers),
    };
    const gatehouse = await start('gatehouse', process.execPath, [join(here, '../plugins/runner/main.js')], runnerEnv);
    const gatehouseOther = await start('gatehouse-other', process.execPath, [join(here, '../plugins/runner/main.js')], {
      ...runnerEnv,
      RUNNER_STATE_DIR: join(work, 'state-other'),
      RUNNER_WORKERS: String(otherWorkers),
    });
    // As the first, with every decision evaluated: the decision memo off.
    const gatehouseNoMemo = await start('gatehouse-no-memo', process.execPath, [join(here, '../plugins/runner/main.js')], {
      ...runnerEnv,
      RUNNER_STATE_DIR: join(work, 'state-no-memo'),
      POLICY_DECISION_CACHE_MB: '0',
    });

    const chain = [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["caller-project"]}' },
    ];
    // Fast and wrong is worthless: the chain must allow this caller (a Rewrite), once the policy is loaded.
    const request: HttpReqCallRequest = {
      id: 0,
      srcIp: new Uint8Array([127, 0, 0, 1]),
      method: 'POST',
      path: '/rag/ask',
      args: [],
      headers: [{ name: 'authorization', value: `Bearer ${analyst}` }],
      confToken: 0,
    };
    for (const runner of [gatehouse, gatehouseNoMemo]) {
      const confToken = await prepareConf(runner.socketPath!, chain);
      await retryUntilReady(() =>
        driveRunner({
          name: 'check',
          socketPath: runner.socketPath!,
          request: { ...request, confToken },
          connections: 4,
          seconds: 0.2,
          check: (type, payload) => {
            if (type !== RpcType.HTTPReqCall || decodeHttpReqCallResponse(payload).action?.type !== 'rewrite')
              throw new Error('the jwt + opa chain did not allow the request');
          },
        }),
      );
    }

    const stopConf = (plugin: string, value: object) => [{ name: plugin, value: JSON.stringify(value) }];
    const chainArgs = ['-method', 'POST', '-path', '/rag/ask', '-header', `authorization: Bearer ${analyst}`];
    const busy: Scenario[] = [
      { name: 'floor: bare echo (Go)', server: floor, conf: stopConf('noop', {}), measureCpu: false },
      { name: 'floor: bare echo (Node, one process)', server: nodeFloor, conf: stopConf('noop', {}), measureCpu: true },
      { name: 'no-op: Go runner', server: goNoop, conf: stopConf('noop', {}), measureCpu: true },
      { name: `no-op: Gatehouse, ${servedBy(workers)}`, server: gatehouse, conf: stopConf('example', {}), measureCpu: true },
      { name: `no-op: Gatehouse, ${servedBy(otherWorkers)}`, server: gatehouseOther, conf: stopConf('example', {}), measureCpu: true },
      { name: 'stop: Go runner', server: goStop, conf: stopConf('stop', { status: 200, body: 'ok' }), measureCpu: true },
      { name: `stop: Gatehouse, ${servedBy(workers)}`, server: gatehouse, conf: stopConf('example', { stop: { status: 200, body: 'ok' } }), measureCpu: true },
      { name: `jwt + opa: Gatehouse, ${servedBy(workers)}`, server: gatehouse, conf: chain, extraArgs: chainArgs, measureCpu: true },
      { name: `jwt + opa: Gatehouse, ${servedBy(otherWorkers)}`, server: gatehouseOther, conf: chain, extraArgs: chainArgs, measureCpu: true },
      // The same chain where no input repeats (each call's path is new), and with the decision memo off.
      {
        name: `jwt + opa, a new path every call: Gatehouse, ${servedBy(workers)}`,
        server: gatehouse,
        conf: chain,
        extraArgs: [...chainArgs, '-distinct-paths'],
        measureCpu: true,
      },
      { name: `jwt + opa, no decision memo: Gatehouse, ${servedBy(workers)}`, server: gatehouseNoMemo, conf: chain, extraArgs: chainArgs, measureCpu: true },
    ];
    // Paced as well: each runner's no-op and jwt + opa rows.
    const scenarios = [...busy, ...paced(busy.filter((s) => s.name.startsWith('no-op') || s.name.startsWith('jwt + opa')))];
    const results = new Map<string, Row[]>();
    for (let round = 0; round < rounds; round++) {
      for (const scenario of scenarios) results.set(scenario.name, [...(results.get(scenario.name) ?? []), await drive(scenario)]);
    }
    const idle = [
      ['Go runner', await idleCpuMsPerSecond(goNoop.child.pid!)],
      [`Gatehouse, ${servedBy(workers)}`, await idleCpuMsPerSecond(gatehouse.child.pid!)],
      [`Gatehouse, ${servedBy(otherWorkers)}`, await idleCpuMsPerSecond(gatehouseOther.child.pid!)],
      [`Gatehouse, no decision memo`, await idleCpuMsPerSecond(gatehouseNoMemo.child.pid!)],
    ] as const;
    const rows = scenarios.map((s) => medianRow(results.get(s.name)!));
    const byName = new Map(rows.map((r) => [r.name, r]));
    const goNoopRow = byName.get('no-op: Go runner')!;
    const goStopRow = byName.get('stop: Go runner')!;
    const baselines = new Map<string, Row>();
    for (const row of rows) {
      if (row.name.startsWith('no-op: Gatehouse'))
        baselines.set(row.name, row.name.includes('paced') ? byName.get(`no-op: Go runner, paced at ${pacedRate}/s`)! : goNoopRow);
      if (row.name.startsWith('stop: Gatehouse')) baselines.set(row.name, goStopRow);
    }
    console.log(machineLine());
    console.log(
      `load: bench/go/loadgen, ${connections} connections, ${seconds}s per scenario, ${rounds} rounds (median); Gatehouse RUNNER_WORKERS=${workers}\n`,
    );
    console.log(`CPU with no calls (included in CPU per call): ${idle.map(([name, ms]) => `${name} ${ms.toFixed(1)} ms/s`).join(', ')}\n`);
    printRows(rows, baselines);
    console.log('\nCPU per call paced vs back to back (what sleeping between calls and waking for them adds):');
    for (const row of rows.filter((r) => r.name.includes(', paced at '))) {
      const busy = byName.get(row.name.slice(0, row.name.indexOf(', paced at ')))!;
      console.log(
        `- ${busy.name}: ${row.cpuPerCall!.toFixed(1)} µs at ${row.callsPerSecond.toFixed(0)} calls/s vs ${busy.cpuPerCall!.toFixed(1)} µs at ${busy.callsPerSecond.toFixed(0)} calls/s (${(row.cpuPerCall! / busy.cpuPerCall!).toFixed(2)}x)`,
      );
    }
    const floorRow = byName.get('floor: bare echo (Go)')!;
    const fastestRunner = Math.max(...rows.filter((r) => !r.name.startsWith('floor')).map((r) => r.callsPerSecond));
    console.log(
      `\nfloor check: the bare echo went ${(floorRow.callsPerSecond / fastestRunner).toFixed(2)}x the fastest runner ${floorRow.callsPerSecond > fastestRunner ? '(the load generator is not the limit)' : '(NOT faster: the load generator may be the limit)'}`,
    );
  } finally {
    for (const p of processes) await p.stop();
    await etcd.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
