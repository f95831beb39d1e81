// Usage records against a real etcd: additions, and one retried after its
// answer was lost counted once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createEtcdClient } from '../../etcd/index.js';
import { addUsage, readUsage } from '../../budget/usage.js';
import { HOUR_MS } from '../../budget/keys.js';

let etcd: TestEtcd;
let client: Etcd3;
const hour = Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
const one = { requests: 1, prompt_tokens: 3, completion_tokens: 4, charged_tokens: 7, unsettled: 0 };

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
}, 60_000);

afterAll(async () => {
  client?.close();
  await etcd?.stop();
});

describe('usage records', () => {
  it('adds, and counts an addition tried again with the same op id once', async () => {
    await addUsage(client, 'alpha', hour, 'm', one, 'op-1');
    await addUsage(client, 'alpha', hour, 'm', one, 'op-1');
    await addUsage(client, 'alpha', hour, 'm', one, 'op-2');
    await addUsage(client, 'alpha', hour, 'm', one);
    const usage = await readUsage(client, 'alpha', hour, hour + HOUR_MS);
    expect(usage.total).toEqual({ requests: 3, prompt_tokens: 9, completion_tokens: 12, charged_tokens: 21, unsettled: 0 });
    // The remembered ids stay out of what the CMS serves.
    expect(Object.keys(usage.hours[0]!).sort()).toEqual(['charged_tokens', 'completion_tokens', 'hour', 'model', 'prompt_tokens', 'requests', 'unsettled']);
  });

  it('remembers the latest 64 additions, not every one', async () => {
    for (let i = 0; i < 70; i++) await addUsage(client, 'beta', hour, 'm', one, `op-${i}`);
    const [kv] = (await client.getAll().prefix('/usage/beta/').exec()).kvs;
    const ops = (JSON.parse(kv!.value.toString()) as { ops: string[] }).ops;
    expect(ops).toHaveLength(64);
    expect(ops[63]).toBe('op-69');
    await addUsage(client, 'beta', hour, 'm', one, 'op-69');
    expect((await readUsage(client, 'beta', hour, hour + HOUR_MS)).total.requests).toBe(70);
  });
});
