// The shared budget ledger against a real etcd: several holders (as separate
// gateway processes would be) spend one budget together.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startTcpProxy, hostPort } from '../support/tcp-proxy.js';
import { faultyEtcd } from '../support/faulty-etcd.js';
import { createEtcdClient } from '../../etcd/index.js';
import { BudgetLedger, type LimitRequest } from '../../budget/ledger.js';
import { HOLDERS_PREFIX, ledgerKey, type Allocation } from '../../budget/keys.js';
import { windowBounds } from '../../budget/definition.js';

let etcd: TestEtcd;
let admin: Etcd3;
const log = pino({ level: 'silent' });
const repo = process.cwd();
const clients: Etcd3[] = [];

function client(): Etcd3 {
  const c = createEtcdClient(etcd.endpoints);
  clients.push(c);
  return c;
}

async function ledger(gateway: string, options: { leaseTtlSeconds?: number; idleReturnMs?: number } = {}): Promise<BudgetLedger> {
  const l = new BudgetLedger({ client: client(), gateway, log, ...options });
  await l.start();
  return l;
}

async function allocation(project: string, limit: LimitRequest['limit']): Promise<Allocation | null> {
  const key = ledgerKey(project, limit.scope, limit.per, windowBounds(limit.per, Date.now()).start);
  const text = await admin.get(key).string();
  return text ? (JSON.parse(text) as Allocation) : null;
}

const heldTotal = (a: Allocation) => Object.values(a.held).reduce((n, t) => n + t, 0);

async function until(check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  admin?.close();
  await etcd?.stop();
});

describe('budget ledger', () => {
  it('concurrent callers on three holders are admitted up to the budget and not one token more', async () => {
    const holders = await Promise.all(['g1', 'g2', 'g3'].map((g) => ledger(g)));
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const request: LimitRequest = { limit, block: 100 };
    // 90 callers with a worst case of 37, settled to their full cost: exactly floor(1000 / 37) = 27 fit.
    // Each honours Retry-After as a client does: a short one (the tokens are
    // held by calls in flight or by another holder) is waited out, a refusal
    // that names the window's end is final.
    const refusals: number[] = [];
    const results = await Promise.all(
      Array.from({ length: 90 }, async (_, i) => {
        for (let attempt = 0; attempt < 10; attempt++) {
          const result = await holders[i % 3]!.reserve('alpha', [request], 37);
          if (result.ok) {
            setTimeout(() => holders[i % 3]!.settle(result.hold, 37), 5);
            return true;
          }
          refusals.push(result.retryAfterSeconds);
          if (result.retryAfterSeconds > 2) return false;
          await new Promise((r) => setTimeout(r, result.retryAfterSeconds * 1000));
        }
        throw new Error('still told to retry after ten attempts');
      }),
    );
    const admitted = results.filter(Boolean).length;
    expect(admitted * 37).toBeLessThanOrEqual(1_000);
    // Admitted up to the budget: every final refusal came once no room was left.
    expect(admitted).toBe(27);
    expect(refusals.filter((seconds) => seconds > 2)).toHaveLength(90 - 27);
    await new Promise((r) => setTimeout(r, 1_500));
    const record = (await allocation('alpha', limit))!;
    expect(record.consumed + heldTotal(record)).toBeLessThanOrEqual(1_000);
    expect(record.consumed).toBe(27 * 37);
    await Promise.all(holders.map((h) => h.stop()));
    const after = (await allocation('alpha', limit))!;
    expect(after.held).toEqual({});
    expect(after.consumed).toBe(27 * 37);
  }, 30_000);

  it('settles to actual usage: what a call did not use is there for the next', async () => {
    const a = await ledger('s1');
    const limit = { scope: '*', per: 'minute' as const, tokens: 500 };
    const first = await a.reserve('beta', [{ limit, block: 500 }], 400);
    expect(first.ok).toBe(true);
    expect((await a.reserve('beta', [{ limit, block: 500 }], 200)).ok).toBe(false);
    if (first.ok) a.settle(first.hold, 50);
    const second = await a.reserve('beta', [{ limit, block: 500 }], 400);
    expect(second.ok).toBe(true);
    if (second.ok) a.settle(second.hold, 400);
    await a.stop();
    expect((await allocation('beta', limit))!.consumed).toBe(450);
  });

  it('a call must fit in every limit, or takes none', async () => {
    const a = await ledger('m1');
    const project = { scope: '*', per: 'day' as const, tokens: 10_000 };
    const model = { scope: 'gpt-4o', per: 'minute' as const, tokens: 100 };
    const ok = await a.reserve(
      'gamma',
      [
        { limit: project, block: 1000 },
        { limit: model, block: 100 },
      ],
      80,
    );
    expect(ok.ok).toBe(true);
    const refused = await a.reserve(
      'gamma',
      [
        { limit: project, block: 1000 },
        { limit: model, block: 100 },
      ],
      80,
    );
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.limit.scope).toBe('gpt-4o');
    // The project window kept only the first call's reservation.
    expect(a.remaining('gamma', [project])[0]!.remaining).toBe(10_000 - 80);
    await a.stop();
  });

  it('a killed holder keeps its block until its lease expires; then it is charged in full and the rest is handed out', async () => {
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    // A gateway process that takes a block of 600, reserves 100 and is killed.
    const doomed = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `
      import { spawn } from 'node:child_process';
import { pino } from 'pino';
      import { createEtcdClient } from '${repo}/dist/etcd/index.js';
      import { BudgetLedger } from '${repo}/dist/budget/ledger.js';
      const ledger = new BudgetLedger({ client: createEtcdClient(${JSON.stringify(etcd.endpoints)}), gateway: 'doomed', log: pino({ level: 'silent' }), leaseTtlSeconds: 2 });
      await ledger.start();
      const result = await ledger.reserve('delta', [{ limit: ${JSON.stringify(limit)}, block: 600 }], 100);
      console.log(result.ok ? 'held' : 'refused');
      setInterval(() => {}, 1000);
    `,
      ],
      { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const said = await new Promise<string>((resolve) => doomed.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
    expect(said).toBe('held');
    doomed.kill('SIGKILL');
    const survivor = await ledger('survivor');
    // While the dead holder's lease lives, only 400 are free.
    expect((await survivor.reserve('delta', [{ limit, block: 500 }], 500)).ok).toBe(false);
    // etcd expires the lease some seconds after its last renewal.
    const expiry = Date.now() + 20_000;
    while ((await admin.getAll().prefix(HOLDERS_PREFIX).keys()).some((k) => k.includes('doomed.')) && Date.now() < expiry)
      await new Promise((r) => setTimeout(r, 250));
    // Reclaimed: its 600 charged as consumed, the other 400 handed out, never more.
    const result = await survivor.reserve('delta', [{ limit, block: 400 }], 400);
    expect(result.ok).toBe(true);
    const record = (await allocation('delta', limit))!;
    expect(Object.keys(record.held).some((h) => h.startsWith('doomed.'))).toBe(false);
    expect(record.consumed).toBe(600);
    expect(record.consumed + heldTotal(record)).toBe(1_000);
    expect((await survivor.reserve('delta', [{ limit, block: 400 }], 1)).ok).toBe(false);
    await survivor.stop();
  }, 40_000);

  it('goes on within its block when etcd is away, and refuses calls that need a new one', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    const c = createEtcdClient([proxy.url], { callTimeoutMs: 500 });
    clients.push(c);
    const a = new BudgetLedger({ client: c, gateway: 'away', log, leaseTtlSeconds: 30 });
    await a.start();
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const ok = await a.reserve('epsilon', [{ limit, block: 100 }], 60);
    expect(ok.ok).toBe(true);
    proxy.cut();
    try {
      expect((await a.reserve('epsilon', [{ limit, block: 100 }], 30)).ok).toBe(true);
      const refused = await a.reserve('epsilon', [{ limit, block: 100 }], 60);
      expect(refused.ok).toBe(false);
      if (!refused.ok) expect(refused.reason).toBe('unavailable');
    } finally {
      proxy.restore();
      await proxy.close();
    }
  }, 30_000);

  it('a write whose answer is lost is counted once: at once when a read shows it, or at the next write when even the read fails', async () => {
    // etcd commits the write; its answer (and the read after it) never comes back, as when a link drops at that moment.
    const { client: faulty, faults } = faultyEtcd(client());
    const a = new BudgetLedger({ client: faulty, gateway: 'lossy', log, idleReturnMs: 60_000 });
    await a.start();
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const request: LimitRequest = { limit, block: 100 };
    const first = await a.reserve('theta', [request], 50);
    if (!first.ok) throw new Error('refused');
    a.settle(first.hold, 30);
    // The next block's write folds the 30 in; its answer and the read after it are lost: the call is retried and admitted.
    faults.loseCommitAnswers = 1;
    faults.readsToFailAfterLoss = 1;
    const second = await a.reserve('theta', [request], 80);
    if (!second.ok) throw new Error('refused');
    a.settle(second.hold, 80);
    // Lost again, but the read after it shows the write.
    faults.loseCommitAnswers = 1;
    faults.readsToFailAfterLoss = 0;
    const third = await a.reserve('theta', [request], 500);
    if (!third.ok) throw new Error('refused');
    a.settle(third.hold, 7);
    await a.stop();
    // Counted once each: 30 + 80 + 7, and nothing held.
    const record = (await allocation('theta', limit))!;
    expect(record.consumed).toBe(117);
    expect(record.held).toEqual({});
  }, 30_000);

  it('a call that needs a block waits out a short loss of etcd; calls queued behind a failed wait are refused at once', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    const c = createEtcdClient([proxy.url], { callTimeoutMs: 300 });
    clients.push(c);
    const a = new BudgetLedger({ client: c, gateway: 'blip', log, unavailableWaitMs: 2_000 });
    await a.start();
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const request: LimitRequest = { limit, block: 50 };
    try {
      // etcd away for about a second (an election, a member failing over): the call waits and is admitted.
      proxy.cut();
      const waiting = a.reserve('zeta', [request], 50);
      await new Promise((r) => setTimeout(r, 800));
      proxy.restore();
      const admitted = await waiting;
      expect(admitted.ok).toBe(true);
      // Away for good: the first call waits its 2 s and is refused; the nine queued behind it are refused as soon as their turn comes.
      proxy.cut();
      const started = Date.now();
      const refused = await Promise.all(Array.from({ length: 10 }, () => a.reserve('zeta', [request], 50)));
      const elapsed = Date.now() - started;
      expect(refused.map((r) => (r.ok ? 'ok' : r.reason))).toEqual(Array(10).fill('unavailable'));
      // Ten waits one after another would be 20 s.
      expect(elapsed).toBeLessThan(6_000);
      // Back again: the next call reaches the ledger.
      proxy.restore();
      expect((await a.reserve('zeta', [request], 50)).ok).toBe(true);
    } finally {
      proxy.restore();
      await a.stop();
      await proxy.close();
    }
  }, 30_000);

  it('never writes a count that is not a finite number: a call settled to Infinity, NaN or less than 0 is charged its reservation', async () => {
    const a = await ledger('finite', { idleReturnMs: 50 });
    const b = await ledger('finite-other', { idleReturnMs: 50 });
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const request: LimitRequest = { limit, block: 200 };
    for (const used of [Number.POSITIVE_INFINITY, 1e400, Number.MAX_VALUE * 2, Number.NaN, -50]) {
      const held = await a.reserve('iota', [request], 100);
      expect(held.ok).toBe(true);
      if (held.ok) a.settle(held.hold, used);
    }
    const settled = await a.reserve('iota', [request], 100);
    if (settled.ok) a.settle(settled.hold, 30);
    // Given back once idle: consumed is a number, the five calls at their reservation and the last at its usage.
    await until(async () => {
      const record = await allocation('iota', limit);
      return record !== null && heldTotal(record) === 0 && record.consumed === 530;
    });
    expect(typeof (await allocation('iota', limit))!.consumed).toBe('number');
    // Both holders go on by the record: 470 left, not more, not less.
    const fits = await b.reserve('iota', [request], 470);
    expect(fits.ok).toBe(true);
    expect((await b.reserve('iota', [request], 1)).ok).toBe(false);
    if (fits.ok) b.settle(fits.hold, 0);
    await Promise.all([a.stop(), b.stop()]);
  }, 30_000);

  it('a record whose consumed count is damaged (null, as an older version wrote Infinity) counts as spent: nobody hands the window out again', async () => {
    const limit = { scope: '*', per: 'day' as const, tokens: 1_000 };
    const key = ledgerKey('kappa', '*', 'day', windowBounds('day', Date.now()).start);
    await admin.put(key).value(JSON.stringify({ limit: 1_000, consumed: null, held: {} }));
    const a = await ledger('damaged');
    const refused = await a.reserve('kappa', [{ limit, block: 100 }], 10);
    expect(refused).toMatchObject({ ok: false, reason: 'exhausted' });
    await a.stop();
  }, 30_000);
});
