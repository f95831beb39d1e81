/**
 * Policy engines within a memory budget, shared where policies are the same.
 *
 * A gateway holds every policy's metadata and data text, but no wasm (a
 * source's loader reads it when its module is compiled), and only as many
 * live engines as its budget allows, least recently used evicted. Two
 * levels, each an LRU:
 *
 *   modules    compiled wasm, keyed by the wasm's sha256: projects running
 *              the same Rego share one compiled module.
 *   instances  one instance of a module with one data document, keyed by
 *              (wasm sha256, data sha256): projects with the same Rego and
 *              the same data share an instance too.
 *
 * Evicting changes nothing a caller can observe but time: the next decision
 * of an evicted policy instantiates it again from the same bytes. Building is
 * asynchronous (V8 compiles wasm off the main thread), and concurrent
 * requests for one engine wait on one build, so a cold project's first
 * decision does not hold up decisions of engines already built.
 *
 * A watcher tells the cache which engines its current policies name
 * (`hold` / `release`): an engine no current policy names any more (a
 * superseded version, a deleted policy) is dropped at once instead of
 * waiting for the budget to evict it, so a gateway's memory follows what it
 * enforces, however many versions were written.
 *
 * Sizes: an instance counts its linear memory (the wasm's own heap, where
 * the data document lives; at least 320 KiB), measured when it is built; a
 * module counts its wasm bytes twice (the compiled code is about that size).
 */
import { LRUCache } from 'lru-cache';
import { DEFAULT_EVAL_FUEL, compilePolicyModule, loadPolicyEngine, type PolicyEngine } from './index.js';

export const DEFAULT_POLICY_CACHE_BYTES = 256 * 1024 * 1024;

/** Reads a module's verified wasm when it is compiled (a gateway keeps no wasm in memory: policy/watcher/modules.ts). */
export type WasmLoader = () => Promise<Uint8Array>;

/** What an engine is built from: the verified wasm (or its loader) and the data document. */
export interface EngineSource {
  wasmSha256: string;
  wasm: Uint8Array | WasmLoader;
  dataSha256: string;
  dataText: string;
}

/**
 * A loader could not get the wasm for now (not on disk, etcd away): the
 * decision fails closed, and the failure is not remembered, so the next one
 * tries again.
 */
export class WasmUnavailableError extends Error {
  override readonly name = 'WasmUnavailableError';
}

/** `source` with its wasm read (for a worker thread, which cannot be handed a loader). */
export async function withWasmBytes<T extends EngineSource>(source: T): Promise<T & { wasm: Uint8Array }> {
  return typeof source.wasm === 'function' ? { ...source, wasm: await source.wasm() } : (source as T & { wasm: Uint8Array });
}

export interface EngineCacheStats {
  instances: number;
  instanceBytes: number;
  modules: number;
  moduleBytes: number;
  /** (module, data) pairs that failed to load, remembered so they fail fast. */
  unloadable: number;
  /** Counters since start. */
  compiles: number;
  instantiations: number;
  evictions: number;
  /** Engines dropped because no current policy named them any more. */
  released: number;
}

export interface EngineCacheOptions {
  /** Total budget, bytes; a quarter of it for compiled modules. */
  budgetBytes?: number;
  /** Each instance's memory ceiling (default: POLICY_MEMORY_MAX_MB's, 64 MiB). */
  maxMemoryBytes?: number;
  /** Each evaluation's fuel (default: POLICY_EVAL_FUEL's, DEFAULT_EVAL_FUEL; null: modules not metered). */
  fuel?: number | null;
}

const MODULE_COST_FACTOR = 2;

export class EngineCache {
  private readonly modules: LRUCache<string, Promise<WebAssembly.Module>>;
  private readonly instances: LRUCache<string, PolicyEngine>;
  /** Builds in progress, so concurrent first decisions share one. */
  private readonly building = new Map<string, Promise<PolicyEngine>>();
  /** Modules whose wasm is being read by their loader, so builds of one module share one read. */
  private readonly loading = new Map<string, Promise<WebAssembly.Module>>();
  /**
   * Builds that failed (a module that does not compile, data the engine
   * refuses), by the same content key: the same bytes fail the same way, so
   * later decisions are denied at once instead of paying for the build again.
   */
  private readonly failed = new LRUCache<string, Error>({ max: 10_000 });
  private counters = { compiles: 0, instantiations: 0, evictions: 0, released: 0 };
  /** How many current policies name each engine and each module (hold / release). */
  private readonly instanceHolders = new Map<string, number>();
  private readonly moduleHolders = new Map<string, number>();
  private readonly maxMemoryBytes: number | undefined;
  /** Each evaluation's fuel; null: modules compiled unmetered. */
  readonly fuel: number | null;

  constructor(options: EngineCacheOptions = {}) {
    this.maxMemoryBytes = options.maxMemoryBytes;
    this.fuel = options.fuel === undefined ? DEFAULT_EVAL_FUEL : options.fuel;
    const budget = options.budgetBytes ?? DEFAULT_POLICY_CACHE_BYTES;
    if (!Number.isFinite(budget) || budget < 1024 * 1024) throw new RangeError('the policy cache budget must be at least 1 MiB');
    this.modules = new LRUCache({
      maxSize: Math.floor(budget / 4),
      // Sizes are set per entry (the bytes are known when the compile starts).
      sizeCalculation: () => 1,
    });
    this.instances = new LRUCache({
      maxSize: budget - Math.floor(budget / 4),
      sizeCalculation: (engine) => Math.max(1, engine.memoryBytes),
      dispose: (_engine, _key, reason) => {
        if (reason === 'evict') this.counters.evictions++;
      },
    });
  }

  static key(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): string {
    return `${source.wasmSha256}:${source.dataSha256}`;
  }

  /**
   * Forgets the engine of `source` (an evaluation failed in it: its heap may
   * be in any state); the next decision builds a fresh one.
   */
  discard(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): void {
    this.instances.delete(EngineCache.key(source));
  }

  /** A current policy names `source`'s engine: it is kept (within the budget) until released as often as held. */
  hold(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): void {
    const key = EngineCache.key(source);
    this.instanceHolders.set(key, (this.instanceHolders.get(key) ?? 0) + 1);
    this.moduleHolders.set(source.wasmSha256, (this.moduleHolders.get(source.wasmSha256) ?? 0) + 1);
  }

  /**
   * A policy that named `source`'s engine is no longer current. When no
   * current policy names it, the engine goes, and so does its module when
   * no current policy names that; a decision still running on it finishes
   * (it holds the engine itself).
   */
  release(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): void {
    const key = EngineCache.key(source);
    if (countDown(this.instanceHolders, key) === 0 && this.instances.delete(key)) this.counters.released++;
    if (countDown(this.moduleHolders, source.wasmSha256) === 0) this.modules.delete(source.wasmSha256);
  }

  /** The engine when it is built already (and marks it recently used), else undefined. */
  ready(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): PolicyEngine | undefined {
    return this.instances.get(EngineCache.key(source));
  }

  /** The engine, built if need be. Rejects when the wasm or data cannot be loaded. */
  engine(source: EngineSource): Promise<PolicyEngine> {
    const key = EngineCache.key(source);
    const cached = this.instances.get(key);
    if (cached) return Promise.resolve(cached);
    const failure = this.failed.get(key);
    if (failure) return Promise.reject(failure);
    let build = this.building.get(key);
    if (!build) {
      build = this.build(key, source)
        .catch((error: unknown) => {
          if (!(error instanceof WasmUnavailableError)) this.failed.set(key, error instanceof Error ? error : new Error(String(error)));
          throw error;
        })
        .finally(() => this.building.delete(key));
      this.building.set(key, build);
    }
    return build;
  }

  private async build(key: string, source: EngineSource): Promise<PolicyEngine> {
    const module = await this.module(source);
    const engine = await loadPolicyEngine(module, {
      data: source.dataText,
      ...(this.maxMemoryBytes ? { maxMemoryBytes: this.maxMemoryBytes } : {}),
      fuel: this.fuel ?? 0x7fffffff,
    });
    this.counters.instantiations++;
    this.instances.set(key, engine);
    return engine;
  }

  private module(source: EngineSource): Promise<WebAssembly.Module> {
    const sha = source.wasmSha256;
    const known = this.modules.get(sha) ?? this.loading.get(sha);
    if (known) return known;
    if (typeof source.wasm !== 'function') return this.compile(sha, source.wasm);
    // Read first (its size is then known), by one load however many builds wait on it.
    const loading = source
      .wasm()
      .then((wasm) => this.compile(sha, wasm))
      .finally(() => this.loading.delete(sha));
    this.loading.set(sha, loading);
    return loading;
  }

  private compile(sha: string, wasm: Uint8Array): Promise<WebAssembly.Module> {
    this.counters.compiles++;
    const compiled = compilePolicyModule(wasm, { metered: this.fuel !== null });
    // A module that does not compile is not kept: the error is the caller's, each time.
    compiled.catch(() => this.modules.delete(sha));
    this.modules.set(sha, compiled, { size: Math.max(1, wasm.byteLength * MODULE_COST_FACTOR) });
    return compiled;
  }

  /** Why the engine of `source` failed to load, when it did. */
  failure(source: Pick<EngineSource, 'wasmSha256' | 'dataSha256'>): Error | undefined {
    return this.failed.peek(EngineCache.key(source));
  }

  get stats(): EngineCacheStats {
    return {
      unloadable: this.failed.size,
      instances: this.instances.size,
      instanceBytes: this.instances.calculatedSize,
      modules: this.modules.size,
      moduleBytes: this.modules.calculatedSize,
      ...this.counters,
    };
  }
}

/** A cache budget in MiB from the environment variable `name` (e.g. RUNNER_POLICY_CACHE_MB); the default when unset. */
export function policyCacheBytesFromEnv(name: string, env: NodeJS.ProcessEnv): number {
  const raw = env[name]?.trim();
  if (!raw) return DEFAULT_POLICY_CACHE_BYTES;
  const mib = Number(raw);
  if (!Number.isFinite(mib) || mib < 1) throw new Error(`${name} must be a number of MiB, at least 1`);
  return Math.floor(mib * 1024 * 1024);
}

/** Decrements `key`'s count (removing it at zero); the count after, or -1 when it was not held. */
function countDown(counts: Map<string, number>, key: string): number {
  const count = counts.get(key);
  if (count === undefined) return -1;
  if (count <= 1) {
    counts.delete(key);
    return 0;
  }
  counts.set(key, count - 1);
  return count - 1;
}
