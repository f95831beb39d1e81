// Secrets kept in memory for a TTL, refreshed in the background before they
// expire, and served stale while Vault is briefly away, up to a maximum
// staleness. Past that, or with nothing cached, the caller gets an error and
// the request fails closed.

export class SecretUnavailableError extends Error {
  override name = 'SecretUnavailableError';
}

export interface SecretCacheOptions<T> {
  fetch(key: string): Promise<T>;
  /** How long a fetched secret is used as is. */
  ttlMs: number;
  /** How long past its TTL a secret may still be served when Vault cannot be reached. */
  maxStalenessMs: number;
  /** Refresh in the background once this fraction of the TTL has passed (default 0.75). */
  refreshAheadFraction?: number;
  now?: () => number;
  onEvent?: (event: 'hit' | 'miss' | 'refresh' | 'stale' | 'refresh-failed' | 'unavailable', key: string, error?: unknown) => void;
}

interface Entry<T> {
  value: T;
  fetchedAt: number;
}

export class SecretCache<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly inFlight = new Map<string, Promise<T>>();
  private readonly now: () => number;

  constructor(private readonly options: SecretCacheOptions<T>) {
    this.now = options.now ?? Date.now;
  }

  async get(key: string): Promise<T> {
    const entry = this.entries.get(key);
    const age = entry ? this.now() - entry.fetchedAt : Infinity;
    const { ttlMs, maxStalenessMs } = this.options;
    if (entry && age < ttlMs) {
      this.options.onEvent?.('hit', key);
      if (age >= ttlMs * (this.options.refreshAheadFraction ?? 0.75)) void this.refresh(key).catch(() => undefined);
      return entry.value;
    }
    try {
      this.options.onEvent?.(entry ? 'refresh' : 'miss', key);
      return await this.refresh(key);
    } catch (error) {
      if (entry && age < ttlMs + maxStalenessMs) {
        this.options.onEvent?.('stale', key, error);
        return entry.value;
      }
      this.options.onEvent?.('unavailable', key, error);
      throw new SecretUnavailableError(entry ? 'the cached secret is too stale and Vault cannot be reached' : 'the secret cannot be fetched', {
        cause: error,
      });
    }
  }

  /** Whether `get(key)` would answer from the cache now, without asking Vault. */
  isFresh(key: string): boolean {
    const entry = this.entries.get(key);
    return entry !== undefined && this.now() - entry.fetchedAt < this.options.ttlMs;
  }

  /** One fetch per key at a time; a failure keeps the previous value. */
  private refresh(key: string): Promise<T> {
    const running = this.inFlight.get(key);
    if (running) return running;
    const fetching = this.options
      .fetch(key)
      .then((value) => {
        this.entries.set(key, { value, fetchedAt: this.now() });
        return value;
      })
      .catch((error: unknown) => {
        this.options.onEvent?.('refresh-failed', key, error);
        throw error;
      })
      .finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, fetching);
    return fetching;
  }

  clear(): void {
    this.entries.clear();
  }
}
