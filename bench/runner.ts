// npm run bench:runner — drives the runner over its socket as APISIX does
// (N connections, one call at a time on each) and compares it, in the same
// run, with the floor: a bare frame round trip over a Unix socket in Node.
//
// Env: BENCH_CONNECTIONS (default 32), BENCH_SECONDS per scenario and round
// (default 3), BENCH_ROUNDS (default 3; scenarios alternate within a round so
// machine noise hits them alike; the median round is reported).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import hdr from 'hdr-histogram-js';
import {
  FrameConnection,
  RpcType,
  decodePrepareConfResponse,
  encodeExtraInfoResponse,
  encodeHttpReqCallRequest,
  encodePrepareConfRequest,
  type HttpReqCallRequest,
} from '../plugins/protocol/index.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 32);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const here = fileURLToPath(new URL('.', import.meta.url));

async function startProcess(script: string, socketPath: string, env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(process.execPath, [script, socketPath], {
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', APISIX_LISTEN_ADDRESS: `unix:${socketPath}`, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr!.resume();
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(socketPath);
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return child;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${script} did not start`);
}

async function open(socketPath: string): Promise<FrameConnection> {
  const socket = connect(socketPath);
  await new Promise((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)));
  socket.setNoDelay?.(true);
  return new FrameConnection(socket);
}

async function prepare(socketPath: string, conf: { name: string; value: string }[]): Promise<number> {
  const conn = await open(socketPath);
  await conn.send(RpcType.PrepareConf, encodePrepareConfRequest({ conf, key: null }));
  const frame = await conn.next();
  if (frame.type !== RpcType.PrepareConf) throw new Error(`PrepareConf failed (frame type ${frame.type})`);
  conn.destroy();
  return decodePrepareConfResponse(frame.payload).confToken;
}

interface Result {
  name: string;
  callsPerSecond: number;
  p50: number;
  p99: number;
  p999: number;
}

async function drive(name: string, socketPath: string, confToken: number): Promise<Result> {
  const histogram = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
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
    confToken,
  };
  const conns = await Promise.all(Array.from({ length: connections }, () => open(socketPath)));
  const varAnswer = encodeExtraInfoResponse({ result: Buffer.from('10.0.0.7') });
  const end = Date.now() + seconds * 1000;
  let calls = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    conns.map(async (conn, c) => {
      let id = c << 22;
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest({ ...request, id: id++ }));
        let frame = await conn.next();
        while (frame.type === RpcType.ExtraInfo) {
          await conn.send(RpcType.ExtraInfo, varAnswer);
          frame = await conn.next();
        }
        if (frame.type !== RpcType.HTTPReqCall) throw new Error(`${name}: unexpected frame type ${frame.type}`);
        histogram.recordValue(Number(process.hrtime.bigint() - t0) / 1000);
        calls++;
      }
    }),
  );
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  conns.forEach((c) => c.destroy());
  const result = {
    name,
    callsPerSecond: calls / elapsed,
    p50: histogram.getValueAtPercentile(50),
    p99: histogram.getValueAtPercentile(99),
    p999: histogram.getValueAtPercentile(99.9),
  };
  histogram.destroy();
  return result;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'gh-bench-'));
  const floorSocket = join(dir, 'floor.sock');
  const runnerSocket = join(dir, 'runner.sock');
  const floor = await startProcess(join(here, 'floor-echo-server.js'), floorSocket);
  const runner = await startProcess(join(here, '../plugins/runner/main.js'), runnerSocket);
  try {
    const noop = await prepare(runnerSocket, [{ name: 'example', value: '{}' }]);
    const rewrite = await prepare(runnerSocket, [
      {
        name: 'example',
        value: JSON.stringify({ set_headers: { 'x-gatehouse': '1', 'x-forged': null }, set_args: { stream: null } }),
      },
    ]);
    const withVar = await prepare(runnerSocket, [{ name: 'example', value: JSON.stringify({ echo_var: 'remote_addr' }) }]);
    const scenarios: [string, string, number][] = [
      ['floor: bare frame round trip', floorSocket, 0],
      ['runner: no-op chain', runnerSocket, noop],
      ['runner: example plugin (rewrite)', runnerSocket, rewrite],
      ['runner: example plugin (+1 ExtraInfo var)', runnerSocket, withVar],
    ];
    const byName = new Map<string, Result[]>();
    for (let round = 0; round < rounds; round++) {
      for (const [name, socketPath, token] of scenarios) {
        const result = await drive(name, socketPath, token);
        byName.set(name, [...(byName.get(name) ?? []), result]);
      }
    }
    const summary = scenarios.map(([name]) => {
      const results = byName.get(name)!;
      return {
        name,
        callsPerSecond: median(results.map((r) => r.callsPerSecond)),
        p50: median(results.map((r) => r.p50)),
        p99: median(results.map((r) => r.p99)),
        p999: median(results.map((r) => r.p999)),
      };
    });
    const floorResult = summary[0]!;
    console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? 'unknown CPU'}, node ${process.version}`);
    console.log(`connections: ${connections}, ${seconds}s per scenario, ${rounds} rounds (median)`);
    console.log('');
    console.log('| scenario | calls/s | p50 µs | p99 µs | p99.9 µs | throughput vs floor | p50 vs floor |');
    console.log('|---|---:|---:|---:|---:|---:|---:|');
    for (const r of summary) {
      console.log(
        `| ${r.name} | ${Math.round(r.callsPerSecond)} | ${r.p50.toFixed(0)} | ${r.p99.toFixed(0)} | ${r.p999.toFixed(0)} | ` +
          `${(r.callsPerSecond / floorResult.callsPerSecond).toFixed(2)}x | ${(r.p50 / floorResult.p50).toFixed(2)}x |`,
      );
    }
  } finally {
    floor.kill('SIGTERM');
    runner.kill('SIGTERM');
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
