// npm run bench:soak — the gateway held under load for a long time while its
// policy keeps changing: real APISIX 3.9.1 (two nginx workers) with
// Gatehouse's runner in front of the Go upstream (bench/go/upstream), the
// route /rag/ask as apisix-conf/apisix.yaml has it (jwt + opa: the platform
// policy and the caller's project policy).
//
//   1. the route's maximum: bench/go/httpload on a closed loop (N keep-alive
//      connections, one request at a time on each) for BENCH_SOAK_MAX_SECONDS;
//   2. BENCH_SOAK_LOAD (0.8) of that rate for BENCH_SOAK_SECONDS, paced on an
//      open loop (httpload -rate: each connection on a fixed schedule; a
//      request held back by a slow answer has its latency counted from when
//      it was due), one line of calls, errors, p50 and p99 per interval
//      (BENCH_SOAK_INTERVAL; default a third of the run, between 10 s and a
//      minute: a minute in the full run, 30 s in a 90 s one);
//   3. meanwhile, once a second, a new version of the project's policy,
//      stored as the CMS stores it: new data each time (a revision number),
//      and every BENCH_SOAK_MODULE_EVERY writes (60: once a minute) the Rego
//      switched to the other of two texts, so the module changes too; every
//      version keeps allowing the caller. Both texts are compiled by the real
//      opa (and metered) once, before the load: compiling is the CMS's work,
//      on its own host in a deployment, and here it would take a fifth to a
//      third of a second of CPU a write from the two cores the gateway is
//      measured on (BENCH_SOAK_COMPILE=each compiles every write here, as a
//      CMS sharing the gateway's cores would). opa builds the same module
//      from the same text whatever the data, so the gateway sees the same
//      writes either way;
//   4. every 5 s, the RSS and CPU time of every process of the gateway
//      (nginx master, workers and helpers, the runner's primary and workers)
//      and of etcd, and the machine's own CPU counters: per interval, how
//      busy the two cores were, the machine's CPU a request, and the host's
//      steal (to tell the machine's neighbours from the gateway); and the
//      runner's worst event-loop delay since the last sample, from its
//      metrics (to tell a stalled runner from a queue behind anything else).
//
// etcd compacts its history as a deployment's does (deploy/: periodic, one
// hour), but on a scale the run can show: every BENCH_SOAK_ETCD_RETENTION
// (1m), so its memory shows whether it levels off once compaction runs, not
// a history that only grows for the first hour. It takes its snapshots at
// the deployment's snapshot-count, which ten minutes do not reach: its
// Raft entries stay in memory until then (bench:etcd-memory shows where it
// levels off). BENCH_SOAK_ETCD_WARMUP_WRITES (0) policy writes of the same
// mix, made as fast as one writer goes before the maximum is measured, bring
// it that far first: about snapshot-count + 5,000 (10,000) start the soak on
// an etcd at the level a deployed one has long reached, rather than a fresh
// one still filling its log.
//
// Targets: zero errors (any answer other than the upstream's 200, any failed
// policy write); the RSS of every process flat (the peak of the last
// interval at most 5% above the peak of the second: a process whose memory
// moves in a sawtooth is judged by its envelope, not by where two single
// samples land); p99 of the last interval within 1.5x of the first.
//
// Env: BENCH_SOAK_SECONDS (600), BENCH_SOAK_LOAD (0.8), BENCH_CONNECTIONS (8),
// BENCH_SOAK_MAX_SECONDS (10), BENCH_SOAK_INTERVAL (s), BENCH_SOAK_ETCD_RETENTION
// (1m), BENCH_SOAK_ETCD_WARMUP_WRITES (0), BENCH_SOAK_MODULE_EVERY (60; 1: a new module every write),
// BENCH_SOAK_COMPILE (once | each), BENCH_SOAK_WRITES_PER_SECOND (1; 0: none,
// a control run), RUNNER_WORKERS (default: the runner's own, half the
// cores).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { parseDocument } from 'yaml';
import { createDemoIdentity, DEMO_PLATFORM_POLICY } from '../dev/demo.js';
import { RegoCompiler, policySubmission } from '../cms/rego-compiler.js';
import { pointRoutesAt, standaloneRoutesText } from '../dev/local-stack/index.js';
import { startLocalVault } from '../dev/local-vault/index.js';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { findApisix, freePort, startApisix, type ApisixHandle } from '../dev/apisix/index.js';
import { commandLine, machineCpuTicks, processTable, processTree, residentKiB } from '../dev/proc.js';
import { createEtcdClient } from '../etcd/index.js';
import { PLATFORM_POLICY_NAME, PolicyStore } from '../policy/store/index.js';
import { EVENT_LOOP_SAMPLE_MS } from '../runtime/process-metrics.js';
import { workerCount } from '../plugins/runner/config.js';
import { buildGoTools, expectStatus, status, tcpAccepts } from './gateway-stack.js';
import {
  CLOCK_TICKS,
  SOAK_PROJECT_TEXTS,
  benchOpaPath,
  deployedEtcdSnapshotCount,
  soakVersion,
  findEtcdPid,
  machineLine,
  benchRunnerEnv,
  runBench,
  startProcess,
  storeBenchPolicy,
  type BenchProcess,
  type BenchScope,
} from './support.js';

const seconds = Number(process.env.BENCH_SOAK_SECONDS ?? 600);
const loadShare = Number(process.env.BENCH_SOAK_LOAD ?? 0.8);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const maxSeconds = Number(process.env.BENCH_SOAK_MAX_SECONDS ?? 10);
const workers = workerCount(process.env.RUNNER_WORKERS);
const interval = Number(process.env.BENCH_SOAK_INTERVAL ?? Math.min(60, Math.max(10, seconds / 3)));
const moduleEvery = Number(process.env.BENCH_SOAK_MODULE_EVERY ?? 60);
const compileEach = (process.env.BENCH_SOAK_COMPILE ?? 'once') === 'each';
/** Policy writes a second; 0 (no writes) is a control run, to tell what the writes cost the gateway. */
const writesPerSecond = Number(process.env.BENCH_SOAK_WRITES_PER_SECOND ?? 1);
/** Policy writes made before the load, to bring etcd's Raft log to its level (see above); 0: a fresh etcd. */
const etcdWarmupWrites = Number(process.env.BENCH_SOAK_ETCD_WARMUP_WRITES ?? 0);
const RSS_EVERY_MS = 5_000;
const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const execFileAsync = promisify(execFile);
const PROJECT = 'bench';

interface LoadLine {
  calls: number;
  errors: number;
  statuses?: Record<string, number>;
  callsPerSecond: number;
  p50Us: number;
  p99Us: number;
}

interface IntervalLine {
  interval: number;
  fromS: number;
  seconds: number;
  calls: number;
  errors: number;
  p50Us: number;
  p99Us: number;
  maxUs: number;
}

/** The processes to watch, by a stable label: the gateway's (nginx's group, the runner's tree) and etcd. */
function watchedProcesses(apisix: ApisixHandle, etcdPid: number | null): Map<string, number> {
  const table = processTable();
  const out = new Map<string, number>();
  const runner = apisix.runnerPid();
  const runnerTree = new Set(runner === null ? [] : processTree(runner, table));
  if (runner !== null) {
    out.set('runner primary', runner);
    table
      .filter((p) => p.ppid === runner)
      .sort((a, b) => a.pid - b.pid)
      .forEach((p, i) => out.set(`runner worker ${i + 1}`, p.pid));
  }
  const counts = new Map<string, number>();
  for (const p of table.filter((x) => x.pgrp === apisix.pid && !runnerTree.has(x.pid)).sort((a, b) => a.pid - b.pid)) {
    const title = (commandLine(p.pid) ?? '').replace(/\0/g, ' ').trim();
    const kind =
      p.pid === apisix.pid ? 'nginx master' : /^nginx: (.*?) process/.exec(title)?.[1] ? `nginx ${/^nginx: (.*?) process/.exec(title)![1]}` : 'nginx other';
    const n = (counts.get(kind) ?? 0) + 1;
    counts.set(kind, n);
    out.set(kind === 'nginx master' ? kind : `${kind} ${n}`, p.pid);
  }
  if (etcdPid !== null) out.set('etcd', etcdPid);
  return out;
}

async function main({ processes, cleanups }: BenchScope) {
  const installation = findApisix(root);
  if (!installation) throw new Error('no APISIX on this machine: `npm run setup` builds it from the APISIX kit, or set APISIX_HOME');
  if (!(
    seconds > 0 &&
    loadShare > 0 &&
    loadShare <= 1 &&
    connections >= 1 &&
    maxSeconds > 0 &&
    Number.isInteger(moduleEvery) &&
    moduleEvery >= 1 &&
    writesPerSecond >= 0 &&
    Number.isInteger(etcdWarmupWrites) &&
    etcdWarmupWrites >= 0
  ))
    throw new Error(
      'want BENCH_SOAK_SECONDS > 0, 0 < BENCH_SOAK_LOAD <= 1, BENCH_CONNECTIONS >= 1, BENCH_SOAK_MODULE_EVERY a whole number >= 1, BENCH_SOAK_WRITES_PER_SECOND >= 0, BENCH_SOAK_ETCD_WARMUP_WRITES a whole number >= 0',
    );
  if (!['once', 'each'].includes(process.env.BENCH_SOAK_COMPILE ?? 'once')) throw new Error('want BENCH_SOAK_COMPILE once or each');
  const tools = buildGoTools();
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-soak-'));
  const logger = pino({ level: 'warn' });
  const etcd = await startLocalEtcd({
    dataRoot: 'bench-etcd',
    extraArgs: [
      // Its Raft entries kept in memory as a deployed etcd keeps them (bench:etcd-memory).
      '--snapshot-count',
      String(deployedEtcdSnapshotCount()),
      '--auto-compaction-mode',
      'periodic',
      '--auto-compaction-retention',
      process.env.BENCH_SOAK_ETCD_RETENTION ?? '1m',
    ],
  });
  cleanups.unshift(() => etcd.cleanup());
  const etcdPid = findEtcdPid(etcd.dataDir);
  const vault = await startLocalVault();
  cleanups.unshift(() => vault.stop());
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }');
  const identity = await createDemoIdentity(join(work, 'identity'));
  const token = await identity.sign({ sub: 'dev', role: 'project_user', project: PROJECT });
  const outsider = await identity.sign({ sub: 'eve', role: 'project_user', project: 'other-team' });

  await storeBenchPolicy(etcd.endpoints, PLATFORM_POLICY_NAME, DEMO_PLATFORM_POLICY.rego, JSON.stringify(DEMO_PLATFORM_POLICY.data));
  // The soak's policy versions (soakVersion): version 0 stored now, the writer's from 1 on.
  const versionOf = (n: number) => soakVersion(n, moduleEvery);
  await storeBenchPolicy(etcd.endpoints, PROJECT, versionOf(0).rego, versionOf(0).dataText);
  const compiler = new RegoCompiler({ opaPath: benchOpaPath });
  const compiledTexts =
    compileEach && etcdWarmupWrites === 0 ? null : await Promise.all(SOAK_PROJECT_TEXTS.map((rego) => compiler.compile(rego, versionOf(0).dataText)));
  const compiledOnce = compileEach ? null : compiledTexts;

  // etcd's Raft log brought to its level before anything is measured, by the same mix of writes on a
  // project no request names (its versions are swapped in unbuilt, as any policy not in use).
  const etcdKiB = () => (etcdPid === null ? null : (residentKiB(etcdPid)?.kib ?? null));
  const etcdWarmup = { seconds: 0, kibBefore: etcdKiB(), kibAfter: null as number | null };
  if (etcdWarmupWrites > 0) {
    const client = createEtcdClient(etcd.endpoints);
    const store = new PolicyStore(client);
    const began = performance.now();
    try {
      for (let n = 1; n <= etcdWarmupWrites; n++) {
        const { text, rego, dataText } = versionOf(n);
        await store.put(`${PROJECT}-warmup`, policySubmission(rego, dataText, compiledTexts![text]!, 'bench-soak-warmup'));
      }
    } finally {
      client.close();
    }
    etcdWarmup.seconds = (performance.now() - began) / 1000;
    etcdWarmup.kibAfter = etcdKiB();
  }

  const upstreamPort = await freePort();
  processes.push(await startProcess(tools.upstream, ['-addr', `127.0.0.1:${upstreamPort}`], {}, () => tcpAccepts(upstreamPort)));
  const upstream = `127.0.0.1:${upstreamPort}`;
  const routesPath = join(work, 'apisix.yaml');
  writeFileSync(
    routesPath,
    standaloneRoutesText(parseDocument(pointRoutesAt(readFileSync(join(root, 'apisix-conf', 'apisix.yaml'), 'utf8'), { rag: upstream, llm: upstream }))),
  );
  // The runner's metrics, for its event-loop delay per interval (runtime/process-metrics).
  const runnerMetricsPort = await freePort();
  const gateway = await startApisix({
    installation,
    repoRoot: root,
    routesPath,
    port: await freePort(),
    workerProcesses: 2,
    env: benchRunnerEnv({
      etcdEndpoints: etcd.endpoints,
      workers,
      vault: { addr: vault.addr, ...approle },
      extra: {
        RUNNER_STATE_DIR: join(work, 'runner-state'),
        RUNNER_METRICS_PORT: String(runnerMetricsPort),
        RUNNER_SETTLE_PORT: String(await freePort()),
        JWT_JWKS_FILE: identity.jwksFile,
        JWT_ISSUER: identity.identityConfig.issuer,
        JWT_AUDIENCE: identity.identityConfig.audience.join(','),
        JWT_ALGORITHMS: identity.identityConfig.algorithms.join(','),
      },
    }),
    logger,
  });
  cleanups.unshift(() => gateway.stop());

  // Fast and wrong is worthless: the caller is let through, another project's caller and no token are not.
  const path = '/rag/ask';
  await expectStatus("the project's caller", 200, () => status(gateway, path, { headers: { authorization: `Bearer ${token}` } }));
  await expectStatus('no token', 401, () => status(gateway, path), 1);
  await expectStatus("another project's caller", 403, () => status(gateway, path, { headers: { authorization: `Bearer ${outsider}` } }), 1);

  const loadArgs = ['-url', `${gateway.url}${path}`, '-connections', String(connections), '-header', `authorization: Bearer ${token}`];
  const runLoad = async (args: string[]) => {
    const { stdout } = await execFileAsync(tools.load, [...loadArgs, ...args], { maxBuffer: 64 * 1024 * 1024 });
    return stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as unknown);
  };

  // 1. The maximum, on a closed loop.
  const [max] = (await runLoad(['-seconds', String(maxSeconds), '-warmup', '1'])) as [LoadLine];
  if (max.errors > 0 || max.calls === 0)
    throw new Error(`the maximum's run: ${max.errors} errors of ${max.calls + max.errors} (statuses ${JSON.stringify(max.statuses)})`);
  const rate = Math.max(1, Math.round(max.callsPerSecond * loadShare));

  // 3. The policy writer: a new version once a second, on a fixed schedule (a write that runs late is not made up).
  const writes = { made: 0, failed: 0, skipped: 0, ms: [] as number[], firstRevision: 0, lastRevision: 0, failures: [] as string[] };
  let writing = true;
  const writer = (async () => {
    const client = createEtcdClient(etcd.endpoints);
    const store = new PolicyStore(client);
    const began = Date.now();
    try {
      for (let n = 1; writing && writesPerSecond > 0; n++) {
        const due = began + ((n - 1) * 1_000) / writesPerSecond;
        const wait = due - Date.now();
        if (wait < -1_000) {
          writes.skipped++;
          continue;
        }
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (!writing) break;
        const t0 = performance.now();
        try {
          const { text, rego, dataText } = versionOf(n);
          const compiled = compiledOnce?.[text] ?? (await compiler.compile(rego, dataText));
          const put = await store.put(PROJECT, policySubmission(rego, dataText, compiled, 'bench-soak'));
          if (writes.firstRevision === 0) writes.firstRevision = put.revision;
          writes.lastRevision = put.revision;
          writes.made++;
          writes.ms.push(performance.now() - t0);
        } catch (err) {
          writes.failed++;
          if (writes.failures.length < 5) writes.failures.push(String(err));
        }
      }
    } finally {
      client.close();
    }
  })();

  // 4. RSS every 5 s, per process (by label; a label whose pid changes is a restart, reported).
  // With each sample, the process's own CPU time so far (clock ticks), to tell which process spends what.
  const rss = new Map<string, { pid: number; samples: { t: number; kib: number; anon: number; ticks: number }[]; restarted: boolean }>();
  const writerCpu: { t: number; us: number }[] = [];
  const loadStart = Date.now();
  // The machine's counters: how busy its cores were, and the host's steal (to tell an interval the machine's
  // neighbours slowed from one the gateway did).
  const cpu: { t: number; total: number; steal: number; idle: number }[] = [];
  const sample = () => {
    const t = (Date.now() - loadStart) / 1000;
    cpu.push({ t, ...machineCpuTicks() });
    const usage = process.cpuUsage();
    writerCpu.push({ t, us: usage.user + usage.system });
    const ticks = new Map(processTable().map((p) => [p.pid, p.cpuTicks]));
    for (const [label, pid] of watchedProcesses(gateway, etcdPid)) {
      const got = residentKiB(pid);
      if (got === null) continue;
      const entry = rss.get(label) ?? { pid, samples: [], restarted: false };
      if (entry.pid !== pid) entry.restarted = true;
      entry.pid = pid;
      entry.samples.push({ t, ...got, ticks: ticks.get(pid) ?? NaN });
      rss.set(label, entry);
    }
  };
  // The runner's worst event-loop delay since the last scrape (prom-client resets its histogram on each):
  // an interval whose p99 is hundreds of ms while the runner's loop never waited that long was not held up
  // by the runner. Its sampler fires every EVENT_LOOP_SAMPLE_MS and records how late it fired, plus that
  // period: a stall that long or longer shows, a shorter one only if it overlaps a firing.
  const loopDelays: { t: number; ms: number }[] = [];
  const scrapeLoopDelay = async () => {
    const t = (Date.now() - loadStart) / 1000;
    try {
      const text = await (await fetch(`http://127.0.0.1:${runnerMetricsPort}/metrics`)).text();
      const max = /^gatehouse_runner_nodejs_eventloop_lag_max_seconds(?:\{[^}]*\})? (\S+)$/m.exec(text)?.[1];
      if (max !== undefined) loopDelays.push({ t, ms: Math.max(0, Number(max) * 1000 - EVENT_LOOP_SAMPLE_MS) });
    } catch {
      // A missed scrape leaves a gap, shown as "-" where an interval has none.
    }
  };
  sample();
  await scrapeLoopDelay();
  const sampler = setInterval(() => {
    sample();
    void scrapeLoopDelay();
  }, RSS_EVERY_MS);

  // 2. The soak itself: the paced load, one line per interval.
  let lines: unknown[];
  try {
    lines = await runLoad(['-seconds', String(seconds), '-warmup', '0', '-rate', String(rate), '-interval', String(interval)]);
  } finally {
    clearInterval(sampler);
    sample();
    await scrapeLoopDelay();
    writing = false;
    await writer;
  }
  const total = lines.at(-1) as LoadLine & { statuses: Record<string, number> };
  const intervals = lines.slice(0, -1) as IntervalLine[];

  console.log(machineLine());
  console.log(
    `through APISIX 3.9.1 (2 nginx workers) to a Go upstream, /rag/ask (Gatehouse jwt + opa: platform + project policy); load: bench/go/httpload, ${connections} connections; ` +
      `Gatehouse RUNNER_WORKERS=${workers}; loadavg at the end ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}\n`,
  );
  console.log(`maximum (closed loop, ${maxSeconds}s): ${max.callsPerSecond.toFixed(0)} req/s, p50 ${max.p50Us.toFixed(0)} µs, p99 ${max.p99Us.toFixed(0)} µs`);
  console.log(
    `soak: ${(loadShare * 100).toFixed(0)}% of it = ${rate} req/s paced (open loop) for ${seconds}s, intervals of ${interval}s; statuses ${JSON.stringify(total.statuses)}`,
  );
  if (etcdWarmupWrites > 0) {
    const mib = (k: number | null) => (k === null ? '-' : (k / 1024).toFixed(1));
    console.log(
      `etcd warmed up first: ${etcdWarmupWrites} policy writes of the same mix in ${etcdWarmup.seconds.toFixed(0)} s, RSS ${mib(etcdWarmup.kibBefore)} -> ${mib(etcdWarmup.kibAfter)} MiB`,
    );
  }
  const writeMs = [...writes.ms].sort((a, b) => a - b);
  console.log(
    `policy writes (new data each, the Rego switched between two texts every ${moduleEvery} writes, ` +
      `${compileEach ? 'each compiled by opa on these cores' : 'both compiled by opa before the load'}): ${writes.made} made, ${writes.failed} failed, ${writes.skipped} skipped (ran late), ` +
      `etcd revisions ${writes.firstRevision}..${writes.lastRevision}, write time p50 ${(writeMs[Math.floor(writeMs.length / 2)] ?? 0).toFixed(0)} ms, max ${(writeMs.at(-1) ?? 0).toFixed(0)} ms` +
      (writes.failures.length > 0 ? `\n  first failures: ${writes.failures.join(' | ')}` : ''),
  );

  // A share of the machine's CPU time over an interval: between the samples nearest its ends.
  const nearest = (t: number) => cpu.reduce((best, c) => (Math.abs(c.t - t) < Math.abs(best.t - t) ? c : best), cpu[0]!);
  const shareOf = (from: number, to: number, part: (c: (typeof cpu)[number]) => number) => {
    const [a, b] = [nearest(from), nearest(to)];
    return b.total > a.total ? (part(b) - part(a)) / (b.total - a.total) : 0;
  };
  // Every process's CPU (not idle, over all cores) over the interval, a request: rising with the same
  // load, the machine is doing more for each request, or getting less done with each cycle.
  const busyMicrosPerCall = (l: IntervalLine) => {
    const [a, b] = [nearest(l.fromS), nearest(l.fromS + l.seconds)];
    const busyTicks = b.total - b.idle - (a.total - a.idle);
    const calls = (l.calls / l.seconds) * (b.t - a.t);
    return calls > 0 ? ((busyTicks / CLOCK_TICKS / calls) * 1e6).toFixed(0) : '-';
  };
  // A scrape at t covers the RSS_EVERY_MS before it.
  const worstLoopDelay = (l: IntervalLine) => {
    const inside = loopDelays.filter((d) => d.t > l.fromS && d.t - RSS_EVERY_MS / 1000 < l.fromS + l.seconds);
    return inside.length > 0 ? Math.max(...inside.map((d) => d.ms)).toFixed(0) : '-';
  };
  console.log(
    '\n| interval | from s | req/s | errors | p50 µs | p99 µs | max µs | machine busy | host steal | machine CPU µs a request | runner event-loop delay, worst ms |',
  );
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const l of intervals)
    console.log(
      `| ${l.interval + 1} | ${l.fromS.toFixed(0)} | ${(l.calls / l.seconds).toFixed(0)} | ${l.errors} | ${l.p50Us.toFixed(0)} | ${l.p99Us.toFixed(0)} | ${l.maxUs.toFixed(0)} | ` +
        `${((1 - shareOf(l.fromS, l.fromS + l.seconds, (c) => c.idle)) * 100).toFixed(1)}% | ${(shareOf(l.fromS, l.fromS + l.seconds, (c) => c.steal) * 100).toFixed(1)}% | ` +
        `${busyMicrosPerCall(l)} | ${worstLoopDelay(l)} |`,
    );

  // RSS after the first interval against the last interval, by the peak of each: a process whose
  // memory moves in a sawtooth (the metering thread renewed every 100 modules) is flat when its
  // peaks are, and a single sample at either end would land anywhere on the tooth.
  const baseAt = interval;
  const lastFrom = intervals.at(-1)?.fromS ?? seconds - interval;
  console.log(
    `\n| process | pid | peak MiB, ${baseAt.toFixed(0)}s-${(2 * baseAt).toFixed(0)}s | peak MiB, last interval | growth | RSS MiB at ${baseAt.toFixed(0)}s -> end | anonymous (heap) MiB at ${baseAt.toFixed(0)}s -> end | CPU, % of a core |`,
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|');
  // CPU over the whole load, first sample to last (a restarted process's is not comparable: left out).
  const cpuShare = (samples: { t: number; ticks: number }[]) => {
    const [a, b] = [samples[0]!, samples.at(-1)!];
    return b.t > a.t ? (((b.ticks - a.ticks) / CLOCK_TICKS / (b.t - a.t)) * 100).toFixed(1) : '-';
  };
  let rssOk = true;
  let maxGrowth = -Infinity;
  const grown: string[] = [];
  for (const [label, { pid, samples, restarted }] of [...rss].sort((a, b) => a[0].localeCompare(b[0]))) {
    const base = samples.find((s) => s.t >= baseAt - RSS_EVERY_MS / 2000) ?? samples[0]!;
    const end = samples.at(-1)!;
    const peak = (from: number, to: number) => Math.max(...samples.filter((s) => s.t >= from && s.t <= to).map((s) => s.kib), 0) || base.kib;
    const early = peak(baseAt, 2 * baseAt);
    const late = peak(lastFrom, Infinity);
    const growth = (late - early) / early;
    const ok = !restarted && growth <= 0.05;
    maxGrowth = Math.max(maxGrowth, growth);
    if (!ok) ((rssOk = false), grown.push(label));
    const mib = (k: number) => (k / 1024).toFixed(1);
    console.log(
      `| ${label}${restarted ? ' (RESTARTED)' : ''} | ${pid} | ${mib(early)} | ${mib(late)} | ${(growth * 100).toFixed(1)}% | ${mib(base.kib)} -> ${mib(end.kib)} | ${mib(base.anon)} -> ${mib(end.anon)} | ${restarted ? '-' : cpuShare(samples)} |`,
    );
  }
  const [w0, w1] = [writerCpu[0]!, writerCpu.at(-1)!];
  console.log(
    `(this benchmark's own process, the policy writer: ${w1.t > w0.t ? (((w1.us - w0.us) / 1e6 / (w1.t - w0.t)) * 100).toFixed(1) : '-'}% of a core${compileEach ? ', not counting the opa processes it runs' : ''})`,
  );

  const errors = total.errors + writes.failed;
  const first = intervals[0]!;
  const last = intervals.at(-1)!;
  const p99Ratio = last.p99Us / first.p99Us;
  const achieved = total.callsPerSecond / rate;
  const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL');
  console.log('\n| target | measured | wanted | |');
  console.log('|---|---:|---:|---|');
  console.log(`| errors (non-200 answers, broken connections, failed policy writes) | ${total.errors} + ${writes.failed} | 0 | ${verdict(errors === 0)} |`);
  console.log(
    `| RSS of every process, peak of the last interval vs peak of the second | max ${(maxGrowth * 100).toFixed(1)}%${grown.length ? ` (${grown.join(', ')})` : ''} | <= 5% | ${verdict(rssOk)} |`,
  );
  console.log(
    `| p99 of the last interval vs the first | ${last.p99Us.toFixed(0)} / ${first.p99Us.toFixed(0)} µs = ${p99Ratio.toFixed(2)}x | <= 1.5x | ${verdict(p99Ratio <= 1.5)} |`,
  );
  console.log(
    `| (load held: req/s served vs paced) | ${(achieved * 100).toFixed(1)}% | ~100% | ${achieved >= 0.98 ? 'held' : 'NOT held: the gateway or the machine fell behind'} |`,
  );
  console.log(
    `| (policy writes, ${writesPerSecond} a second) | ${writes.made} in ${seconds}s | ${Math.floor(seconds * writesPerSecond)} | ${writes.skipped === 0 ? 'kept up' : `${writes.skipped} ran late`} |`,
  );
  if (errors > 0 || !rssOk || p99Ratio > 1.5) process.exitCode = 1;
}

runBench(main);
