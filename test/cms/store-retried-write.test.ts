/**
 * A write transaction that the etcd client sent twice: the first attempt
 * committed but its answer was lost (deadline passed, member cut off after
 * the commit), so the client retried the very same transaction on another
 * member, where it fails its compare. The store must report the write as
 * done, once: no second version, no 412 against itself.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { policyKeys, PolicyStore, type PolicySubmission } from '../../policy/store/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';

let etcd: TestEtcd;
let client: Etcd3;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
});
afterAll(async () => {
  client?.close();
  await etcd?.cleanup();
});

const submission = (n: number): PolicySubmission => ({
  rego: 'package x\n',
  dataText: `{"n":${n}}`,
  wasm: new Uint8Array([0, 97, 115, 109, n]),
  author: 'ada',
  opaVersion: 'test',
  entrypoint: 'x',
  syntaxVersion: 'v1',
});

/** Makes the next transaction run twice, answering with the second run, as a retry after a lost answer does. */
function loseNextTxnAnswer(target: Etcd3): { replayed: () => boolean } {
  const kv = target.kv as unknown as { txn: (...args: unknown[]) => Promise<{ succeeded: boolean }> };
  const original = kv.txn.bind(kv);
  let replayed = false;
  kv.txn = async (...args: unknown[]) => {
    kv.txn = original;
    const first = await original(...args);
    expect(first.succeeded).toBe(true);
    replayed = true;
    return original(...args);
  };
  return { replayed: () => replayed };
}

async function versionsInHistory(store: PolicyStore, name: string): Promise<number[]> {
  return (await store.history(name)).map((meta) => meta.version);
}

describe('a write transaction retried after its commit', () => {
  it('creating: reported as created, one version', async () => {
    const store = new PolicyStore(client);
    const lost = loseNextTxnAnswer(client);
    const result = await store.put('retried-create', submission(1), { ifAbsent: true });
    expect(lost.replayed()).toBe(true);
    expect(result).toMatchObject({ created: true, meta: { version: 1 } });
    expect(await versionsInHistory(store, 'retried-create')).toEqual([1]);
  });

  it('replacing with If-Match: reported as written (not 412), one new version', async () => {
    const store = new PolicyStore(client);
    await store.put('retried-match', submission(1));
    const lost = loseNextTxnAnswer(client);
    const result = await store.put('retried-match', submission(2), { ifVersion: [1] });
    expect(lost.replayed()).toBe(true);
    expect(result).toMatchObject({ created: false, meta: { version: 2 } });
    expect(await versionsInHistory(store, 'retried-match')).toEqual([2, 1]);
    expect((await store.get('retried-match'))?.dataText).toBe('{"n":2}');
  });

  it('replacing without conditions: not written a second time on top of itself', async () => {
    const store = new PolicyStore(client);
    await store.put('retried-plain', submission(1));
    const lost = loseNextTxnAnswer(client);
    const result = await store.put('retried-plain', submission(2));
    expect(lost.replayed()).toBe(true);
    expect(result.meta.version).toBe(2);
    expect(await versionsInHistory(store, 'retried-plain')).toEqual([2, 1]);
  });

  it('a competing write in between is still a conflict to re-check, not mistaken for ours', async () => {
    const store = new PolicyStore(client);
    await store.put('competed', submission(1));
    const kv = client.kv as unknown as { txn: (...args: unknown[]) => Promise<unknown> };
    const original = kv.txn.bind(kv);
    // Another writer commits version 2 just before our transaction reaches etcd.
    kv.txn = async (...args: unknown[]) => {
      kv.txn = original;
      const other = createEtcdClient(etcd.endpoints);
      await new PolicyStore(other).put('competed', submission(99)).finally(() => other.close());
      return original(...args);
    };
    await expect(store.put('competed', submission(2), { ifVersion: [1] })).rejects.toThrow(/version 2/);
    const unconditional = await store.put('competed', submission(3));
    expect(unconditional.meta.version).toBe(3);
    expect(await versionsInHistory(store, 'competed')).toEqual([3, 2, 1]);
  });

  it('deleting: the version is gone, which is what was asked (not 404)', async () => {
    const store = new PolicyStore(client);
    await store.put('retried-delete', submission(1));
    const lost = loseNextTxnAnswer(client);
    const deleted = await store.delete('retried-delete', { ifVersion: [1] });
    expect(lost.replayed()).toBe(true);
    expect(deleted.meta.version).toBe(1);
    expect(await client.get(policyKeys('retried-delete').meta).string()).toBeNull();
  });
});
