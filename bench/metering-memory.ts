// npm run bench:metering-memory — what a stream of policy writes does to a
// gateway process's memory: one policy written BENCH_VERSIONS times (600) to
// a real etcd, the Rego alternating between two texts so every version
// brings a module to meter and compile, new data each time; a watcher
// follows and every version is decided once, as a gateway does. After every
// BENCH_EVERY versions (50) the process's RSS, JS heap and external memory
// are printed, after forced garbage collections (run with --expose-gc).
//
// Rows: metered (binaryen rewrites each module in the metering worker
// thread, as a gateway does for a module the CMS stored unmetered: the
// compiler here is told not to meter) and unmetered (POLICY_EVAL_FUEL=off),
// each in a process of its own.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { RegoCompiler, policySubmission } from '../cms/rego-compiler.js';
import { PolicyStore } from '../policy/store/index.js';
import { PolicyWatcher } from '../policy/watcher/watcher.js';
import { EngineCache } from '../policy/engine/cache.js';
import { DEFAULT_EVAL_FUEL } from '../policy/engine/index.js';
import { ThreadEvaluator } from '../policy/engine/evaluator.js';
import { benchOpaPath, machineLine } from './support.js';

const versions = Number(process.env.BENCH_VERSIONS ?? 600);
const every = Number(process.env.BENCH_EVERY ?? 50);
const OWNED = 'package p\nimport rego.v1\ndefault allow := false\nallow if input.user == data.owner\n';
const LISTED = 'package p\nimport rego.v1\ndefault allow := false\nallow if input.user in data.users\n';

async function run(metered: boolean): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('run with node --expose-gc');
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const writer = createEtcdClient(etcd.endpoints);
  const reader = createEtcdClient(etcd.endpoints);
  const compiler = new RegoCompiler({ opaPath: benchOpaPath, metered: false });
  const store = new PolicyStore(writer);
  const [owned, listed] = [await compiler.compile(OWNED, '{}'), await compiler.compile(LISTED, '{}')];
  const engines = new EngineCache({ fuel: metered ? DEFAULT_EVAL_FUEL : null });
  const evaluator = new ThreadEvaluator({ engines });
  const watcher = new PolicyWatcher({ client: reader, log: pino({ level: 'silent' }), engines, pool: evaluator });
  await watcher.start();
  const mib = (bytes: number) => (bytes / 1048576).toFixed(1);
  console.log(`\n${metered ? 'metered' : 'unmetered'}: ${versions} versions\n`);
  console.log('| versions | RSS MiB | JS heap MiB | external MiB | engines kept | released |');
  console.log('|---:|---:|---:|---:|---:|---:|');
  try {
    for (let i = 1; i <= versions; i++) {
      const listedTurn = i % 2 === 0;
      const data = listedTurn ? JSON.stringify({ users: [`u${i}`] }) : JSON.stringify({ owner: `u${i}` });
      await store.put('metered', policySubmission(listedTurn ? LISTED : OWNED, data, listedTurn ? listed : owned, 'bench'));
      while (watcher.current.get('metered')?.dataText !== data) await new Promise((resolve) => setTimeout(resolve, 2));
      await watcher.current.get('metered')!.evaluate('metered', { user: `u${i}` });
      if (i % every === 0) {
        gc();
        gc();
        const memory = process.memoryUsage();
        console.log(
          `| ${i} | ${mib(memory.rss)} | ${mib(memory.heapUsed)} | ${mib(memory.external)} | ${engines.stats.instances} | ${engines.stats.released} |`,
        );
      }
    }
  } finally {
    await watcher.stop();
    await evaluator.close();
    writer.close();
    reader.close();
    await etcd.cleanup();
  }
}

const row = process.argv[2];
if (row === 'metered' || row === 'unmetered') {
  run(row === 'metered').then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  console.log(machineLine());
  const self = fileURLToPath(import.meta.url);
  for (const each of ['metered', 'unmetered']) execFileSync(process.execPath, ['--expose-gc', self, each], { stdio: 'inherit' });
}
