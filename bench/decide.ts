// npm run bench:decide — what an authorization decision costs, measured side
// by side in one run on the same policy and the same input:
//
//   1. the full chain through the runner's socket, as APISIX drives it (jwt + opa)
//   2. the same chain with the token verification cache off, and the jwt
//      plugin alone (to split the chain's cost)
//   3. the decision alone: the wasm policy evaluated in-process
//   4. a real `opa run --server` answering the same decision over HTTP, which
//      is what APISIX's built-in `opa` plugin does on every request
//
// and how fast a policy change propagates: CMS PUT returns -> all of 8 runner
// processes enforce it, and etcd commit (time in the metadata) -> swap.
//
// Env: BENCH_CONNECTIONS (16), BENCH_SECONDS (3), BENCH_ROUNDS (3),
// BENCH_RUNNERS (8), BENCH_PROPAGATION_WRITES (30).
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from 'undici';
import { pino } from 'pino';
import { startLocalEtcd, freePort } from '../dev/local-etcd/index.js';
import { buildCmsApp } from '../cms/app.js';
import { identityConfigFromEnv } from '../identity/index.js';
import { loadPolicyEngine } from '../policy/engine/index.js';
import { RpcType, decodeHttpReqCallResponse, type HttpReqCallRequest } from '../plugins/protocol/index.js';
import type { PolicyInput } from '../plugins/opa/input.js';
import {
  BENCH_AUDIENCE,
  BENCH_ISSUER,
  benchIdentity,
  driveConcurrently,
  driveRunner,
  machineLine,
  median,
  percentile,
  medianStats,
  newHistogram,
  prepareConf,
  printTable,
  retryUntilReady,
  socketAccepts,
  startNodeProcess,
  statsOf,
  type BenchProcess,
  type Stats,
  benchOpaPath,
  storeBenchPolicy,
  BENCH_PROJECT_DATA,
  BENCH_PROJECT_POLICY,
} from './support.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 16);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const runnerCount = Number(process.env.BENCH_RUNNERS ?? 8);
const propagationWrites = Number(process.env.BENCH_PROPAGATION_WRITES ?? 30);

const here = fileURLToPath(new URL('.', import.meta.url));
const runnerScript = join(here, '../plugins/runner/main.js');
const opaPath = benchOpaPath;

const ISSUER = BENCH_ISSUER;
const AUDIENCE = BENCH_AUDIENCE;
const POLICY = BENCH_PROJECT_POLICY;
const DATA = BENCH_PROJECT_DATA;

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-decide-'));
  const etcd = await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const processes: BenchProcess[] = [];
  try {
    // Identity: one signing key, its JWKS on disk, one token per role.
    const identity = await benchIdentity(work);
    const analyst = await identity.sign({ sub: 'ana', role: 'analyst', project: 'bench' });
    const platformAdmin = await identity.sign({ sub: 'root', role: 'platform_admin' });
    const identityEnv = { ...identity.env, ETCD_ENDPOINTS: etcd.endpoints.join(',') };

    // The policy: compiled by the real opa, stored as the CMS stores it.
    const compiled = await storeBenchPolicy(etcd.endpoints, 'bench', POLICY, JSON.stringify(DATA));

    // 1 + 2: one runner, driven over its socket.
    const socketPath = join(work, 'runner.sock');
    const runner = await startNodeProcess(
      runnerScript,
      [],
      { ...identityEnv, APISIX_LISTEN_ADDRESS: `unix:${socketPath}`, RUNNER_METRICS_PORT: 'off', RUNNER_STATE_DIR: join(work, 'state-main') },
      () => socketAccepts(socketPath),
    );
    processes.push(runner);
    const chainToken = await prepareConf(socketPath, [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["caller-project"]}' },
    ]);
    const jwtToken = await prepareConf(socketPath, [{ name: 'jwt', value: '{}' }]);
    // The same chain with every token's signature checked (no verification cache).
    const uncachedSocket = join(work, 'runner-uncached.sock');
    processes.push(
      await startNodeProcess(
        runnerScript,
        [],
        {
          ...identityEnv,
          APISIX_LISTEN_ADDRESS: `unix:${uncachedSocket}`,
          RUNNER_METRICS_PORT: 'off',
          RUNNER_STATE_DIR: join(work, 'state-uncached'),
          JWT_VERIFY_CACHE_SECONDS: '0',
        },
        () => socketAccepts(uncachedSocket),
      ),
    );
    const uncachedToken = await prepareConf(uncachedSocket, [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["caller-project"]}' },
    ]);
    const request: HttpReqCallRequest = {
      id: 0,
      srcIp: new Uint8Array([10, 0, 0, 7]),
      method: 'POST',
      path: '/rag/ask',
      args: [{ name: 'lang', value: 'en' }],
      headers: [
        { name: 'host', value: 'rag.internal:8082' },
        { name: 'authorization', value: `Bearer ${analyst}` },
        { name: 'content-type', value: 'application/json' },
        { name: 'user-agent', value: 'bench' },
        { name: 'accept', value: '*/*' },
      ],
      confToken: 0,
    };
    const expectAllowed = (type: number, payload: Buffer) => {
      const answer = type === RpcType.HTTPReqCall ? decodeHttpReqCallResponse(payload) : null;
      if (!answer || answer.action?.type !== 'rewrite') throw new Error(`the chain did not allow the request (frame type ${type}, ${answer?.action?.type})`);
    };
    // Wait until the runner has loaded the policy.
    await retryUntilReady(() =>
      driveRunner({ name: 'warm-up', socketPath, request: { ...request, confToken: chainToken }, connections: 1, seconds: 0.05, check: expectAllowed }),
    );

    // 3: the same decision in-process, on the input document the runner builds.
    const engine = await loadPolicyEngine(compiled.wasm, { data: JSON.stringify(DATA) });
    const input: PolicyInput = {
      type: 'http',
      request: {
        scheme: 'http',
        method: 'POST',
        host: 'rag.internal:8082',
        port: null,
        path: '/rag/ask',
        headers: { host: 'rag.internal:8082', 'content-type': 'application/json', 'user-agent': 'bench', accept: '*/*' },
        query: { lang: 'en' },
      },
      var: { server_addr: null, server_port: null, remote_addr: '10.0.0.7', remote_port: null, timestamp: Math.floor(Date.now() / 1000) },
      user: { sub: 'ana', role: 'analyst', project: 'bench', iss: ISSUER, aud: AUDIENCE },
      project: 'bench',
    };
    const inProcess = (): Stats => {
      const histogram = newHistogram();
      const end = Date.now() + seconds * 1000;
      let ops = 0;
      const started = process.hrtime.bigint();
      while (Date.now() < end) {
        const t0 = process.hrtime.bigint();
        const result = engine.evaluate(input, compiled.entrypoint) as { allow?: boolean };
        histogram.recordValue(Math.max(1, Number(process.hrtime.bigint() - t0) / 1000));
        if (result?.allow !== true) throw new Error('in-process decision did not allow');
        ops++;
      }
      const stats = statsOf('decision alone (wasm, in-process)', histogram, ops, Number(process.hrtime.bigint() - started) / 1e9);
      histogram.destroy();
      return stats;
    };

    // 4: a real OPA server with the same policy and data.
    const opaDir = join(work, 'opa');
    mkdirSync(opaDir);
    writeFileSync(join(opaDir, 'policy.rego'), POLICY);
    writeFileSync(join(opaDir, 'data.json'), JSON.stringify(DATA));
    const opaPort = await freePort();
    const opa = spawn(opaPath, ['run', '--server', '--addr', `127.0.0.1:${opaPort}`, '--log-level', 'error', opaDir], { stdio: 'ignore' });
    const pool = new Pool(`http://127.0.0.1:${opaPort}`, { connections, pipelining: 1 });
    const body = JSON.stringify({ input });
    const askOpa = async () => {
      const response = await pool.request({ method: 'POST', path: '/v1/data/project/authz', headers: { 'content-type': 'application/json' }, body });
      const answer = (await response.body.json()) as { result?: { allow?: boolean } };
      if (answer.result?.allow !== true) throw new Error(`opa server did not allow: ${JSON.stringify(answer)}`);
    };
    await retryUntilReady(askOpa);
    const overHttp = () => driveConcurrently('opa run --server over HTTP (decision only)', connections, seconds, askOpa);

    const results = new Map<string, Stats[]>();
    const keep = (s: Stats) => results.set(s.name, [...(results.get(s.name) ?? []), s]);
    for (let round = 0; round < rounds; round++) {
      keep(
        await driveRunner({
          name: 'runner socket: jwt + opa (full chain)',
          socketPath,
          request: { ...request, confToken: chainToken },
          connections,
          seconds,
          check: expectAllowed,
        }),
      );
      keep(
        await driveRunner({
          name: 'runner socket: jwt + opa, every signature checked',
          socketPath: uncachedSocket,
          request: { ...request, confToken: uncachedToken },
          connections,
          seconds,
          check: expectAllowed,
        }),
      );
      keep(
        await driveRunner({
          name: 'runner socket: jwt only',
          socketPath,
          request: { ...request, confToken: jwtToken },
          connections,
          seconds,
          check: expectAllowed,
        }),
      );
      keep(inProcess());
      keep(await overHttp());
    }
    await pool.close();
    opa.kill('SIGTERM');
    const summary = [...results.values()].map(medianStats);

    // Propagation: 8 runners watching, CMS PUTs flipping the data.
    const cmsPort = await freePort();
    const cms = await buildCmsApp({
      etcdEndpoints: etcd.endpoints,
      identity: identityConfigFromEnv(identity.env),
      opaPath,
      logger: pino({ level: 'warn' }),
    });
    await cms.listen({ host: '127.0.0.1', port: cmsPort });
    const watchers: BenchProcess[] = [];
    for (let i = 0; i < runnerCount; i++) {
      const sock = join(work, `prop-${i}.sock`);
      const p = await startNodeProcess(
        runnerScript,
        [],
        { ...identityEnv, APISIX_LISTEN_ADDRESS: `unix:${sock}`, RUNNER_METRICS_PORT: 'off', LOG_LEVEL: 'info', RUNNER_STATE_DIR: join(work, `state-${i}`) },
        () => socketAccepts(sock),
      );
      watchers.push(p);
      processes.push(p);
    }
    const cmsPool = new Pool(`http://127.0.0.1:${cmsPort}`, { connections: 1 });
    const putReturnedToAll: number[] = [];
    const commitToSwap: number[] = [];
    const swapLine = (line: string, version: number) => {
      if (!line.includes('"policy version enforced"')) return null;
      const entry = JSON.parse(line) as { policy: string; version: number; swappedAt: number; propagationMs: number };
      return entry.policy === 'prop' && entry.version === version ? entry : null;
    };
    for (let i = 1; i <= propagationWrites; i++) {
      const response = await cmsPool.request({
        method: 'PUT',
        path: '/policies/prop',
        headers: { authorization: `Bearer ${platformAdmin}`, 'content-type': 'application/json' },
        body: JSON.stringify({ rego: POLICY, data: { ...DATA, write: i } }),
      });
      const returnedAt = Date.now();
      // The ETag is the policy version, quoted.
      const version = Number(String(response.headers.etag).replace(/\D/g, ''));
      await response.body.dump();
      if (response.statusCode >= 300) throw new Error(`CMS PUT answered ${response.statusCode}`);
      const deadline = Date.now() + 10_000;
      let seen: { swappedAt: number; propagationMs: number }[] = [];
      while (Date.now() < deadline) {
        seen = watchers.map((w) => w.lines.map((l) => swapLine(l, version)).find((e) => e !== null)).filter((e) => e) as typeof seen;
        if (seen.length === watchers.length) break;
        await new Promise((r) => setTimeout(r, 1));
      }
      if (seen.length !== watchers.length) throw new Error(`version ${version} reached ${seen.length}/${watchers.length} runners`);
      putReturnedToAll.push(Math.max(...seen.map((s) => s.swappedAt)) - returnedAt);
      commitToSwap.push(...seen.map((s) => s.propagationMs));
    }
    // Write -> acknowledged by every gateway: the same PUT with and without
    // Prefer: wait=10 (the CMS answers once every live gateway reports it
    // enforces the write), alternating; the difference is the wait.
    const plainPut: number[] = [];
    const waitedPut: number[] = [];
    let enforcedBy = '';
    for (let i = 1; i <= propagationWrites * 2; i++) {
      const waiting = i % 2 === 0;
      const started = performance.now();
      const response = await cmsPool.request({
        method: 'PUT',
        path: '/policies/prop',
        headers: { authorization: `Bearer ${platformAdmin}`, 'content-type': 'application/json', ...(waiting ? { prefer: 'wait=10' } : {}) },
        body: JSON.stringify({ rego: POLICY, data: { ...DATA, ack: i } }),
      });
      await response.body.dump();
      const took = performance.now() - started;
      if (response.statusCode >= 300) throw new Error(`CMS PUT answered ${response.statusCode}`);
      if (waiting) {
        enforcedBy = String(response.headers['gatehouse-enforced-by']);
        const [k, n] = enforcedBy.split('/');
        if (k !== n) throw new Error(`a write was acknowledged by ${enforcedBy} gateways`);
        waitedPut.push(took);
      } else plainPut.push(took);
    }
    await cmsPool.close();
    await cms.close();

    console.log(machineLine());
    console.log(`policy: caller-project, ${compiled.entrypoint}; connections: ${connections}; ${seconds}s x ${rounds} rounds (median)\n`);
    printTable(summary, { ...summary.find((s) => s.name.startsWith('opa run'))!, name: 'opa server' });
    console.log('');
    console.log(`propagation over ${propagationWrites} CMS writes, ${runnerCount} runner processes:`);
    console.log('| measure | p50 ms | p99 ms | max ms |');
    console.log('|---|---:|---:|---:|');
    console.log(
      `| CMS PUT returns -> all ${runnerCount} runners enforce | ${percentile(putReturnedToAll, 50)} | ${percentile(putReturnedToAll, 99)} | ${Math.max(...putReturnedToAll)} |`,
    );
    console.log(
      `| etcd commit (metadata time) -> swap, per runner | ${percentile(commitToSwap, 50)} | ${percentile(commitToSwap, 99)} | ${Math.max(...commitToSwap)} |`,
    );
    console.log(
      `(median of "PUT returns -> all enforce": ${median(putReturnedToAll)} ms; negative means the runners swapped before the PUT response reached the client)`,
    );
    console.log(`(each write in order, PUT returns -> all enforce, ms: ${putReturnedToAll.join(' ')})`);
    const f1 = (n: number) => n.toFixed(1);
    console.log('');
    console.log(
      `write -> acknowledged by every gateway (Prefer: wait=10; every write acknowledged by ${enforcedBy} gateways), ${propagationWrites} writes each:`,
    );
    console.log('| measure | p50 ms | p99 ms |');
    console.log('|---|---:|---:|');
    console.log(`| PUT answered, no Prefer | ${f1(percentile(plainPut, 50))} | ${f1(percentile(plainPut, 99))} |`);
    console.log(`| PUT answered with Prefer: wait (every gateway enforces it) | ${f1(percentile(waitedPut, 50))} | ${f1(percentile(waitedPut, 99))} |`);
    console.log(`| the wait: difference of the medians | ${f1(median(waitedPut) - median(plainPut))} | |`);
  } finally {
    await Promise.all(processes.map((p) => p.stop()));
    await etcd.cleanup();
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
