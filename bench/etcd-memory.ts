// npm run bench:etcd-memory — whether etcd's memory levels off under a
// steady stream of policy writes, with the settings the deployment gives it.
//
// etcd 3.4 keeps every Raft entry it applied in memory until it takes a
// snapshot (every --snapshot-count entries), and then the last 5,000 (a
// constant in 3.4). So under writes its memory grows for the first
// snapshot-count + 5,000 entries whatever the entries hold, and only a run
// that long shows whether it then stays level. A ten-minute soak at one write
// a second makes about 1,300 entries (policy writes and the gateways'
// reports), short of the 10,000 of the deployment's settings; this makes
// BENCH_ETCD_WRITES (30,000) policy writes as fast as one writer goes, the
// soak's mix (new data each, the module switched between two texts every
// BENCH_SOAK_MODULE_EVERY writes, 60), on an etcd started with the
// deployment's snapshot-count (deploy/etcd/etcd-dc1.conf.yml; or
// BENCH_ETCD_SNAPSHOT_COUNT) and the soak's compaction (every minute).
//
// It prints etcd's RSS and anonymous memory every BENCH_ETCD_SAMPLE_EVERY
// writes (1,000), and judges the last third of the writes against the
// middle third by their peaks: level when the last third's peak is at most
// 5% above the middle's.
import { execFileSync } from 'node:child_process';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { residentKiB } from '../dev/proc.js';
import { RegoCompiler, policySubmission } from '../cms/rego-compiler.js';
import { createEtcdClient } from '../etcd/index.js';
import { PolicyStore } from '../policy/store/index.js';
import { SOAK_PROJECT_TEXTS, benchOpaPath, deployedEtcdSnapshotCount, findEtcdPid, soakVersion, machineLine, runBench, type BenchScope } from './support.js';

const snapshotCount = Number(process.env.BENCH_ETCD_SNAPSHOT_COUNT ?? deployedEtcdSnapshotCount());
const writes = Number(process.env.BENCH_ETCD_WRITES ?? 30_000);
const sampleEvery = Number(process.env.BENCH_ETCD_SAMPLE_EVERY ?? 1_000);
const moduleEvery = Number(process.env.BENCH_SOAK_MODULE_EVERY ?? 60);
const PROJECT = 'bench';

/** VmRSS and RssAnon of a process, in MiB. */
function memoryMiB(pid: number): { rss: number; anon: number } {
  const got = residentKiB(pid);
  if (got === null) throw new Error(`etcd (pid ${pid}) is gone`);
  return { rss: got.kib / 1024, anon: got.anon / 1024 };
}

async function main({ cleanups }: BenchScope) {
  for (const [name, value] of Object.entries({ snapshotCount, writes, sampleEvery, moduleEvery }))
    if (!(Number.isInteger(value) && value >= 1)) throw new Error(`${name} must be a whole number >= 1, not ${value}`);
  const etcd = await startLocalEtcd({
    dataRoot: 'bench-etcd',
    extraArgs: ['--snapshot-count', String(snapshotCount), '--auto-compaction-mode', 'periodic', '--auto-compaction-retention', '1m'],
  });
  cleanups.unshift(() => etcd.cleanup());
  const pid = findEtcdPid(etcd.dataDir);
  if (pid === null) throw new Error('cannot find the etcd this benchmark started');
  const client = createEtcdClient(etcd.endpoints);
  cleanups.unshift(async () => client.close());
  const store = new PolicyStore(client);
  const compiler = new RegoCompiler({ opaPath: benchOpaPath });
  const compiled = await Promise.all(SOAK_PROJECT_TEXTS.map((rego) => compiler.compile(rego, soakVersion(0, moduleEvery).dataText)));

  const samples: { writes: number; seconds: number; rss: number; anon: number }[] = [];
  const started = performance.now();
  const sample = (n: number) => samples.push({ writes: n, seconds: (performance.now() - started) / 1000, ...memoryMiB(pid) });
  sample(0);
  for (let n = 0; n < writes; n++) {
    const { text, rego, dataText } = soakVersion(n, moduleEvery);
    await store.put(PROJECT, policySubmission(rego, dataText, compiled[text]!, 'bench-etcd-memory'));
    if ((n + 1) % sampleEvery === 0) sample(n + 1);
  }

  console.log(machineLine());
  console.log(
    `etcd ${etcdVersion()} with --snapshot-count ${snapshotCount} (then 5,000 entries kept), compaction every minute; ` +
      `${writes} policy writes by one writer (new data each, a new module every ${moduleEvery}), ${samples.at(-1)!.seconds.toFixed(0)} s\n`,
  );
  console.log('| writes | s | etcd RSS MiB | anonymous MiB |');
  console.log('|---:|---:|---:|---:|');
  for (const s of samples) console.log(`| ${s.writes} | ${s.seconds.toFixed(0)} | ${s.rss.toFixed(1)} | ${s.anon.toFixed(1)} |`);
  const third = writes / 3;
  const peak = (from: number, to: number) => Math.max(...samples.filter((s) => s.writes > from && s.writes <= to).map((s) => s.rss));
  const middle = peak(third, 2 * third);
  const last = peak(2 * third, writes);
  const growth = (last - middle) / middle;
  console.log(
    `\npeak RSS, writes ${Math.round(third)}-${Math.round(2 * third)}: ${middle.toFixed(1)} MiB; last third: ${last.toFixed(1)} MiB; ` +
      `growth ${(growth * 100).toFixed(1)}% (level: <= 5%) ${growth <= 0.05 ? 'LEVEL' : 'STILL GROWING'}`,
  );
  if (growth > 0.05) process.exitCode = 1;
}

/** The version the etcd binary reports (the one startLocalEtcd runs). */
function etcdVersion(): string {
  const text = execFileSync(process.env.ETCD_BINARY ?? 'etcd', ['--version'], { encoding: 'utf8' });
  return /etcd Version: (\S+)/.exec(text)?.[1] ?? 'of unknown version';
}

runBench(main);
