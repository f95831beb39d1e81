// The shared budget ledger: how gateways spend one budget together without
// asking etcd on every call, and never hand out more than it holds.
//
// Each window of each limit (a project's "per minute", a model's "per day")
// is one etcd record (budget/keys.ts, Allocation): its limit, what calls have
// consumed, and the block each live gateway process holds. Invariant, kept by
// compare-and-swap on the record: consumed + sum(held) <= limit.
//
// A gateway takes a block (a tenth of the smallest limit by default, more if
// one call needs it), reserves each call's worst case from its blocks in
// memory, settles each call to what it actually used, and gives back what it
// does not use: when idle for a moment, when another gateway asks (a holder
// that cannot get a block marks the record `wanted`; every gateway watches
// the ledger and returns its spare tokens), and when it stops. A call is
// refused only when its worst case fits in no block and the record has no
// room left once the others returned theirs.
//
// A gateway that dies keeps its block until its etcd lease expires; the
// next gateway to touch the record then charges that block in full as
// consumed (nobody can know what the dead gateway let through), so nothing
// is handed out twice. The same holds for a gateway cut off from etcd: it
// lives on its blocks, cannot take new ones, and its blocks are charged in
// full once its lease runs out.
import { randomUUID } from 'node:crypto';
import type { Etcd3, Lease, Watcher as EtcdWatcher } from 'etcd3';
import type { Logger } from 'pino';
import { windowBounds, type BudgetLimit } from './definition.js';
import { holderKey, HOLDERS_PREFIX, LEDGER_PREFIX, ledgerKey, type Allocation } from './keys.js';

export interface LedgerOptions {
  client: Etcd3;
  /** This process's gateway id; the holder id adds its lease. */
  gateway: string;
  log: Logger;
  /** The holder lease: how long a dead gateway's blocks stay held (default 10 s). */
  leaseTtlSeconds?: number;
  /** A block nobody reserved from for this long goes back (default 1 s). */
  idleReturnMs?: number;
  /** How long a refused holder waits for the others to return spare tokens (default 300 ms). */
  wantWaitMs?: number;
  /**
   * How long a call that needs a new block may wait for etcd (default 5 s):
   * an election or a member failing over is waited out; past it the call is
   * refused as unavailable (503), and calls queued behind it are refused at
   * once while etcd stays away.
   */
  unavailableWaitMs?: number;
}

export interface LimitRequest {
  limit: BudgetLimit;
  /** Tokens to take at a time for this limit. */
  block: number;
}

/** A call's reservation: what it holds in which pools. */
export interface Hold {
  readonly cost: number;
  readonly parts: { pool: Pool; epoch: number }[];
  settled: boolean;
}

export type ReserveResult =
  { ok: true; hold: Hold } | { ok: false; limit: BudgetLimit; remaining: number; retryAfterSeconds: number; reason: 'exhausted' | 'unavailable' };

interface Pool {
  key: string;
  limit: BudgetLimit;
  windowEnd: number;
  /** What the record says this holder holds (kept in step after every write). */
  held: number;
  /** Settled usage not yet written to the record as consumed. */
  spent: number;
  /** Worst cases of calls in flight. */
  reserved: number;
  /** Bumped when the blocks were lost (lease gone): older holds settle into nothing. */
  epoch: number;
  /**
   * Writes whose answer was lost (each guarded on the revision it read, so
   * at most one of them can ever commit): the one a later read shows is
   * applied then; a later write that commits means none of them can.
   */
  unconfirmed: { op: string; effect: WriteEffect }[];
  queue: Promise<unknown>;
  idleTimer: NodeJS.Timeout | null;
}

/** What one take (one compare-and-swap on a pool's record) asks for. */
interface TakeRequest {
  /** Tokens to take at most. */
  want: number;
  /** Tokens to take at least, or none. */
  need: number;
  /** Whether to mark the record wanted when nothing fits and others hold tokens. */
  askOthers: boolean;
  /** Until when lost compare-and-swaps are tried again. */
  deadline: number;
}

/** What a write of the record means for this holder's own accounts once it commits. */
interface WriteEffect {
  /** Settled usage folded into `consumed`. */
  fold: number;
  /** What the record now says this holder holds. */
  held: number;
}

function applyWrite(pool: Pool, effect: WriteEffect): void {
  pool.spent -= effect.fold;
  pool.held = effect.held;
}

interface RecordRead {
  allocation: Allocation | null;
  modRevision: string | null;
}

/** How long a `wanted` mark asks the other holders to give back spare tokens. */
const WANTED_FOR_MS = 2_000;

/** Write attempts that lost a compare-and-swap to another holder, at least, before a take gives up. */
const MIN_CAS_ATTEMPTS = 20;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A pause after a lost compare-and-swap, random so that holders writing together fall out of step. */
const casBackoff = (attempt: number) => sleep(Math.random() * Math.min(100, 5 * 2 ** attempt));

const free = (pool: Pool) => pool.held - pool.spent - pool.reserved;

/** What every holder but `me` holds in a record. */
const heldByOthers = (record: Allocation, me: string | null) =>
  Object.entries(record.held).reduce((n, [holder, tokens]) => (holder === me ? n : n + tokens), 0);

/** This holder's blocks are gone (reclaimed, or its lease lost): what it held is `held` now, and calls in flight settle into nothing. */
function forget(pool: Pool, held: number): void {
  pool.unconfirmed = [];
  pool.held = held;
  pool.spent = 0;
  pool.reserved = 0;
  pool.epoch += 1;
}

export class BudgetLedger {
  private lease: Lease | null = null;
  private holderId: string | null = null;
  private readonly pools = new Map<string, Pool>();
  /** Latest record seen on the watch, for views (what remains) and `wanted` signals. */
  private readonly seen = new Map<string, Allocation>();
  private readonly waiters = new Map<string, (() => void)[]>();
  private readonly windowLeases = new Map<number, Promise<string>>();
  private watcher: { cancel(): Promise<void> } | null = null;
  private opCounter = 0;
  private stopped = false;
  /** Set when the last attempt to reach the ledger failed: calls past their wait are then refused without another. */
  private unreachable = false;

  constructor(private readonly options: LedgerOptions) {}

  async start(): Promise<void> {
    await this.ensureHolder();
    const watcher = await this.watchLedger();
    // Reservations work without the watch; waiting (briefly) for it means
    // other holders' requests for spare tokens are heard from the first call.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2_000);
      timer.unref();
      watcher.once('connected', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** Follows every ledger record: what remains (for views) and who asks for spare tokens. */
  private async watchLedger(): Promise<EtcdWatcher> {
    // Its own namespace, hence its own watch stream (see budget/gateway.ts).
    const watcher = this.options.client.namespace('').watch().prefix(LEDGER_PREFIX).watcher();
    watcher.on('put', (kv) => {
      const key = kv.key.toString('utf8');
      try {
        const allocation = saneAllocation(key, JSON.parse(kv.value.toString('utf8')) as Allocation, this.options.log);
        this.seen.set(key, allocation);
        this.onRecord(key, allocation);
      } catch {
        // not a record of ours
      }
    });
    watcher.on('delete', (kv) => this.seen.delete(kv.key.toString('utf8')));
    watcher.on('error', (err: Error) => {
      // Canceled (its resume revision compacted, say): watch again from now.
      // What it missed only delays a view or a give-back; every write is checked by compare-and-swap.
      if (this.watcher !== watcher || this.stopped) return;
      this.options.log.warn({ err: err.message }, 'budget ledger watch canceled; watching again');
      this.watcher = null;
      void watcher.cancel().catch(() => undefined);
      const retry = (delay: number) =>
        this.watchLedger().catch(() => {
          if (!this.stopped) setTimeout(() => void retry(Math.min(delay * 2, 10_000)), delay).unref();
        });
      void retry(500);
    });
    this.watcher = watcher;
    return watcher;
  }

  /** Gives every block back and drops the lease. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel().catch(() => undefined);
    await Promise.all([...this.pools.values()].map((pool) => this.serial(pool, () => this.giveBack(pool)).catch(() => undefined)));
    const lease = this.lease;
    this.lease = null;
    await lease?.revoke().catch(() => undefined);
  }

  /** Reserves `cost` tokens in every limit, or none of them. */
  async reserve(project: string, limits: LimitRequest[], cost: number, nowMs = Date.now()): Promise<ReserveResult> {
    const parts: Hold['parts'] = [];
    // Measured from the call's arrival: time queued behind other calls of the pool counts.
    const deadline = Date.now() + (this.options.unavailableWaitMs ?? 5_000);
    for (const request of limits) {
      const pool = this.pool(project, request.limit, nowMs);
      const result = await this.serial(pool, () => this.reserveIn(pool, request, cost, deadline));
      if (result !== true) {
        for (const part of parts) this.release(part.pool, part.epoch, cost, 0);
        return { ok: false, limit: request.limit, ...result };
      }
      parts.push({ pool, epoch: pool.epoch });
    }
    return { ok: true, hold: { cost, parts, settled: false } };
  }

  /** Settles a reservation to what the call used (at most once); a count that is not a finite number of at least 0 charges the reservation. */
  settle(hold: Hold, usedTokens: number): void {
    if (hold.settled) return;
    hold.settled = true;
    if (!Number.isFinite(usedTokens) || usedTokens < 0) {
      this.options.log.error(
        { used: String(usedTokens), reserved: hold.cost },
        'a call settled to a token count that is not a finite number of at least 0; charged its reservation',
      );
      usedTokens = hold.cost;
    }
    for (const part of hold.parts) this.release(part.pool, part.epoch, hold.cost, usedTokens);
  }

  /** What remains of each limit for a call of this process (a hint for policies; enforcement is reserve's). */
  remaining(project: string, limits: BudgetLimit[], nowMs = Date.now()): { limit: BudgetLimit; remaining: number; resetsAt: number }[] {
    return limits.map((limit) => {
      const { start, end } = windowBounds(limit.per, nowMs);
      const key = ledgerKey(project, limit.scope, limit.per, start);
      const record = this.seen.get(key);
      const pool = this.pools.get(key);
      let remaining = limit.tokens;
      if (record) remaining = limit.tokens - record.consumed - heldByOthers(record, this.holderId);
      if (pool) remaining -= pool.spent + pool.reserved;
      return { limit, remaining: Math.max(0, remaining), resetsAt: end };
    });
  }

  // --- internals ---

  private pool(project: string, limit: BudgetLimit, nowMs: number): Pool {
    const { start, end } = windowBounds(limit.per, nowMs);
    const key = ledgerKey(project, limit.scope, limit.per, start);
    let pool = this.pools.get(key);
    if (!pool) {
      pool = { key, limit, windowEnd: end, held: 0, spent: 0, reserved: 0, epoch: 0, unconfirmed: [], queue: Promise.resolve(), idleTimer: null };
      this.pools.set(key, pool);
    }
    pool.limit = limit;
    return pool;
  }

  /** Runs `task` after every earlier task of the pool: one record write at a time per process. */
  private serial<T>(pool: Pool, task: () => Promise<T>): Promise<T> {
    const run = pool.queue.then(task, task);
    pool.queue = run.catch(() => undefined);
    return run;
  }

  private async reserveIn(
    pool: Pool,
    request: LimitRequest,
    cost: number,
    deadline: number,
  ): Promise<true | { remaining: number; retryAfterSeconds: number; reason: 'exhausted' | 'unavailable' }> {
    if (free(pool) >= cost) {
      pool.reserved += cost;
      this.cancelIdle(pool);
      return true;
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      let outcome: 'granted' | 'exhausted';
      try {
        outcome = await this.takeWithin(deadline, () =>
          this.take(pool, {
            want: Math.max(cost - free(pool), Math.min(request.block, request.limit.tokens)),
            need: cost - free(pool),
            askOthers: attempt > 0,
            deadline,
          }),
        );
      } catch (err) {
        this.options.log.warn({ key: pool.key, err: (err as Error).message }, 'budget ledger unavailable; refusing calls that need a new block');
        return { remaining: Math.max(0, free(pool)), retryAfterSeconds: 1, reason: 'unavailable' };
      }
      if (outcome === 'granted' && free(pool) >= cost) {
        pool.reserved += cost;
        this.cancelIdle(pool);
        return true;
      }
      // Others hold spare tokens: they were asked to give them back; wait for the record to change.
      const record = this.seen.get(pool.key);
      if (attempt < 2 && record && heldByOthers(record, this.holderId) > 0) await this.waitForChange(pool.key, this.options.wantWaitMs ?? 300);
      else break;
    }
    // What the window could still give once every call in flight is settled (settled usage
    // not yet folded into the record counts as spent).
    const record = this.seen.get(pool.key);
    const left = (record ? pool.limit.tokens - record.consumed : pool.limit.tokens) - pool.spent;
    // Tokens held by calls in flight come back within seconds; an exhausted window only when it ends.
    const retryAfterSeconds = left >= cost ? 1 : Math.max(1, Math.ceil((pool.windowEnd - Date.now()) / 1000));
    return { remaining: Math.max(0, free(pool)), retryAfterSeconds, reason: 'exhausted' };
  }

  /**
   * Runs a take until it answers or `deadline` passes, pausing 50 ms to 1 s
   * between failures (etcd unreachable, slow, or electing a leader). One
   * attempt is always made unless the ledger was unreachable at the last
   * one and the deadline has passed: calls queued behind a failing one are
   * then refused without waiting out another.
   */
  private async takeWithin<T>(deadline: number, take: () => Promise<T>): Promise<T> {
    if (this.unreachable && Date.now() >= deadline) throw new Error('the budget ledger was unreachable at the last attempt');
    for (let delay = 50; ; delay = Math.min(delay * 2, 1_000)) {
      try {
        const result = await take();
        this.unreachable = false;
        return result;
      } catch (err) {
        this.unreachable = true;
        if (this.stopped || Date.now() + delay >= deadline) throw err;
        this.options.log.debug({ err: (err as Error).message }, 'budget ledger not reachable; trying again');
        await sleep(delay);
      }
    }
  }

  /**
   * One compare-and-swap on the record: folds settled usage into consumed,
   * reclaims dead holders' blocks, and takes up to `want` tokens (at least
   * `need`, or nothing). When nothing fits and others hold tokens, marks the
   * record wanted (with `askOthers`).
   */
  private async take(pool: Pool, { want, need, askOthers, deadline }: TakeRequest): Promise<'granted' | 'exhausted'> {
    const me = await this.ensureHolder();
    const client = this.options.client;
    // Lost compare-and-swaps mean etcd answers and others write: keep trying, out of step, until the call's deadline.
    for (let attempt = 0; attempt < MIN_CAS_ATTEMPTS || Date.now() < deadline; attempt++) {
      if (attempt > 0) await casBackoff(attempt);
      const { allocation, modRevision } = await this.read(pool.key);
      // Read after the record, never beside it: a holder registers before it
      // first writes a record, so every holder the record names is seen here
      // unless its lease is gone.
      const live = new Set((await client.getAll().prefix(HOLDERS_PREFIX).keys()).map((k) => k.slice(HOLDERS_PREFIX.length)));
      const record: Allocation = allocation ?? { limit: pool.limit.tokens, consumed: 0, held: {} };
      record.limit = pool.limit.tokens;
      this.reconcile(pool, record, me);
      for (const [holder, tokens] of Object.entries(record.held)) {
        if (holder !== me && !live.has(holder)) {
          // A dead holder's block: charged in full, never handed out again.
          record.consumed += tokens;
          delete record.held[holder];
          this.options.log.info({ key: pool.key, holder, tokens }, "reclaimed a dead gateway's budget block (charged in full)");
        }
      }
      for (const holder of Object.keys(record.ops ?? {})) if (holder !== me && !live.has(holder)) delete record.ops![holder];
      // Settled usage becomes consumed; usage over a call's reservation (an
      // upstream ignoring max_tokens) is charged too, as it happened.
      const fold = pool.spent;
      record.consumed += fold;
      const heldAfterFold = Math.max(0, (record.held[me] ?? 0) - fold);
      const othersHeld = heldByOthers(record, me);
      const room = record.limit - record.consumed - othersHeld - heldAfterFold;
      const grant = room >= need ? Math.min(room, want) : 0;
      const newHeld = heldAfterFold + grant;
      if (newHeld > 0) record.held[me] = newHeld;
      else delete record.held[me];
      if (grant > 0 && record.wanted?.by === me) delete record.wanted;
      if (grant === 0 && askOthers && othersHeld > 0) record.wanted = { by: me, at: Date.now() };
      if (!(await this.write(pool, me, record, modRevision, { fold, held: newHeld }))) continue;
      return grant > 0 ? 'granted' : 'exhausted';
    }
    throw new Error(`budget record ${pool.key} kept changing under every attempt to write it`);
  }

  /** Gives back what calls in flight do not hold, folding settled usage in. */
  private async giveBack(pool: Pool): Promise<void> {
    if (pool.held === 0 && pool.spent === 0) return;
    const me = this.holderId;
    if (!me) return;
    for (let attempt = 0; attempt < MIN_CAS_ATTEMPTS; attempt++) {
      if (attempt > 0) await casBackoff(attempt);
      const { allocation, modRevision } = await this.read(pool.key);
      if (!allocation) {
        // The window's record expired: nothing left to give back.
        pool.held = 0;
        pool.spent = 0;
        pool.unconfirmed = [];
        return;
      }
      this.reconcile(pool, allocation, me);
      const mine = allocation.held[me] ?? 0;
      const fold = pool.spent;
      allocation.consumed += fold;
      // What calls in flight reserved stays held; the rest goes back.
      const newHeld = Math.min(Math.max(0, mine - fold), pool.reserved);
      if (newHeld > 0) allocation.held[me] = newHeld;
      else delete allocation.held[me];
      if (await this.write(pool, me, allocation, modRevision, { fold, held: newHeld })) return;
    }
  }

  /**
   * Brings this holder's accounts in step with the record: first a write
   * whose answer was lost, if the record shows it went through; then, when
   * the record lists less than this holder thinks it holds, its blocks were
   * reclaimed.
   */
  private reconcile(pool: Pool, record: Allocation, me: string): void {
    const landed = pool.unconfirmed.find((write) => write.op === record.ops?.[me]);
    if (landed) {
      applyWrite(pool, landed.effect);
      pool.unconfirmed = [];
    }
    if (pool.held > 0 && (record.held[me] ?? 0) < pool.held) {
      this.options.log.warn(
        { key: pool.key, held: pool.held, recorded: record.held[me] ?? 0 },
        'budget blocks were reclaimed (lease lost); calls in flight settle into nothing',
      );
      forget(pool, record.held[me] ?? 0);
    }
  }

  private async read(key: string): Promise<RecordRead> {
    const response = await this.options.client.get(key).exec();
    const kv = response.kvs[0];
    if (!kv) return { allocation: null, modRevision: null };
    return { allocation: saneAllocation(key, JSON.parse(kv.value.toString('utf8')) as Allocation, this.options.log), modRevision: kv.mod_revision };
  }

  /**
   * Writes the record if nobody changed it since it was read (a new record
   * lives under its window's lease) and, once it commits, applies `effect`
   * to this holder's accounts. A write whose answer is lost may still have
   * gone through: it is applied when a later read shows its op.
   */
  private async write(pool: Pool, me: string, record: Allocation, modRevision: string | null, effect: WriteEffect): Promise<boolean> {
    const client = this.options.client;
    const op = `${me}#${++this.opCounter}`;
    const value = JSON.stringify({ ...record, ops: { ...record.ops, [me]: op } } satisfies Allocation);
    const put =
      modRevision === null
        ? client
            .put(pool.key)
            .value(value)
            .lease(await this.windowLease(pool.windowEnd))
        : client.put(pool.key).value(value).ignoreLease();
    const guard = modRevision === null ? client.if(pool.key, 'Create', '==', 0) : client.if(pool.key, 'Mod', '==', modRevision);
    let committed: boolean;
    try {
      committed = (await guard.then(put).commit()).succeeded;
    } catch (err) {
      // It may have gone through (or still go through): a read of the record tells.
      pool.unconfirmed.push({ op, effect });
      const { allocation } = await this.read(pool.key);
      if (allocation) this.reconcile(pool, allocation, me);
      if (allocation?.ops?.[me] !== op) throw err;
      return true;
    }
    if (committed) {
      // Written on the revision it read: no earlier write of this holder can commit now.
      pool.unconfirmed = [];
      applyWrite(pool, effect);
    }
    return committed;
  }

  private windowLease(windowEnd: number): Promise<string> {
    let lease = this.windowLeases.get(windowEnd);
    if (!lease) {
      // Records outlive their window by an hour (for inspection), then go with their lease.
      const ttl = Math.max(60, Math.ceil((windowEnd - Date.now()) / 1000) + 3600);
      lease = this.options.client.lease(ttl, { autoKeepAlive: false }).grant();
      lease.catch(() => this.windowLeases.delete(windowEnd));
      this.windowLeases.set(windowEnd, lease);
      for (const end of this.windowLeases.keys()) if (end < Date.now() - 3_600_000) this.windowLeases.delete(end);
    }
    return lease;
  }

  private async ensureHolder(): Promise<string> {
    if (this.holderId && this.lease) return this.holderId;
    const lease = this.options.client.lease(this.options.leaseTtlSeconds ?? 10);
    const id = await lease.grant();
    const holder = `${this.options.gateway}.${BigInt(id).toString(16)}`;
    await lease.put(holderKey(holder)).value(JSON.stringify({ gateway: this.options.gateway, since: new Date().toISOString(), nonce: randomUUID() }));
    lease.on('lost', (err: Error) => {
      if (this.lease !== lease) return;
      this.options.log.warn({ err: err.message, holder }, 'budget holder lease lost: its blocks will be charged in full; taking new ones under a new lease');
      this.lease = null;
      this.holderId = null;
      for (const pool of this.pools.values()) forget(pool, 0);
    });
    this.lease = lease;
    this.holderId = holder;
    return holder;
  }

  private release(pool: Pool, epoch: number, cost: number, used: number): void {
    if (pool.epoch !== epoch) return;
    pool.reserved -= cost;
    pool.spent += used;
    if (pool.reserved === 0) this.scheduleIdle(pool);
  }

  private scheduleIdle(pool: Pool): void {
    this.cancelIdle(pool);
    if (this.stopped) return;
    pool.idleTimer = setTimeout(() => {
      pool.idleTimer = null;
      if (pool.reserved > 0) return;
      this.serial(pool, () => this.giveBack(pool))
        .then(() => {
          if (pool.held === 0 && pool.spent === 0 && pool.reserved === 0 && Date.now() >= pool.windowEnd) this.pools.delete(pool.key);
        })
        .catch((err: Error) => this.options.log.warn({ key: pool.key, err: err.message }, 'could not give a budget block back; retrying later'));
    }, this.options.idleReturnMs ?? 1_000);
    pool.idleTimer.unref();
  }

  private cancelIdle(pool: Pool): void {
    if (pool.idleTimer) clearTimeout(pool.idleTimer);
    pool.idleTimer = null;
  }

  private onRecord(key: string, record: Allocation): void {
    for (const wake of this.waiters.get(key) ?? []) wake();
    this.waiters.delete(key);
    const pool = this.pools.get(key);
    // Another holder is short: give back what this one does not need now.
    if (
      pool &&
      record.wanted &&
      record.wanted.by !== this.holderId &&
      Date.now() - record.wanted.at < WANTED_FOR_MS &&
      (record.held[this.holderId ?? ''] ?? 0) > 0 &&
      free(pool) > 0
    ) {
      this.serial(pool, () => this.giveBack(pool)).catch((err: Error) => this.options.log.warn({ key, err: err.message }, 'could not give spare budget back'));
    }
  }

  private waitForChange(key: string, timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      const list = this.waiters.get(key) ?? [];
      list.push(() => {
        clearTimeout(timer);
        resolve();
      });
      this.waiters.set(key, list);
    });
  }
}

/** Where one limit of a budget stands in its current window, as the ledger records it. */
export interface LedgerWindow {
  /** "*" for the project's own windows, else the model. */
  scope: string;
  per: BudgetLimit['per'];
  limit: number;
  /** Charged for calls that are over (settled, or a dead gateway's block). */
  consumed: number;
  /** Leased by live gateways for calls in flight and the calls to come; each gives back what it does not use. */
  held: number;
  /** Neither consumed nor held: what a gateway could lease now. */
  available: number;
  windowStart: string;
  resetsAt: string;
}

/**
 * Every limit of `budget` in its window at `nowMs`, read from the ledger
 * (one read of each record; a window nobody has touched is untouched: nothing
 * consumed, nothing held). Read only: what the CMS shows, not what decides.
 */
export async function readLedgerWindows(client: Etcd3, project: string, limits: BudgetLimit[], nowMs: number): Promise<LedgerWindow[]> {
  return Promise.all(
    limits.map(async (limit) => {
      const { start, end } = windowBounds(limit.per, nowMs);
      const key = ledgerKey(project, limit.scope, limit.per, start);
      const text = await client.get(key).string();
      // Read as the ledger trusts a record (a damaged consumed count is the whole limit).
      const record = text === null ? null : saneAllocation(key, JSON.parse(text) as Allocation);
      const consumed = record?.consumed ?? 0;
      const held = Object.values(record?.held ?? {}).reduce((n, tokens) => n + tokens, 0);
      return {
        scope: limit.scope,
        per: limit.per,
        limit: limit.tokens,
        consumed,
        held,
        available: Math.max(0, limit.tokens - consumed - held),
        windowStart: new Date(start).toISOString(),
        resetsAt: new Date(end).toISOString(),
      };
    }),
  );
}

/**
 * A record as the ledger can trust it: a `consumed` that is not a finite
 * number of at least 0 (written by a version that let Infinity through,
 * stored as null) counts as the whole limit, so the window hands out
 * nothing more; a held block that is not counts as nothing held (its
 * holder's calls settle into nothing, as for a reclaimed block).
 */
function saneAllocation(key: string, record: Allocation, log?: Logger): Allocation {
  const number = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n) && n >= 0;
  if (!record || typeof record !== 'object') throw new Error(`budget record ${key} is not an object`);
  if (!number(record.consumed)) {
    log?.error({ key, consumed: String(record.consumed) }, 'budget record with a damaged consumed count: the window counts as spent');
    record.consumed = number(record.limit) ? record.limit : Number.MAX_SAFE_INTEGER;
  }
  if (!record.held || typeof record.held !== 'object') record.held = {};
  for (const [holder, tokens] of Object.entries(record.held)) if (!number(tokens)) delete record.held[holder];
  return record;
}
