// A gateway keeps no policy's wasm in memory: the start-up read takes
// metadata and data only, and a module is read when its engine is built,
// from the snapshot directory or etcd (policy/watcher/modules.ts). Real etcd,
// real compiled policies; every policy a module of its own (one Rego
// compiled by opa, the others made distinct by a constant inside the wasm,
// as bench:scale does).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startTcpProxy, hostPort } from '../support/tcp-proxy.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { policySubmission } from '../../cms/rego-compiler.js';
import { createEtcdClient } from '../../etcd/index.js';
import { WasmUnavailableError } from '../../policy/engine/cache.js';
import { policyKeys } from '../../policy/store/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const MARKER = 'gh-variant-0000000000';
const REGO = `package project.authz
import rego.v1
default allow := false
marker := "${MARKER}"
allow if input.user.role in data.roles
`;
const POLICIES = 80;
const nameOf = (i: number) => `distinct-${String(i).padStart(3, '0')}`;
const markerOf = (i: number) => `gh-variant-${String(i).padStart(10, '0')}`;

let etcd: TestEtcd;
let admin: Etcd3;
let moduleBytes = 0;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  const writer = new EtcdPolicyWriter(admin);
  const compiled = await writer.compiler.compile(REGO, '{}');
  const at = compiled.wasm.indexOf(MARKER);
  expect(at).toBeGreaterThan(0);
  moduleBytes = compiled.wasm.byteLength;
  for (let i = 0; i < POLICIES; i++) {
    const wasm = Buffer.from(compiled.wasm);
    wasm.write(markerOf(i), at, 'latin1');
    await writer.store.put(nameOf(i), policySubmission(REGO, JSON.stringify({ roles: [`role-${i}`] }), { ...compiled, wasm }, 'test'));
  }
}, 120_000);

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

async function decide(watcher: PolicyWatcher, i: number, role = `role-${i}`): Promise<{ allow: boolean; marker: string }> {
  const policy = watcher.current.get(nameOf(i))!;
  const engine = await policy.engine();
  return engine.evaluate({ user: { role } }, policy.meta.entrypoint) as { allow: boolean; marker: string };
}

async function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('policy wasm read on first use, not held', () => {
  it('a gateway with every policy a module of its own holds none of their bytes after start', async () => {
    gc();
    const before = process.memoryUsage().arrayBuffers;
    const watcher = await startWatcher(etcd.endpoints);
    expect(watcher.current.size).toBe(POLICIES);
    gc();
    const held = process.memoryUsage().arrayBuffers - before;
    // Every module held would be POLICIES x moduleBytes (about 10 MiB here).
    expect(POLICIES * moduleBytes).toBeGreaterThan(8 * 1024 * 1024);
    expect(held).toBeLessThan((POLICIES * moduleBytes) / 8);
    expect(watcher.status.modules).toMatchObject({ held: 0, heldBytes: 0, fromDisk: 0, fromEtcd: 0 });

    // The first decision reads its module from etcd (no snapshot directory here); each is its own.
    expect(await decide(watcher, 7)).toEqual({ allow: true, marker: markerOf(7) });
    expect(await decide(watcher, 8, 'role-7')).toMatchObject({ allow: false, marker: markerOf(8) });
    expect(watcher.status.modules).toMatchObject({ heldBytes: 0, fromEtcd: 2 });
    // Concurrent first decisions on one module share one read.
    const again = await Promise.all([decide(watcher, 9), decide(watcher, 9), decide(watcher, 9)]);
    expect(again.every((d) => d.allow)).toBe(true);
    expect(watcher.status.modules.fromEtcd).toBe(3);
  });

  it('with etcd away: a module only in the snapshot directory is read from there; one neither there nor held fails closed until etcd is back', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'gh-lazy-')), 'policy-snapshot');
    const first = await startWatcher(etcd.endpoints, dir);
    // The snapshot holds every module though none was used: the writer fills it from etcd.
    await until(
      () => existsSync(join(dir, 'manifest.json')) && readdirSync(join(dir, 'modules')).filter((f) => f.endsWith('.wasm')).length === POLICIES,
      'every module in the snapshot',
    );
    expect(first.status.modules.heldBytes).toBe(0);
    await first.stop();

    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    proxy.cut();
    const offline = await startWatcher([proxy.url], dir);
    expect(offline.current.source).toBe('snapshot');
    expect(await decide(offline, 11)).toEqual({ allow: true, marker: markerOf(11) });
    expect(offline.status.modules).toMatchObject({ fromDisk: 1, fromEtcd: 0 });

    // From etcd, without a snapshot directory: etcd goes away before a project's first decision.
    const online = await startWatcher([proxy.url]);
    expect(online.current.source).toBe('none');
    proxy.restore();
    await until(() => online.current.source === 'etcd' && online.status.state === 'watching', 'the watcher to read etcd');
    expect((await decide(online, 12)).allow).toBe(true);
    proxy.cut();
    await expect(decide(online, 13)).rejects.toBeInstanceOf(WasmUnavailableError);
    await expect(online.current.get(nameOf(13))!.evaluate('t', { user: { role: 'role-13' } })).rejects.toBeInstanceOf(WasmUnavailableError);
    // What it had built, it still enforces.
    expect((await decide(online, 12)).allow).toBe(true);
    // Not remembered as unloadable: once etcd answers, the same project decides.
    expect(online.status.unloadable).toEqual([]);
    proxy.restore();
    expect(await decide(online, 13)).toEqual({ allow: true, marker: markerOf(13) });
  });

  it('a new version that keeps its module arrives without it, and is built from the module the version before stored', async () => {
    const watcher = await startWatcher(etcd.endpoints);
    const writer = new EtcdPolicyWriter(admin);
    const name = nameOf(20);
    const stored = (await writer.store.get(name, { withWasm: true }))!;
    const { opaVersion, entrypoint, syntaxVersion } = stored.meta;
    const sameModule = (roles: string[]) =>
      policySubmission(REGO, JSON.stringify({ roles }), { wasm: stored.wasm!, opaVersion, entrypoint, syntaxVersion, durationMs: 0 }, 'test');
    const wasmRevision = async () => (await admin.get(policyKeys(name).wasm).exec()).kvs[0]!.mod_revision;
    const before = await wasmRevision();

    // Not in use here: swapped in unbuilt, then built on its first decision from the wasm key as it was.
    const second = await writer.store.put(name, sameModule(['second']));
    expect(await wasmRevision()).toBe(before);
    await until(() => watcher.current.get(name)?.meta.version === second.meta.version, 'the second version');
    const fromEtcd = watcher.status.modules.fromEtcd;
    // Through the policy's own evaluate, which marks it in use.
    expect(await watcher.current.get(name)!.evaluate('t', { user: { role: 'second' } })).toEqual({ allow: true, marker: markerOf(20) });
    expect(await decide(watcher, 20)).toMatchObject({ allow: false });
    expect(watcher.status.modules.fromEtcd).toBe(fromEtcd + 1);

    // In use: built before its swap from the engine it already has, nothing read.
    const third = await writer.store.put(name, sameModule(['third']));
    expect(await wasmRevision()).toBe(before);
    await until(() => watcher.current.get(name)?.meta.version === third.meta.version, 'the third version');
    expect(watcher.current.get(name)!.readyEngine()).toBeDefined();
    expect(await decide(watcher, 20, 'third')).toEqual({ allow: true, marker: markerOf(20) });
    expect(watcher.status.modules.fromEtcd).toBe(fromEtcd + 1);
  });

  it('a new version arriving by the watch is written to the snapshot directory, not kept, and built from there on its first decision', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'gh-lazy-')), 'policy-snapshot');
    const watcher = await startWatcher(etcd.endpoints, dir);
    const writer = new EtcdPolicyWriter(admin);
    const rego = `${REGO}\nextra := true\n`;
    const compiled = await writer.compiler.compile(rego, '{}');
    const { meta } = await writer.store.put('arrives-later', policySubmission(rego, '{"roles":["late"]}', compiled, 'test'));
    await until(() => watcher.current.get('arrives-later') !== undefined, 'the new policy');
    // Written beside the swap, not before it.
    await until(() => existsSync(join(dir, 'modules', `${meta.wasmSha256}.wasm`)), 'the module on disk');
    expect(watcher.status.modules.heldBytes).toBe(0);
    const fromDisk = watcher.status.modules.fromDisk;
    expect(await watcher.current.get('arrives-later')!.evaluate('t', { user: { role: 'late' } })).toMatchObject({ allow: true });
    expect(watcher.current.get('arrives-later')!.readyEngine()).toBeDefined();
    expect(watcher.status.modules.fromDisk).toBe(fromDisk + 1);
    await writer.store.delete('arrives-later');
  });
});
