// A runner of several worker processes (RUNNER_WORKERS, plugins/runner/cluster.ts)
// driven through its one socket as APISIX drives it: a token prepared on one
// connection answers on every worker; a killed worker loses only the calls it
// held and comes back knowing every conf; metrics and readiness cover all
// workers; SIGTERM stops them all.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../etcd/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { freePort } from '../../dev/apisix/index.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { ApisixClient, request, text } from '../support/apisix-client.js';
import type { StopAction } from '../../plugins/protocol/index.js';

const WORKERS = 3;
const echo = [{ name: 'example', value: JSON.stringify({ echo_request: true }) }];

let runner: RunnerProcess;
let metricsPort: number;

/** Which worker answered a call on this connection (the example plugin says its pid). */
async function pidOf(client: ApisixClient, token: number): Promise<number> {
  const answer = await client.call(request({ confToken: token }));
  return (JSON.parse(text((answer.action as StopAction).body)!) as { pid: number }).pid;
}

/** Opens connections until `count` distinct workers have answered; returns one connection per worker. */
async function connectionsToWorkers(token: number, count: number): Promise<Map<number, ApisixClient>> {
  const byPid = new Map<number, ApisixClient>();
  for (let attempt = 0; attempt < 60 && byPid.size < count; attempt++) {
    const client = await ApisixClient.open(runner.socketPath);
    const pid = await pidOf(client, token);
    if (byPid.has(pid)) client.close();
    else byPid.set(pid, client);
  }
  return byPid;
}

beforeAll(async () => {
  metricsPort = await freePort();
  runner = await startRunner({ env: { RUNNER_WORKERS: String(WORKERS), RUNNER_METRICS_PORT: String(metricsPort) } });
  // The socket answers as soon as one worker listens; the others follow.
  const deadline = Date.now() + 15_000;
  while (
    (await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then(
      (r) => r.status,
      () => 0,
    )) !== 200
  ) {
    if (Date.now() > deadline) throw new Error('the workers did not all come up');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
});

afterAll(async () => {
  await runner?.stop();
});

describe('a runner of several workers', () => {
  it('a token prepared on one connection answers on every worker', async () => {
    const preparer = await ApisixClient.open(runner.socketPath);
    const token = await preparer.prepare(echo);
    const workers = await connectionsToWorkers(token, WORKERS);
    expect(workers.size).toBe(WORKERS);
    expect(workers.has(runner.child.pid!)).toBe(false); // the primary serves no calls
    for (const client of workers.values()) client.close();
    preparer.close();
  });

  it('readiness and metrics cover every worker', async () => {
    const ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
    const body = (await ready.json()) as { status: string; workers: { worker: number; ready: boolean }[] };
    expect(ready.status).toBe(200);
    expect(body.workers.map((w) => w.worker)).toEqual([0, 1, 2]);
    // Decisions counted on whichever worker made them, summed by the primary.
    const client = await ApisixClient.open(runner.socketPath);
    const token = await client.prepare([{ name: 'opa', value: '{"policies":["platform"]}' }]);
    const before = await decisionCount();
    const calls = 30;
    const connections = await Promise.all(Array.from({ length: 6 }, () => ApisixClient.open(runner.socketPath)));
    for (let i = 0; i < calls; i++) await connections[i % connections.length]!.call(request({ confToken: token }));
    expect((await decisionCount()) - before).toBe(calls);
    for (const c of [client, ...connections]) c.close();
  });

  it('a worker killed mid-load loses only the calls it held; it comes back knowing every conf', async () => {
    const preparer = await ApisixClient.open(runner.socketPath);
    const token = await preparer.prepare(echo);
    const workers = await connectionsToWorkers(token, WORKERS);
    const [victim, ...survivors] = [...workers.keys()];
    let failedElsewhere = 0;
    let answeredElsewhere = 0;
    let running = true;
    const loops = survivors.map(async (pid) => {
      const client = workers.get(pid)!;
      while (running) {
        try {
          expect(await pidOf(client, token)).toBe(pid);
          answeredElsewhere++;
        } catch {
          failedElsewhere++;
        }
      }
    });
    const victimClient = workers.get(victim!)!;
    const victimCall = pidOf(victimClient, token).then(
      () => 'answered',
      () => 'lost',
    );
    process.kill(victim!, 'SIGKILL');
    await victimCall;
    await new Promise((resolve) => setTimeout(resolve, 300));
    running = false;
    await Promise.all(loops);
    expect(failedElsewhere).toBe(0);
    expect(answeredElsewhere).toBeGreaterThan(0);
    // The connection the dead worker held is gone with it.
    await expect(pidOf(victimClient, token)).rejects.toThrow();

    // A replacement: same number of workers, a new pid, and the token prepared before it existed answers there.
    const deadline = Date.now() + 10_000;
    let replacement: number | undefined;
    while (replacement === undefined && Date.now() < deadline) {
      const current = await connectionsToWorkers(token, WORKERS);
      replacement = [...current.keys()].find((pid) => !workers.has(pid));
      for (const client of current.values()) client.close();
      if (replacement === undefined) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(replacement).toBeDefined();
    for (const client of workers.values()) client.close();
    preparer.close();
  }, 30_000);

  it('SIGTERM stops every worker and removes the socket', async () => {
    const client = await ApisixClient.open(runner.socketPath);
    const token = await client.prepare(echo);
    const workerPids = [...(await connectionsToWorkers(token, WORKERS)).entries()].map(([pid, c]) => (c.close(), pid));
    client.close();
    expect(await runner.stop()).toBe(0);
    expect(existsSync(runner.socketPath)).toBe(false);
    for (const pid of workerPids) expect(() => process.kill(pid, 0)).toThrow();
  });
});

describe('policies on a runner of several workers', () => {
  let etcd: TestEtcd;
  let admin: Etcd3;
  let clustered: RunnerProcess;
  const policy = (allowed: boolean) => `package project.authz\nimport rego.v1\ndefault allow := ${allowed}\n`;

  beforeAll(async () => {
    etcd = await startEtcd();
    admin = createEtcdClient(etcd.endpoints);
    await new EtcdPolicyWriter(admin).put('team', policy(true));
    clustered = await startRunner({
      env: { RUNNER_WORKERS: String(WORKERS), ETCD_ENDPOINTS: etcd.endpoints.join(','), RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-state-')) },
    });
  });

  afterAll(async () => {
    await clustered?.stop();
    admin?.close();
    await etcd?.cleanup();
  });

  it('every worker enforces a new policy version, each from its own watch', async () => {
    // Allowed, the chain goes on to the example plugin, which says which worker answered.
    const chain = [{ name: 'opa', value: '{"policies":["project:team"]}' }, ...echo];
    const preparer = await ApisixClient.open(clustered.socketPath);
    const token = await preparer.prepare(chain);
    const byPid = new Map<number, ApisixClient>();
    const deadline = Date.now() + 15_000;
    while (byPid.size < WORKERS && Date.now() < deadline) {
      const client = await ApisixClient.open(clustered.socketPath);
      const answer = await client.call(request({ confToken: token }));
      const body = JSON.parse(text((answer.action as StopAction).body)!) as { pid?: number };
      if (body.pid !== undefined && !byPid.has(body.pid)) byPid.set(body.pid, client);
      else client.close();
    }
    expect(byPid.size).toBe(WORKERS);

    const written = Date.now();
    await new EtcdPolicyWriter(admin).put('team', policy(false));
    for (const [pid, client] of byPid) {
      let status: number | undefined;
      while (status !== 403 && Date.now() - written < 10_000) {
        const answer = await client.call(request({ confToken: token }));
        status = (answer.action as StopAction).status;
      }
      expect(status, `worker ${pid}`).toBe(403);
      client.close();
    }
    preparer.close();
  }, 30_000);
});

async function decisionCount(): Promise<number> {
  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  let total = 0;
  for (const line of metrics.split('\n')) {
    const match = /^gatehouse_decisions_total\{[^}]*\} (\d+)/.exec(line);
    if (match) total += Number(match[1]);
  }
  return total;
}
