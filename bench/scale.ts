// npm run bench:scale — a gateway on a platform with many tenants, measured
// side by side in one run against the same gateway with one policy:
//
//   - runner start -> enforcing a project (first allowed decision)
//   - first decision of a cold project (its engine built on demand), p50/p99,
//     and what a hot tenant's p99 is meanwhile
//   - hot decision p99 over a set of busy projects
//   - runner RSS after all of the above
//   - one write's propagation to every runner while they serve traffic
//   - snapshot bytes written for one change
//
// Projects are seeded through the store's own write path (PolicyStore.put,
// the transaction the CMS makes) with a few hundred distinct Rego modules
// compiled once by the real opa; the other projects share those modules with
// data of their own, as teams sharing a template would.
//
// The distinct-policies row ("distinct N") gives every project a wasm of its
// own, as tenants writing their own Rego would. Compiling ten thousand Rego
// modules with opa takes over an hour here (~0.5 s each), so it does not:
// the same few hundred compiled modules are made distinct by a constant
// inside the wasm (the string `marker`, in the module's data section,
// rewritten per project with one of the same length), so every module
// differs in sha256 and in its marker's value while its code and size are
// those of a real compiled policy. The gateway loads each as it would any
// module (the row's decisions are allowed by them).
//
// Env: BENCH_SCALE_PROJECTS ("1000,10000"), BENCH_SCALE_MODULES (300),
// BENCH_SECONDS (3), BENCH_RUNNERS (2), BENCH_PROPAGATION_WRITES (20),
// BENCH_COLD_SAMPLE (200), BENCH_CONNECTIONS (8), BENCH_ROUNDS (4), BENCH_BASELINE_RUNNER,
// BENCH_DISTINCT_PROJECTS (10000; 0: no distinct-policies row);
// POLICY_EVAL_WORKERS is passed to the runners (0: evaluation on their own thread).
import { readdirSync, statSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pLimit from 'p-limit';
import { startLocalEtcd, type LocalEtcd } from '../dev/local-etcd/index.js';
import { processTree, residentKiB } from '../dev/proc.js';
import { RegoCompiler, policySubmission, type CompiledPolicy } from '../cms/rego-compiler.js';
import { PolicyStore } from '../policy/store/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { RpcType, decodeHttpReqCallResponse, encodeHttpReqCallRequest, type HttpReqCallRequest } from '../plugins/protocol/index.js';
import {
  benchIdentity,
  driveRunner,
  machineLine,
  medianStats,
  openRunnerConnection,
  prepareConf,
  socketAccepts,
  startNodeProcess,
  type BenchProcess,
  type Stats,
  benchOpaPath,
  percentile,
} from './support.js';

const scales = (process.env.BENCH_SCALE_PROJECTS ?? '1000,10000').split(',').map(Number);
const moduleCount = Number(process.env.BENCH_SCALE_MODULES ?? 300);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const runnerCount = Number(process.env.BENCH_RUNNERS ?? 2);
const propagationWrites = Number(process.env.BENCH_PROPAGATION_WRITES ?? 20);
const coldSample = Number(process.env.BENCH_COLD_SAMPLE ?? 200);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const rounds = Number(process.env.BENCH_ROUNDS ?? 4);
const distinctProjects = Number(process.env.BENCH_DISTINCT_PROJECTS ?? 10_000);
const HOT_SET = 64;

const here = fileURLToPath(new URL('.', import.meta.url));
const runnerScript = join(here, '../plugins/runner/main.js');
/**
 * A runner built from an earlier commit, measured beside this one with one
 * project (how it was before): BENCH_BASELINE_RUNNER=<its dist/plugins/runner/main.js>.
 */
const baselineScript = process.env.BENCH_BASELINE_RUNNER || null;
const opaPath = benchOpaPath;

/** A constant of every module, rewritten per project (same length) for the distinct-policies row. */
const MARKER = 'gh-variant-0000000000';
const markerOf = (i: number) => `gh-variant-${String(i).padStart(10, '0')}`;

/** `module` made distinct for project `i`: its marker rewritten in place. */
function distinctModule(module: CompiledPolicy, i: number): CompiledPolicy {
  const at = module.wasm.indexOf(MARKER);
  if (at < 0 || module.wasm.indexOf(MARKER, at + 1) >= 0) throw new Error('the marker is not in the compiled module exactly once');
  const wasm = Buffer.from(module.wasm);
  wasm.write(markerOf(i), at, 'latin1');
  return { ...module, wasm };
}

const projectName = (i: number) => `p${String(i).padStart(5, '0')}`;
const moduleSource = (k: number) => `package project.authz
import rego.v1

default allow := false

template := ${k}

marker := "${MARKER}"

# Template ${k}: every team on it has its own roles in data.
allow if {
	input.user.role in data.roles
	input.request.method in {"GET", "POST"}
	startswith(input.request.path, "/rag/")
	count(input.request.path) > ${k % 7}
}
`;

interface Row {
  projects: number;
  label: string;
  seedSeconds: number;
  startToEnforcingMs: number;
  coldP50Ms: number | null;
  coldP99Ms: number | null;
  hotDuringColdP99Us: number | null;
  /** One hot project, the same request in every scale. */
  hot: Stats;
  /** 64 hot projects in rotation (scales with at least 64). */
  hotSet: Stats | null;
  rssMiB: number;
  propagationP50Ms: number;
  propagationP99Ms: number;
  snapshotBytesPerChange: number;
  snapshotTotalBytes: number;
}

/** RSS of a process and every process under it (a runner's primary and its workers). */
function rssMiB(pid: number): number {
  return processTree(pid).reduce((total, p) => total + (residentKiB(p)?.kib ?? NaN) / 1024, 0);
}

function filesUnder(dir: string, exists = true): Map<string, { size: number; mtimeMs: number }> {
  const found = new Map<string, { size: number; mtimeMs: number }>();
  // An earlier runner kept one file beside where the directory is now.
  if (!exists && !statSync(dir, { throwIfNoEntry: false })?.isDirectory()) dir = join(dir, '..', 'policies.snapshot.json');
  const single = statSync(dir, { throwIfNoEntry: false });
  if (single?.isFile()) {
    found.set(dir, { size: single.size, mtimeMs: single.mtimeMs });
    return found;
  }
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      const stat = statSync(path, { throwIfNoEntry: false });
      if (!stat) continue; // removed meanwhile (the snapshot drops content nothing names)
      if (stat.isDirectory()) walk(path);
      else found.set(path, { size: stat.size, mtimeMs: stat.mtimeMs });
    }
  };
  walk(dir);
  return found;
}

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-scale-'));
  const identity = await benchIdentity(work);
  const tokens = new Map<number, string>();
  const tokenFor = async (i: number) => {
    let token = tokens.get(i);
    if (!token) {
      token = await identity.sign({ sub: `u${i}`, role: `role-${i}`, project: projectName(i) });
      tokens.set(i, token);
    }
    return token;
  };
  const requestFor = async (i: number): Promise<HttpReqCallRequest> => ({
    id: 0,
    srcIp: new Uint8Array([10, 0, 0, 7]),
    method: 'POST',
    path: '/rag/ask',
    args: [],
    headers: [
      { name: 'host', value: 'rag.internal' },
      { name: 'authorization', value: `Bearer ${await tokenFor(i)}` },
      { name: 'content-type', value: 'application/json' },
    ],
    confToken: 0,
  });
  const allowed = (type: number, payload: Buffer) => {
    const answer = type === RpcType.HTTPReqCall ? decodeHttpReqCallResponse(payload) : null;
    if (!answer || answer.action?.type !== 'rewrite') throw new Error(`not allowed (frame ${type}, ${answer?.action?.type})`);
  };

  // The distinct modules, compiled once by the real opa (two at a time).
  const compiler = new RegoCompiler({ opaPath, concurrency: 2, maxQueued: 100_000 });
  const largest = Math.max(...scales);
  const modules: CompiledPolicy[] = [];
  const compileStarted = performance.now();
  const wanted = Math.min(moduleCount, largest);
  modules.push(...(await Promise.all(Array.from({ length: wanted }, (_, k) => compiler.compile(moduleSource(k))))));
  console.error(`[bench:scale] compiled ${wanted} modules in ${((performance.now() - compileStarted) / 1000).toFixed(1)} s`);

  interface Gateway {
    projects: number;
    /** The runner's main.js, and what the rows call it. */
    script: string;
    label: string;
    etcd: LocalEtcd;
    client: ReturnType<typeof createEtcdClient>;
    store: PolicyStore;
    processes: BenchProcess[];
    socket: (i: number) => string;
    env: (i: number) => Record<string, string>;
    chain: number;
    probeProject: number;
    hotProjects: number[];
    hotRequests: HttpReqCallRequest[];
    moduleOf: (i: number) => CompiledPolicy;
    untilEnforcing: (i: number, confToken: number, project: number, since: number) => Promise<void>;
    untilSnapshotWritten: (i: number) => Promise<void>;
    snapshotDir: string;
    /** Started on another gateway's etcd (which that one stops). */
    sharesEtcd: boolean;
    row: Partial<Row> & { projects: number };
  }

  const gateways: Gateway[] = [];
  try {
    // 1. Each scale on its own etcd and runner, set up one after the other
    //    (start and cold figures are taken alone); all stay up for step 2.
    if (baselineScript) {
      gateways.push(await setUp(1, baselineScript, 'before, 1'));
      console.error('[bench:scale] the baseline runner set up');
    }
    for (const projects of [1, ...scales]) {
      gateways.push(await setUp(projects, runnerScript, String(projects)));
      console.error(`[bench:scale] ${projects} projects set up`);
    }
    if (distinctProjects > 0) {
      // One etcd seeded once, the runners before and after started on it one after the other.
      const seeded = await setUp(distinctProjects, runnerScript, `distinct ${distinctProjects}`, true);
      gateways.push(seeded);
      console.error(`[bench:scale] ${distinctProjects} distinct policies set up`);
      if (baselineScript) {
        gateways.push(await setUp(distinctProjects, baselineScript, `before, distinct ${distinctProjects}`, true, seeded));
        console.error('[bench:scale] the baseline runner on distinct policies set up');
      }
    }
    // 2. Hot decisions side by side: rounds alternate over the scales, the
    //    same hot project (and the same hot set of 64 where there are 64).
    const single = new Map<string, Stats[]>();
    const rotating = new Map<string, Stats[]>();
    for (let round = 0; round < rounds; round++) {
      // Each round starts with the next scale, so no scale always goes first.
      for (const g of [...gateways.slice(round % gateways.length), ...gateways.slice(0, round % gateways.length)]) {
        const hot = { ...g.hotRequests[0]!, confToken: g.chain };
        single.set(g.label, [
          ...(single.get(g.label) ?? []),
          await driveRunner({ name: `${g.projects}`, socketPath: g.socket(0), request: hot, connections, seconds, check: allowed }),
        ]);
        if (g.projects >= HOT_SET) {
          rotating.set(g.label, [
            ...(rotating.get(g.label) ?? []),
            await driveRunner({ name: `${g.projects}`, socketPath: g.socket(0), request: hot, requests: g.hotRequests, connections, seconds, check: allowed }),
          ]);
        }
      }
    }
    for (const g of gateways) {
      g.row.hot = medianStats(single.get(g.label)!);
      g.row.hotSet = rotating.has(g.label) ? medianStats(rotating.get(g.label)!) : null;
      g.row.rssMiB = rssMiB(g.processes[0]!.child.pid!);
      g.row.snapshotTotalBytes = [...filesUnder(g.snapshotDir, g.script === runnerScript).values()].reduce((sum, f) => sum + f.size, 0);
    }
    // 3. Propagation under traffic, one scale at a time.
    for (const g of gateways) {
      Object.assign(g.row, await propagation(g));
      console.error(`[bench:scale] ${g.projects} projects: propagation measured`);
    }
  } finally {
    for (const g of gateways) {
      await Promise.all(g.processes.map((p) => p.stop()));
      if (g.sharesEtcd) continue;
      g.client.close();
      await g.etcd.cleanup();
    }
  }
  const rows = gateways.map((g) => g.row as Row);

  async function setUp(projects: number, script: string, label: string, distinct = false, on?: Gateway): Promise<Gateway> {
    const etcd: LocalEtcd = on?.etcd ?? (await startLocalEtcd({ dataRoot: 'bench-etcd', extraArgs: ['--quota-backend-bytes', String(8 * 1024 ** 3)] }));
    const processes: BenchProcess[] = [];
    const client = on?.client ?? createEtcdClient(etcd.endpoints);
    const store = on?.store ?? new PolicyStore(client);
    const shared = (i: number) => modules[i % Math.min(modules.length, projects)]!;
    const moduleOf = distinct ? (i: number) => distinctModule(shared(i), i) : shared;
    const seedStarted = performance.now();
    const limit = pLimit(32);
    if (!on) {
      await Promise.all(
        Array.from({ length: projects }, (_, i) =>
          limit(() =>
            store.put(projectName(i), policySubmission(moduleSource(i % modules.length), JSON.stringify({ roles: [`role-${i}`] }), moduleOf(i), 'bench')),
          ),
        ),
      );
    }
    const seedSeconds = on ? (on.row.seedSeconds ?? 0) : (performance.now() - seedStarted) / 1000;
    const tag = `${gateways.length}-${projects}`;
    const socket = (i: number) => join(work, `${tag}-${i}.sock`);
    const env = (i: number) => ({
      ...identity.env,
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      APISIX_LISTEN_ADDRESS: `unix:${socket(i)}`,
      RUNNER_METRICS_PORT: 'off',
      RUNNER_STATE_DIR: join(work, `state-${tag}-${i}`),
      LOG_LEVEL: 'info',
      // Where decisions are evaluated (the evaluation pool, or the runner's thread with 0).
      ...(process.env.POLICY_EVAL_WORKERS ? { POLICY_EVAL_WORKERS: process.env.POLICY_EVAL_WORKERS } : {}),
    });
    const untilEnforcing = async (i: number, confToken: number, project: number, since: number) => {
      const probe = { ...(await requestFor(project)), confToken };
      for (;;) {
        const enforcing = await (async () => {
          const conn = await openRunnerConnection(socket(i));
          try {
            await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(probe));
            const frame = await conn.next();
            return frame.type === RpcType.HTTPReqCall && decodeHttpReqCallResponse(frame.payload).action?.type === 'rewrite';
          } finally {
            conn.destroy();
          }
        })().catch(() => false);
        if (enforcing) return;
        if (performance.now() - since > 120_000) throw new Error(`runner ${i} did not enforce within 120 s`);
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    // A runner writes its whole snapshot once after start (off the decision
    // path, but on its thread): wait it out before steady-state figures.
    const untilSnapshotWritten = async (i: number) => {
      const state = join(work, `state-${tag}-${i}`);
      // Today's snapshot directory, or an earlier runner's single file.
      const written = () =>
        statSync(join(state, 'policy-snapshot', 'manifest.json'), { throwIfNoEntry: false }) ??
        statSync(join(state, 'policies.snapshot.json'), { throwIfNoEntry: false });
      while (!written()) await new Promise((r) => setTimeout(r, 20));
    };
    const conf = [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["platform","caller-project"]}' },
    ];

    // Start -> enforcing: from spawn to the first allowed decision of a project.
    const spawnedAt = performance.now();
    processes.push(await startNodeProcess(script, [], env(0), () => socketAccepts(socket(0))));
    const chain = await prepareConf(socket(0), conf);
    const probeProject = projects - 1;
    await untilEnforcing(0, chain, probeProject, spawnedAt);
    const startToEnforcingMs = performance.now() - spawnedAt;
    await untilSnapshotWritten(0);

    const hotProjects = Array.from({ length: Math.min(HOT_SET, projects) }, (_, k) => (k * 7919) % projects);
    const hotRequests = await Promise.all(hotProjects.map(async (i) => ({ ...(await requestFor(i)), confToken: chain })));
    await driveRunner({ name: 'warm', socketPath: socket(0), request: hotRequests[0]!, requests: hotRequests, connections, seconds: 0.5, check: allowed });

    // Cold projects, one at a time, while hot tenants are served.
    let coldP50Ms: number | null = null;
    let coldP99Ms: number | null = null;
    let hotDuringColdP99Us: number | null = null;
    if (projects > HOT_SET) {
      const hot = new Set(hotProjects);
      const cold = Array.from({ length: coldSample }, (_, k) => (k * 104729 + 13) % projects).filter((i) => !hot.has(i) && i !== probeProject);
      const coldRequests = await Promise.all(cold.map(async (i) => ({ ...(await requestFor(i)), confToken: chain })));
      const conn = await openRunnerConnection(socket(0));
      const latencies: number[] = [];
      let sweeping = true;
      const background = (async () => {
        const stats: Stats[] = [];
        while (sweeping)
          stats.push(
            await driveRunner({
              name: 'hot during cold',
              socketPath: socket(0),
              request: hotRequests[0]!,
              requests: hotRequests,
              connections: 2,
              seconds: 0.5,
              check: allowed,
            }),
          );
        return stats;
      })();
      for (const request of coldRequests) {
        const t0 = performance.now();
        await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request));
        const frame = await conn.next();
        latencies.push(performance.now() - t0);
        allowed(frame.type, frame.payload);
      }
      sweeping = false;
      const during = await background;
      conn.destroy();
      coldP50Ms = percentile(latencies, 50);
      coldP99Ms = percentile(latencies, 99);
      hotDuringColdP99Us = Math.max(...during.map((st) => st.p99));
    }
    return {
      projects,
      etcd,
      client,
      store,
      processes,
      socket,
      env,
      chain,
      probeProject,
      hotProjects,
      hotRequests,
      moduleOf,
      untilEnforcing,
      untilSnapshotWritten,
      script,
      label,
      snapshotDir: join(work, `state-${tag}-0`, 'policy-snapshot'),
      sharesEtcd: on !== undefined,
      row: { projects, label, seedSeconds, startToEnforcingMs, coldP50Ms, coldP99Ms, hotDuringColdP99Us },
    };
  }

  /** More runners, each serving its hot set, while writes land: PUT returned -> every runner enforces. */
  async function propagation(g: Gateway): Promise<Pick<Row, 'propagationP50Ms' | 'propagationP99Ms' | 'snapshotBytesPerChange' | 'snapshotTotalBytes'>> {
    const { socket } = g;
    for (let i = 1; i < runnerCount; i++) g.processes.push(await startNodeProcess(g.script, [], g.env(i), () => socketAccepts(socket(i))));
    const runners = g.processes.slice(0, runnerCount);
    const chains = await Promise.all(
      runners.map((_, i) =>
        prepareConf(socket(i), [
          { name: 'jwt', value: '{}' },
          { name: 'opa', value: '{"policies":["platform","caller-project"]}' },
        ]),
      ),
    );
    for (let i = 1; i < runnerCount; i++) {
      await g.untilEnforcing(i, chains[i]!, g.probeProject, performance.now());
      await g.untilSnapshotWritten(i);
    }
    let serving = true;
    const traffic = runners.map(async (_, i) => {
      const requests = g.hotRequests.map((r) => ({ ...r, confToken: chains[i]! }));
      while (serving) await driveRunner({ name: 'traffic', socketPath: socket(i), request: requests[0]!, requests, connections: 2, seconds: 0.5 });
    });
    const target = g.hotProjects[1] ?? 0;
    const snapshotDir = g.snapshotDir;
    const times: number[] = [];
    let snapshotBytesPerChange = 0;
    try {
      for (let w = 1; w <= propagationWrites; w++) {
        const before = filesUnder(snapshotDir, g.script === runnerScript);
        const result = await g.store.put(
          projectName(target),
          policySubmission(moduleSource(target % modules.length), JSON.stringify({ roles: [`role-${target}`], write: w }), g.moduleOf(target), 'bench'),
        );
        const returnedAt = Date.now();
        const version = result.meta.version;
        const deadline = Date.now() + 20_000;
        let swapped: number[] = [];
        while (Date.now() < deadline) {
          swapped = runners
            .map((r) =>
              r.lines
                .map((line) => {
                  if (!line.includes('"policy version enforced"')) return null;
                  const entry = JSON.parse(line) as { policy: string; version: number; swappedAt: number };
                  return entry.policy === projectName(target) && entry.version === version ? entry.swappedAt : null;
                })
                .find((x) => x !== null),
            )
            .filter((x): x is number => typeof x === 'number');
          if (swapped.length === runners.length) break;
          await new Promise((r) => setTimeout(r, 1));
        }
        if (swapped.length !== runners.length) throw new Error(`write ${w} reached ${swapped.length}/${runners.length} runners`);
        times.push(Math.max(...swapped) - returnedAt);
        if (w === propagationWrites) {
          await new Promise((r) => setTimeout(r, 300)); // the snapshot is written off the decision path
          for (const [path, file] of filesUnder(snapshotDir, g.script === runnerScript)) {
            const old = before.get(path);
            if (!old || old.mtimeMs !== file.mtimeMs) snapshotBytesPerChange += file.size;
          }
        }
      }
    } finally {
      serving = false;
      await Promise.allSettled(traffic);
    }
    return {
      propagationP50Ms: percentile(times, 50),
      propagationP99Ms: percentile(times, 99),
      snapshotBytesPerChange,
      snapshotTotalBytes: [...filesUnder(snapshotDir, g.script === runnerScript).values()].reduce((sum, f) => sum + f.size, 0),
    };
  }

  const one = rows.find((r) => r.label === '1')!;
  const fmt = (x: number | null | undefined, digits = 0) => (x === null || x === undefined ? '–' : x.toFixed(digits));
  console.log(machineLine());
  console.log(
    `distinct modules: ${Math.min(moduleCount, largest)} (the distinct rows: every project its own, made from those); RSS: the runner's primary and workers (default workers); engine cache: default (256 MiB); hot: ${connections} connections, ${seconds} s x ${rounds} rounds alternating over the scales (median); ` +
      `cold sample: ${coldSample}; propagation: ${runnerCount} runners serving traffic, ${propagationWrites} writes\n`,
  );
  console.log(
    '| projects | seed s | start → enforcing ms | cold first decision p50 / p99 ms | hot-set p99 µs during cold sweep | RSS MiB | snapshot MiB | snapshot bytes per change |',
  );
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.label} | ${r.seedSeconds.toFixed(1)} | ${r.startToEnforcingMs.toFixed(0)} | ${fmt(r.coldP50Ms, 1)} / ${fmt(r.coldP99Ms, 1)} | ${fmt(r.hotDuringColdP99Us)} | ` +
        `${r.rssMiB.toFixed(0)} | ${(r.snapshotTotalBytes / 1024 / 1024).toFixed(1)} | ${r.snapshotBytesPerChange} |`,
    );
  }
  console.log('');
  console.log('| projects | one hot project: ops/s | p50 µs | p99 µs | p99 vs 1 project | 64 hot projects: ops/s | p99 µs | propagation p50 / p99 ms |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.label} | ${Math.round(r.hot.opsPerSecond)} | ${r.hot.p50.toFixed(0)} | ${r.hot.p99.toFixed(0)} | ${(r.hot.p99 / one.hot.p99).toFixed(2)}x | ` +
        `${r.hotSet ? Math.round(r.hotSet.opsPerSecond) : '–'} | ${fmt(r.hotSet?.p99)} | ${r.propagationP50Ms} / ${r.propagationP99Ms} |`,
    );
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
