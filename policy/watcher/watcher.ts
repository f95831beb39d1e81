// Keeps a PolicySet current from etcd: a paged read of every current policy
// at one pinned revision (policy/store/scan.ts: no response grows with the
// number of policies, history is never read; metadata and data only), then
// a watch from the next revision. No wasm is held: a policy's module is read
// when its engine is built, from the snapshot directory or etcd
// (modules.ts), and the snapshot writer fills the directory with every
// module the set names, off the decision path. Changes apply per etcd
// transaction (all events of one revision at once); the engine of a changed
// policy this process decides with (and the platform policy's) is built
// before its swap, so no decision waits for it. Other policies' engines are
// built on first use, within the EngineCache's budget. When the watch drops,
// the etcd client resumes it from the last revision seen; when that revision
// was compacted, the watcher reads everything again. If etcd cannot be
// reached at start, the last-known-good snapshot on disk is enforced until
// etcd answers.
//
// A watch stream can also go silent without failing: the member it runs on
// is cut off (packets dropped), or the stream was opened on a connection
// that never completes. Keepalive pings end such a connection after several
// seconds (see createEtcdClient); to notice sooner, the watcher asks the
// stream a question whenever it has been quiet for `checkIntervalMs` (it
// opens and closes a watch on a key nobody writes, which the member answers
// at once, without raft). A stream that leaves a question, or the watch's
// own (re)connection, unanswered for `stallTimeoutMs` is replaced by a new
// stream, on another member, resuming from the last revision applied.
import { EventEmitter } from 'node:events';
import type { Etcd3, IKeyValue, IEvent, Namespace, Watcher as EtcdWatch } from 'etcd3';
import type { Logger } from 'pino';
import { EngineCache, WasmUnavailableError, type EngineCacheStats } from '../engine/cache.js';
import type { Evaluator } from '../engine/evaluator.js';
import type { DecisionMemo, DecisionMemoStats } from '../engine/decision-memo.js';
import {
  PLATFORM_POLICY_NAME,
  POLICIES_PREFIX,
  PinnedRevisionCompactedError,
  parsePolicyKey,
  policyKeys,
  readConsistentCut,
  type ConsistentCut,
  type ConsistentCutOptions,
  type PolicyMetadata,
  unknownMetadata,
} from '../store/index.js';
import { PolicySet, loadedPolicy, type LoadedPolicy, type PolicyBytes, type UnloadablePolicy } from './policy-set.js';
import type { SignatureVerifier } from '../signing/index.js';
import { SnapshotWriter, readSnapshot } from './snapshot.js';
import { sha256Hex } from '../store/index.js';
import { ModuleStore, type ModuleStoreStats } from './modules.js';
import { join } from 'node:path';

export type WatchState = 'starting' | 'watching' | 'disconnected' | 'unavailable';

export interface PolicyWatcherOptions {
  client: Etcd3;
  log: Logger;
  /** The directory of the last-known-good snapshot (see snapshot.ts); no snapshot when absent. */
  snapshotDir?: string;
  /** Read the snapshot (etcd away at start) but leave writing it to another process sharing the directory. */
  snapshotReadOnly?: boolean;
  /** Where engines are built and kept (a default budget when absent). */
  engines?: EngineCache;
  /** Where decisions are evaluated (bounds, tenants apart: engine/evaluator.ts); on the calling thread, fuel and memory bounds only, when absent. */
  pool?: Evaluator;
  /** Where recent decisions are remembered (engine/decision-memo.ts); every decision is evaluated when absent. */
  memo?: DecisionMemo | null;
  /** Page sizes of the start-up read, and a hook between pages (tests). */
  scan?: Pick<ConsistentCutOptions, 'indexPage' | 'batchNames' | 'onPage'>;
  /**
   * Checks every version's signature before it is loaded, from etcd or the
   * snapshot, and every loaded version again when its keys change
   * (policy/signing); a version without a valid signature by a listed key is
   * unloadable (denied). Absent: signatures are not checked.
   */
  verifier?: SignatureVerifier | null;
  /** Delay between attempts to reach etcd when it is away (ms). */
  retryMs?: number;
  /** A watch stream quiet for this long is asked whether it still answers (ms, default 1000). */
  checkIntervalMs?: number;
  /** A stream that leaves a question or a (re)connection unanswered this long is replaced (ms, default 2000). */
  stallTimeoutMs?: number;
}

export const DEFAULT_WATCH_CHECK_INTERVAL_MS = 1_000;
export const DEFAULT_WATCH_STALL_TIMEOUT_MS = 2_000;

export interface SwapEvent {
  name: string;
  /** null when the policy was deleted. */
  policy: LoadedPolicy | null;
  /** Commit time in the metadata to swap time, ms (null on delete or initial load). */
  propagationMs: number | null;
  /** This gateway's own share of it: from its watch receiving the change to the swap, ms (null where propagationMs is). */
  receivedMs: number | null;
}

export interface WatcherStatus {
  state: WatchState;
  source: PolicySet['source'];
  revision: number;
  policies: number;
  /** Seconds since the watcher last knew it was in step with etcd (0 while watching). */
  staleSeconds: number;
  /** Engines built and kept, within the cache budget. */
  engines: EngineCacheStats;
  /** Wasm this process holds outside its engines (being read, or a new version's while it is built), and reads so far. */
  modules: ModuleStoreStats;
  /** Policies that exist but cannot be enforced: every decision that needs them is denied. */
  unloadable: UnloadablePolicy[];
  /** Whether versions' signatures are checked, and the kids of the keys they are checked with. */
  signatures: { checked: boolean; kids: string[] };
}

/** Attempts of a paged read that etcd's compaction overtakes before giving up (and retrying later). */
const MAX_CUT_ATTEMPTS = 5;

interface PolicyParts {
  meta?: IKeyValue;
  source?: IKeyValue;
  data?: IKeyValue;
  wasm?: IKeyValue;
  deleted: boolean;
}

export class PolicyWatcher extends EventEmitter {
  private set: PolicySet = PolicySet.empty;
  private watch: EtcdWatch | null = null;
  /** The namespace `watch` was made in: it owns the gRPC stream the watch runs on. */
  private watchSpace: Namespace | null = null;
  /** The open question to the stream (see check()), if any. */
  private probe: EtcdWatch | null = null;
  /** Since when the stream owes an answer (a question or the watch's connection); null when it owes none. */
  private awaitingSince: number | null = null;
  /** When the stream last answered or delivered anything. */
  private lastHeard = 0;
  /** Streams replaced since the watch last connected; the first is logged as a warning, the rest at debug. */
  private replacements = 0;
  private checkTimer: NodeJS.Timeout | null = null;
  private readonly checkIntervalMs: number;
  private readonly stallTimeoutMs: number;
  private state: WatchState = 'starting';
  private inStepSince: number | null = null;
  private outOfStepSince = Date.now();
  /** Serialises applying changes: wasm compilation is async, order must hold. */
  private applying: Promise<void> = Promise.resolve();
  private stopped = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private snapshotWrite: Promise<void> = Promise.resolve();
  private readonly snapshot: SnapshotWriter | null;
  readonly engines: EngineCache;
  /** Where modules are read from when engines are built (the snapshot directory, then etcd). */
  readonly modules: ModuleStore;
  /** The snapshot is being written again soon (some modules could not be read when it was last written). */
  private snapshotRetry: NodeJS.Timeout | null = null;
  /** Policies changed since the snapshot was last written ('all' after a full read). */
  private snapshotPending: Set<string> | 'all' = 'all';

  constructor(private readonly options: PolicyWatcherOptions) {
    super();
    this.engines = options.engines ?? new EngineCache();
    this.modules = new ModuleStore(options.client, options.snapshotDir ? join(options.snapshotDir, 'modules') : null);
    this.snapshot = options.snapshotDir && !options.snapshotReadOnly ? new SnapshotWriter(options.snapshotDir, this.modules) : null;
    this.checkIntervalMs = options.checkIntervalMs ?? DEFAULT_WATCH_CHECK_INTERVAL_MS;
    this.stallTimeoutMs = options.stallTimeoutMs ?? DEFAULT_WATCH_STALL_TIMEOUT_MS;
    options.verifier?.on('change', this.onKeysChange);
  }

  /** The verify keys changed (a rotation): every loaded version is checked again, without a restart. */
  private readonly onKeysChange = (kids: string[]) => {
    this.options.log.info({ kids }, 'policy verify keys changed; checking the signature of every loaded policy again');
    void this.enqueue(async () => this.verifyAgain());
  };

  /**
   * Checks each policy of the current set against the keys now listed: one
   * whose signing key was removed becomes unloadable, one refused before
   * whose key is now listed is loaded. Policies unloadable for another
   * reason stay so. The set keeps its revision.
   */
  private verifyAgain(): void {
    if (this.stopped) return;
    const changes = new Map<string, LoadedPolicy>();
    const swaps: SwapEvent[] = [];
    for (const policy of this.set.policies.values()) {
      if (policy.broken !== undefined && policy.signature === undefined) continue;
      const again = this.policy(
        {
          name: policy.name,
          meta: policy.meta,
          modRevision: policy.modRevision,
          dataText: policy.dataText,
          dataSha256: policy.dataSha256,
        },
        policy.inUse,
      );
      if (again.broken === policy.broken) continue;
      changes.set(policy.name, again);
      swaps.push({ name: policy.name, policy: again, propagationMs: null, receivedMs: null });
    }
    if (changes.size > 0) this.swap(this.set.with(this.set.revision, changes), swaps, 'changes-only');
  }

  /** Engines where decisions run: the evaluator's (the evaluation pool's workers, or this thread's cache). */
  /** The decision memo's figures (engine/decision-memo.ts); null without one. */
  get memoStats(): DecisionMemoStats | null {
    return this.options.memo?.stats ?? null;
  }

  async engineStats(): Promise<EngineCacheStats> {
    return this.options.pool ? this.options.pool.stats() : this.engines.stats;
  }

  /** The current set; take it once per decision. */
  get current(): PolicySet {
    return this.set;
  }

  /**
   * Whether a set is loaded (from etcd or the snapshot), waiting up to
   * `timeoutMs` for one: a decision that reaches a process just started
   * waits out its first read rather than being refused.
   */
  whenLoaded(timeoutMs: number): Promise<boolean> {
    if (this.set.isLoaded) return Promise.resolve(true);
    return new Promise((resolve) => {
      const onRevision = () => {
        if (!this.set.isLoaded) return;
        clearTimeout(timer);
        this.off('revision', onRevision);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.off('revision', onRevision);
        resolve(this.set.isLoaded);
      }, timeoutMs);
      this.on('revision', onRevision);
    });
  }

  get status(): WatcherStatus {
    return {
      state: this.state,
      source: this.set.source,
      revision: this.set.revision,
      policies: this.set.size,
      staleSeconds: this.state === 'watching' ? 0 : (Date.now() - this.outOfStepSince) / 1000,
      engines: this.engines.stats,
      modules: this.modules.stats,
      unloadable: this.unloadable(),
      signatures: { checked: Boolean(this.options.verifier), kids: this.options.verifier?.kids ?? [] },
    };
  }

  /** Policies of the current set that cannot be loaded: found so when read, or when their engine was first built. */
  unloadable(): UnloadablePolicy[] {
    const found = this.set.unloadable;
    if (this.engines.stats.unloadable > 0) {
      for (const policy of this.set.policies.values()) {
        if (policy.broken !== undefined) continue;
        const failure = this.engines.failure({ wasmSha256: policy.meta.wasmSha256, dataSha256: policy.dataSha256 });
        if (failure) found.push({ name: policy.name, reason: failure.message });
      }
    }
    return found;
  }

  /**
   * Loads policies and starts watching. Resolves once a first set is in place
   * (from etcd, else from the snapshot) or it is known that neither exists;
   * it never rejects: etcd is retried in the background.
   */
  async start(): Promise<void> {
    try {
      await this.resync();
      return;
    } catch (err) {
      this.options.log.warn({ err: String(err) }, 'etcd unreachable at start');
    }
    await this.loadSnapshot();
    this.scheduleRetry();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.options.verifier?.off('change', this.onKeysChange);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.checkTimer) clearInterval(this.checkTimer);
    if (this.snapshotRetry) clearTimeout(this.snapshotRetry);
    const watch = this.watch;
    const probe = this.probe;
    this.watch = null;
    this.watchSpace = null;
    this.probe = null;
    void probe?.cancel().catch(() => undefined);
    await Promise.race([watch?.cancel().catch(() => undefined), new Promise((r) => setTimeout(r, 500).unref())]);
    await this.applying.catch(() => undefined);
    await this.snapshotWrite.catch(() => undefined);
  }

  private scheduleRetry(): void {
    if (this.stopped || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.resync().catch((err) => {
        this.options.log.debug({ err: String(err) }, 'etcd still unreachable');
        this.setState('unavailable');
        this.scheduleRetry();
      });
    }, this.options.retryMs ?? 1000);
    this.retryTimer.unref();
  }

  /** Reads every policy at one revision, swaps them in, then watches from the next revision. */
  private async resync(): Promise<void> {
    this.abandonWatch();

    const readStarted = performance.now();
    const cut = await this.readCut();
    const readMs = Math.round(performance.now() - readStarted);
    if (cut.records.length === 0 && (await this.options.client.getAll().prefix(POLICIES_PREFIX).limit(1).keys()).length > 0) {
      this.options.log.warn('etcd holds policies but no index of them: start the CMS once, it rebuilds the index (until then none is enforced)');
    }
    for (const record of cut.records) {
      if (record.broken)
        this.options.log.error({ policy: record.name, reason: record.broken }, 'policy in etcd cannot be loaded; every decision that needs it is denied');
    }

    await this.enqueue(async () => {
      const policies = new Map<string, LoadedPolicy>();
      for (const record of cut.records) {
        policies.set(record.name, this.policy({ ...record, dataSha256: sha256Hex(record.dataText) }));
      }
      await this.warmUp(policies);
      this.swap(
        new PolicySet(cut.revision, policies, 'etcd'),
        [...policies.values()].map((p) => ({ name: p.name, policy: p, propagationMs: null, receivedMs: null })),
        'replaces-all',
      );
    });
    this.options.log.info({ revision: cut.revision, policies: cut.records.length, readMs }, 'policies loaded from etcd');
    await this.startWatch(cut.revision + 1);
  }

  /** A consistent paged read, started again when compaction overtakes it. */
  private async readCut(): Promise<ConsistentCut> {
    for (let attempt = 1; ; attempt++) {
      try {
        // Metadata and data: modules are read when their engines are built.
        return await readConsistentCut(this.options.client, { ...this.options.scan, modules: false });
      } catch (error) {
        if (!(error instanceof PinnedRevisionCompactedError) || attempt >= MAX_CUT_ATTEMPTS) throw error;
        this.options.log.info({ attempt }, 'etcd compacted the revision of the paged read; reading again');
      }
    }
  }

  /**
   * A policy of the next set, its wasm read (from the snapshot directory or
   * etcd) when its module is compiled; `inUse`: whether the version it
   * replaces was in use here (LoadedPolicy.inUse).
   */
  private policy(bytes: Omit<PolicyBytes, 'wasm'>, inUse = false): LoadedPolicy {
    const ref = { name: bytes.name, wasmSha256: bytes.meta.wasmSha256, modRevision: bytes.modRevision };
    return loadedPolicy({ ...this.checkSignature(bytes), wasm: () => this.modules.load(ref) }, this.engines, {
      pool: this.options.pool ?? null,
      inUse,
      memo: this.options.memo ?? null,
    });
  }

  /** `bytes`, made unloadable when signatures are checked and its own does not verify (its data's sha256 as read here). */
  private checkSignature(bytes: Omit<PolicyBytes, 'wasm'>): Omit<PolicyBytes, 'wasm'> {
    const verifier = this.options.verifier;
    if (!verifier || bytes.broken !== undefined) return bytes;
    const verdict = verifier.verify(bytes.meta, bytes.dataSha256);
    if (verdict.ok) return bytes;
    this.options.log.error(
      { policy: bytes.name, version: bytes.meta.version, signature: verdict.problem, reason: verdict.reason },
      'policy version refused: no valid signature by a listed key; every decision that needs it is denied',
    );
    return { ...bytes, broken: verdict.reason, signature: verdict.problem };
  }

  /**
   * Builds, before a set is swapped in, the engine every decision asks for
   * (the platform policy's). Others are built on first use. A failure is
   * logged; the decision then fails closed when it asks.
   */
  private async warmUp(policies: Map<string, LoadedPolicy>): Promise<void> {
    const platform = policies.get(PLATFORM_POLICY_NAME);
    if (!platform || platform.broken !== undefined) return;
    await platform.prepare().catch((err: unknown) => {
      const reason = err instanceof Error ? err.message : String(err);
      if (err instanceof WasmUnavailableError) {
        // Not for good: its first decision tries again (and fails closed until then).
        this.options.log.warn({ policy: platform.name, reason }, 'platform policy not built yet; its module cannot be read for now');
        return;
      }
      this.options.log.error({ policy: platform.name, reason }, 'platform policy cannot be loaded; every request is denied');
      policies.set(platform.name, this.policy({ ...platform, broken: reason }));
    });
  }

  /**
   * Drops the current watch. Not awaited: a watch etcd already canceled, or
   * one on a silent stream, never confirms a cancel. Its late events are
   * ignored (they no longer come from `this.watch`).
   */
  private abandonWatch(): Namespace | null {
    const { watch, probe, watchSpace } = this;
    this.watch = null;
    this.watchSpace = null;
    this.probe = null;
    this.awaitingSince = null;
    void watch?.cancel().catch(() => undefined);
    void probe?.cancel().catch(() => undefined);
    return watchSpace;
  }

  /**
   * Watches /policies/ from `fromRevision` on a new stream. Resolves once
   * the watch is established, or after `stallTimeoutMs` (check() then takes
   * over); it never rejects.
   */
  private async startWatch(fromRevision: number): Promise<void> {
    if (this.stopped) return;
    // At most one watch at a time: one still here (a resync and a stream
    // replacement that crossed) is dropped, so it cannot live on unheard.
    this.abandonWatch();
    // A namespace of its own (same keys: no prefix) gives this watch its own
    // etcd3 watch manager, hence its own gRPC stream, which can be dropped
    // without touching the client's other calls.
    const space = this.options.client.namespace('');
    const watch = space.watch().prefix(POLICIES_PREFIX).startRevision(String(fromRevision)).watcher();
    this.watch = watch;
    this.watchSpace = space;
    this.awaitingSince = Date.now();
    const settled = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, this.stallTimeoutMs);
      timer.unref();
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      watch.once('connected', done);
      watch.once('error', done);
    });
    watch.on('connected', () => {
      if (this.watch !== watch) return;
      this.awaitingSince = null;
      this.lastHeard = Date.now();
      this.replacements = 0;
      this.setState('watching');
    });
    watch.on('data', (response: { events: IEvent[] }) => {
      if (this.watch !== watch) return;
      this.lastHeard = Date.now();
      const events = response.events;
      const receivedAt = performance.now();
      if (events.length > 0) void this.enqueue(() => this.applyEvents(events, receivedAt));
    });
    watch.on('disconnected', (err: Error) => {
      if (this.watch !== watch) return;
      // etcd3 reconnects by itself; check() replaces the stream if that takes too long.
      this.awaitingSince ??= Date.now();
      this.options.log.warn({ err: err?.message }, 'etcd watch disconnected; enforcing the loaded policies');
      this.setState('disconnected');
    });
    watch.on('error', (err: Error) => {
      // A canceled watch, most often because the revision to resume from was
      // compacted away: the only safe way on is to read everything again.
      if (this.watch !== watch) return;
      this.options.log.warn({ err: err?.message }, 'etcd watch canceled; reading all policies again');
      this.setState('disconnected');
      this.resync().catch(() => {
        this.setState('unavailable');
        this.scheduleRetry();
      });
    });
    if (!this.checkTimer) {
      this.checkTimer = setInterval(() => this.check(), Math.max(20, Math.min(this.checkIntervalMs, this.stallTimeoutMs) / 4));
      this.checkTimer.unref();
    }
    await settled;
  }

  /** Runs every fraction of a check interval: asks a quiet stream a question, replaces a stream that does not answer. */
  private check(): void {
    const watch = this.watch;
    const space = this.watchSpace;
    if (this.stopped || !watch || !space) return;
    const now = Date.now();
    if (this.awaitingSince !== null) {
      if (now - this.awaitingSince >= this.stallTimeoutMs) void this.replaceStream();
      return;
    }
    if (now - this.lastHeard < this.checkIntervalMs) return;
    // The question: a watch of one key nobody writes, on the same stream.
    // The member answers its creation from memory, without raft, so it
    // answers even while etcd has no quorum: only a dead stream stays quiet.
    this.awaitingSince = now;
    const probe = space.watch().key(POLICIES_PREFIX).watcher();
    this.probe = probe;
    probe.once('connected', () => {
      if (this.probe === probe) {
        this.probe = null;
        this.awaitingSince = null;
        this.lastHeard = Date.now();
      }
      void probe.cancel().catch(() => undefined);
    });
    probe.on('error', () => undefined);
  }

  /** The stream owes an answer for too long: watch again on a new one, from the last revision applied. */
  private async replaceStream(): Promise<void> {
    const since = this.awaitingSince;
    const space = this.abandonWatch();
    if (space) await dropWatchStream(space);
    // stop() or a resync may have come meanwhile; they own the watch now.
    if (this.stopped || this.watch) return;
    const fromRevision = this.set.revision + 1;
    this.replacements++;
    this.options.log[this.replacements === 1 ? 'warn' : 'debug'](
      { silentMs: since === null ? null : Date.now() - since, fromRevision },
      'etcd watch stream does not answer; watching again on a new stream',
    );
    this.setState('disconnected');
    // Events of revisions after set.revision that are still being applied
    // come again on the new stream and are skipped (applyEvents).
    await this.startWatch(fromRevision);
  }

  private setState(state: WatchState): void {
    if (state === this.state) return;
    const now = Date.now();
    if (state === 'watching') this.inStepSince = now;
    else if (this.state === 'watching' || this.inStepSince !== null) this.outOfStepSince = now;
    if (state !== 'watching') this.inStepSince = null;
    this.state = state;
    this.emit('state', state);
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    const next = this.applying.then(task, task);
    this.applying = next.catch((err) => this.options.log.error({ err: String(err) }, 'applying policy changes failed'));
    return next;
  }

  /** Applies watch events, one etcd revision (one transaction) at a time. */
  private async applyEvents(events: IEvent[], receivedAt: number): Promise<void> {
    const byRevision = new Map<number, IEvent[]>();
    for (const event of events) {
      const revision = Number(event.kv.mod_revision);
      byRevision.set(revision, [...(byRevision.get(revision) ?? []), event]);
    }
    for (const revision of [...byRevision.keys()].sort((a, b) => a - b)) {
      if (revision <= this.set.revision) continue; // already part of the current set
      const byName = new Map<string, PolicyParts>();
      for (const event of byRevision.get(revision)!) collect(byName, event.kv, event.type === 'Delete');
      const next = new Map<string, LoadedPolicy | null>();
      const swaps: SwapEvent[] = [];
      for (const [name, parts] of byName) {
        if (parts.deleted) {
          if (this.set.get(name) !== undefined) {
            next.set(name, null);
            swaps.push({ name, policy: null, propagationMs: null, receivedMs: null });
          }
          continue;
        }
        if (!parts.meta) continue; // only the meta key marks a new version
        try {
          const loaded = await this.load(name, parts, revision);
          next.set(name, loaded);
          const enforced = loaded.broken === undefined;
          swaps.push({
            name,
            policy: loaded,
            propagationMs: enforced ? Date.now() - Date.parse(loaded.meta.updatedAt) : null,
            receivedMs: enforced ? Math.round((performance.now() - receivedAt) * 10) / 10 : null,
          });
        } catch (err) {
          // Not the previous version (the CMS reports this one as current),
          // not nothing (a missing platform policy restricts nothing): this
          // policy now denies every decision that needs it, until a version
          // that loads replaces it.
          const reason = err instanceof Error ? err.message : String(err);
          this.options.log.error({ policy: name, revision, reason }, 'new policy version cannot be loaded; every decision that needs it is denied');
          const broken = this.policy({ ...unloadableBytes(name, parts), broken: reason });
          next.set(name, broken);
          swaps.push({ name, policy: broken, propagationMs: null, receivedMs: null });
        }
      }
      this.swap(this.set.with(revision, next, 'etcd'), swaps, 'changes-only');
    }
  }

  /**
   * A new version from its keys. Its engine is built before the swap where
   * a decision would otherwise wait for it: the platform policy's (every
   * decision asks for it) and that of a policy this process decides with
   * (its current version is in use). Any other is built on its first
   * decision, as at start: a gateway spends nothing on new versions of the
   * projects it does not serve (most of ten thousand, on any one gateway),
   * and they take no room in the engine cache. Parts missing from the event
   * batch are read at that revision; the wasm is not read at all when a
   * policy already holds the same module.
   */
  private async load(name: string, parts: PolicyParts, atRevision: number): Promise<LoadedPolicy> {
    const keys = policyKeys(name);
    const fetch = async (part: IKeyValue | undefined, key: string): Promise<Buffer> => {
      if (part) return part.value;
      const value = await this.options.client.get(key).revision(String(atRevision)).buffer();
      if (value === null) throw new Error(`${key} is missing`);
      return value;
    };
    if (!parts.meta) throw new Error(`${keys.meta} is missing`);
    const meta = JSON.parse(parts.meta.value.toString('utf8')) as PolicyMetadata;
    // When the module changed, the event carries its wasm (etcd never splits a transaction's events): it
    // is written to the snapshot directory and held while the engine is built, then let go. When it did
    // not, the wasm key was left as it was (keys.ts): the engine is built from the module this process
    // has compiled or on disk, else read from etcd, where the key still holds it.
    const data = await fetch(parts.data, keys.data);
    const wasm = parts.wasm?.value;
    if (wasm && sha256Hex(wasm) !== meta.wasmSha256) throw new Error(`wasm of ${name} does not match its metadata sha256`);
    const release = wasm ? this.modules.hold(meta.wasmSha256, wasm) : () => undefined;
    try {
      const dataText = data.toString('utf8');
      const inUse = this.set.get(name)?.inUse ?? false;
      const policy = this.policy({ name, meta, modRevision: Number(parts.meta.mod_revision), dataText, dataSha256: sha256Hex(dataText) }, inUse);
      // Refused for its signature: nothing of it is built.
      if (policy.broken === undefined && (inUse || name === PLATFORM_POLICY_NAME)) await policy.prepare();
      return policy;
    } finally {
      release();
    }
  }

  /**
   * Makes `next` current. 'replaces-all': it replaces everything (a full
   * read); 'changes-only': only the policies named in `swaps` changed, and the work here
   * is in proportion to them, not to the number of policies.
   */
  private swap(next: PolicySet, swaps: SwapEvent[], scope: 'replaces-all' | 'changes-only'): void {
    const full = scope === 'replaces-all';
    if (full) this.retarget(this.set.policies.values(), next.policies.values());
    else
      this.retarget(
        swaps.map((swap) => this.set.get(swap.name)),
        swaps.map((swap) => swap.policy),
      );
    this.set = next;
    if (full) this.snapshotPending = 'all';
    else if (this.snapshotPending !== 'all') for (const swap of swaps) this.snapshotPending.add(swap.name);
    for (const swap of swaps) this.emit('swap', swap);
    this.emit('revision', next.revision);
    this.persist();
  }

  /**
   * Tells the engine cache which engines the policies coming in name and
   * which ones the policies going out named, so an engine no current policy
   * names is dropped at once (not kept until the budget evicts it).
   */
  private retarget(outgoing: Iterable<LoadedPolicy | null | undefined>, incoming: Iterable<LoadedPolicy | null | undefined>): void {
    const engineOf = (policy: LoadedPolicy | null | undefined) =>
      policy && policy.broken === undefined ? { wasmSha256: policy.meta.wasmSha256, dataSha256: policy.dataSha256 } : null;
    // Incoming first: an engine both name never drops to no holder in between.
    for (const policy of incoming) {
      const engine = engineOf(policy);
      if (engine) this.engines.hold(engine);
    }
    for (const policy of outgoing) {
      const engine = engineOf(policy);
      if (engine) this.engines.release(engine);
    }
  }

  /** Brings the snapshot in step with the current set, off the decision path; only the newest set is written. */
  private persist(): void {
    const snapshot = this.snapshot;
    if (!snapshot || this.set.source !== 'etcd') return;
    const set = this.set;
    this.snapshotWrite = this.snapshotWrite
      .then(async () => {
        if (this.set !== set) return;
        const changed = this.snapshotPending;
        this.snapshotPending = new Set();
        const written = await snapshot.write(set, changed).catch((err: unknown) => {
          this.snapshotPending = 'all'; // in step again at the next write, from scratch
          throw err;
        });
        if (written.unwritten.length > 0) {
          // Modules etcd could not give for now: those policies are written again shortly.
          const pending = this.snapshotPending as Set<string> | 'all'; // changes may have come meanwhile
          if (pending !== 'all') for (const name of written.unwritten) pending.add(name);
          this.options.log.warn(
            { policies: written.unwritten.length },
            'policy snapshot: some modules could not be read from etcd; writing them again shortly',
          );
          this.snapshotRetry ??= setTimeout(() => {
            this.snapshotRetry = null;
            if (!this.stopped) this.persist();
          }, this.options.retryMs ?? 1000);
          this.snapshotRetry.unref();
        }
        this.emit('snapshot', { revision: set.revision, ...written });
      })
      .catch((err) => this.options.log.warn({ err: String(err) }, 'could not write the policy snapshot'));
  }

  private async loadSnapshot(): Promise<void> {
    const dir = this.options.snapshotDir;
    const file = dir
      ? await readSnapshot(dir).catch((err) => {
          this.options.log.error({ err: String(err) }, 'policy snapshot unusable');
          return null;
        })
      : null;
    if (!file) {
      this.options.log.error('no policies: etcd unreachable and no usable snapshot; every decision is denied until etcd answers');
      this.setState('unavailable');
      return;
    }
    await this.enqueue(async () => {
      if (this.set.source === 'etcd') return; // etcd answered meanwhile: it wins
      const policies = new Map<string, LoadedPolicy>();
      for (const entry of file.policies) policies.set(entry.meta.name, this.policy({ name: entry.meta.name, ...entry }));
      await this.warmUp(policies);
      this.retarget(this.set.policies.values(), policies.values());
      this.set = new PolicySet(file.revision, policies, 'snapshot');
      this.outOfStepSince = Date.parse(file.savedAt) || Date.now();
      this.emit('revision', file.revision);
    });
    this.options.log.warn(
      { revision: file.revision, savedAt: file.savedAt, policies: file.policies.length },
      'enforcing the last-known-good snapshot until etcd answers',
    );
    this.setState('unavailable');
  }
}

/** What is known of a policy version that cannot be loaded: its metadata when it parses. */
function unloadableBytes(name: string, parts: PolicyParts): Omit<PolicyBytes, 'wasm'> {
  let meta = unknownMetadata(name);
  try {
    if (parts.meta) meta = { ...unknownMetadata(name), ...(JSON.parse(parts.meta.value.toString('utf8')) as PolicyMetadata), name };
  } catch {
    // keep the stand-in
  }
  return { name, meta, modRevision: Number(parts.meta?.mod_revision ?? 0), dataText: '{}', dataSha256: sha256Hex('{}') };
}

function collect(byName: Map<string, PolicyParts>, kv: IKeyValue, deleted: boolean): void {
  const parsed = parsePolicyKey(kv.key.toString('utf8'));
  if (!parsed || parsed.kind !== 'current') return;
  const parts = byName.get(parsed.name) ?? { deleted: false };
  if (parsed.part === 'meta' && deleted) parts.deleted = true;
  else if (!deleted) parts[parsed.part] = kv;
  byName.set(parsed.name, parts);
}

/**
 * Ends the gRPC stream behind a namespace's watches, as UNAVAILABLE. etcd3
 * has no public way to do it. The status matters: the client counts an
 * UNAVAILABLE stream as a failure of the member that carried it, which
 * createEtcdClient's per-member breaker then skips for a while, so the next
 * stream goes to another member rather than, possibly, the same silent one
 * (a plain cancel() ends as CANCELLED, which etcd3 also uses for streams it
 * ends on purpose, and does not count). Best effort: should etcd3's or
 * grpc-js's internals change, a new stream that lands on the silent member
 * again is replaced again at the next check.
 */
async function dropWatchStream(space: Namespace): Promise<void> {
  type Call = { cancelWithStatus?: (code: number, details: string) => void };
  type Stream = { call?: Call; cancel?: () => void; once?: (event: string, listener: () => void) => void };
  const stream = (space as unknown as { watchManager?: { stream?: Stream } }).watchManager?.stream;
  if (!stream) return;
  // The failure is recorded when the stream reports its status, a tick
  // later: wait for it (briefly) so that the next stream already avoids the member.
  const reported = new Promise<void>((resolve) => {
    setTimeout(resolve, 100).unref();
    stream.once?.('status', resolve);
    stream.once?.('error', resolve);
  });
  try {
    if (stream.call?.cancelWithStatus) stream.call.cancelWithStatus(GRPC_UNAVAILABLE, 'the watch stream stopped answering');
    else stream.cancel?.();
  } catch {
    return; // the stream is gone already
  }
  await reported;
}

/** gRPC status code UNAVAILABLE. */
const GRPC_UNAVAILABLE = 14;
