// Prepared plugin chains, addressed by the conf token handed to APISIX.
import { LRUCache } from 'lru-cache';
import type { AnyPlugin } from '../api/plugin.js';

export interface PreparedPlugin {
  plugin: AnyPlugin;
  conf: unknown;
  /** The APISIX route whose conf this is (PrepareConf's key), for decision logs. */
  route?: string | null;
}

/** The route id in PrepareConf's key, `route#<id>#<phase>#<conf version>` as APISIX builds it. */
export function routeOfKey(key: string | null): string | null {
  if (!key?.startsWith('route#')) return null;
  const id = key.split('#')[1];
  return id ? id.slice(0, 256) : null;
}

export interface ConfStoreOptions {
  /** APISIX_CONF_EXPIRE_TIME, in seconds. */
  expireSeconds: number;
  /** Upper bound on stored chains; the least recently issued go first. */
  maxEntries?: number;
  /** Upper bound on the raw conf bytes kept. */
  maxBytes?: number;
  now?: () => number;
}

export const TOKEN_SPACE = 2 ** 32;
/**
 * Tokens start at (milliseconds since the epoch x 64) mod 2^32. A restarted
 * runner therefore starts ahead of every token its predecessor handed out,
 * unless that one averaged more than 64 PrepareConfs per millisecond over its
 * whole life; the space wraps every ~18.6 hours, far beyond the ~2 hours a
 * token can live in APISIX. So a stale token never selects another route's chain.
 */
const TOKENS_PER_MS = 64;

/** The first token of a runner started now (see above). */
export function firstToken(now = Date.now()): number {
  return (now * TOKENS_PER_MS) % TOKEN_SPACE || 1;
}

/** The token after this one: never zero, wrapping at 2^32. */
export function nextTokenAfter(token: number): number {
  return (token + 1) % TOKEN_SPACE || 1;
}

export class ConfStore {
  private readonly chains: LRUCache<number, PreparedPlugin[]>;
  private nextToken: number;

  constructor(options: ConfStoreOptions) {
    const now = options.now ?? Date.now;
    this.nextToken = firstToken(now());
    this.chains = new LRUCache<number, PreparedPlugin[], unknown>({
      max: options.maxEntries ?? 100_000,
      maxSize: options.maxBytes ?? 256 * 1024 * 1024,
      // APISIX keeps a token for the expire time from when a worker got it and
      // another worker may pick it up late from a shared cache: keep twice as long.
      ttl: options.expireSeconds * 2 * 1000,
      ttlAutopurge: false,
      updateAgeOnGet: false,
      // Read the clock on every lookup. lru-cache's default instead caches it
      // for 1 ms behind a timer, which a runner at APISIX's pace (calls
      // fractions of a millisecond apart, in bursts) re-armed on most calls,
      // each timer a wake-up of its own (about 5% of its busy time).
      ttlResolution: 0,
      perf: { now },
    });
  }

  /** Stores a validated chain and returns its fresh, never-zero token. */
  add(chain: PreparedPlugin[], rawBytes: number): number {
    const token = this.nextToken;
    this.nextToken = nextTokenAfter(this.nextToken);
    this.chains.set(token, chain, { size: Math.max(1, rawBytes) });
    return token;
  }

  /** Stores a chain under a token issued elsewhere (by the runner's primary, for every worker alike). */
  put(token: number, chain: PreparedPlugin[], rawBytes: number): void {
    this.chains.set(token, chain, { size: Math.max(1, rawBytes) });
  }

  get(token: number): PreparedPlugin[] | undefined {
    return this.chains.get(token);
  }

  get size(): number {
    return this.chains.size;
  }
}
