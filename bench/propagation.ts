// npm run bench:propagation — how long a policy write takes to be enforced
// by every worker of every runner, with many projects loaded.
//
// A real etcd holds BENCH_PROJECTS projects (10,000; seeded through the
// store's write path, the CMS's transaction, one compiled module shared);
// BENCH_RUNNERS runner processes (8) of BENCH_RUNNER_WORKERS workers (the
// runner's own default, half the cores)
// watch it. Then BENCH_PROPAGATION_WRITES writes (40) go through the CMS
// (PUT, as an operator writes), each to another project: new data each time,
// and every BENCH_NEW_MODULE_EVERY-th write (4) a Rego no gateway has seen,
// so its module is new (compiled, and metered by the CMS, before the write).
// Each worker logs the moment it swaps a version in ("policy version
// enforced"); a write is enforced everywhere when every worker has.
//
// Half the writes go to projects every worker decides with (a jwt + opa
// call for each on every worker before the writes): a gateway builds a new
// version of a policy in use before it swaps it in, so that no decision
// waits for the build. The other half go to projects no gateway has decided
// with, whose new versions are swapped in unbuilt and built on their first
// decision (as every project after a start). Writes alternate between the
// two in fours, so each half has new modules and new data.
//
// No client observes etcd's commit itself, so three points of reference:
// the CMS's `updatedAt` (set before it reads the current version and
// commits: the transaction's own time, fsync included, counts), the moment
// a watcher in this process receives the write's event (etcd's commit and
// its delivery to a watcher, as every gateway's watch gets it), and the
// PUT's answer (after the commit). Each to the last worker's swap.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pLimit from 'p-limit';
import { pino } from 'pino';
import { Pool } from 'undici';
import { buildCmsApp } from '../cms/app.js';
import { RegoCompiler, policySubmission } from '../cms/rego-compiler.js';
import { freePort, startLocalEtcd } from '../dev/local-etcd/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { identityConfigFromEnv } from '../identity/config.js';
import { PolicyStore } from '../policy/store/index.js';
import { workerCount } from '../plugins/runner/config.js';

import { decodeHttpReqCallResponse, encodeHttpReqCallRequest, RpcType } from '../plugins/protocol/index.js';
import {
  BENCH_PROJECT_DATA,
  BENCH_PROJECT_POLICY,
  benchIdentity,
  benchOpaPath,
  machineLine,
  openRunnerConnection,
  percentile,
  prepareConf,
  runBench,
  socketAccepts,
  startNodeProcess,
  type BenchProcess,
} from './support.js';

const runnerCount = Number(process.env.BENCH_RUNNERS ?? 8);
const workersPerRunner = workerCount(process.env.BENCH_RUNNER_WORKERS);
const projects = Number(process.env.BENCH_PROJECTS ?? 10_000);
const writes = Number(process.env.BENCH_PROPAGATION_WRITES ?? 40);
const newModuleEvery = Number(process.env.BENCH_NEW_MODULE_EVERY ?? 4);

const runnerScript = join(fileURLToPath(new URL('.', import.meta.url)), '../plugins/runner/main.js');
const projectName = (i: number) => `p-${i}`;

/** A Rego of the same logic that no gateway has compiled before (its module is new). */
const freshRego = (w: number) => `${BENCH_PROJECT_POLICY}\nwrite_${w} := ${w}\n`;
/** The project of write `w` (1-based). */
const projectOfWrite = (w: number) => projectName((w * 7919) % projects);
/** Writes 1-3, 8-11, 16-19, ...: to a project every worker decides with; the others to one none has. */
const inUseWrite = (w: number) => w % 8 < 4;

/**
 * Makes every worker of the runner on `socket` decide once for each of
 * `callers` (project -> token), through the jwt + opa chain: twice as many
 * connections as workers, as the primary deals connections out in turn.
 */
async function decideOnEveryWorker(socket: string, callers: Map<string, string>): Promise<void> {
  const confToken = await prepareConf(socket, [
    { name: 'jwt', value: '{}' },
    { name: 'opa', value: '{"policies":["caller-project"]}' },
  ]);
  let id = 0;
  for (let c = 0; c < 2 * workersPerRunner; c++) {
    const conn = await openRunnerConnection(socket);
    for (const [project, token] of callers) {
      const headers = [{ name: 'authorization', value: `Bearer ${token}` }];
      await conn.send(
        RpcType.HTTPReqCall,
        encodeHttpReqCallRequest({ id: id++, srcIp: new Uint8Array([127, 0, 0, 1]), method: 'GET', path: '/rag/ask', args: [], headers, confToken }),
      );
      const frame = await conn.next();
      // Allowed (the identity headers set): the project's own policy decided.
      if (frame.type !== RpcType.HTTPReqCall || decodeHttpReqCallResponse(frame.payload).action?.type !== 'rewrite')
        throw new Error(`${project}'s policy did not allow its caller on ${socket}`);
    }
    conn.destroy();
  }
}

interface Swap {
  pid: number;
  swappedAt: number;
  propagationMs: number;
  /** From the worker's own watch receiving the change to its swap. */
  receivedMs: number;
}

/** The swaps of `policy` at `version` logged so far, one per worker (pid). */
function swapsOf(runners: BenchProcess[], policy: string, version: number): Swap[] {
  const byPid = new Map<number, Swap>();
  for (const runner of runners) {
    for (const line of runner.lines) {
      if (!line.includes('"policy version enforced"') || !line.includes(`"${policy}"`)) continue;
      const entry = JSON.parse(line) as Swap & { policy: string; version: number };
      if (entry.policy === policy && entry.version === version) byPid.set(entry.pid, entry);
    }
  }
  return [...byPid.values()];
}

runBench(async (scope) => {
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-propagation-'));
  scope.cleanups.push(async () => rmSync(work, { recursive: true, force: true }));
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd', extraArgs: ['--quota-backend-bytes', String(8 * 1024 ** 3)] });
  scope.cleanups.push(() => etcd.cleanup());
  const identity = await benchIdentity(work);
  const client = createEtcdClient(etcd.endpoints);
  scope.cleanups.push(async () => client.close());

  const compiler = new RegoCompiler({ opaPath: benchOpaPath });
  const compiled = await compiler.compile(BENCH_PROJECT_POLICY, JSON.stringify(BENCH_PROJECT_DATA));
  const store = new PolicyStore(client);
  const seedStarted = performance.now();
  const limit = pLimit(32);
  await Promise.all(
    Array.from({ length: projects }, (_, i) =>
      limit(() => {
        const dataText = JSON.stringify({ ...BENCH_PROJECT_DATA, project: i });
        return store.put(projectName(i), policySubmission(BENCH_PROJECT_POLICY, dataText, compiled, 'bench'));
      }),
    ),
  );
  console.error(`[bench:propagation] ${projects} projects seeded in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`);

  const cmsPort = await freePort();
  const cms = await buildCmsApp({
    etcdEndpoints: etcd.endpoints,
    identity: identityConfigFromEnv(identity.env),
    opaPath: benchOpaPath,
    logger: pino({ level: 'warn' }),
  });
  await cms.listen({ host: '127.0.0.1', port: cmsPort });
  scope.cleanups.unshift(() => cms.close());

  const runners: BenchProcess[] = [];
  for (let i = 0; i < runnerCount; i++) {
    const socket = join(work, `runner-${i}.sock`);
    const runner = await startNodeProcess(
      runnerScript,
      [],
      {
        ...identity.env,
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        APISIX_LISTEN_ADDRESS: `unix:${socket}`,
        RUNNER_WORKERS: String(workersPerRunner),
        RUNNER_METRICS_PORT: 'off',
        RUNNER_STATE_DIR: join(work, `state-${i}`),
        LOG_LEVEL: 'info',
      },
      () => socketAccepts(socket),
    );
    runners.push(runner);
    scope.processes.push(runner);
  }
  // Every worker has read every project before the first write.
  const workers = runnerCount * workersPerRunner;
  const loaded = () =>
    new Set(
      runners.flatMap((r) =>
        r.lines
          .filter((l) => l.includes('"policies loaded from etcd"') && (JSON.parse(l) as { policies: number }).policies >= projects)
          .map((l) => (JSON.parse(l) as { pid: number }).pid),
      ),
    ).size;
  const deadline = Date.now() + 120_000;
  while (loaded() < workers) {
    if (Date.now() > deadline) throw new Error(`only ${loaded()} of ${workers} workers read the ${projects} projects`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // The projects half the writes go to are in use on every worker.
  const callers = new Map<string, string>();
  for (let w = 1; w <= writes; w++) {
    const project = projectOfWrite(w);
    if (inUseWrite(w)) callers.set(project, await identity.sign({ sub: `user-of-${project}`, role: 'analyst', project }));
  }
  for (let i = 0; i < runnerCount; i++) await decideOnEveryWorker(join(work, `runner-${i}.sock`), callers);
  await new Promise((r) => setTimeout(r, 2000)); // the start-up's snapshot writes settle

  const platformAdmin = await identity.sign({ sub: 'bench-admin', role: 'platform_admin' });
  const cmsPool = new Pool(`http://127.0.0.1:${cmsPort}`, { connections: 1 });
  scope.cleanups.unshift(() => cmsPool.close());
  // A watcher of its own: when etcd delivers each write's commit (the meta key, the commit marker).
  const delivered = new Map<string, number>();
  const watch = await client.watch().prefix('/policies/').create();
  watch.on('put', (kv) => {
    const key = kv.key.toString();
    if (key.endsWith('/meta')) delivered.set(`${key}@${(JSON.parse(kv.value.toString()) as { version: number }).version}`, Date.now());
  });
  scope.cleanups.unshift(() => watch.cancel());
  const fromUpdated: number[] = [];
  const fromAnswered: number[] = [];
  const perWorker: number[] = [];
  const newModule: number[] = [];
  const sameModule: number[] = [];
  const byUse = {
    inUse: { fromDelivered: [] as number[], ownData: [] as number[], ownModule: [] as number[] },
    unused: { fromDelivered: [] as number[], ownData: [] as number[], ownModule: [] as number[] },
  };
  for (let w = 1; w <= writes; w++) {
    const project = projectOfWrite(w);
    const use = inUseWrite(w) ? byUse.inUse : byUse.unused;
    const fresh = w % newModuleEvery === 0;
    const response = await cmsPool.request({
      method: 'PUT',
      path: `/policies/${project}`,
      headers: { authorization: `Bearer ${platformAdmin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ rego: fresh ? freshRego(w) : BENCH_PROJECT_POLICY, data: { ...BENCH_PROJECT_DATA, write: w } }),
    });
    const answeredAt = Date.now();
    const body = (await response.body.json()) as { version?: number; updatedAt?: string };
    if (response.statusCode >= 300) throw new Error(`CMS PUT answered ${response.statusCode}: ${JSON.stringify(body)}`);
    const version = Number(String(response.headers.etag).replace(/\D/g, ''));
    let swaps: Swap[] = [];
    const until = Date.now() + 20_000;
    while (Date.now() < until) {
      swaps = swapsOf(runners, project, version);
      if (swaps.length === workers && delivered.has(`/policies/${project}/meta@${version}`)) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    if (swaps.length !== workers) throw new Error(`write ${w} (${project} v${version}) reached ${swaps.length} of ${workers} workers`);
    const last = Math.max(...swaps.map((s) => s.swappedAt));
    const updated = Math.max(...swaps.map((s) => s.propagationMs));
    fromUpdated.push(updated);
    fromAnswered.push(last - answeredAt);
    const deliveredAt = delivered.get(`/policies/${project}/meta@${version}`);
    if (deliveredAt === undefined) throw new Error(`the benchmark's own watch did not see ${project} v${version}`);
    use.fromDelivered.push(last - deliveredAt);
    perWorker.push(...swaps.map((s) => s.propagationMs));
    (fresh ? use.ownModule : use.ownData).push(...swaps.map((s) => s.receivedMs));
    (fresh ? newModule : sameModule).push(updated);
    await new Promise((r) => setTimeout(r, 100)); // writes a tenth of a second apart, not back to back
  }

  console.log(machineLine());
  console.log(
    `\n${runnerCount} runners x ${workersPerRunner} workers (${workers} gateways), ${projects} projects loaded, ${writes} writes through the CMS (every ${newModuleEvery}th a new module):\n`,
  );
  console.log('| measure | p50 ms | p99 ms | max ms |');
  console.log('|---|---:|---:|---:|');
  const row = (name: string, values: number[]) => console.log(`| ${name} | ${percentile(values, 50)} | ${percentile(values, 99)} | ${Math.max(...values)} |`);
  row(`CMS updatedAt (before the transaction) -> every one of ${workers} workers enforces`, fromUpdated);
  // Both halves together, and each apart below.
  const { inUse, unused } = byUse;
  row(`etcd delivers the commit (a watcher in the benchmark) -> every one of ${workers} workers enforces`, [...inUse.fromDelivered, ...unused.fromDelivered]);
  row(`PUT answered (after the commit) -> every one of ${workers} workers enforces`, fromAnswered);
  row('CMS updatedAt -> swap, each worker', perWorker);
  row("a worker's watch receives the change -> that worker enforces (its own share), data only", [...inUse.ownData, ...unused.ownData]);
  row("a worker's watch receives the change -> that worker enforces (its own share), a new module", [...inUse.ownModule, ...unused.ownModule]);
  row('updatedAt -> every worker, writes with data only', sameModule);
  row('updatedAt -> every worker, writes with a new module', newModule);
  row(`etcd delivers -> every one of ${workers} workers enforces, a project every worker decides with`, inUse.fromDelivered);
  row(`etcd delivers -> every one of ${workers} workers enforces, a project no worker has decided with`, unused.fromDelivered);
  row('own share, data only, a project in use', inUse.ownData);
  row('own share, a new module, a project in use', inUse.ownModule);
  row('own share, data only, a project not in use', unused.ownData);
  row('own share, a new module, a project not in use', unused.ownModule);
  console.log(`\n(each write, updatedAt -> every worker, ms: ${fromUpdated.join(' ')})`);
});
