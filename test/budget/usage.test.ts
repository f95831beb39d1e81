// Usage records against a real etcd: additions, and one retried after its
// answer was lost counted once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createEtcdClient } from '../../etcd/index.js';
import { pino } from 'pino';
import { faultyEtcd } from '../support/faulty-etcd.js';
import { addUsage, readUsage, UsageRecorder } from '../../budget/usage.js';
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
  it('adds, and counts an addition tried again with the same number once', async () => {
    await addUsage(client, 'alpha', hour, 'm', one, { writer: 'w1', seq: 1 });
    await addUsage(client, 'alpha', hour, 'm', one, { writer: 'w1', seq: 1 });
    await addUsage(client, 'alpha', hour, 'm', one, { writer: 'w1', seq: 2 });
    await addUsage(client, 'alpha', hour, 'm', one);
    const usage = await readUsage(client, 'alpha', hour, hour + HOUR_MS);
    expect(usage.total).toEqual({ requests: 3, prompt_tokens: 9, completion_tokens: 12, charged_tokens: 21, unsettled: 0 });
    // The writers' numbers stay out of what the CMS serves.
    expect(Object.keys(usage.hours[0]!).sort()).toEqual(['charged_tokens', 'completion_tokens', 'hour', 'model', 'prompt_tokens', 'requests', 'unsettled']);
  });

  it('stays small however many additions it holds, and knows a retried one after any number of others', async () => {
    // Writer w1's addition 1 commits, its answer is lost; then three writers add 500 times while w1 is cut off.
    await addUsage(client, 'beta', hour, 'm', one, { writer: 'w1', seq: 1 });
    for (let i = 0; i < 500; i++) await addUsage(client, 'beta', hour, 'm', one, { writer: `w${2 + (i % 3)}`, seq: 1 + Math.floor(i / 3) });
    // w1 comes back and tries addition 1 again: counted once.
    await addUsage(client, 'beta', hour, 'm', one, { writer: 'w1', seq: 1 });
    expect((await readUsage(client, 'beta', hour, hour + HOUR_MS)).total.requests).toBe(501);
    const [kv] = (await client.getAll().prefix('/usage/beta/').exec()).kvs;
    expect(JSON.parse(kv!.value.toString())).toMatchObject({ writers: { w1: 1, w2: 167, w3: 167, w4: 166 } });
    // The counts and one number per writer: a few hundred bytes, not a list of every addition.
    expect(kv!.value.length).toBeLessThan(200);
  });

  it('a gateway writes each addition once: one whose answer was lost, and one that failed twice with a newer one waiting behind it', async () => {
    const { client: faulty, faults } = faultyEtcd(client);
    const recorder = new UsageRecorder(faulty, pino({ level: 'silent' }), 60_000);
    // Committed, answer lost: kept and tried again, and recognised as written.
    recorder.record('gamma', 'm', hour, one);
    faults.loseCommitAnswers = 1;
    await recorder.flush();
    recorder.record('gamma', 'm', hour, one);
    await recorder.flush();
    expect((await readUsage(client, 'gamma', hour, hour + HOUR_MS)).total.requests).toBe(2);
    // Never written, twice: the newer addition to the same record waits behind it, and both count.
    recorder.record('gamma', 'm', hour, one);
    faults.failCommits = 1;
    await recorder.flush();
    recorder.record('gamma', 'm', hour, { ...one, requests: 10 });
    faults.failCommits = 1;
    await recorder.flush();
    expect((await readUsage(client, 'gamma', hour, hour + HOUR_MS)).total.requests).toBe(2);
    await recorder.flush();
    expect((await readUsage(client, 'gamma', hour, hour + HOUR_MS)).total.requests).toBe(13);
  });
});
