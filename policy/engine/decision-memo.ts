/**
 * Remembers recent decisions, so a request whose policy input repeats one
 * seen moments ago is answered without running the policy again.
 *
 * A remembered decision is exactly the one the policy would return. A
 * gateway's evaluation depends on nothing but the module, its data, the
 * entrypoint and the input: the wasm reaches outside itself only through
 * the SDK's builtins (JSON, strings, regexes, YAML: no clock, no randomness,
 * no network; any other builtin fails the evaluation), and every evaluation
 * starts from the same heap. So each policy version (a LoadedPolicy, which
 * fixes module, data and entrypoint) has its own scope, and the key within
 * it is the input as the policy is shown it: its projection
 * (serialised-input.ts), serialised. Only projected inputs are remembered:
 * the whole input carries the connection's port and a timestamp, so it
 * would rarely repeat. The caller's project is part of the key too, so one
 * tenant cannot learn from a quicker answer what another tenant's requests
 * were.
 *
 * Only successful evaluations are remembered (a stopped or failed one is
 * evaluated again next time), and a remembered result is frozen: every
 * caller gets the same object.
 *
 * Bounded: one LRU for the process, counted in bytes (POLICY_DECISION_CACHE_MB);
 * an input or a result longer than MAX_MEMO_CHARS is not remembered. A
 * version whose inputs rarely repeat (fewer than one lookup in 16 hits over
 * a window) stops being remembered for a while, so a stream of distinct
 * inputs costs it no more than a lookup now and then, and churns nobody's
 * entries for long.
 */
import { LRUCache } from 'lru-cache';
import type { SerialisedInput } from './serialised-input.js';

/** The default of POLICY_DECISION_CACHE_MB, bytes. */
export const DEFAULT_DECISION_CACHE_BYTES = 16 * 1024 * 1024;
/** The longest input (serialised) or result (as JSON) remembered, characters. */
export const MAX_MEMO_CHARS = 4096;
/** Lookups in one window of a version; under WINDOW / 16 hits in one, the version rests. */
export const MEMO_WINDOW = 1024;
/** How many windows' worth of evaluations a resting version is not remembered for. */
export const MEMO_REST_WINDOWS = 64;
/** Each entry's bookkeeping beyond its characters, bytes (an estimate: key, value and LRU slots). */
const ENTRY_OVERHEAD_BYTES = 128;
/**
 * Bytes counted per character: a key is a flat string (at most two bytes a
 * character); a result is a parsed JSON value, whose objects and numbers
 * take more than their text, so it is counted at twice that.
 */
const KEY_BYTES_PER_CHAR = 2;
const RESULT_BYTES_PER_CHAR = 4;

/**
 * The decision cache's size, bytes, from POLICY_DECISION_CACHE_MB (default
 * 16; 0 turns it off: every decision is evaluated). Throws on nonsense.
 */
export function decisionCacheBytes(env: NodeJS.ProcessEnv): number {
  const raw = env.POLICY_DECISION_CACHE_MB?.trim();
  const mib = raw ? Number(raw) : DEFAULT_DECISION_CACHE_BYTES / (1024 * 1024);
  if (!Number.isFinite(mib) || mib < 0 || mib > 1024) throw new Error('POLICY_DECISION_CACHE_MB must be a number of MiB from 0 (off) to 1024');
  return Math.floor(mib * 1024 * 1024);
}

export interface DecisionMemoStats {
  hits: number;
  misses: number;
  /** Decisions remembered now, and the bytes they are counted at. */
  entries: number;
  bytes: number;
  /** Times a version's inputs repeated too rarely and it rested. */
  rests: number;
}

interface Remembered {
  readonly result: unknown;
}

export class DecisionMemo {
  private readonly entries: LRUCache<string, Remembered>;
  private nextScope = 1;
  private hits = 0;
  private misses = 0;
  private rests = 0;

  constructor(maxBytes: number) {
    this.entries = new LRUCache<string, Remembered>({ maxSize: Math.max(1, maxBytes) });
  }

  /** One policy version's share (see MemoScope). */
  scope(): MemoScope {
    return new MemoScope(this, `${this.nextScope++}:`);
  }

  get stats(): DecisionMemoStats {
    return { hits: this.hits, misses: this.misses, entries: this.entries.size, bytes: this.entries.calculatedSize, rests: this.rests };
  }

  /** @internal (MemoScope) */
  get(key: string): Remembered | undefined {
    const found = this.entries.get(key);
    if (found) this.hits++;
    else this.misses++;
    return found;
  }

  /** @internal (MemoScope) */
  set(key: string, result: unknown, resultChars: number): void {
    this.entries.set(key, { result }, { size: ENTRY_OVERHEAD_BYTES + KEY_BYTES_PER_CHAR * key.length + RESULT_BYTES_PER_CHAR * resultChars });
  }

  /** @internal (MemoScope) */
  rested(): void {
    this.rests++;
  }
}

/** What one policy version remembers: its key prefix, and whether its inputs repeat enough to be worth it. */
export class MemoScope {
  private lookups = 0;
  private hits = 0;
  /** Evaluations left before a resting version is remembered again (0: not resting). */
  private resting = 0;

  /** @internal (DecisionMemo.scope) */
  constructor(
    private readonly memo: DecisionMemo,
    private readonly prefix: string,
  ) {}

  /** The remembered decision of `tenant`'s `input`, if any; undefined also while this version rests. */
  lookup(tenant: string, input: SerialisedInput): Remembered | undefined {
    if (this.resting > 0) {
      this.resting--;
      return undefined;
    }
    const text = input.text;
    if (text.length > MAX_MEMO_CHARS) return undefined;
    const found = this.memo.get(this.key(tenant, text));
    if (found) this.hits++;
    if (++this.lookups === MEMO_WINDOW) {
      if (this.hits < MEMO_WINDOW / 16) {
        this.resting = MEMO_WINDOW * MEMO_REST_WINDOWS;
        this.memo.rested();
      }
      this.lookups = 0;
      this.hits = 0;
    }
    return found;
  }

  /** Remembers `result`, the successful evaluation of `tenant`'s `input` (frozen, and returned as is). */
  remember(tenant: string, input: SerialisedInput, result: unknown): void {
    if (this.resting > 0) return;
    const text = input.text;
    if (text.length > MAX_MEMO_CHARS) return;
    const resultChars = result === undefined ? 0 : JSON.stringify(result).length;
    if (resultChars > MAX_MEMO_CHARS) return;
    this.memo.set(this.key(tenant, text), deepFreeze(result), resultChars);
  }

  /** Unambiguous whatever the tenant's name holds: its length comes first. */
  private key(tenant: string, text: string): string {
    return `${this.prefix}${tenant.length}:${tenant}${text}`;
  }
}

/** Freezes a JSON value (a policy's result) and everything in it; returns it. */
function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
