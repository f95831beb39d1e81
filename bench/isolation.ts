// npm run bench:isolation — what bounding evaluation costs a normal decision,
// and what it buys when a tenant sends runaway requests. Side by side in one
// run, alternating rounds, two runners on the same etcd and policies:
//
//   in-thread  the default: decisions on the runner's own thread, each
//              bounded by its fuel (POLICY_EVAL_FUEL, metered in the wasm)
//              and the memory ceiling; a runaway tenant made to wait
//   pool       POLICY_EVAL_WORKERS=<cores, at least 2>: decisions in the
//              evaluation pool (fuel, memory, and POLICY_EVAL_TIMEOUT_MS 500)
//   unbounded  POLICY_EVAL_FUEL=off: on the runner's own thread, the wasm not
//              metered (only the memory ceiling bounds an evaluation): what
//              the bounds are measured against
//
// Each runner serves tenant "calm" (a normal policy) alone, then again while
// tenant "slow" keeps two requests in flight whose evaluation runs until
// stopped. Reported: calm's throughput and latency, and p99 with the runaway
// tenant vs without.
//
// Env: BENCH_CONNECTIONS (8), BENCH_SECONDS (3), BENCH_ROUNDS (3).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { NESTED_LOOP_REGO } from '../dev/policies.js';
import { RpcType, decodeHttpReqCallResponse, encodeHttpReqCallRequest, type HttpReqCallRequest } from '../plugins/protocol/index.js';
import {
  benchIdentity,
  driveRunner,
  machineLine,
  medianStats,
  openRunnerConnection,
  prepareConf,
  printTable,
  retryUntilReady,
  socketAccepts,
  startNodeProcess,
  type BenchProcess,
  type Stats,
  storeBenchPolicy,
  BENCH_PROJECT_DATA,
  BENCH_PROJECT_POLICY,
} from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);

const here = fileURLToPath(new URL('.', import.meta.url));
const runnerScript = join(here, '../plugins/runner/main.js');

// A tenant whose policy decides in microseconds.
const CALM = BENCH_PROJECT_POLICY;
// Work that grows with n * n and allocates little: only a deadline stops it (fuel, where the row meters it).
const SLOW = NESTED_LOOP_REGO;

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-isolation-'));
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const processes: BenchProcess[] = [];
  try {
    const identity = await benchIdentity(work);
    const sign = (project: string) => identity.sign({ sub: `u-${project}`, role: 'analyst', project });

    // Stored as opa built them: the unbounded row runs them unmetered, the others meter them as they load them.
    await storeBenchPolicy(etcd.endpoints, 'calm', CALM, JSON.stringify(BENCH_PROJECT_DATA), undefined, { metered: false });
    await storeBenchPolicy(etcd.endpoints, 'slow', SLOW, '{}', undefined, { metered: false });

    const request = async (project: string, n: number): Promise<HttpReqCallRequest> => ({
      id: 0,
      srcIp: new Uint8Array([10, 0, 0, 7]),
      method: 'POST',
      path: '/rag/ask',
      args: [{ name: 'n', value: String(n) }],
      headers: [{ name: 'authorization', value: `Bearer ${await sign(project)}` }],
      confToken: 0,
    });
    const calmRequest = await request('calm', 0);
    const slowRequest = await request('slow', 50_000);
    const allowed = (type: number, payload: Buffer) => {
      const answer = type === RpcType.HTTPReqCall ? decodeHttpReqCallResponse(payload) : null;
      if (!answer || answer.action?.type !== 'rewrite') throw new Error(`calm was not allowed (frame ${type}, ${answer?.action?.type})`);
    };

    const runners: { name: string; socket: string; token: number }[] = [];
    const modes: [string, Record<string, string>][] = [
      ['in-thread', {}],
      ['pool', { POLICY_EVAL_WORKERS: String(Math.max(2, availableParallelism())) }],
      ['unbounded', { POLICY_EVAL_FUEL: 'off' }],
    ];
    for (const [name, mode] of modes) {
      const socket = join(work, `${name}.sock`);
      processes.push(
        await startNodeProcess(
          runnerScript,
          [],
          {
            ...identity.env,
            ETCD_ENDPOINTS: etcd.endpoints.join(','),
            APISIX_LISTEN_ADDRESS: `unix:${socket}`,
            RUNNER_METRICS_PORT: 'off',
            RUNNER_STATE_DIR: join(work, `state-${name}`),
            ...mode,
          },
          () => socketAccepts(socket),
        ),
      );
      const token = await prepareConf(socket, [
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"policies":["platform","caller-project"]}' },
      ]);
      runners.push({ name, socket, token });
      await retryUntilReady(() =>
        driveRunner({ name: 'warm', socketPath: socket, request: { ...calmRequest, confToken: token }, connections: 1, seconds: 0.2, check: allowed }),
      );
    }

    /** Keeps two runaway requests in flight on `socket` until stopped. */
    const runaway = (socket: string, token: number) => {
      let running = true;
      const loops = [0, 1].map(async () => {
        while (running) {
          const conn = await openRunnerConnection(socket);
          try {
            await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest({ ...slowRequest, confToken: token }));
            await conn.next();
          } finally {
            conn.destroy();
          }
        }
      });
      return async () => {
        running = false;
        await Promise.allSettled(loops);
      };
    };

    const results = new Map<string, Stats[]>();
    const keep = (stats: Stats) => results.set(stats.name, [...(results.get(stats.name) ?? []), stats]);
    for (let round = 0; round < rounds; round++) {
      for (const r of round % 2 === 0 ? runners : [...runners].reverse()) {
        const calm = { ...calmRequest, confToken: r.token };
        keep(await driveRunner({ name: `${r.name}: calm alone`, socketPath: r.socket, request: calm, connections, seconds, check: allowed }));
        const stop = runaway(r.socket, r.token);
        await new Promise((resolve) => setTimeout(resolve, 100));
        keep(await driveRunner({ name: `${r.name}: calm while "slow" runs away`, socketPath: r.socket, request: calm, connections, seconds, check: allowed }));
        await stop();
      }
    }
    const summary = [...results.values()].map(medianStats);
    const named = (name: string) => summary.find((s) => s.name === name)!;
    console.log(machineLine());
    console.log(`calm: ${connections} connections, ${seconds} s x ${rounds} rounds (median); slow: 2 requests in flight, each running until stopped\n`);
    printTable(summary, { ...named('unbounded: calm alone'), name: 'unbounded alone' });
    console.log('');
    const unbounded = named('unbounded: calm alone');
    for (const r of runners) {
      const alone = named(`${r.name}: calm alone`);
      const loaded = named(`${r.name}: calm while "slow" runs away`);
      console.log(
        `${r.name}: throughput alone / unbounded alone = ${(alone.opsPerSecond / unbounded.opsPerSecond).toFixed(2)}x; calm p99 with a runaway tenant / alone = ${(loaded.p99 / alone.p99).toFixed(2)}x; p50 ${(loaded.p50 / alone.p50).toFixed(2)}x`,
      );
    }
  } finally {
    await Promise.all(processes.map((p) => p.stop()));
    await etcd.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
