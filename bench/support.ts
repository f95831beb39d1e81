// What the benchmarks share: starting processes on sockets, driving the
// runner as APISIX does, HDR histograms and printing.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { cpus, totalmem } from 'node:os';
import hdr from 'hdr-histogram-js';
import { parse } from 'yaml';
import {
  FrameConnection,
  RpcType,
  decodeExtraInfoRequest,
  decodePrepareConfResponse,
  encodeExtraInfoResponse,
  encodeHttpReqCallRequest,
  encodePrepareConfRequest,
  type HttpReqCallRequest,
  type ExtraInfoRequest,
} from '../plugins/protocol/index.js';
import { RegoCompiler, policySubmission, type CompiledPolicy } from '../cms/rego-compiler.js';
import { createEtcdClient } from '../etcd/index.js';
import { PolicyStore, type CandidateRollout } from '../policy/store/index.js';
import { DEMO_PROJECT_POLICY } from '../dev/demo.js';
import { commandLine, processTable, processTree } from '../dev/proc.js';
import { opaPath, packageRoot } from '../runtime/paths.js';

/** The opa the benchmarks compile with: OPA_PATH, else the one setup builds. */
export const benchOpaPath = opaPath(process.env.OPA_PATH);

/** Compiles `rego` with the real opa and stores it as `name` (a candidate's stored name takes its `rollout`). */
export async function storeBenchPolicy(
  etcdEndpoints: string[],
  name: string,
  rego: string,
  dataText: string,
  rollout?: CandidateRollout,
  options: { metered?: boolean; wholeInput?: boolean } = {},
): Promise<CompiledPolicy> {
  // Metered as the CMS stores it, unless told (a row with POLICY_EVAL_FUEL=off must get the wasm as opa built it).
  const compiled = await new RegoCompiler({ opaPath: benchOpaPath, metered: options.metered ?? true }).compile(rego, dataText);
  const submission = policySubmission(rego, dataText, compiled, 'bench');
  // wholeInput: stored without its input refs, so that gateways show it the whole input (a row to compare with).
  if (options.wholeInput) delete submission.inputRefs;
  const client = createEtcdClient(etcdEndpoints);
  try {
    await new PolicyStore(client).put(name, { ...submission, ...(rollout ? { rollout } : {}) });
  } finally {
    client.close();
  }
  return compiled;
}

/** Clock ticks a second, the unit of /proc's CPU times. */
export const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** CPU time (µs: utime + stime from /proc) of a process and all its descendants, threads included. */
export function treeCpuMicros(rootPid: number): number {
  const table = processTable();
  const tree = new Set(processTree(rootPid, table));
  const ticks = table.filter((p) => tree.has(p.pid)).reduce((n, p) => n + p.cpuTicks, 0);
  return (ticks * 1e6) / CLOCK_TICKS;
}

/** The project policy the runner and decision benchmarks decide with: a role from the data, the method, the path, a header. */
export const BENCH_PROJECT_POLICY = `package project.authz
import rego.v1

default allow := false

allow if {
	input.user.role in data.valid_roles
	input.request.method in {"GET", "POST"}
	startswith(input.request.path, "/rag/")
	not input.request.headers["x-debug-override"]
}
`;
export const BENCH_PROJECT_DATA = { valid_roles: ['analyst', 'admin'] };

/**
 * The worker count of the second Gatehouse runner a benchmark runs beside
 * one of `workers`, to show what a worker more or less buys: one process,
 * or two workers where the first has one.
 */
export function otherWorkerCount(workers: number): number {
  return workers === 1 ? 2 : 1;
}

/** The environment the gateway benchmarks give Gatehouse's runner (through APISIX): etcd, opa, its workers, Vault by AppRole, metrics off. */
export function benchRunnerEnv(options: {
  etcdEndpoints: string[];
  workers: number;
  vault: { addr: string; roleId: string; secretId: string };
  extra?: Record<string, string>;
}): Record<string, string> {
  return {
    PATH: process.env.PATH ?? '',
    LOG_LEVEL: 'warn',
    ETCD_ENDPOINTS: options.etcdEndpoints.join(','),
    OPA_PATH: benchOpaPath,
    RUNNER_METRICS_PORT: 'off',
    RUNNER_WORKERS: String(options.workers),
    VAULT_ADDR: options.vault.addr,
    VAULT_ROLE_ID: options.vault.roleId,
    VAULT_SECRET_ID: options.vault.secretId,
    ...options.extra,
  };
}

export const BENCH_ISSUER = 'https://issuer.bench.gatehouse';
export const BENCH_AUDIENCE = 'gatehouse';

export interface BenchIdentity {
  jwksFile: string;
  /** JWT_JWKS_FILE, JWT_ISSUER, JWT_AUDIENCE for the processes under test. */
  env: Record<'JWT_JWKS_FILE' | 'JWT_ISSUER' | 'JWT_AUDIENCE', string>;
  /** A token for `claims`, valid for two hours. */
  sign(claims: Record<string, unknown>): Promise<string>;
}

/** One ES256 signing key, its JWKS written to `dir`, and tokens signed with it. */
export async function benchIdentity(dir: string): Promise<BenchIdentity> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwksFile = join(dir, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' }] }));
  return {
    jwksFile,
    env: { JWT_JWKS_FILE: jwksFile, JWT_ISSUER: BENCH_ISSUER, JWT_AUDIENCE: BENCH_AUDIENCE },
    sign: (claims) =>
      new SignJWT(claims)
        .setProtectedHeader({ alg: 'ES256', kid: 'bench' })
        .setIssuer(BENCH_ISSUER)
        .setAudience(BENCH_AUDIENCE)
        .setIssuedAt()
        .setExpirationTime('2h')
        .sign(privateKey),
  };
}

export interface Stats {
  name: string;
  opsPerSecond: number;
  p50: number;
  p99: number;
  p999: number;
}

export function machineLine(): string {
  return `machine: ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}`;
}

export function newHistogram() {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: 3 });
}

export type Histogram = ReturnType<typeof newHistogram>;

export function statsOf(name: string, histogram: Histogram, ops: number, seconds: number): Stats {
  return {
    name,
    opsPerSecond: ops / seconds,
    p50: histogram.getValueAtPercentile(50),
    p99: histogram.getValueAtPercentile(99),
    p999: histogram.getValueAtPercentile(99.9),
  };
}

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** The p-th percentile of a few measured values (the value at index floor(p% of their count), sorted; 100 gives the largest). */
export const percentile = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

/** Median of each figure over rounds. */
export function medianStats(results: Stats[]): Stats {
  return {
    name: results[0]!.name,
    opsPerSecond: median(results.map((r) => r.opsPerSecond)),
    p50: median(results.map((r) => r.p50)),
    p99: median(results.map((r) => r.p99)),
    p999: median(results.map((r) => r.p999)),
  };
}

export function printTable(rows: Stats[], baseline: Stats, unit = 'µs'): void {
  console.log(`| scenario | ops/s | p50 ${unit} | p99 ${unit} | p99.9 ${unit} | throughput vs ${baseline.name} | p50 vs ${baseline.name} |`);
  console.log('|---|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.name} | ${Math.round(r.opsPerSecond)} | ${r.p50.toFixed(0)} | ${r.p99.toFixed(0)} | ${r.p999.toFixed(0)} | ` +
        `${(r.opsPerSecond / baseline.opsPerSecond).toFixed(2)}x | ${(r.p50 / baseline.p50).toFixed(2)}x |`,
    );
  }
}

export interface BenchProcess {
  child: ChildProcess;
  /** The socket it serves, when it serves one. */
  socketPath?: string;
  /** Lines written to stderr so far. */
  lines: string[];
  stop(): Promise<void>;
}

/** What a benchmark started, stopped when it ends however it ends: the processes, then the cleanups in order. */
export interface BenchScope {
  processes: BenchProcess[];
  cleanups: (() => Promise<unknown>)[];
}

/** Runs a benchmark's main, stops what it started, and sets a failing exit code on an error. */
export function runBench(main: (scope: BenchScope) => Promise<void>): void {
  const scope: BenchScope = { processes: [], cleanups: [] };
  const stopAll = async () => {
    for (const p of scope.processes) await p.stop();
    for (const cleanup of scope.cleanups) await cleanup().catch(() => undefined);
  };
  main(scope)
    .finally(stopAll)
    .catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    });
}

export function startNodeProcess(script: string, args: string[], env: Record<string, string>, ready: () => Promise<boolean>): Promise<BenchProcess> {
  return startProcess(process.execPath, [script, ...args], env, ready);
}

export async function startProcess(command: string, args: string[], env: Record<string, string>, ready: () => Promise<boolean>): Promise<BenchProcess> {
  const child = spawn(command, args, {
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const lines: string[] = [];
  let partial = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    const text = partial + chunk.toString();
    const parts = text.split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
  });
  const deadline = Date.now() + 20_000;
  while (!(await ready())) {
    if (child.exitCode !== null) throw new Error(`${command} exited: ${lines.slice(-5).join('\n')}`);
    if (Date.now() > deadline) throw new Error(`${command} did not start: ${lines.slice(-5).join('\n')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    child,
    lines,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export function socketAccepts(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

export async function openRunnerConnection(socketPath: string): Promise<FrameConnection> {
  const socket = connect(socketPath);
  await new Promise((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)));
  return new FrameConnection(socket);
}

export async function prepareConf(socketPath: string, conf: { name: string; value: string }[]): Promise<number> {
  const conn = await openRunnerConnection(socketPath);
  await conn.send(RpcType.PrepareConf, encodePrepareConfRequest({ conf, key: null }));
  const frame = await conn.next();
  conn.destroy();
  if (frame.type !== RpcType.PrepareConf) throw new Error(`PrepareConf failed (frame type ${frame.type})`);
  return decodePrepareConfResponse(frame.payload).confToken;
}

/**
 * Drives HTTPReqCalls over `connections` connections for `seconds`, one call
 * at a time per connection, answering ExtraInfo as APISIX would.
 */
export async function driveRunner(options: {
  name: string;
  socketPath: string;
  request: HttpReqCallRequest;
  /** When given, calls rotate through these instead of sending `request` each time. */
  requests?: HttpReqCallRequest[];
  connections: number;
  seconds: number;
  answerExtra?: (info: ExtraInfoRequest) => Uint8Array | null;
  /** Checks each answer (a wrong answer aborts the benchmark: fast and wrong is worthless). */
  check?: (answerType: number, payload: Buffer) => void;
}): Promise<Stats> {
  const histogram = newHistogram();
  const conns = await Promise.all(Array.from({ length: options.connections }, () => openRunnerConnection(options.socketPath)));
  const end = Date.now() + options.seconds * 1000;
  let calls = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    conns.map(async (conn, c) => {
      let id = c << 22;
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        const request = options.requests ? options.requests[calls % options.requests.length]! : options.request;
        await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest({ ...request, id: id++ }));
        let frame = await conn.next();
        while (frame.type === RpcType.ExtraInfo) {
          const info = decodeExtraInfoRequest(frame.payload);
          await conn.send(RpcType.ExtraInfo, encodeExtraInfoResponse({ result: options.answerExtra?.(info) ?? null }));
          frame = await conn.next();
        }
        histogram.recordValue(Number(process.hrtime.bigint() - t0) / 1000);
        options.check?.(frame.type, frame.payload);
        calls++;
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  conns.forEach((c) => c.destroy());
  const stats = statsOf(options.name, histogram, calls, seconds);
  histogram.destroy();
  return stats;
}

/** Runs `op` until it succeeds (a service warming up), at most `attempts` times. */
export async function retryUntilReady<T>(op: () => Promise<T>, attempts = 200, delayMs = 50): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, delayMs));
    }
  }
}

/** `concurrency` loops calling `op` back to back for `seconds`; latency of each call in µs. */
export async function driveConcurrently(name: string, concurrency: number, seconds: number, op: () => Promise<void>): Promise<Stats> {
  const histogram = newHistogram();
  const end = Date.now() + seconds * 1000;
  let ops = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        await op();
        histogram.recordValue(Number(process.hrtime.bigint() - t0) / 1000);
        ops++;
      }
    }),
  );
  const stats = statsOf(name, histogram, ops, Number(process.hrtime.bigint() - started) / 1e9);
  histogram.destroy();
  return stats;
}

/** The pid of the etcd this process started (a descendant whose command line names its data dir), or null. */
export function findEtcdPid(dataDir: string): number | null {
  const table = processTable();
  const mine = processTree(process.pid, table);
  return mine.find((pid) => pid !== process.pid && (commandLine(pid) ?? '').includes(dataDir)) ?? null;
}

/**
 * The project policy's two texts a soak's writer switches between: the demo
 * project's, and the same decision with a rule more (so a module of its
 * own, which reads data.soak_revision: each version sets it anew).
 */
export const SOAK_PROJECT_TEXTS: readonly [string, string] = [
  DEMO_PROJECT_POLICY.rego,
  `${DEMO_PROJECT_POLICY.rego}
# The soak's second text: the same decision, a rule more.
soak_revision := data.soak_revision
`,
];

/**
 * A soak's n-th version of the project policy (bench:soak's writer, its etcd
 * warm-up, bench:etcd-memory): new data each time (soak_revision n), and the
 * Rego switched to the other of SOAK_PROJECT_TEXTS every `moduleEvery`
 * versions (version 0 has the first text).
 */
export function soakVersion(n: number, moduleEvery: number): { text: 0 | 1; rego: string; dataText: string } {
  const text = Math.floor(n / moduleEvery) % 2 === 0 ? 0 : 1;
  return { text, rego: SOAK_PROJECT_TEXTS[text], dataText: JSON.stringify({ ...DEMO_PROJECT_POLICY.data, soak_revision: n }) };
}

/**
 * The snapshot-count the deployment gives etcd (deploy/etcd/etcd-dc1.conf.yml),
 * for benchmarks whose etcd's memory should behave as a deployed one's:
 * etcd 3.4 holds its applied Raft entries in memory until a snapshot.
 */
export function deployedEtcdSnapshotCount(): number {
  const conf = parse(readFileSync(join(packageRoot(), 'deploy', 'etcd', 'etcd-dc1.conf.yml'), 'utf8')) as { 'snapshot-count'?: unknown };
  const count = conf['snapshot-count'];
  if (typeof count !== 'number' || !Number.isInteger(count) || count < 1) throw new Error('deploy/etcd/etcd-dc1.conf.yml sets no snapshot-count');
  return count;
}
