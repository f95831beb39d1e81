import type { webcrypto } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AuthenticationError,
  createIdentityVerifier,
  identityConfigFromEnv,
  IdentityConfigError,
  type IdentityConfig,
  type IdentityVerifier,
} from '../../identity/index.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';

let keys: TestKeys;
let config: IdentityConfig;
let verifier: IdentityVerifier;

beforeAll(async () => {
  keys = await createTestKeys();
  config = keys.identityConfig;
  verifier = createIdentityVerifier(config);
});
afterAll(async () => {
  await keys?.cleanup();
});

async function failureOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(AuthenticationError);
    const refusal = error as AuthenticationError;
    // The public reason never carries token material.
    expect(refusal.publicReason).not.toMatch(/eyJ/);
    return refusal.failure;
  }
  throw new Error('the token was accepted');
}

describe('identity verification', () => {
  it('returns the typed identity of a valid token', async () => {
    const identity = await verifier.verifyAuthorizationHeader(`Bearer ${await keys.token({ sub: 'tom', role: 'project_user', project: 'team-a' })}`);
    expect(identity).toMatchObject({ sub: 'tom', role: 'project_user', project: 'team-a', isPlatformAdmin: false });
    expect(identity.claims.iss).toBe(keys.issuer);
    const admin = await verifier.verifyToken(await keys.token({ sub: 'ada', role: 'platform_admin' }));
    expect(admin).toMatchObject({ sub: 'ada', role: 'platform_admin', project: null, isPlatformAdmin: true });
  });

  it('accepts the scheme in any case', async () => {
    const token = await keys.token({ sub: 'tom' });
    expect((await verifier.verifyAuthorizationHeader(`bearer ${token}`)).sub).toBe('tom');
  });

  const refusals: Array<[string, () => Promise<string | undefined>, string]> = [
    ['no header', async () => undefined, 'missing_token'],
    ['another scheme', async () => 'Basic YTpi', 'missing_token'],
    ['not a JWT', async () => 'Bearer abc.def', 'malformed_token'],
    ['expired', async () => `Bearer ${await keys.expiredToken({ sub: 'x' })}`, 'expired'],
    ['not yet valid', async () => `Bearer ${await keys.notYetValidToken({ sub: 'x' })}`, 'not_yet_valid'],
    ['wrong issuer', async () => `Bearer ${await keys.wrongIssuerToken({ sub: 'x' })}`, 'wrong_issuer'],
    ['wrong audience', async () => `Bearer ${await keys.wrongAudienceToken({ sub: 'x' })}`, 'wrong_audience'],
    ['bad signature', async () => `Bearer ${await keys.badSignatureToken({ sub: 'x' })}`, 'bad_signature'],
    ['alg none', async () => `Bearer ${await keys.algNoneToken({ sub: 'x' })}`, 'algorithm_not_allowed'],
    ['unknown kid', async () => `Bearer ${await keys.unknownKidToken({ sub: 'x' })}`, 'unknown_key'],
    ['no kid', async () => `Bearer ${await keys.noKidToken({ sub: 'x' })}`, 'missing_key_id'],
    ['no sub', async () => `Bearer ${await keys.token({ role: 'platform_admin' })}`, 'missing_subject'],
    ['empty sub', async () => `Bearer ${await keys.token({ sub: '' })}`, 'missing_subject'],
  ];
  for (const [what, header, failure] of refusals) {
    it(`refuses ${what} (${failure})`, async () => {
      expect(await failureOf(verifier.verifyAuthorizationHeader(await header()))).toBe(failure);
    });
  }

  it('refuses an algorithm outside the allow-list even with a valid signature', async () => {
    const { publicKey, privateKey } = await generateKeyPair('PS256', { extractable: true });
    await writeFile(keys.jwksFile + '.ps', JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'ps', alg: 'PS256' }] }));
    const strict = createIdentityVerifier({ ...config, jwks: { kind: 'file', path: keys.jwksFile + '.ps' } });
    const token = await new SignJWT({ sub: 'x' })
      .setProtectedHeader({ alg: 'PS256', kid: 'ps' })
      .setIssuer(keys.issuer)
      .setAudience(keys.audience)
      .setExpirationTime('1h')
      .sign(privateKey);
    expect(await failureOf(strict.verifyToken(token))).toBe('algorithm_not_allowed');
  });

  it('refuses a token without exp', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const file = keys.jwksFile + '.noexp';
    await writeFile(file, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: 'k' }] }));
    const token = await new SignJWT({ sub: 'x' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k' })
      .setIssuer(keys.issuer)
      .setAudience(keys.audience)
      .sign(privateKey);
    expect(await failureOf(createIdentityVerifier({ ...config, jwks: { kind: 'file', path: file } }).verifyToken(token))).toBe('invalid_claims');
  });

  it('re-reads the JWKS file when a token names a new kid (key rotation)', async () => {
    const file = keys.jwksFile + '.rotating';
    const first = await generateKeyPair('ES256', { extractable: true });
    await writeFile(file, JSON.stringify({ keys: [{ ...(await exportJWK(first.publicKey)), kid: 'k1' }] }));
    const rotating = createIdentityVerifier({ ...config, jwks: { kind: 'file', path: file } });
    const sign = (kid: string, key: webcrypto.CryptoKey) =>
      new SignJWT({ sub: kid }).setProtectedHeader({ alg: 'ES256', kid }).setIssuer(keys.issuer).setAudience(keys.audience).setExpirationTime('1h').sign(key);
    expect((await rotating.verifyToken(await sign('k1', first.privateKey))).sub).toBe('k1');
    const second = await generateKeyPair('ES256', { extractable: true });
    await writeFile(file, JSON.stringify({ keys: [{ ...(await exportJWK(second.publicKey)), kid: 'k2' }] }));
    await new Promise((resolve) => setTimeout(resolve, 1_100)); // past the reload cooldown
    expect((await rotating.verifyToken(await sign('k2', second.privateKey))).sub).toBe('k2');
  });

  it('refuses a token that lives longer than the maximum lifetime, or does not say when it was issued', async () => {
    const limited = createIdentityVerifier({ ...config, maxTokenLifetimeSeconds: 600 });
    expect((await limited.verifyToken(await keys.token({ sub: 'short' }, { expiresIn: '5m' }))).sub).toBe('short');
    expect(await failureOf(limited.verifyToken(await keys.token({ sub: 'long' }, { expiresIn: '2h' })))).toBe('invalid_claims');
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    const noIat = await new SignJWT({ sub: 'x' })
      .setProtectedHeader({ alg: 'ES256', kid: keys.kid })
      .setIssuer(keys.issuer)
      .setAudience(keys.audience)
      .setExpirationTime('5m')
      .sign(privateKey);
    expect(await failureOf(limited.verifyToken(noIat))).not.toBe(null);
  });

  it('reads configurable claim names', async () => {
    const custom = createIdentityVerifier({ ...config, claimNames: { sub: 'uid', role: 'gh_role', project: 'team' } });
    const identity = await custom.verifyToken(await keys.token({ uid: 'u-1', gh_role: 'platform_admin', team: 'team-z' }));
    expect(identity).toMatchObject({ sub: 'u-1', role: 'platform_admin', project: 'team-z', isPlatformAdmin: true });
    expect(await failureOf(custom.verifyToken(await keys.token({ sub: 'no-uid' })))).toBe('missing_subject');
  });
});

describe('identity configuration from the environment', () => {
  const base = { JWT_JWKS_FILE: '/tmp/jwks.json', JWT_ISSUER: 'https://i', JWT_AUDIENCE: 'a, b' };

  it('has documented defaults', () => {
    expect(identityConfigFromEnv(base)).toEqual({
      jwks: { kind: 'file', path: '/tmp/jwks.json' },
      issuer: 'https://i',
      audience: ['a', 'b'],
      algorithms: ['RS256', 'ES256', 'EdDSA'],
      clockToleranceSeconds: 30,
      claimNames: { sub: 'sub', role: 'role', project: 'project' },
    });
  });

  it('fails closed on missing or unsafe settings', () => {
    expect(() => identityConfigFromEnv({ JWT_ISSUER: 'i', JWT_AUDIENCE: 'a' })).toThrow(IdentityConfigError);
    expect(() => identityConfigFromEnv({ ...base, JWT_JWKS_URL: 'https://x/jwks' })).toThrow(IdentityConfigError);
    expect(() => identityConfigFromEnv({ ...base, JWT_ISSUER: '' })).toThrow(IdentityConfigError);
    expect(() => identityConfigFromEnv({ ...base, JWT_ALGORITHMS: 'ES256,none' })).toThrow(IdentityConfigError);
    expect(() => identityConfigFromEnv({ ...base, JWT_CLOCK_TOLERANCE_SECONDS: '-1' })).toThrow(IdentityConfigError);
    expect(() => identityConfigFromEnv({ ...base, JWT_MAX_TOKEN_LIFETIME_SECONDS: '0' })).toThrow(IdentityConfigError);
  });

  it('refuses a plain-http JWKS URL unless explicitly allowed', () => {
    const url = { JWT_JWKS_URL: 'http://idp.internal/jwks', JWT_ISSUER: 'https://i', JWT_AUDIENCE: 'a' };
    expect(() => identityConfigFromEnv(url)).toThrow(/plain http/);
    expect(() => identityConfigFromEnv({ ...url, JWT_JWKS_URL: 'ftp://idp/jwks' })).toThrow(IdentityConfigError);
    expect(identityConfigFromEnv({ ...url, JWT_JWKS_ALLOW_HTTP: 'true' }).jwks).toEqual({ kind: 'url', url: new URL('http://idp.internal/jwks') });
    expect(identityConfigFromEnv({ ...url, JWT_JWKS_URL: 'https://idp/jwks' }).jwks.kind).toBe('url');
    expect(identityConfigFromEnv({ ...base, JWT_MAX_TOKEN_LIFETIME_SECONDS: '900' }).maxTokenLifetimeSeconds).toBe(900);
  });
});
