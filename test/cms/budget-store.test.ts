/**
 * The budget store on a real etcd: one transaction per write (current key and
 * history version), versions 1, 2, 3... that concurrent writers cannot share,
 * deletions kept as versions, retention, listing in pages, usage read a day
 * at a time, and etcd away.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import type { Budget } from '../../budget/definition.js';
import { budgetHistoryKey, budgetHistoryPrefix, budgetKey, emptyUsage, HOUR_MS, type StoredBudget } from '../../budget/keys.js';
import { BudgetNotFoundError, BudgetStore, StoredBudgetInvalidError } from '../../budget/store.js';
import { addUsage, readUsage } from '../../budget/usage.js';
import { createEtcdClient, PreconditionFailedError, StoreUnavailableError } from '../../etcd/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';

let etcd: TestEtcd;
let client: Etcd3;
let store: BudgetStore;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints, { callTimeoutMs: 1_000 });
  store = new BudgetStore(client);
});
afterAll(async () => {
  client?.close();
  await etcd?.cleanup();
});

const base = Date.UTC(2025, 0, 1);
const budget = (tokens: number): Budget => ({
  windows: [
    { per: 'minute', tokens },
    { per: 'day', tokens: tokens * 100 },
  ],
  default_max_tokens: 256,
});

async function historyVersions(project: string): Promise<number[]> {
  return (await store.history(project)).map((stored) => stored.version);
}

/** Every history entry of a project as stored, by version. */
async function rawHistory(project: string): Promise<Map<number, StoredBudget>> {
  const kvs = (await client.getAll().prefix(budgetHistoryPrefix(project)).exec()).kvs;
  return new Map(
    kvs.map((kv) => {
      const stored = JSON.parse(kv.value.toString()) as StoredBudget;
      return [stored.version, stored];
    }),
  );
}

describe('writes', () => {
  it('a create writes the current key and history version 1 in one transaction, equal values', async () => {
    const result = await store.put('one-txn', budget(1000), 'ada');
    expect(result).toMatchObject({ created: true, stored: { project: 'one-txn', version: 1, budget: budget(1000), updatedBy: 'ada' } });
    const kvs = (await client.getAll().prefix(budgetKey('one-txn')).exec()).kvs;
    const history = (await client.getAll().prefix(budgetHistoryPrefix('one-txn')).exec()).kvs;
    expect(kvs.map((kv) => kv.key.toString())).toEqual(['/budgets/one-txn']);
    expect(history.map((kv) => kv.key.toString())).toEqual(['/budget-history/one-txn/000000000001']);
    expect(kvs[0]!.mod_revision).toBe(history[0]!.mod_revision);
    expect(Number(kvs[0]!.mod_revision)).toBe(result.revision);
    expect(kvs[0]!.value.toString()).toBe(history[0]!.value.toString());
    expect(JSON.parse(kvs[0]!.value.toString())).toEqual(result.stored);
  });

  it('get returns the budget in force with its version and mod revision; null when there is none', async () => {
    const current = await store.get('one-txn');
    const kv = (await client.get(budgetKey('one-txn')).exec()).kvs[0]!;
    expect(current).toEqual({ stored: expect.objectContaining({ version: 1, budget: budget(1000) }), modRevision: Number(kv.mod_revision) });
    expect(await store.get('never-written')).toBeNull();
    await expect(store.get('platform')).rejects.toThrow(RangeError);
    await expect(store.get('Not_A_Project')).rejects.toThrow(RangeError);
  });

  it('versions follow each other; a delete is a version with budget null and the numbering continues after it', async () => {
    expect((await store.put('one-txn', budget(2000), 'ada')).stored.version).toBe(2);
    const deleted = await store.delete('one-txn', 'bob', { ifVersion: [2] });
    expect(deleted.deleted.version).toBe(2);
    expect(deleted.stored).toMatchObject({ version: 3, budget: null, updatedBy: 'bob' });
    expect(await store.get('one-txn')).toBeNull();
    const kv = (await client.get(budgetHistoryKey('one-txn', 3)).exec()).kvs[0]!;
    expect(Number(kv.mod_revision)).toBe(deleted.revision);
    expect(await client.get(budgetKey('one-txn')).string()).toBeNull();
    const again = await store.put('one-txn', budget(3000), 'ada');
    expect(again).toMatchObject({ created: true, stored: { version: 4 } });
    expect(await historyVersions('one-txn')).toEqual([4, 3, 2, 1]);
    expect((await store.historyVersion('one-txn', 3))?.budget).toBeNull();
    expect((await store.historyVersion('one-txn', 2))?.budget).toEqual(budget(2000));
    expect(await store.historyVersion('one-txn', 9)).toBeNull();
  });

  it('preconditions: If-Match versions, * and create-only', async () => {
    await expect(store.put('one-txn', budget(1), 'ada', { ifVersion: [3] })).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.put('absent-one', budget(1), 'ada', { ifVersion: 'any' })).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.put('one-txn', budget(1), 'ada', { ifAbsent: true })).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.delete('one-txn', 'ada', { ifVersion: [1, 2] })).rejects.toBeInstanceOf(PreconditionFailedError);
    await expect(store.delete('absent-one', 'ada')).rejects.toBeInstanceOf(BudgetNotFoundError);
    await expect(store.delete('absent-one', 'ada', { ifVersion: 'any' })).rejects.toBeInstanceOf(PreconditionFailedError);
    expect(await historyVersions('one-txn')).toEqual([4, 3, 2, 1]);
    expect(await client.getAll().prefix(budgetHistoryPrefix('absent-one')).keys()).toEqual([]);
    expect((await store.put('one-txn', budget(5), 'ada', { ifVersion: [9, 4] })).stored.version).toBe(5);
    expect((await store.put('one-txn', budget(6), 'ada', { ifVersion: 'any' })).stored.version).toBe(6);
    expect((await store.put('absent-one', budget(6), 'ada', { ifAbsent: true })).created).toBe(true);
  });

  it('keeps at most the retention of history versions, the newest', async () => {
    const short = new BudgetStore(client, { historyRetention: 3 });
    for (let n = 1; n <= 5; n++) await short.put('retained', budget(n), 'ada');
    await short.delete('retained', 'ada');
    expect((await short.history('retained')).map((s) => s.version)).toEqual([6, 5, 4]);
    expect([...(await rawHistory('retained')).keys()].sort()).toEqual([4, 5, 6]);
    expect((await short.put('retained', budget(7), 'ada')).stored.version).toBe(7);
  });
});

describe('concurrent writers', () => {
  it('with the same If-Match, exactly one wins; the others are refused and nothing else is written', async () => {
    const project = 'race-match';
    await store.put(project, budget(1), 'ada');
    const writers = Array.from({ length: 12 }, () => createEtcdClient(etcd.endpoints));
    try {
      const results = await Promise.allSettled(writers.map((w, n) => new BudgetStore(w).put(project, budget(100 + n), `w${n}`, { ifVersion: [1] })));
      const won = results.filter((r) => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(PreconditionFailedError);
      expect(await historyVersions(project)).toEqual([2, 1]);
      const winner = (won[0] as PromiseFulfilledResult<Awaited<ReturnType<BudgetStore['put']>>>).value;
      expect((await store.get(project))?.stored).toEqual(winner.stored);
    } finally {
      for (const w of writers) w.close();
    }
  });

  it('creating with If-None-Match: *, exactly one wins', async () => {
    const writers = Array.from({ length: 8 }, () => createEtcdClient(etcd.endpoints));
    try {
      const results = await Promise.allSettled(writers.map((w, n) => new BudgetStore(w).put('race-create', budget(n + 1), `w${n}`, { ifAbsent: true })));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
      expect(await historyVersions('race-create')).toEqual([1]);
    } finally {
      for (const w of writers) w.close();
    }
  });

  it('unconditional puts and deletes interleaved: history is linear, and every answered version is in it exactly as answered', async () => {
    const project = 'race-mixed';
    await store.put(project, budget(1), 'ada');
    // Ten writers: each lost attempt is another writer's commit, so no writer
    // can lose all of the store's ten attempts and every put lands.
    const writers = Array.from({ length: 10 }, () => createEtcdClient(etcd.endpoints));
    try {
      const results = await Promise.allSettled(
        writers.map((w, n) =>
          n % 4 === 3
            ? new BudgetStore(w).delete(project, `d${n}`).then((r) => r.stored)
            : new BudgetStore(w).put(project, budget(10 + n), `p${n}`).then((r) => r.stored),
        ),
      );
      const answered: StoredBudget[] = [];
      for (const r of results) {
        if (r.status === 'fulfilled') answered.push(r.value);
        // A delete may find nothing to delete (another delete came first); nothing else may fail.
        else expect(r.reason).toBeInstanceOf(BudgetNotFoundError);
      }
      const history = await rawHistory(project);
      const versions = [...history.keys()].sort((a, b) => a - b);
      expect(versions).toEqual(Array.from({ length: versions.length }, (_, i) => i + 1));
      expect(versions.length).toBe(answered.length + 1);
      for (const stored of answered) expect(history.get(stored.version)).toEqual(stored);
      const newest = history.get(versions.length)!;
      const current = await store.get(project);
      expect(current?.stored ?? null).toEqual(newest.budget === null ? null : newest);
    } finally {
      for (const w of writers) w.close();
    }
  });

  it('a writer whose read went stale across a put and a delete does not overwrite their history versions', async () => {
    const project = 'stale-after-delete';
    await store.put(project, budget(1), 'ada');
    await store.delete(project, 'ada'); // version 2; no budget in force
    const kv = client.kv as unknown as { txn: (...args: unknown[]) => Promise<unknown> };
    const original = kv.txn.bind(kv);
    // Between our read (no budget, newest version 2) and our transaction,
    // another writer puts version 3 and deletes it as version 4: the current
    // key is absent again, as when we read it.
    kv.txn = async (...args: unknown[]) => {
      kv.txn = original;
      const other = createEtcdClient(etcd.endpoints);
      try {
        const otherStore = new BudgetStore(other);
        await otherStore.put(project, budget(333), 'other');
        await otherStore.delete(project, 'other');
      } finally {
        other.close();
      }
      return original(...args);
    };
    const ours = await store.put(project, budget(555), 'ada');
    expect(ours.stored.version).toBe(5);
    const history = await rawHistory(project);
    expect(history.get(3)).toMatchObject({ budget: budget(333), updatedBy: 'other' });
    expect(history.get(4)).toMatchObject({ budget: null, updatedBy: 'other' });
    expect(history.get(5)).toEqual(ours.stored);
  });

  it('a transaction retried after its commit (answer lost) is reported once, as written', async () => {
    const project = 'retried';
    await store.put(project, budget(1), 'ada');
    const kv = client.kv as unknown as { txn: (...args: unknown[]) => Promise<{ succeeded: boolean }> };
    const original = kv.txn.bind(kv);
    let replayed = false;
    kv.txn = async (...args: unknown[]) => {
      kv.txn = original;
      const first = await original(...args);
      expect(first.succeeded).toBe(true);
      replayed = true;
      return original(...args);
    };
    const result = await store.put(project, budget(2), 'ada', { ifVersion: [1] });
    expect(replayed).toBe(true);
    expect(result).toMatchObject({ created: false, stored: { version: 2 } });
    expect(await historyVersions(project)).toEqual([2, 1]);
  });
});

describe('stored values written past the store', () => {
  it('a current key that is not a stored budget: get refuses it; a put may replace it; a delete asks for that first', async () => {
    await client.put(budgetKey('corrupt')).value('{"not":"a budget"}');
    await expect(store.get('corrupt')).rejects.toBeInstanceOf(StoredBudgetInvalidError);
    await expect(store.delete('corrupt', 'ada')).rejects.toBeInstanceOf(StoredBudgetInvalidError);
    await expect(store.put('corrupt', budget(1), 'ada', { ifVersion: [1] })).rejects.toBeInstanceOf(PreconditionFailedError);
    const replaced = await store.put('corrupt', budget(1), 'ada');
    expect(replaced).toMatchObject({ created: false, stored: { version: 1 } });
    expect((await store.get('corrupt'))?.stored.budget).toEqual(budget(1));
  });

  it("a stored budget under another project's key, or an invalid budget, is refused", async () => {
    const alien: StoredBudget = { project: 'someone-else', version: 1, budget: budget(1), updatedAt: new Date().toISOString(), updatedBy: 'x' };
    await client.put(budgetKey('alien')).value(JSON.stringify(alien));
    await expect(store.get('alien')).rejects.toBeInstanceOf(StoredBudgetInvalidError);
    await client.put(budgetKey('alien')).value(JSON.stringify({ ...alien, project: 'alien', budget: { windows: [] } }));
    await expect(store.get('alien')).rejects.toThrow(/windows/);
    await client.delete().key(budgetKey('alien'));
  });
});

describe('listing', () => {
  it('pages through the budgets in force by project, skipping deleted ones and keys the layout does not name', async () => {
    const fresh = await startEtcd();
    const own = createEtcdClient(fresh.endpoints);
    try {
      const listing = new BudgetStore(own);
      const projects = Array.from({ length: 30 }, (_, n) => `p-${String(n).padStart(2, '0')}`);
      for (const project of projects) await listing.put(project, budget(1), 'ada');
      await listing.delete('p-07', 'ada');
      await own.put('/budgets/Not_A_Project').value('{}');
      await own.put('/budgets/p-08/extra').value('{}');
      const expected = projects.filter((p) => p !== 'p-07');

      for (const limit of [1, 7, 25, 26, 29, 1000]) {
        const seen: string[] = [];
        let after: string | undefined;
        let pages = 0;
        for (;;) {
          const page = await listing.listPage({ limit, ...(after === undefined ? {} : { after }) });
          pages++;
          expect(page.budgets.length).toBeLessThanOrEqual(limit);
          seen.push(...page.budgets.map((b) => b.stored.project));
          if (page.next === null) break;
          after = page.next;
        }
        expect(seen, `limit ${limit}`).toEqual(expected);
        expect(pages).toBe(Math.max(1, Math.ceil(expected.length / limit)));
      }
      expect((await listing.list()).map((b) => b.stored.project)).toEqual(expected);
    } finally {
      own.close();
      await fresh.cleanup();
    }
  });
});

describe('usage', () => {
  it('a range longer than the read span adds up every hour once, in time order', async () => {
    const project = 'usage-long';
    const hours = [0, 1, 24 * 7 - 1, 24 * 7, 24 * 7 + 1, 24 * 14, 24 * 20 + 5];
    for (const [i, offset] of hours.entries()) {
      await addUsage(client, project, base + offset * HOUR_MS, i % 2 ? 'gpt-4o' : 'llama-3', {
        ...emptyUsage(),
        requests: 1,
        prompt_tokens: 10 * (i + 1),
        completion_tokens: i,
        charged_tokens: 10 * (i + 1) + i,
        unsettled: i === 3 ? 1 : 0,
      });
    }
    await addUsage(client, project, base + 24 * 30 * HOUR_MS, 'llama-3', { ...emptyUsage(), requests: 99 });
    await addUsage(client, 'usage-other', base + HOUR_MS, 'llama-3', { ...emptyUsage(), requests: 99 });

    const summary = await store.usage(project, base + 30 * 60_000, base + 24 * 21 * HOUR_MS);
    expect(summary.from).toBe(new Date(base).toISOString());
    expect(summary.to).toBe(new Date(base + 24 * 21 * HOUR_MS).toISOString());
    expect(summary.hours.map((h) => h.hour)).toEqual(hours.map((offset) => new Date(base + offset * HOUR_MS).toISOString()));
    expect(summary.total).toEqual({ requests: 7, prompt_tokens: 280, completion_tokens: 21, charged_tokens: 301, unsettled: 1 });
    expect(summary.models['gpt-4o']).toEqual({ requests: 3, prompt_tokens: 20 + 40 + 60, completion_tokens: 1 + 3 + 5, charged_tokens: 120 + 9, unsettled: 1 });
    // The same as one read of the whole range.
    expect(summary).toEqual(await readUsage(client, project, base + 30 * 60_000, base + 24 * 21 * HOUR_MS));
  });

  it('refuses an empty or reversed range', async () => {
    await expect(store.usage('usage-long', base, base)).rejects.toThrow(RangeError);
    await expect(store.usage('usage-long', base + 1, base)).rejects.toThrow(RangeError);
  });
});

describe('etcd away', () => {
  it('every operation fails with StoreUnavailableError, and nothing is written', async () => {
    await store.put('steady', budget(1), 'ada');
    const before = (await client.getAll().prefix('/budget').exec()).kvs.map((kv) => [kv.key.toString(), kv.value.toString(), kv.mod_revision]);
    await etcd.stop();
    try {
      const attempts: Promise<unknown>[] = [
        store.put('steady', budget(2), 'ada'),
        store.put('brand-new', budget(2), 'ada'),
        store.delete('steady', 'ada'),
        store.get('steady'),
        store.history('steady'),
        store.historyVersion('steady', 1),
        store.listPage({ limit: 10 }),
        store.usage('steady', base, base + HOUR_MS),
      ];
      for (const attempt of await Promise.allSettled(attempts)) {
        expect(attempt.status).toBe('rejected');
        expect((attempt as PromiseRejectedResult).reason).toBeInstanceOf(StoreUnavailableError);
      }
    } finally {
      await etcd.restart();
    }
    const after = (await client.getAll().prefix('/budget').exec()).kvs.map((kv) => [kv.key.toString(), kv.value.toString(), kv.mod_revision]);
    expect(after).toEqual(before);
  });
});
