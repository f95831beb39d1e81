// The vault plugin's secret cache, on a controlled clock.
import { describe, expect, it } from 'vitest';
import { SecretCache, SecretUnavailableError } from '../../plugins/vault/secret-cache.js';

function harness() {
  let clock = 1_000_000;
  let value = 'key-1';
  let up = true;
  let fetches = 0;
  const cache = new SecretCache<string>({
    fetch: async () => {
      fetches++;
      if (!up) throw new Error('vault is down');
      return value;
    },
    ttlMs: 10_000,
    maxStalenessMs: 30_000,
    now: () => clock,
  });
  return {
    cache,
    advance: (ms: number) => (clock += ms),
    rotate: (v: string) => (value = v),
    setUp: (u: boolean) => (up = u),
    fetches: () => fetches,
  };
}

describe('secret cache', () => {
  it('serves from memory within the TTL, reads again after it (a rotated secret is picked up)', async () => {
    const h = harness();
    expect(await h.cache.get('k')).toBe('key-1');
    h.rotate('key-2');
    h.advance(5_000);
    expect(await h.cache.get('k')).toBe('key-1');
    expect(h.fetches()).toBe(1);
    h.advance(5_001);
    expect(await h.cache.get('k')).toBe('key-2');
    expect(h.fetches()).toBe(2);
  });

  it('refreshes in the background before expiry', async () => {
    const h = harness();
    await h.cache.get('k');
    h.rotate('key-2');
    h.advance(8_000); // past 75% of the TTL
    expect(await h.cache.get('k')).toBe('key-1'); // answered at once from memory...
    await new Promise((r) => setImmediate(r));
    expect(h.fetches()).toBe(2); // ...while the refresh ran
    h.advance(1_000);
    expect(await h.cache.get('k')).toBe('key-2');
  });

  it('serves the cached value while Vault is away, up to the maximum staleness, then fails', async () => {
    const h = harness();
    await h.cache.get('k');
    h.setUp(false);
    h.advance(10_000 + 29_000);
    expect(await h.cache.get('k')).toBe('key-1');
    h.advance(2_000);
    await expect(h.cache.get('k')).rejects.toBeInstanceOf(SecretUnavailableError);
    h.setUp(true);
    expect(await h.cache.get('k')).toBe('key-1');
  });

  it('with nothing cached and Vault away, fails at once', async () => {
    const h = harness();
    h.setUp(false);
    await expect(h.cache.get('k')).rejects.toBeInstanceOf(SecretUnavailableError);
  });

  it('concurrent misses share one fetch', async () => {
    const h = harness();
    await Promise.all(Array.from({ length: 10 }, () => h.cache.get('k')));
    expect(h.fetches()).toBe(1);
  });
});
