// An immutable set of policies at one etcd revision. The watcher builds a
// new set off to the side and swaps it in with one assignment, so a
// decision that takes the current set once sees every policy of one etcd
// transaction, never a mix of old and new.
//
// A policy in the set holds its metadata and data text, and a loader of its
// wasm (read from the snapshot directory or etcd when its module is
// compiled: modules.ts); its engine lives in the EngineCache and is built on
// first use, so a set can hold ten thousand policies, each of its own Rego,
// while only the busy ones take memory.
import type { EngineCache, WasmLoader } from '../engine/cache.js';
import type { PolicyEngine } from '../engine/index.js';
import type { EvaluateOptions, Evaluator } from '../engine/evaluator.js';
import { engineInput, inputFor, InputProjection, SerialisedInput, type InputRef } from '../engine/serialised-input.js';
import type { DecisionMemo, MemoScope } from '../engine/decision-memo.js';
import type { PolicyMetadata } from '../store/index.js';
import type { SignatureProblem } from '../signing/index.js';

/** What a policy version is made of, as read from etcd or the snapshot. */
export interface PolicyBytes {
  name: string;
  meta: PolicyMetadata;
  /** The etcd revision of the transaction that wrote this version. */
  modRevision: number;
  /** The data document as JSON text, exactly as stored. */
  dataText: string;
  dataSha256: string;
  /** Reads the compiled policy, checked against meta.wasmSha256, when its module is compiled (not kept). */
  wasm: WasmLoader;
  /**
   * Why this policy cannot be enforced, when it cannot: it exists, so
   * decisions that need it are denied (never treated as absent).
   */
  broken?: string;
  /** Set when it is broken because its signature does not verify (policy/signing): unsigned, or a bad signature. */
  signature?: SignatureProblem;
}

export interface LoadedPolicy extends PolicyBytes {
  /** When this process swapped it in (ms since the epoch). */
  loadedAt: number;
  /** The engine if it is built already, else undefined. */
  readyEngine(): PolicyEngine | undefined;
  /** The engine, built if need be; rejects when the wasm or data cannot be loaded. */
  engine(): Promise<PolicyEngine>;
  /**
   * Evaluates the policy's entrypoint for a request of `tenant` (the
   * caller's project): by the evaluator when there is one (bounds, tenants
   * apart: engine/evaluator.ts), else here (fuel and memory bounds only).
   * Rejects when the policy cannot be loaded or the evaluation fails. A
   * SerialisedInput (engine/serialised-input.ts) is serialised once for
   * every policy it is given to. The policy is shown only the parts of the
   * input its metadata's `inputRefs` name (InputProjection); a version whose
   * `inputRefs` cannot be read is unloadable. A decision on a projected
   * SerialisedInput may be answered from the decision memo
   * (engine/decision-memo.ts): exactly what the evaluation would return,
   * frozen. `options.wait` false: rejected at once where the tenant would
   * have to wait its turn (EvaluationWouldWaitError).
   */
  evaluate(tenant: string, input: unknown, options?: EvaluateOptions): Promise<unknown>;
  /**
   * Whether this version is shown anything at or under `path` of its input
   * (its projection keeps some of it, or it is shown the whole input; true
   * also for a version that cannot be loaded). A gateway may leave out of
   * its input what no policy of a decision reads.
   */
  readsInput(path: InputRef): boolean;
  /** Builds the engine wherever decisions will run (before a swap). */
  prepare(): Promise<void>;
  /**
   * Whether this process decides with this policy: it has evaluated this
   * version, or the version it replaced was in use. A new version of a
   * policy in use is built before it is swapped in; any other on its first
   * decision.
   */
  readonly inUse: boolean;
}

export class PolicyUnloadableError extends Error {
  override readonly name = 'PolicyUnloadableError';
}

/** A policy of a set, its engine drawn from `engines`, evaluated by `pool` when there is one. */
export function loadedPolicy(
  bytes: PolicyBytes,
  engines: EngineCache,
  options: {
    pool?: Evaluator | null;
    /** When it is swapped in (default now). */
    loadedAt?: number;
    /** Whether the version it replaces was in use (LoadedPolicy.inUse; default false). */
    inUse?: boolean;
    /** Where recent decisions are remembered (null: every decision is evaluated). */
    memo?: DecisionMemo | null;
  } = {},
): LoadedPolicy {
  const { pool = null, loadedAt = Date.now(), inUse = false, memo = null } = options;
  let projection: InputProjection | null = null;
  let broken = bytes.broken;
  if (broken === undefined) {
    try {
      projection = InputProjection.of(bytes.meta.inputRefs);
    } catch (error) {
      broken = `its metadata's inputRefs cannot be read (${(error as Error).message})`;
    }
  }
  if (broken !== undefined) {
    const error = new PolicyUnloadableError(`policy ${bytes.name} cannot be loaded: ${broken}`);
    return {
      ...bytes,
      broken,
      loadedAt,
      inUse,
      readyEngine: () => undefined,
      engine: () => Promise.reject(error),
      evaluate: () => Promise.reject(error),
      readsInput: () => true,
      prepare: () => Promise.reject(error),
    };
  }
  const source = { wasmSha256: bytes.meta.wasmSha256, wasm: bytes.wasm, dataSha256: bytes.dataSha256, dataText: bytes.dataText };
  const target = { source, entrypoint: bytes.meta.entrypoint };
  let used = inUse;
  const evaluateShown: (tenant: string, shown: unknown, options?: EvaluateOptions) => Promise<unknown> = pool
    ? (tenant, shown, options) => pool.evaluate(tenant, target, shown, options)
    : async (_tenant, shown) => {
        const engine = engines.ready(source) ?? (await engines.engine(source));
        try {
          return engine.evaluate(engineInput(shown), bytes.meta.entrypoint);
        } catch (error) {
          // Out of fuel, out of memory or aborted: the instance's heap is suspect, build a fresh one next time.
          engines.discard(source);
          throw error;
        }
      };
  // Made on the first decision: most of ten thousand policies are never evaluated here.
  let scope: MemoScope | null = null;
  return {
    ...bytes,
    loadedAt,
    get inUse() {
      return used;
    },
    readyEngine: () => engines.ready(source),
    engine: () => engines.engine(source),
    evaluate:
      memo && projection
        ? (tenant, input, options) => {
            used = true;
            const shown = inputFor(input, projection);
            if (!(shown instanceof SerialisedInput)) return evaluateShown(tenant, shown, options);
            scope ??= memo.scope();
            const remembered = scope.lookup(tenant, shown);
            if (remembered) return Promise.resolve(remembered.result);
            const memoScope = scope;
            return evaluateShown(tenant, shown, options).then((result) => {
              memoScope.remember(tenant, shown, result);
              return result;
            });
          }
        : (tenant, input, options) => {
            used = true;
            return evaluateShown(tenant, inputFor(input, projection), options);
          },
    readsInput: (path) => projection === null || projection.reads(path),
    prepare: pool ? () => pool.prepare(target) : async () => void (await engines.engine(source)),
  };
}

/** A policy that exists but cannot be enforced; `signature` says when that is for its signature. */
export interface UnloadablePolicy {
  name: string;
  reason: string;
  signature?: SignatureProblem;
}

/** Where the current set came from: etcd, the local last-known-good snapshot, or nothing yet. */
export type PolicySource = 'etcd' | 'snapshot' | 'none';

/**
 * A set is a base map and a small overlay of the changes since (null: a
 * deletion). Applying a change copies only the overlay, so a swap costs in
 * proportion to recent changes rather than to ten thousand policies; the
 * overlay is folded into a new base once it holds a sixteenth of the base.
 */
export class PolicySet {
  static readonly empty = new PolicySet(0, new Map(), 'none');
  private merged: ReadonlyMap<string, LoadedPolicy> | null;

  constructor(
    /** The etcd revision this set reflects (0 when nothing was loaded). */
    readonly revision: number,
    private readonly base: ReadonlyMap<string, LoadedPolicy>,
    readonly source: PolicySource,
    private readonly overlay: ReadonlyMap<string, LoadedPolicy | null> = new Map(),
  ) {
    this.merged = overlay.size === 0 ? base : null;
  }

  get(name: string): LoadedPolicy | undefined {
    const changed = this.overlay.get(name);
    if (changed !== undefined) return changed ?? undefined;
    return this.base.get(name);
  }

  /** Every policy, by name (built once per set when it has an overlay: for whole-set work, not per decision). */
  get policies(): ReadonlyMap<string, LoadedPolicy> {
    if (!this.merged) {
      const merged = new Map(this.base);
      for (const [name, policy] of this.overlay) {
        if (policy) merged.set(name, policy);
        else merged.delete(name);
      }
      this.merged = merged;
    }
    return this.merged;
  }

  /** How many policies the set holds, counted without merging the overlay. */
  get size(): number {
    if (this.merged) return this.merged.size;
    let size = this.base.size;
    for (const [name, policy] of this.overlay) {
      const inBase = this.base.has(name);
      if (policy && !inBase) size++;
      else if (!policy && inBase) size--;
    }
    return size;
  }

  /** This set with `changes` applied (a null deletes), at `revision`. */
  with(revision: number, changes: ReadonlyMap<string, LoadedPolicy | null>, source: PolicySource = this.source): PolicySet {
    if (this.overlay.size + changes.size > Math.max(64, this.base.size / 16)) {
      const base = new Map(this.policies);
      for (const [name, policy] of changes) {
        if (policy) base.set(name, policy);
        else base.delete(name);
      }
      return new PolicySet(revision, base, source);
    }
    const overlay = new Map(this.overlay);
    for (const [name, policy] of changes) overlay.set(name, policy);
    return new PolicySet(revision, this.base, source, overlay);
  }

  /** False until policies were loaded from etcd or a snapshot: decisions must then fail closed. */
  get isLoaded(): boolean {
    return this.source !== 'none';
  }

  /** Policies that exist but cannot be enforced (decisions that need them are denied). */
  get unloadable(): UnloadablePolicy[] {
    const found: UnloadablePolicy[] = [];
    for (const policy of this.policies.values()) {
      if (policy.broken !== undefined) found.push({ name: policy.name, reason: policy.broken, ...(policy.signature ? { signature: policy.signature } : {}) });
    }
    return found;
  }
}
