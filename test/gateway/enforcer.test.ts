// The policy pipeline both services build (policy/enforcer.ts), against a
// real etcd and real compiled policies: what it is given (the evaluation
// bounds, the gateway's name, its datacenter, the decision log, the state
// directory) is what the watcher, the evaluator, the fleet report and the
// decision log use; close() takes the report away and flushes the log.
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { createEnforcer } from '../../policy/enforcer.js';
import { listGateways } from '../../policy/fleet/report.js';
import { EvaluationBudgetError } from '../../policy/engine/index.js';
import { EvaluationPool } from '../../policy/engine/pool.js';
import { ThreadEvaluator, type AbortReason } from '../../policy/engine/evaluator.js';
import { snapshotDir } from '../../policy/watcher/snapshot.js';

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

// n * n steps that allocate little: only fuel (or a deadline) stops it.
const SLOW = `package project.authz
import rego.v1
default allow := false
r := numbers.range(1, input.request.port)
allow if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;
const CALM = `package project.authz
import rego.v1
default allow := false
allow if input.user.role in data.valid_roles
`;
const MiB = 1024 * 1024;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
  await writer.put('team-calm', CALM, { valid_roles: ['admin'] });
  await writer.put('team-slow', SLOW);
}, 60_000);

afterAll(async () => {
  admin?.close();
  await etcd?.cleanup();
});

async function until<T>(check: () => Promise<T | undefined> | T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('createEnforcer', () => {
  it('builds the pipeline from its options: policies enforced within the given fuel, the report under the given name, the snapshot and the decision log where asked; close() removes the report and flushes the log', async () => {
    const client = createEtcdClient(etcd.endpoints);
    const stateDir = mkdtempSync(join(tmpdir(), 'gh-enforcer-'));
    const logFile = join(stateDir, 'decisions.jsonl');
    const aborts: AbortReason[] = [];
    const enforcer = createEnforcer({
      client,
      log,
      kind: 'runner',
      gateway: 'enforcer-test-gw',
      datacenter: 'dc-test',
      reportTtlSeconds: 5,
      stateDir,
      cacheBytes: 32 * MiB,
      // Far less fuel than the default: a decision the default would allow is stopped.
      evaluation: { workers: 0, fuel: 20_000, memoryMaxBytes: 64 * MiB, timeoutMs: 500, decisionCacheBytes: 16 * MiB },
      decisionLog: { target: { kind: 'file', path: logFile }, maxBuffered: 100 },
      onAbort: (reason) => aborts.push(reason),
    });
    try {
      expect(enforcer.evaluator).toBeInstanceOf(ThreadEvaluator);
      expect(enforcer.memo).not.toBeNull();
      await enforcer.start();
      const set = enforcer.watcher.current;
      expect(set.source).toBe('etcd');
      expect(await set.get('team-calm')!.evaluate('team-calm', { user: { role: 'admin' } })).toMatchObject({ allow: true });
      // 30 * 30 steps fit in the default fuel (10,000,000) but not in 20,000.
      await expect(set.get('team-slow')!.evaluate('team-slow', { request: { port: 30 } })).rejects.toBeInstanceOf(EvaluationBudgetError);
      expect(aborts).toEqual(['budget']);

      const report = await until(async () => (await listGateways(admin)).find((r) => r.id === 'enforcer-test-gw' && r.policies === 2), 'the fleet report');
      expect(report).toMatchObject({ kind: 'runner', datacenter: 'dc-test', source: 'etcd' });
      expect(enforcer.reporter.id).toBe('enforcer-test-gw');
      await until(() => (existsSync(snapshotDir(stateDir)) && readdirSync(snapshotDir(stateDir)).length > 0) || undefined, 'the snapshot');

      enforcer.decisionLog!.emit({
        time: new Date().toISOString(),
        gateway: 'enforcer-test-gw',
        route: 'r1',
        policies: [],
        result: 'allow',
        status: 200,
        latencyUs: 1,
        input: { user: 'u' },
      });
    } finally {
      await enforcer.close();
      client.close();
    }
    // The report is gone at once (its lease revoked), not after its TTL.
    expect((await listGateways(admin)).some((r) => r.id === 'enforcer-test-gw')).toBe(false);
    const lines = readFileSync(logFile, 'utf8').trim().split('\n');
    expect(lines.map((line) => JSON.parse(line) as { gateway: string; route: string })).toMatchObject([{ gateway: 'enforcer-test-gw', route: 'r1' }]);
  }, 60_000);

  it('evaluates in a pool of worker threads when the settings ask for workers, with no decision log when none is asked for', async () => {
    const client = createEtcdClient(etcd.endpoints);
    const enforcer = createEnforcer({
      client,
      log,
      kind: 'decision-api',
      gateway: 'enforcer-test-pool',
      datacenter: null,
      stateDir: mkdtempSync(join(tmpdir(), 'gh-enforcer-')),
      cacheBytes: 32 * MiB,
      evaluation: { workers: 2, fuel: 20_000, memoryMaxBytes: 64 * MiB, timeoutMs: 5_000, decisionCacheBytes: 0 },
      decisionLog: null,
    });
    try {
      expect(enforcer.evaluator).toBeInstanceOf(EvaluationPool);
      expect(enforcer.memo).toBeNull();
      expect(enforcer.decisionLog).toBeNull();
      await enforcer.start();
      const set = enforcer.watcher.current;
      expect(await set.get('team-calm')!.evaluate('team-calm', { user: { role: 'viewer' } })).toMatchObject({ allow: false });
      // The pool's workers have the same fuel.
      await expect(set.get('team-slow')!.evaluate('team-slow', { request: { port: 30 } })).rejects.toBeInstanceOf(EvaluationBudgetError);
      const report = await until(async () => (await listGateways(admin)).find((r) => r.id === 'enforcer-test-pool'), 'the fleet report');
      expect(report).toMatchObject({ kind: 'decision-api', datacenter: null });
    } finally {
      await enforcer.close();
      client.close();
    }
  }, 60_000);
});
