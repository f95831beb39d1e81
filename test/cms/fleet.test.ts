// Knowing a policy is live everywhere: runner processes on a real etcd report
// what they enforce (policy/fleet), the CMS lists them, says which enforce a
// policy's current version, and waits for all of them when a write asks
// (Prefer: wait). A stopped gateway is reported behind; a dead one vanishes
// with its lease.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { startHarness, policyBody, V1_POLICY, type Cms, type Harness } from './harness.js';

const TTL_SECONDS = 2;
let harness: Harness;
let cms: Cms;
const runners: RunnerProcess[] = [];
const data = { valid_roles: ['admin'] };

type Listed = { gateways: { id: string; kind: string; datacenter: string | null; revision: number; pid: number }[] };

async function gateways(): Promise<Listed['gateways']> {
  const res = await cms.request('GET', '/gateways', { token: harness.tokens.admin });
  expect(res.status).toBe(200);
  return (res.json() as Listed).gateways;
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 15_000): Promise<number> {
  const started = Date.now();
  while (!(await check())) {
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return Date.now() - started;
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  const env = (dc: string, workers = 1) => ({
    ETCD_ENDPOINTS: harness.etcd.endpoints.join(','),
    RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-fleet-')),
    GATEWAY_REPORT_TTL_SECONDS: String(TTL_SECONDS),
    GATEHOUSE_DATACENTER: dc,
    RUNNER_WORKERS: String(workers),
  });
  runners.push(await startRunner({ env: env('dc1') }), await startRunner({ env: env('dc2') }), await startRunner({ env: env('dc2', 2) }));
  // Four gateways: two single runners and a runner of two workers.
  await until('four gateways', async () => (await gateways()).length === 4);
}, 60_000);

afterAll(async () => {
  for (const runner of runners) {
    try {
      process.kill(runner.child.pid!, 'SIGCONT');
    } catch {
      // gone
    }
    await runner.stop();
  }
  await harness?.close();
});

describe('GET /gateways', () => {
  it('lists every live gateway with its kind, datacenter and revision, for platform admins only', async () => {
    const listed = await gateways();
    expect(listed.map((g) => g.kind)).toEqual(['runner', 'runner', 'runner', 'runner']);
    expect(listed.map((g) => g.datacenter).sort()).toEqual(['dc1', 'dc2', 'dc2', 'dc2']);
    for (const gateway of listed) expect(typeof gateway.revision).toBe('number');
    expect((await cms.request('GET', '/gateways', { token: harness.tokens.teamA })).status).toBe(403);
    expect((await cms.request('GET', '/gateways')).status).toBe(401);
    expect((await cms.request('DELETE', '/gateways', { token: harness.tokens.admin })).status).toBe(405);
  });
});

describe('a write that waits: Prefer: wait=N', () => {
  it('answers once every live gateway enforces the new version, and says so', async () => {
    const started = performance.now();
    const res = await cms.request('PUT', '/policies/team-a', {
      token: harness.tokens.admin,
      headers: { prefer: 'wait=10' },
      body: policyBody(V1_POLICY, data),
    });
    const tookMs = performance.now() - started;
    expect(res.status).toBe(201);
    expect(res.headers['preference-applied']).toBe('wait=10');
    expect(res.headers['gatehouse-enforced-by']).toBe('4/4');
    expect(res.headers['gatehouse-behind']).toBeUndefined();
    console.log(`PUT with Prefer: wait answered after every gateway (4) enforced it: ${tookMs.toFixed(0)} ms, compile included`);

    // The status says the same, gateway by gateway.
    const status = await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.admin });
    expect(status.status).toBe(200);
    const body = status.json() as { version: number; revision: number; enforcedBy: number; gateways: { enforces: boolean; revision: number }[] };
    expect(body.version).toBe(1);
    expect(body.enforcedBy).toBe(4);
    for (const gateway of body.gateways) {
      expect(gateway.enforces).toBe(true);
      expect(gateway.revision).toBeGreaterThanOrEqual(body.revision);
    }
  });

  it('a project user sees the status of their own project only', async () => {
    expect((await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.teamA })).status).toBe(200);
    expect((await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.teamB })).status).toBe(403);
    expect((await cms.request('GET', '/policies/nope/status', { token: harness.tokens.admin })).status).toBe(404);
  });

  it('a malformed preference is refused before anything is written', async () => {
    const res = await cms.request('PUT', '/policies/team-a', {
      token: harness.tokens.admin,
      headers: { prefer: 'wait=soon' },
      body: policyBody(V1_POLICY, { valid_roles: [] }),
    });
    expect(res.status).toBe(400);
    const current = await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin });
    expect(current.headers.etag).toBe('"1"');
  });

  it('a stopped gateway is reported behind after N seconds; once its lease expires it is no longer live', async () => {
    const stopped = runners[1]!;
    const stoppedId = (await gateways()).find((g) => g.pid === stopped.child.pid)!.id;
    process.kill(stopped.child.pid!, 'SIGSTOP');
    try {
      const started = Date.now();
      const res = await cms.request('PUT', '/policies/team-a', {
        token: harness.tokens.admin,
        headers: { prefer: 'wait=1' },
        body: policyBody(V1_POLICY, { valid_roles: ['admin', 'viewer'] }),
      });
      expect(res.status).toBe(200);
      expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
      expect(res.headers['gatehouse-enforced-by']).toBe('3/4');
      expect(res.headers['gatehouse-behind']).toBe(stoppedId);
      // Frozen, it cannot renew its lease: within the TTL it is gone from the list.
      const gone = await until(
        'the stopped gateway to leave the list',
        async () => !(await gateways()).some((g) => g.id === stoppedId),
        (TTL_SECONDS + 5) * 1000,
      );
      console.log(`a stopped gateway left GET /gateways ${gone} ms after the write (lease TTL ${TTL_SECONDS} s)`);
      // With it gone, every live gateway enforces the write.
      const status = (await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.admin })).json() as {
        enforcedBy: number;
        gateways: unknown[];
      };
      expect(status.enforcedBy).toBe(status.gateways.length);
    } finally {
      process.kill(stopped.child.pid!, 'SIGCONT');
    }
    // Running again, it takes a new lease and reports what it enforces.
    await until('the gateway to report again', async () => (await gateways()).some((g) => g.id === stoppedId));
  }, 30_000);

  it('a killed gateway disappears from GET /gateways within its lease TTL', async () => {
    const victim = runners[0]!;
    const id = (await gateways()).find((g) => g.pid === victim.child.pid)!.id;
    victim.child.kill('SIGKILL');
    const gone = await until('the killed gateway to leave the list', async () => !(await gateways()).some((g) => g.id === id), (TTL_SECONDS + 5) * 1000);
    expect(gone).toBeLessThanOrEqual((TTL_SECONDS + 3) * 1000);
  }, 30_000);

  it('a delete waits too', async () => {
    const res = await cms.request('DELETE', '/policies/team-a', { token: harness.tokens.admin, headers: { prefer: 'wait=10' } });
    expect(res.status).toBe(204);
    const live = (await gateways()).length;
    expect(res.headers['gatehouse-enforced-by']).toBe(`${live}/${live}`);
  });
});
