import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  isValidPolicyName,
  parsePolicyKey,
  POLICIES_PREFIX,
  policyKeys,
  PolicyStore,
  PreconditionFailedError,
  type PolicySubmission,
} from '../../policy/store/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';

describe('policy names', () => {
  it('accepts lowercase DNS labels only', () => {
    for (const name of ['a', 'team-a', 'platform', '0', 'a'.repeat(63), 'a-b-c9']) expect(isValidPolicyName(name), name).toBe(true);
    for (const name of ['', 'A', 'team_a', '-a', 'a-', 'a'.repeat(64), 'a/b', '..', '.', 'a.b', 'é']) expect(isValidPolicyName(name), name).toBe(false);
  });
});

describe('key layout', () => {
  it('puts every key of a policy under /policies/<name>/', () => {
    const keys = policyKeys('team-a');
    expect(POLICIES_PREFIX).toBe('/policies/');
    expect(keys).toMatchObject({
      prefix: '/policies/team-a/',
      meta: '/policies/team-a/meta',
      source: '/policies/team-a/source',
      data: '/policies/team-a/data',
      wasm: '/policies/team-a/wasm',
    });
    expect(keys.history('source', 7)).toBe('/policies/team-a/history/source/000000000007');
    expect(keys.historyPrefix('meta')).toBe('/policies/team-a/history/meta/');
    expect(() => policyKeys('../x')).toThrow();
  });

  it('parses its own keys back and ignores anything else', () => {
    const keys = policyKeys('team-a');
    expect(parsePolicyKey(keys.meta)).toEqual({ name: 'team-a', kind: 'current', part: 'meta' });
    expect(parsePolicyKey(keys.wasm)).toEqual({ name: 'team-a', kind: 'current', part: 'wasm' });
    expect(parsePolicyKey(keys.history('data', 12))).toEqual({ name: 'team-a', kind: 'history', part: 'data', version: 12 });
    for (const key of [
      '/policies/team-a',
      '/policies/team-a/other',
      '/policies/Team/meta',
      '/other/team-a/meta',
      '/policies/team-a/history/wasm/000000000001',
      '/policies/team-a/history/meta/1',
    ]) {
      expect(parsePolicyKey(key), key).toBeNull();
    }
  });
});

describe('store on a real etcd', () => {
  let etcd: TestEtcd;
  let store: PolicyStore;
  let client: ReturnType<typeof createEtcdClient>;
  const submission = (rego: string): PolicySubmission => ({
    rego,
    dataText: '{"n":1}',
    wasm: new Uint8Array([0, 97, 115, 109]),
    author: 'ada',
    opaVersion: 'test',
    entrypoint: 'x',
    syntaxVersion: 'v1',
  });

  beforeAll(async () => {
    etcd = await startEtcd();
    client = createEtcdClient(etcd.endpoints);
    store = new PolicyStore(client, { historyRetention: 2 });
  });
  afterAll(async () => {
    client?.close();
    await etcd?.cleanup();
  });

  it('writes all parts in one transaction: every key carries the same revision', async () => {
    await store.put('one-txn', submission('package x\n'));
    const result = await client.getAll().prefix(policyKeys('one-txn').prefix).exec();
    expect(result.kvs.map((kv) => kv.key.toString()).sort()).toEqual([
      '/policies/one-txn/data',
      '/policies/one-txn/history/data/000000000001',
      '/policies/one-txn/history/meta/000000000001',
      '/policies/one-txn/history/source/000000000001',
      '/policies/one-txn/meta',
      '/policies/one-txn/source',
      '/policies/one-txn/wasm',
    ]);
    expect(new Set(result.kvs.map((kv) => kv.mod_revision)).size).toBe(1);
  });

  it('reads back what it wrote, with metadata', async () => {
    const stored = await store.get('one-txn', { withWasm: true });
    expect(stored).toMatchObject({ rego: 'package x\n', dataText: '{"n":1}', body: '{"rego":"package x\\n","data":{"n":1}}' });
    expect(stored?.meta).toMatchObject({ name: 'one-txn', version: 1, author: 'ada', entrypoint: 'x', syntaxVersion: 'v1' });
    expect([...(stored?.wasm ?? [])]).toEqual([0, 97, 115, 109]);
    expect(await store.get('absent')).toBeNull();
  });

  it('honours version conditions and prunes history to the retention', async () => {
    await expect(store.put('one-txn', submission('package y\n'), { ifVersion: [7] })).rejects.toBeInstanceOf(PreconditionFailedError);
    await store.put('one-txn', submission('package y\n'), { ifVersion: [1] });
    await store.put('one-txn', submission('package z\n'), { ifVersion: 'any' });
    expect((await store.history('one-txn')).map((meta) => meta.version)).toEqual([3, 2]);
    expect((await store.historyVersion('one-txn', 2))?.rego).toBe('package y\n');
    expect(await store.historyVersion('one-txn', 1)).toBeNull();
  });

  it('sends a module once: a version with the module already stored leaves the wasm key as it is', async () => {
    const wasmKey = policyKeys('same-module').wasm;
    const modRevision = async (key: string) => (await client.get(key).exec()).kvs[0]?.mod_revision;
    const first = await store.put('same-module', submission('package x\n'));
    expect(await modRevision(wasmKey)).toBe(String(first.revision));

    // New data and Rego, the same module (as when Rego changes only in comments): the meta moves, the wasm key does not.
    const second = await store.put('same-module', { ...submission('package x # same\n'), dataText: '{"n":2}' });
    expect(second.meta.wasmSha256).toBe(first.meta.wasmSha256);
    expect(await modRevision(policyKeys('same-module').meta)).toBe(String(second.revision));
    expect(await modRevision(wasmKey)).toBe(String(first.revision));
    expect(await store.get('same-module', { withWasm: true })).toMatchObject({ dataText: '{"n":2}', wasm: Buffer.from([0, 97, 115, 109]) });

    // A new module is written with its version.
    const third = await store.put('same-module', { ...submission('package x\n'), wasm: new Uint8Array([0, 97, 115, 109, 1]) });
    expect(await modRevision(wasmKey)).toBe(String(third.revision));

    // A wasm key altered by hand is not taken for the module its meta names: the next write of that module puts it back.
    await client.put(wasmKey).value(Buffer.from([9, 9, 9]));
    const fourth = await store.put('same-module', { ...submission('package x\n'), wasm: new Uint8Array([0, 97, 115, 109, 1]) });
    expect(await modRevision(wasmKey)).toBe(String(fourth.revision));
    expect([...(await store.get('same-module', { withWasm: true }))!.wasm!]).toEqual([0, 97, 115, 109, 1]);
    await store.delete('same-module');
  });

  it('deletes in one transaction, keeping history', async () => {
    const deleted = await store.delete('one-txn', { ifVersion: [3] });
    expect(deleted.meta.version).toBe(3);
    // The delete's own revision: what a gateway must have reached to no longer enforce it.
    expect(deleted.revision).toBe(Number((await client.get('/nothing').exec()).header.revision));
    expect(await store.get('one-txn')).toBeNull();
    expect(await store.list()).toEqual([]);
    expect((await store.history('one-txn')).length).toBe(2);
  });
});
