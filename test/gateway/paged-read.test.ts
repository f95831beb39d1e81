// The start-up read in pages (policy/store/scan.ts) against a real etcd: one
// consistent revision however many pages it takes, history skipped, and a
// clean restart when etcd compacts the pinned revision mid-read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { readConsistentCut, scanPolicyNames, currentRevision, policyKeys, PolicyStore } from '../../policy/store/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';

const log = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

const VERSIONED = `package versioned
import rego.v1
version := data.version
`;
const OTHER = `package other
import rego.v1
allow if input.user.role == "ok"
`;

let etcd: TestEtcd;
let client: Etcd3;
let writer: EtcdPolicyWriter;
const names = Array.from({ length: 24 }, (_, i) => `p-${String(i).padStart(2, '0')}`);

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(client);
  for (const [i, name] of names.entries()) await writer.put(name, i % 2 ? OTHER : VERSIONED, { version: 1 });
  // History between current keys: several versions of a few policies.
  for (let v = 2; v <= 6; v++) await writer.put('p-03', OTHER, { version: v });
  for (let v = 2; v <= 4; v++) await writer.put('p-10', VERSIONED, { version: v });
});

afterAll(async () => {
  client?.close();
  await etcd?.cleanup();
});

const small = { indexPage: 5, batchNames: 4 };

describe('paged read of every current policy', () => {
  it('the raw scan (what rebuilds the index) finds every name through small pages, history between them', async () => {
    const revision = await currentRevision(client);
    expect(await scanPolicyNames(client, revision, 5)).toEqual(names);
  });

  it('an index that lost entries, or holds a stale one, is rebuilt from the policies themselves', async () => {
    const keys = policyKeys('p-05');
    const entry = await client.get(keys.index).buffer();
    await client.delete().key(keys.index);
    await client.put(policyKeys('ghost').index).value(entry!);
    const broken = await readConsistentCut(client, small);
    expect(broken.records.map((r) => r.name)).not.toContain('p-05');
    expect(await new PolicyStore(client).rebuildIndex()).toBe(2);
    const fixed = await readConsistentCut(client, small);
    expect(fixed.records.map((r) => r.name)).toEqual(names);
    expect(await new PolicyStore(client).rebuildIndex()).toBe(0);
  });

  it('reads each distinct module once, and none the caller holds', async () => {
    const cut = await readConsistentCut(client, small);
    expect(cut.records.map((r) => r.name)).toEqual(names);
    expect(cut.modules.size).toBe(2);
    expect(cut.records.find((r) => r.name === 'p-03')).toMatchObject({ meta: { version: 6 }, dataText: '{"version":6}' });
    const held = [...cut.modules.keys()][0]!;
    const again = await readConsistentCut(client, { ...small, known: (sha) => sha === held });
    expect([...again.modules.keys()]).not.toContain(held);
    expect(again.modules.size).toBe(1);
  });

  it('is one consistent revision: writes during the read are wholly out of it', async () => {
    let wrote = false;
    const cut = await readConsistentCut(client, {
      ...small,
      async onPage() {
        if (wrote) return;
        wrote = true;
        // After the first page: change a policy not read yet, add one, delete one.
        await writer.put('p-20', VERSIONED, { version: 99 });
        await writer.put('p-99', VERSIONED, { version: 1 });
        await writer.store.delete('p-21');
      },
    });
    expect(wrote).toBe(true);
    expect(cut.records.find((r) => r.name === 'p-20')).toMatchObject({ meta: { version: 1 }, dataText: '{"version":1}' });
    expect(cut.records.map((r) => r.name)).toContain('p-21');
    expect(cut.records.map((r) => r.name)).not.toContain('p-99');
    // And a watcher whose read was overtaken this way catches up from the next revision.
    await writer.put('p-21', OTHER, { version: 1 });
  });

  it('a watcher started while writes land mid-read ends up with every write', async () => {
    let wrote = false;
    const watcher = new PolicyWatcher({
      client,
      log,
      scan: {
        ...small,
        async onPage() {
          if (wrote) return;
          wrote = true;
          await writer.put('p-22', VERSIONED, { version: 42 });
          await writer.put('p-98', OTHER, {});
          await writer.store.delete('p-23');
        },
      },
    });
    try {
      await watcher.start();
      const deadline = Date.now() + 10_000;
      while (!(watcher.current.get('p-22')?.meta.version === 2 && watcher.current.get('p-98') && !watcher.current.get('p-23'))) {
        if (Date.now() > deadline) throw new Error('the watcher did not catch up with writes made during its read');
        await new Promise((r) => setTimeout(r, 10));
      }
      const engine = await watcher.current.get('p-22')!.engine();
      expect(engine.evaluate({}, 'versioned')).toEqual({ version: 42 });
    } finally {
      await watcher.stop();
    }
  });

  it('restarts cleanly when etcd compacts the pinned revision mid-read', async () => {
    const revisions: number[] = [];
    let compacted = false;
    const watcher = new PolicyWatcher({
      client,
      log,
      scan: {
        ...small,
        async onPage({ revision }) {
          revisions.push(revision);
          if (compacted) return;
          compacted = true;
          await writer.put('p-00', VERSIONED, { version: 7 });
          await client.kv.compact({ revision: String(await currentRevision(client)), physical: true });
        },
      },
    });
    try {
      await watcher.start();
      expect(watcher.current.source).toBe('etcd');
      // The read was started again at a later revision, and holds the write made before the compaction.
      expect(new Set(revisions).size).toBe(2);
      expect(watcher.current.revision).toBe(Math.max(...revisions));
      expect(watcher.current.get('p-00')?.dataText).toBe('{"version":7}');
      expect(watcher.current.policies.size).toBeGreaterThanOrEqual(names.length);
    } finally {
      await watcher.stop();
    }
  });
});
