// Remembers successful verifications by token, briefly: a client sends the
// same token on every request, and an ES256 signature check costs far more
// than the rest of the chain. An entry never outlives the token's `exp`,
// nor `maxAgeMs`, nor a change of the signing keys: a key removed from the
// JWKS file stops working at once (within the verifier's look at the file).
// Failures are never cached.
import { LRUCache } from 'lru-cache';
import { bearerToken, verifyHeader, type Identity, type IdentityVerifier } from './verifier.js';

export interface VerificationCacheOptions {
  maxEntries?: number;
  maxAgeMs?: number;
  now?: () => number;
}

export function cachingVerifier(inner: IdentityVerifier, options: VerificationCacheOptions = {}): IdentityVerifier {
  const now = options.now ?? Date.now;
  const maxAgeMs = options.maxAgeMs ?? 30_000;
  const cache = new LRUCache<string, { identity: Identity; until: number; keys: number }>({ max: options.maxEntries ?? 10_000 });

  function remembered(token: string): Identity | undefined {
    const hit = cache.get(token);
    return hit && hit.until > now() && hit.keys === inner.keysGeneration() ? hit.identity : undefined;
  }

  async function verifyToken(token: string): Promise<Identity> {
    const hit = remembered(token);
    if (hit) return hit;
    const identity = await inner.verifyToken(token);
    const exp = typeof identity.claims.exp === 'number' ? identity.claims.exp * 1000 : Number.POSITIVE_INFINITY;
    const until = Math.min(now() + maxAgeMs, exp);
    if (until > now()) cache.set(token, { identity, until, keys: inner.keysGeneration() });
    return identity;
  }

  return {
    verifyToken,
    verifyAuthorizationHeader: (header) => verifyHeader(verifyToken, header),
    rememberedIdentity(header) {
      // Only a well-formed header's token was ever remembered; anything else is verified, and refused there.
      const token = header === undefined ? undefined : wellFormedToken(header);
      return token === undefined ? undefined : remembered(token);
    },
    keysGeneration: () => inner.keysGeneration(),
  };
}

function wellFormedToken(header: string): string | undefined {
  try {
    return bearerToken(header);
  } catch {
    return undefined;
  }
}
