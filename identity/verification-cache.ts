// Remembers successful verifications by token (or by the Authorization
// header it came in), briefly: a client sends the same token on every
// request, and an ES256 signature check costs far more than the rest of the
// chain. An entry never outlives the token's `exp`, nor `maxAgeMs`, nor a
// change of the signing keys: a key removed from the JWKS file stops working
// at once (within the verifier's look at the file). Failures are never cached.
import { LRUCache } from 'lru-cache';
import { verifyHeader, type Identity, type IdentityVerifier } from './verifier.js';

export interface VerificationCacheOptions {
  maxEntries?: number;
  maxAgeMs?: number;
  now?: () => number;
}

export function cachingVerifier(inner: IdentityVerifier, options: VerificationCacheOptions = {}): IdentityVerifier {
  const now = options.now ?? Date.now;
  const maxAgeMs = options.maxAgeMs ?? 30_000;
  // Keyed by what was verified: a token, or a whole Authorization header as
  // the client sent it. A client repeats its header byte for byte, so a hit
  // needs neither the header's grammar checked again nor its token cut out
  // (the token's regular expression over several hundred characters). The
  // two never collide: a token holds no space, a header always does.
  const cache = new LRUCache<string, { identity: Identity; until: number; keys: number }>({ max: options.maxEntries ?? 10_000 });

  function remembered(key: string): Identity | undefined {
    const hit = cache.get(key);
    return hit && hit.until > now() && hit.keys === inner.keysGeneration() ? hit.identity : undefined;
  }

  /** Verifies `token`, or answers from memory, remembering a success under `key` (the token, or the header it came in). */
  async function verifyOnce(key: string, token: string): Promise<Identity> {
    const hit = remembered(key);
    if (hit) return hit;
    const identity = await inner.verifyToken(token);
    const exp = typeof identity.claims.exp === 'number' ? identity.claims.exp * 1000 : Number.POSITIVE_INFINITY;
    const until = Math.min(now() + maxAgeMs, exp);
    if (until > now()) cache.set(key, { identity, until, keys: inner.keysGeneration() });
    return identity;
  }

  return {
    verifyToken: (token) => verifyOnce(token, token),
    verifyAuthorizationHeader(header) {
      const hit = header === undefined ? undefined : remembered(header);
      return hit ? Promise.resolve(hit) : verifyHeader((token) => verifyOnce(header!, token), header);
    },
    // Only a header verified as it is was ever remembered under it: any other is verified, and refused there.
    rememberedIdentity: (header) => (header === undefined ? undefined : remembered(header)),
    keysGeneration: () => inner.keysGeneration(),
  };
}
