// The policy watcher against a real etcd and real compiled policies.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startTcpProxy, hostPort, type TcpProxy } from '../support/tcp-proxy.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { PolicyWatcher, type SwapEvent } from '../../policy/watcher/watcher.js';
import { PolicySet } from '../../policy/watcher/policy-set.js';

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

// The decision reports the data version it was given: if rules and data of
// two versions ever mixed, `version` would differ from the metadata's.
const VERSIONED = `package versioned
import rego.v1
default allow := false
allow if input.user.role == data.allowed_role
version := data.version
`;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  admin?.close();
  await etcd?.cleanup();
});

async function startWatcher(endpoints: string[], snapshotDir?: string): Promise<PolicyWatcher> {
  const client = createEtcdClient(endpoints, { callTimeoutMs: 500 });
  const watcher = new PolicyWatcher({ client, log, retryMs: 100, ...(snapshotDir ? { snapshotDir } : {}) });
  await watcher.start();
  cleanups.push(async () => {
    await watcher.stop();
    client.close();
  });
  return watcher;
}

async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function decide(set: PolicySet, name: string, role: string) {
  const policy = set.get(name);
  if (!policy) return undefined;
  const engine = await policy.engine();
  return engine.evaluate({ user: { role } }, policy.meta.entrypoint) as { allow: boolean; version: number };
}

describe('policy watcher', () => {
  it('loads what etcd holds at start, then applies each write and delete', async () => {
    await writer.put('team-a', VERSIONED, { allowed_role: 'viewer', version: 1 });
    const watcher = await startWatcher(etcd.endpoints);
    expect(watcher.current.source).toBe('etcd');
    expect(await decide(watcher.current, 'team-a', 'viewer')).toMatchObject({ allow: true, version: 1 });

    const swaps: SwapEvent[] = [];
    watcher.on('swap', (swap: SwapEvent) => swaps.push(swap));
    await writer.put('team-a', VERSIONED, { allowed_role: 'editor', version: 2 });
    await until(() => watcher.current.get('team-a')?.meta.version === 2, 'version 2');
    // Each change says how long it took from the metadata's time and from this watch receiving it, the gateway's own share.
    expect(swaps).toEqual([{ name: 'team-a', policy: watcher.current.get('team-a'), propagationMs: expect.any(Number), receivedMs: expect.any(Number) }]);
    expect(swaps[0]!.receivedMs).toBeGreaterThanOrEqual(0);
    expect(swaps[0]!.receivedMs).toBeLessThanOrEqual(swaps[0]!.propagationMs! + 1);
    expect(await decide(watcher.current, 'team-a', 'viewer')).toMatchObject({ allow: false, version: 2 });
    expect(await decide(watcher.current, 'team-a', 'editor')).toMatchObject({ allow: true, version: 2 });

    await writer.store.delete('team-a');
    await until(() => watcher.current.get('team-a') === undefined, 'the delete');
    expect(watcher.status.state).toBe('watching');
  });

  it('a decision never sees rules and data of two different versions', async () => {
    await writer.put('atomic', VERSIONED, { allowed_role: 'r1', version: 1 });
    const watcher = await startWatcher(etcd.endpoints);
    let observations = 0;
    const versionsSeen = new Set<number>();
    let last = 0;
    const observer = (async () => {
      // Observes until it has decided with the last version written, so the
      // count below never depends on how fast this machine is.
      while (last === 0 || !versionsSeen.has(last)) {
        const set = watcher.current;
        const policy = set.get('atomic')!;
        const result = (await decide(set, 'atomic', `r${policy.meta.version}`))!;
        // Data version, rules and metadata all come from one transaction.
        expect(result.version).toBe(policy.meta.version);
        expect(result.allow).toBe(true);
        versionsSeen.add(policy.meta.version);
        observations++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    let written = 1;
    for (let v = 2; v <= 15; v++) written = await writer.put('atomic', VERSIONED, { allowed_role: `r${v}`, version: v });
    last = written;
    await observer;
    // Decisions ran while versions changed under them: the first and the last at least.
    expect(versionsSeen.has(1)).toBe(true);
    expect(versionsSeen.size).toBeGreaterThanOrEqual(2);
    expect(observations).toBeGreaterThanOrEqual(versionsSeen.size);
  });

  it('keeps enforcing while etcd is away, reports staleness, resumes when it is back', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    await writer.put('outage', VERSIONED, { allowed_role: 'viewer', version: 1 });
    const watcher = await startWatcher([proxy.url]);
    expect((await decide(watcher.current, 'outage', 'viewer'))?.allow).toBe(true);

    proxy.cut();
    await until(() => watcher.status.state !== 'watching', 'the watch to notice');
    await new Promise((r) => setTimeout(r, 300));
    expect(watcher.status.staleSeconds).toBeGreaterThan(0.2);
    expect((await decide(watcher.current, 'outage', 'viewer'))?.allow).toBe(true);

    await writer.put('outage', VERSIONED, { allowed_role: 'editor', version: 2 });
    proxy.restore();
    await until(() => watcher.current.get('outage')?.meta.version === 2, 'the write made during the outage');
    await until(() => watcher.status.state === 'watching', 'the watch to resume');
    expect(watcher.status.staleSeconds).toBe(0);
  });

  it('a watch whose member goes silent (packets dropped, nothing closed) moves to another member within a bounded time', async () => {
    // Two endpoints, both reaching the same etcd: the one carrying the watch
    // is black-holed, the other stays healthy.
    const proxies = [await startTcpProxy(hostPort(etcd.endpoints[0]!)), await startTcpProxy(hostPort(etcd.endpoints[0]!))];
    for (const proxy of proxies) cleanups.push(() => proxy.close());
    await writer.put('silent', VERSIONED, { allowed_role: 'viewer', version: 1 });
    const watcher = await startWatcher(proxies.map((proxy) => proxy.url));
    expect(watcher.status.state).toBe('watching');

    // The watch stream is the only traffic once the policies are loaded: the proxy that forwards anything carries it.
    const before = proxies.map((proxy) => proxy.bytesToClients);
    await writer.put('silent', VERSIONED, { allowed_role: 'editor', version: 2 });
    await until(() => watcher.current.get('silent')?.meta.version === 2, 'version 2');
    const carried = proxies.map((proxy, i) => proxy.bytesToClients - before[i]!);
    const watchProxy = proxies[carried[0]! > 0 ? 0 : 1]!;
    expect(carried.filter((bytes) => bytes > 0)).toHaveLength(1);

    watchProxy.blackhole();
    const cutAt = Date.now();
    await writer.put('silent', VERSIONED, { allowed_role: 'admin', version: 3 });
    await until(() => watcher.current.get('silent')?.meta.version === 3, 'the write made after the silent cut', 15_000);
    const recoveredMs = Date.now() - cutAt;
    console.log(`silent member: the write made after the cut reached the watcher after ${recoveredMs} ms`);
    // A quiet stream is asked every second and replaced when it leaves the
    // question two seconds unanswered; keepalive alone would take up to 9 s.
    expect(recoveredMs).toBeLessThan(5_000);
    expect((await decide(watcher.current, 'silent', 'admin'))?.allow).toBe(true);
    await until(() => watcher.status.state === 'watching', 'watching again');

    // And it keeps watching on the healthy member.
    await writer.put('silent', VERSIONED, { allowed_role: 'viewer', version: 4 });
    await until(() => watcher.current.get('silent')?.meta.version === 4, 'version 4', 2_000);
  });

  it('reads everything again when the revision to resume from was compacted', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    await writer.put('compacted', VERSIONED, { allowed_role: 'viewer', version: 1 });
    await writer.put('gone-later', VERSIONED, { allowed_role: 'viewer', version: 1 });
    const watcher = await startWatcher([proxy.url]);
    expect(watcher.current.get('gone-later')).toBeDefined();

    proxy.cut();
    await until(() => watcher.status.state !== 'watching', 'the watch to notice');
    await writer.put('compacted', VERSIONED, { allowed_role: 'editor', version: 2 });
    await writer.store.delete('gone-later');
    const head = await admin.get('/policies/compacted/meta').exec();
    await admin.kv.compact({ revision: head.header.revision, physical: true });
    proxy.restore();

    await until(() => watcher.current.get('compacted')?.meta.version === 2, 'the resync after compaction');
    expect(watcher.current.get('gone-later')).toBeUndefined();
    await writer.put('compacted', VERSIONED, { allowed_role: 'admin', version: 3 });
    await until(() => watcher.current.get('compacted')?.meta.version === 3, 'watching again after the resync');
  });

  it('starts from the last-known-good snapshot when etcd is unreachable; etcd wins once it answers', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-snapshot-'));
    const snapshot = join(dir, 'policy-snapshot');
    await writer.put('snap', VERSIONED, { allowed_role: 'viewer', version: 1 });
    const first = await startWatcher(etcd.endpoints, snapshot);
    await new Promise((r) => setTimeout(r, 200)); // the snapshot is written in the background
    await first.stop();

    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    proxy.cut();
    const second = await startWatcher([proxy.url], snapshot);
    expect(second.current.source).toBe('snapshot');
    expect((await decide(second.current, 'snap', 'viewer'))?.allow).toBe(true);
    expect(second.status.state).toBe('unavailable');

    await writer.put('snap', VERSIONED, { allowed_role: 'editor', version: 2 });
    proxy.restore();
    await until(() => second.current.source === 'etcd', 'etcd to take over from the snapshot');
    expect((await decide(second.current, 'snap', 'viewer'))?.allow).toBe(false);
    expect((await decide(second.current, 'snap', 'editor'))?.allow).toBe(true);
  });

  it('without etcd and without a snapshot, nothing is loaded (decisions must fail closed)', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    proxy.cut();
    const watcher = await startWatcher([proxy.url], join(mkdtempSync(join(tmpdir(), 'gh-nosnap-')), 'none.json'));
    expect(watcher.current.isLoaded).toBe(false);
    expect(watcher.status.state).toBe('unavailable');
    // A decision waiting for the first set is told when none came in time, and when one comes.
    expect(await watcher.whenLoaded(200)).toBe(false);
    const waiting = watcher.whenLoaded(10_000);
    proxy.restore();
    expect(await waiting).toBe(true);
    expect(watcher.current.isLoaded).toBe(true);
    expect(watcher.listenerCount('revision')).toBe(0);
  });
});
