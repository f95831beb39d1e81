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
// Env: BENCH_SCALE_PROJECTS ("1000,10000"), BENCH_SCALE_MODULES (300),
// BENCH_SECONDS (3), BENCH_RUNNERS (2), BENCH_PROPAGATION_WRITES (20),
// BENCH_COLD_SAMPLE (200), BENCH_CONNECTIONS (8).
import { readFileSync, readdirSync, statSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pLimit from 'p-limit';
import { startLocalEtcd, type LocalEtcd } from '../tools/local-etcd/index.js';
import { RegoCompiler, policySubmission, type CompiledPolicy } from '../cms/rego-compiler.js';
import { PolicyStore } from '../policy/store/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { RpcType, decodeHttpReqCallResponse, encodeHttpReqCallRequest, type HttpReqCallRequest } from '../plugins/protocol/index.js';
import {
  driveRunner,
  machineLine,
  openRunnerConnection,
  prepareConf,
  socketAccepts,
  startNodeProcess,
  type BenchProcess,
  type Stats,
} from './support.js';

const scales = (process.env.BENCH_SCALE_PROJECTS ?? '1000,10000').split(',').map(Number);
const moduleCount = Number(process.env.BENCH_SCALE_MODULES ?? 300);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const runnerCount = Number(process.env.BENCH_RUNNERS ?? 2);
const propagationWrites = Number(process.env.BENCH_PROPAGATION_WRITES ?? 20);
const coldSample = Number(process.env.BENCH_COLD_SAMPLE ?? 200);
const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const HOT_SET = 64;

const here = fileURLToPath(new URL('.', import.meta.url));
const root = join(here, '..', '..');
const runnerScript = join(here, '../plugins/runner/main.js');
const opaPath = process.env.OPA_PATH || join(root, '.local/bin/opa');
const ISSUER = 'https://issuer.bench.gatehouse';
const AUDIENCE = 'gatehouse';

const projectName = (i: number) => `p${String(i).padStart(5, '0')}`;
const moduleSource = (k: number) => `package project.authz
import rego.v1

default allow := false

template := ${k}

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
  seedSeconds: number;
  startToEnforcingMs: number;
  coldP50Ms: number | null;
  coldP99Ms: number | null;
  hotDuringColdP99Us: number | null;
  hot: Stats;
  rssMiB: number;
  propagationP50Ms: number;
  propagationP99Ms: number;
  snapshotBytesPerChange: number;
  snapshotTotalBytes: number;
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;

function rssMiB(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) / 1024 : NaN;
}

function filesUnder(dir: string): Map<string, { size: number; mtimeMs: number }> {
  const found = new Map<string, { size: number; mtimeMs: number }>();
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
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwksFile = join(work, 'jwks.json');
  writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'bench', alg: 'ES256', use: 'sig' }] }));
  const tokens = new Map<number, string>();
  const tokenFor = async (i: number) => {
    let token = tokens.get(i);
    if (!token) {
      token = await new SignJWT({ sub: `u${i}`, role: `role-${i}`, project: projectName(i) })
        .setProtectedHeader({ alg: 'ES256', kid: 'bench' })
        .setIssuer(ISSUER)
        .setAudience(AUDIENCE)
        .setIssuedAt()
        .setExpirationTime('2h')
        .sign(privateKey);
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

  const rows: Row[] = [];
  for (const projects of [1, ...scales]) {
    rows.push(await measure(projects));
    console.error(`[bench:scale] ${projects} projects done`);
  }

  async function measure(projects: number): Promise<Row> {
    const etcd: LocalEtcd = await startLocalEtcd({ dataRoot: 'bench-etcd', extraArgs: ['--quota-backend-bytes', String(8 * 1024 ** 3)] });
    const processes: BenchProcess[] = [];
    try {
      const client = createEtcdClient(etcd.endpoints);
      const store = new PolicyStore(client);
      const seedStarted = performance.now();
      const limit = pLimit(32);
      const moduleOf = (i: number) => modules[i % Math.min(modules.length, projects)]!;
      await Promise.all(
        Array.from({ length: projects }, (_, i) =>
          limit(() => store.put(projectName(i), policySubmission(moduleSource(i % modules.length), JSON.stringify({ roles: [`role-${i}`] }), moduleOf(i), 'bench'))),
        ),
      );
      const seedSeconds = (performance.now() - seedStarted) / 1000;

      const env = (i: number) => ({
        JWT_JWKS_FILE: jwksFile,
        JWT_ISSUER: ISSUER,
        JWT_AUDIENCE: AUDIENCE,
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        APISIX_LISTEN_ADDRESS: `unix:${join(work, `${projects}-${i}.sock`)}`,
        RUNNER_METRICS_PORT: 'off',
        RUNNER_STATE_DIR: join(work, `state-${projects}-${i}`),
        LOG_LEVEL: 'info',
      });
      const socket = (i: number) => join(work, `${projects}-${i}.sock`);
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
      // A runner writes its whole snapshot once after start (off the decision path, but on its thread): wait it out
      // before measuring steady-state figures.
      const untilSnapshotWritten = async (i: number) => {
        const manifest = join(work, `state-${projects}-${i}`, 'policy-snapshot', 'manifest.json');
        while (!statSync(manifest, { throwIfNoEntry: false })) await new Promise((r) => setTimeout(r, 20));
      };

      // Start -> enforcing: from spawn to the first allowed decision of a project.
      const spawnedAt = performance.now();
      const main = await startNodeProcess(runnerScript, [], env(0), () => socketAccepts(socket(0)));
      processes.push(main);
      const chain = await prepareConf(socket(0), [
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"policies":["platform","caller-project"]}' },
      ]);
      const probeProject = projects - 1;
      await untilEnforcing(0, chain, probeProject, spawnedAt);
      const startToEnforcingMs = performance.now() - spawnedAt;
      await untilSnapshotWritten(0);

      // Hot set: busy projects whose engines are built.
      const hotProjects = Array.from({ length: Math.min(HOT_SET, projects) }, (_, k) => (k * 7919) % projects);
      const hotRequests = await Promise.all(hotProjects.map(async (i) => ({ ...(await requestFor(i)), confToken: chain })));
      await driveRunner({ name: 'warm', socketPath: socket(0), request: hotRequests[0]!, requests: hotRequests, connections, seconds: 0.5, check: allowed });

      // Cold projects, one at a time, while a hot tenant is served.
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
          while (sweeping) stats.push(await driveRunner({ name: 'hot during cold', socketPath: socket(0), request: hotRequests[0]!, requests: hotRequests, connections: 2, seconds: 0.5, check: allowed }));
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
        coldP50Ms = pct(latencies, 50);
        coldP99Ms = pct(latencies, 99);
        hotDuringColdP99Us = Math.max(...during.map((s) => s.p99));
      }

      const hot = await driveRunner({ name: `${projects} loaded`, socketPath: socket(0), request: hotRequests[0]!, requests: hotRequests, connections, seconds, check: allowed });
      const rss = rssMiB(main.child.pid!);

      // Propagation under traffic: more runners, each serving its hot set while writes land.
      for (let i = 1; i < runnerCount; i++) {
        const p = await startNodeProcess(runnerScript, [], env(i), () => socketAccepts(socket(i)));
        processes.push(p);
      }
      const runners = processes.slice(0, runnerCount);
      const chains = await Promise.all(runners.map((_, i) => prepareConf(socket(i), [
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"policies":["platform","caller-project"]}' },
      ])));
      for (let i = 1; i < runnerCount; i++) {
        await untilEnforcing(i, chains[i]!, probeProject, performance.now());
        await untilSnapshotWritten(i);
      }
      let serving = true;
      const traffic = runners.map(async (_, i) => {
        const requests = hotRequests.map((r) => ({ ...r, confToken: chains[i]! }));
        while (serving) await driveRunner({ name: 'traffic', socketPath: socket(i), request: requests[0]!, requests, connections: 2, seconds: 0.5 });
      });
      const target = hotProjects[1] ?? 0;
      const snapshotDir = join(work, `state-${projects}-0`, 'policy-snapshot');
      const propagation: number[] = [];
      let snapshotBytesPerChange = 0;
      try {
        for (let w = 1; w <= propagationWrites; w++) {
          const before = filesUnder(snapshotDir);
          const result = await store.put(projectName(target), policySubmission(moduleSource(target % modules.length), JSON.stringify({ roles: [`role-${target}`], write: w }), moduleOf(target), 'bench'));
          const returnedAt = Date.now();
          const version = result.meta.version;
          const deadline = Date.now() + 20_000;
          let swapped: number[] = [];
          while (Date.now() < deadline) {
            swapped = runners
              .map((r) => r.lines.map((line) => {
                if (!line.includes('"policy version enforced"')) return null;
                const entry = JSON.parse(line) as { policy: string; version: number; swappedAt: number };
                return entry.policy === projectName(target) && entry.version === version ? entry.swappedAt : null;
              }).find((x) => x !== null))
              .filter((x): x is number => typeof x === 'number');
            if (swapped.length === runners.length) break;
            await new Promise((r) => setTimeout(r, 1));
          }
          if (swapped.length !== runners.length) throw new Error(`write ${w} reached ${swapped.length}/${runners.length} runners`);
          propagation.push(Math.max(...swapped) - returnedAt);
          if (w === propagationWrites) {
            await new Promise((r) => setTimeout(r, 300)); // the snapshot is written off the decision path
            const after = filesUnder(snapshotDir);
            for (const [path, file] of after) {
              const old = before.get(path);
              if (!old || old.mtimeMs !== file.mtimeMs) snapshotBytesPerChange += file.size;
            }
          }
        }
      } finally {
        serving = false;
        await Promise.allSettled(traffic);
      }
      const snapshotTotalBytes = [...filesUnder(snapshotDir).values()].reduce((sum, f) => sum + f.size, 0);
      client.close();
      return {
        projects,
        seedSeconds,
        startToEnforcingMs,
        coldP50Ms,
        coldP99Ms,
        hotDuringColdP99Us,
        hot,
        rssMiB: rss,
        propagationP50Ms: pct(propagation, 50),
        propagationP99Ms: pct(propagation, 99),
        snapshotBytesPerChange,
        snapshotTotalBytes,
      };
    } catch (error) {
      for (const p of processes) console.error(`[bench:scale] runner pid ${p.child.pid} exit ${p.child.exitCode} ${p.child.signalCode}:\n${p.lines.filter((l) => !l.includes('"level":30')).slice(-15).join('\n')}`);
      throw error;
    } finally {
      await Promise.all(processes.map((p) => p.stop()));
      await etcd.cleanup();
    }
  }

  const one = rows[0]!;
  const fmt = (x: number | null, digits = 0) => (x === null ? '–' : x.toFixed(digits));
  console.log(machineLine());
  console.log(`distinct modules: ${Math.min(moduleCount, largest)}; hot set: ${HOT_SET} projects over ${connections} connections, ${seconds} s; cold sample: ${coldSample}; ${runnerCount} runners for propagation, ${propagationWrites} writes; engine cache: default (256 MiB)\n`);
  console.log('| projects | seed s | start → enforcing ms | cold first decision p50 / p99 ms | hot p99 µs during cold sweep | hot ops/s | hot p50 µs | hot p99 µs | hot p99 vs 1 project | RSS MiB | propagation p50 / p99 ms | snapshot bytes per change | snapshot total MiB |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.projects} | ${r.seedSeconds.toFixed(1)} | ${r.startToEnforcingMs.toFixed(0)} | ${fmt(r.coldP50Ms, 1)} / ${fmt(r.coldP99Ms, 1)} | ${fmt(r.hotDuringColdP99Us)} | ` +
        `${Math.round(r.hot.opsPerSecond)} | ${r.hot.p50.toFixed(0)} | ${r.hot.p99.toFixed(0)} | ${(r.hot.p99 / one.hot.p99).toFixed(2)}x | ${r.rssMiB.toFixed(0)} | ` +
        `${r.propagationP50Ms} / ${r.propagationP99Ms} | ${r.snapshotBytesPerChange} | ${(r.snapshotTotalBytes / 1024 / 1024).toFixed(1)} |`,
    );
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
