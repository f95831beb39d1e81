// npm run bench:decision-log — what decision logs cost the jwt + opa chain,
// and what a sink that does not keep up costs it: three runners side by side
// (one process each), no decision log; a log to a file; a log to a pipe whose
// reader never reads (the buffer fills, events are dropped and counted),
// driven by bench/go/loadgen as bench:runner drives them.
//
// Env: BENCH_CONNECTIONS (8), BENCH_SECONDS (3), BENCH_ROUNDS (3).
import { execFile, execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { freePort } from '../dev/apisix/index.js';
import { benchIdentity, storeBenchPolicy, machineLine, median, socketAccepts, startProcess, type BenchProcess } from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const bin = join(root, '.local', 'bin');
const execFileAsync = promisify(execFile);
const POLICY = 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role in data.roles\n';

async function main() {
  execFileSync('go', ['build', '-o', join(bin, 'gatehouse-ext-plugin-load'), './loadgen'], { cwd: join(root, 'bench', 'go'), stdio: 'inherit' });
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-dlog-'));
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const processes: BenchProcess[] = [];
  let reader: number | null = null;
  try {
    const identity = await benchIdentity(work);
    const token = await identity.sign({ sub: 'ana', role: 'analyst', project: 'bench' });
    await storeBenchPolicy(etcd.endpoints, 'bench', POLICY, '{"roles":["analyst"]}');

    const fifo = join(work, 'stalled.fifo');
    execFileSync('mkfifo', [fifo]);
    reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK); // opened, never read
    const logFile = join(work, 'decisions.log');
    const variants: [string, Record<string, string>][] = [
      ['no decision log', {}],
      ['decision log to a file', { DECISION_LOG: `file:${logFile}` }],
      ['decision log to a stalled pipe', { DECISION_LOG: `file:${fifo}`, DECISION_LOG_BUFFER: '10000' }],
    ];
    const servers: { name: string; socket: string; metricsPort: number }[] = [];
    for (const [name, env] of variants) {
      const socket = join(work, `${servers.length}.sock`);
      const metricsPort = await freePort();
      processes.push(
        await startProcess(
          process.execPath,
          [join(here, '../plugins/runner/main.js')],
          {
            ...identity.env,
            ...env,
            APISIX_LISTEN_ADDRESS: `unix:${socket}`,
            ETCD_ENDPOINTS: etcd.endpoints.join(','),
            RUNNER_STATE_DIR: join(work, `state-${servers.length}`),
            RUNNER_WORKERS: '1',
            RUNNER_METRICS_PORT: String(metricsPort),
          },
          () => socketAccepts(socket),
        ),
      );
      servers.push({ name, socket, metricsPort });
    }
    const conf = JSON.stringify([
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["caller-project"]}' },
    ]);
    const results = new Map<string, { rate: number; p50: number; p99: number }[]>();
    for (let round = 0; round < rounds; round++) {
      for (const server of servers) {
        const { stdout } = await execFileAsync(join(bin, 'gatehouse-ext-plugin-load'), [
          '-socket',
          server.socket,
          '-connections',
          String(connections),
          '-seconds',
          String(seconds),
          '-conf',
          conf,
          '-method',
          'POST',
          '-path',
          '/rag/ask',
          '-header',
          `authorization: Bearer ${token}`,
        ]);
        const r = JSON.parse(stdout) as { callsPerSecond: number; p50Us: number; p99Us: number; errors: number };
        if (r.errors > 0) throw new Error(`${server.name}: ${r.errors} errors`);
        results.set(server.name, [...(results.get(server.name) ?? []), { rate: r.callsPerSecond, p50: r.p50Us, p99: r.p99Us }]);
      }
    }
    console.log(machineLine());
    console.log(`jwt + opa chain, one runner process each; ${connections} connections, ${seconds}s x ${rounds} rounds (median)\n`);
    console.log('| runner | calls/s | p50 µs | p99 µs | calls/s vs no log | events written | events dropped |');
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    const base = median(results.get(servers[0]!.name)!.map((r) => r.rate));
    for (const server of servers) {
      const rows = results.get(server.name)!;
      const metrics = await (await fetch(`http://127.0.0.1:${server.metricsPort}/metrics`)).text();
      const count = (outcome: string) => Number(new RegExp(`gatehouse_decision_log_events_total\\{outcome="${outcome}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0);
      const rate = median(rows.map((r) => r.rate));
      console.log(
        `| ${server.name} | ${rate.toFixed(0)} | ${median(rows.map((r) => r.p50)).toFixed(0)} | ${median(rows.map((r) => r.p99)).toFixed(0)} | ${(rate / base).toFixed(2)}x | ${count('written')} | ${count('dropped')} |`,
      );
    }
    console.log(`\nlog file: ${(statSync(logFile).size / 1024 / 1024).toFixed(1)} MiB`);
  } finally {
    if (reader !== null) closeSync(reader); // frees the stalled runner's write, so it can stop
    for (const p of processes) await p.stop();
    await etcd.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
