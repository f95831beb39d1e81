// Engines within a budget, and the incremental snapshot, on real compiled
// policies from a real etcd.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { hostPort, startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { createEtcdClient } from '../../etcd/index.js';
import { EngineCache } from '../../policy/engine/cache.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { SnapshotCorruptError, readSnapshot } from '../../policy/watcher/snapshot.js';

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

const OWNED = `package owned
import rego.v1
default allow := false
allow if input.user.sub == data.owner
owner := data.owner
`;
const LISTED = `package listed
import rego.v1
default allow := false
allow if input.user.sub in data.users
`;

let etcd: TestEtcd;
let client: Etcd3;
let writer: EtcdPolicyWriter;
const cleanups: (() => Promise<void> | void)[] = [];
const PROJECTS = 20;
const nameOf = (i: number) => `t-${String(i).padStart(2, '0')}`;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(client);
  for (let i = 0; i < PROJECTS; i++) {
    await writer.put(nameOf(i), i % 2 ? LISTED : OWNED, i % 2 ? { users: [`u${i}`] } : { owner: `u${i}` });
  }
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  client?.close();
  await etcd?.cleanup();
});

async function startWatcher(options: { engines?: EngineCache; snapshotDir?: string; endpoints?: string[] } = {}): Promise<PolicyWatcher> {
  const watcherClient = createEtcdClient(options.endpoints ?? etcd.endpoints, { callTimeoutMs: 500 });
  const watcher = new PolicyWatcher({
    client: watcherClient,
    log,
    retryMs: 100,
    ...(options.engines ? { engines: options.engines } : {}),
    ...(options.snapshotDir ? { snapshotDir: options.snapshotDir } : {}),
  });
  await watcher.start();
  cleanups.push(async () => {
    await watcher.stop();
    watcherClient.close();
  });
  return watcher;
}

/** A decision, as the gateway makes it (the policy is then in use here). */
async function allows(watcher: PolicyWatcher, name: string, user: string): Promise<boolean> {
  const result = (await watcher.current.get(name)!.evaluate('t', { user: { sub: user } })) as { allow: boolean };
  return result.allow;
}

const files = (dir: string): string[] => {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
};

async function until(check: () => boolean, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('engine cache', () => {
  it('builds engines on first use, shares modules, and an evicted project decides exactly as before', async () => {
    // 3 MiB: a quarter for the two compiled modules, the rest for about seven of the twenty instances.
    const engines = new EngineCache({ budgetBytes: 3 * 1024 * 1024 });
    const watcher = await startWatcher({ engines });
    expect(watcher.current.policies.size).toBe(PROJECTS);
    expect(engines.stats.instances).toBe(0); // nothing built before a decision asks

    const decisions = async () => {
      const seen: boolean[] = [];
      for (let i = 0; i < PROJECTS; i++) {
        seen.push(await allows(watcher, nameOf(i), `u${i}`), await allows(watcher, nameOf(i), `u${i + 1}`));
      }
      return seen;
    };
    const first = await decisions();
    expect(first).toEqual(Array.from({ length: PROJECTS }, () => [true, false]).flat());
    expect(engines.stats.evictions).toBeGreaterThan(0);
    expect(engines.stats.instances).toBeLessThan(PROJECTS / 2);
    const second = await decisions();
    expect(second).toEqual(first);
    // Two distinct modules, compiled once each however often their projects were evicted.
    expect(engines.stats.compiles).toBe(2);
    expect(engines.stats.instantiations).toBeGreaterThanOrEqual(2 * PROJECTS);
  });

  it('concurrent first decisions of a cold project share one build', async () => {
    const engines = new EngineCache();
    const watcher = await startWatcher({ engines });
    const policy = watcher.current.get(nameOf(4))!;
    expect(policy.readyEngine()).toBeUndefined();
    const built = await Promise.all(Array.from({ length: 10 }, () => policy.engine()));
    expect(new Set(built).size).toBe(1);
    expect(engines.stats.instantiations).toBe(1);
    expect(policy.readyEngine()).toBe(built[0]);
  });

  it('a new version of a policy this gateway decides with is built before it is swapped in', async () => {
    const engines = new EngineCache();
    const watcher = await startWatcher({ engines });
    await writer.put('busy', OWNED, { owner: 'b1' });
    await until(() => watcher.current.get('busy') !== undefined, 'the policy');
    expect(await watcher.current.get('busy')!.evaluate('t', { user: { sub: 'b1' } })).toMatchObject({ allow: true });
    expect(watcher.current.get('busy')!.inUse).toBe(true);
    const built = engines.stats.instantiations;
    await writer.put('busy', OWNED, { owner: 'b2' });
    await until(() => watcher.current.get('busy')!.meta.version === 2, 'the new version');
    const swapped = watcher.current.get('busy')!;
    expect(swapped.readyEngine()).toBeDefined();
    expect(swapped.inUse).toBe(true);
    expect(engines.stats.instantiations).toBe(built + 1);
    expect(await swapped.evaluate('t', { user: { sub: 'b2' } })).toMatchObject({ allow: true });
    await writer.store.delete('busy');
  });

  it('a new version of a policy this gateway has not decided with is swapped in unbuilt, and its first decision builds it', async () => {
    const engines = new EngineCache();
    const watcher = await startWatcher({ engines });
    const built = engines.stats.instantiations;
    await writer.put('fresh', OWNED, { owner: 'f1' });
    await until(() => watcher.current.get('fresh') !== undefined, 'the new policy');
    await writer.put('fresh', OWNED, { owner: 'f2' });
    await until(() => watcher.current.get('fresh')!.meta.version === 2, 'its second version');
    const fresh = watcher.current.get('fresh')!;
    expect(fresh.inUse).toBe(false);
    expect(fresh.readyEngine()).toBeUndefined();
    expect(engines.stats.instantiations).toBe(built);
    // Enforced all the same: the first decision builds the new version and decides by it.
    expect(await fresh.evaluate('t', { user: { sub: 'f1' } })).toMatchObject({ allow: false });
    expect(await fresh.evaluate('t', { user: { sub: 'f2' } })).toMatchObject({ allow: true });
    expect(engines.stats.instantiations).toBe(built + 1);
    await writer.store.delete('fresh');
  });

  it('keeps no engine or module that no current policy names: superseded versions and deleted policies go at once', async () => {
    const engines = new EngineCache();
    const watcher = await startWatcher({ engines });
    // A project shares its module with others: only its superseded engines may go, never the shared module.
    const before = engines.stats;
    for (let v = 1; v <= 12; v++) {
      await writer.put('churn', v % 2 ? OWNED : LISTED, v % 2 ? { owner: `v${v}` } : { users: [`v${v}`] });
      await until(() => watcher.current.get('churn')?.dataText.includes(`"v${v}"`) === true, `version ${v}`);
      // Decided with from its first version: every later one is built before its swap.
      if (v === 1) expect(await allows(watcher, 'churn', 'v1')).toBe(true);
    }
    expect(await allows(watcher, 'churn', 'v12')).toBe(true);
    // Twelve versions were built; the one current is all that stays of them.
    expect(engines.stats.instantiations - before.instantiations).toBeGreaterThanOrEqual(12);
    expect(engines.stats.instances - before.instances).toBe(1);
    expect(engines.stats.released - before.released).toBe(11);
    expect(engines.stats.evictions).toBe(0);

    await writer.store.delete('churn');
    await until(() => watcher.current.get('churn') === undefined, 'the delete');
    expect(engines.stats.instances - before.instances).toBe(0);
    expect(engines.stats.released - before.released).toBe(12);
    // Both modules are still named by the twenty projects: still compiled, never compiled again.
    expect(engines.stats.modules).toBe(2);
    expect(await allows(watcher, nameOf(0), 'u0')).toBe(true);
    expect(engines.stats.compiles).toBe(2);
  });

  it('drops a module when the last policy running it moves to another', async () => {
    const engines = new EngineCache();
    const watcher = await startWatcher({ engines });
    const ONLY = `package only\nimport rego.v1\ndefault allow := false\nallow if input.user.sub == "solo"\n`;
    await writer.put('solo', ONLY, {});
    await until(() => watcher.current.get('solo') !== undefined, 'the policy');
    expect(engines.stats.modules).toBe(0); // not built before a decision asks
    expect(await allows(watcher, 'solo', 'solo')).toBe(true);
    expect(engines.stats.modules).toBe(1);
    await writer.put('solo', OWNED, { owner: 'solo' });
    await until(() => watcher.current.get('solo')?.dataText === '{"owner":"solo"}', 'the new version');
    // The old module (ONLY) is gone; OWNED's is compiled for the new version.
    expect(engines.stats.modules).toBe(1);
    expect(engines.stats.instances).toBe(1);
    expect(await allows(watcher, 'solo', 'solo')).toBe(true);
    await writer.store.delete('solo');
  });
});

describe('incremental snapshot', () => {
  it('writes only what changed, checks every file when read, and is private', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'gh-snap-')), 'snapshot');
    const watcher = await startWatcher({ snapshotDir: dir });
    const writes: { revision: number; bytes: number; files: number }[] = [];
    watcher.on('snapshot', (written) => writes.push(written));
    await until(() => files(join(dir, 'policies')).length === PROJECTS && files(dir).includes('manifest.json'), 'the first snapshot');
    expect(readdirSync(join(dir, 'modules'))).toHaveLength(2); // one file per distinct module
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(join(dir, 'policies', `${nameOf(0)}.json`)).mode & 0o777).toBe(0o600);

    // One project's data changes: its file, its new data, the manifest. Nothing else.
    const modulesBefore = readdirSync(join(dir, 'modules')).map((f) => statSync(join(dir, 'modules', f)).mtimeMs);
    await writer.put(nameOf(2), OWNED, { owner: 'someone-else' });
    await until(() => watcher.current.get(nameOf(2))?.dataText === '{"owner":"someone-else"}', 'the change to reach the watcher');
    await until(() => writes.some((w) => w.revision === watcher.current.revision), 'the incremental write');
    const write = writes.find((w) => w.revision === watcher.current.revision)!;
    expect(write.files).toBe(3);
    expect(write.bytes).toBeLessThan(2_000);
    expect(readdirSync(join(dir, 'modules')).map((f) => statSync(join(dir, 'modules', f)).mtimeMs)).toEqual(modulesBefore);
    // The old data file, which no policy names any more, is gone; no temporary file is left.
    expect(readdirSync(join(dir, 'data'))).toHaveLength(PROJECTS);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);

    const snapshot = (await readSnapshot(dir))!;
    expect(snapshot.policies).toHaveLength(PROJECTS);
    expect(snapshot.policies.find((p) => p.meta.name === nameOf(2))?.dataText).toBe('{"owner":"someone-else"}');

    // A snapshot started from (etcd unreachable) decides like etcd did.
    const proxy: TcpProxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    cleanups.push(() => proxy.close());
    proxy.cut();
    const offline = await startWatcher({ snapshotDir: dir, endpoints: [proxy.url] });
    expect(offline.current.source).toBe('snapshot');
    expect(await allows(offline, nameOf(2), 'someone-else')).toBe(true);
    expect(await allows(offline, nameOf(3), 'u3')).toBe(true);
    expect(await allows(offline, nameOf(3), 'u4')).toBe(false);

    // One altered byte in a module: the snapshot is refused whole, and a gateway fails closed.
    const moduleFile = join(dir, 'modules', readdirSync(join(dir, 'modules'))[0]!);
    const bytes = readFileSync(moduleFile);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    writeFileSync(moduleFile, bytes);
    await expect(readSnapshot(dir)).rejects.toBeInstanceOf(SnapshotCorruptError);
    const refused = await startWatcher({ snapshotDir: dir, endpoints: [proxy.url] });
    expect(refused.current.source).toBe('none');
    expect(refused.current.isLoaded).toBe(false);
  });

  it('a restarted gateway rewrites nothing that is in step; a deleted policy takes its files with it', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'gh-snap-')), 'snapshot');
    const first = await startWatcher({ snapshotDir: dir });
    await until(() => files(join(dir, 'policies')).length === first.current.policies.size && files(dir).includes('manifest.json'), 'the snapshot');
    await first.stop();

    const second = await startWatcher({ snapshotDir: dir });
    const writes: { revision: number; bytes: number; files: number }[] = [];
    second.on('snapshot', (written) => writes.push(written));
    await writer.put('short-lived', OWNED, { owner: 'unique-to-short-lived' });
    await until(() => writes.some((w) => w.revision === second.current.revision && second.current.get('short-lived') !== undefined), 'the new policy on disk');
    // Its policy file, its data, the manifest: the existing files were found in step, not rewritten.
    expect(writes.reduce((n, w) => n + w.files, 0)).toBeLessThanOrEqual(4);
    const dataFiles = files(join(dir, 'data')).length;

    await writer.store.delete('short-lived');
    await until(() => second.current.get('short-lived') === undefined, 'the delete');
    await until(() => !files(join(dir, 'policies')).includes('short-lived.json'), 'the policy file to go');
    await until(() => files(join(dir, 'data')).length === dataFiles - 1, 'its data file to go');
    expect((await readSnapshot(dir))!.policies.map((p) => p.meta.name)).not.toContain('short-lived');
  });

  it('an altered policy file is refused too', async () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'gh-snap-')), 'snapshot');
    const watcher = await startWatcher({ snapshotDir: dir });
    await until(() => files(join(dir, 'policies')).length === watcher.current.policies.size && files(dir).includes('manifest.json'), 'the snapshot');
    await new Promise((r) => setTimeout(r, 100));
    const file = join(dir, 'policies', `${nameOf(1)}.json`);
    writeFileSync(file, readFileSync(file, 'utf8').replace('"version":1', '"version":7'));
    await expect(readSnapshot(dir)).rejects.toThrow(/checksum/);
  });
});
