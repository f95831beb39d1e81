// npm run bench:runner — drives the runner over its socket as APISIX does
// (N connections, one call at a time on each) and compares it, in the same
// run, with the floor: a bare frame round trip over a Unix socket in Node.
//
// Env: BENCH_CONNECTIONS (default 32), BENCH_SECONDS per scenario and round
// (default 3), BENCH_ROUNDS (default 3; scenarios alternate within a round so
// machine noise hits them alike; the median of each figure is reported).
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HttpReqCallRequest } from '../plugins/protocol/index.js';
import {
  driveRunner,
  machineLine,
  medianStats,
  prepareConf,
  printTable,
  socketAccepts,
  startNodeProcess,
  type Stats,
} from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const here = fileURLToPath(new URL('.', import.meta.url));

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-'));
  const floorSocket = join(dir, 'floor.sock');
  const runnerSocket = join(dir, 'runner.sock');
  const floor = await startNodeProcess(join(here, 'floor-echo-server.js'), [floorSocket], {}, () => socketAccepts(floorSocket));
  const runner = await startNodeProcess(
    join(here, '../plugins/runner/main.js'),
    [],
    { APISIX_LISTEN_ADDRESS: `unix:${runnerSocket}`, RUNNER_METRICS_PORT: 'off' },
    () => socketAccepts(runnerSocket),
  );
  try {
    const example = (conf: object) => [{ name: 'example', value: JSON.stringify(conf) }];
    const noop = await prepareConf(runnerSocket, example({}));
    const rewrite = await prepareConf(runnerSocket, example({ set_headers: { 'x-gatehouse': '1', 'x-forged': null }, set_args: { stream: null } }));
    const withVar = await prepareConf(runnerSocket, example({ echo_var: 'remote_addr' }));
    const request: HttpReqCallRequest = {
      id: 0,
      srcIp: new Uint8Array([10, 0, 0, 7]),
      method: 'POST',
      path: '/llm/v1/chat/completions',
      args: [{ name: 'stream', value: 'false' }],
      headers: [
        { name: 'host', value: 'api.example.com' },
        { name: 'content-type', value: 'application/json' },
        { name: 'user-agent', value: 'bench' },
        { name: 'accept', value: '*/*' },
      ],
      confToken: 0,
    };
    const scenarios: [string, string, number][] = [
      ['floor: bare frame round trip', floorSocket, 0],
      ['runner: no-op chain', runnerSocket, noop],
      ['runner: example plugin (rewrite)', runnerSocket, rewrite],
      ['runner: example plugin (+1 ExtraInfo var)', runnerSocket, withVar],
    ];
    const results = new Map<string, Stats[]>();
    for (let round = 0; round < rounds; round++) {
      for (const [name, socketPath, confToken] of scenarios) {
        const stats = await driveRunner({
          name,
          socketPath,
          request: { ...request, confToken },
          connections,
          seconds,
          answerExtra: () => Buffer.from('10.0.0.7'),
        });
        results.set(name, [...(results.get(name) ?? []), stats]);
      }
    }
    const summary = scenarios.map(([name]) => medianStats(results.get(name)!));
    console.log(machineLine());
    console.log(`connections: ${connections}, ${seconds}s per scenario, ${rounds} rounds (median)\n`);
    printTable(summary, { ...summary[0]!, name: 'floor' });
  } finally {
    await Promise.all([floor.stop(), runner.stop()]);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
