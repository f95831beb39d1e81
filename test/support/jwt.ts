/**
 * Test identities: a signing key pair, a JWKS file in a temp dir, and tokens
 * that are valid or broken in one precise way each.
 *
 *   const keys = await createTestKeys();
 *   keys.jwksFile, keys.issuer, keys.audience
 *   keys.env: JWT_JWKS_FILE, JWT_ISSUER and JWT_AUDIENCE for a service under test
 *   await keys.token({ sub: 'alice', role: 'platform_admin' })
 *   await keys.expiredToken(claims), keys.wrongIssuerToken(claims), ...
 */
import type { webcrypto } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { base64url, exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose';
import type { IdentityConfig } from '../../identity/index.js';

export const TEST_ISSUER = 'https://issuer.gatehouse.test';
export const TEST_AUDIENCE = 'gatehouse-cms';
const ALG = 'ES256';

export interface TestKeys {
  jwksFile: string;
  issuer: string;
  audience: string;
  kid: string;
  /** The environment a service reads these keys from: JWT_JWKS_FILE, JWT_ISSUER, JWT_AUDIENCE. */
  env: { JWT_JWKS_FILE: string; JWT_ISSUER: string; JWT_AUDIENCE: string };
  /** A valid token (1 hour) with the given claims. */
  token(claims: JWTPayload, options?: { header?: Record<string, unknown>; expiresIn?: string }): Promise<string>;
  expiredToken(claims: JWTPayload): Promise<string>;
  notYetValidToken(claims: JWTPayload): Promise<string>;
  wrongIssuerToken(claims: JWTPayload): Promise<string>;
  wrongAudienceToken(claims: JWTPayload): Promise<string>;
  /** Signed by a key that is not in the JWKS but carries the JWKS key's kid. */
  badSignatureToken(claims: JWTPayload): Promise<string>;
  /** Signed by a key whose kid is not in the JWKS. */
  unknownKidToken(claims: JWTPayload): Promise<string>;
  /** Valid signature, no kid in the header. */
  noKidToken(claims: JWTPayload): Promise<string>;
  /** An unsecured JWT: header {"alg":"none"}, empty signature. */
  algNoneToken(claims: JWTPayload): Promise<string>;
  /** Verifier settings that trust these keys (ES256, 5 s clock tolerance, default claim names). */
  identityConfig: IdentityConfig;
  cleanup(): Promise<void>;
}

export async function createTestKeys(): Promise<TestKeys> {
  const dir = await mkdtemp(join(tmpdir(), 'gatehouse-jwks-'));
  const trusted = await generateKeyPair(ALG, { extractable: true });
  const stranger = await generateKeyPair(ALG, { extractable: true });
  const kid = 'test-key-1';
  const publicJwk = { ...(await exportJWK(trusted.publicKey)), kid, alg: ALG, use: 'sig' };
  const jwksFile = join(dir, 'jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [publicJwk] }));

  const now = () => Math.floor(Date.now() / 1000);

  function sign(
    claims: JWTPayload,
    {
      key = trusted.privateKey,
      header = { alg: ALG, kid } as Record<string, unknown>,
      issuer = TEST_ISSUER,
      audience = TEST_AUDIENCE,
      issuedAt = now(),
      expiresAt = now() + 3600,
      notBefore,
    }: {
      key?: webcrypto.CryptoKey;
      header?: Record<string, unknown>;
      issuer?: string;
      audience?: string;
      issuedAt?: number;
      /** Seconds since the epoch, or a span from now such as "2s". */
      expiresAt?: number | string;
      notBefore?: number;
    } = {},
  ): Promise<string> {
    const jwt = new SignJWT(claims)
      .setProtectedHeader({ alg: ALG, ...header })
      .setIssuer(issuer)
      .setAudience(audience)
      .setIssuedAt(issuedAt)
      .setExpirationTime(expiresAt);
    if (notBefore !== undefined) jwt.setNotBefore(notBefore);
    return jwt.sign(key);
  }

  return {
    jwksFile,
    issuer: TEST_ISSUER,
    audience: TEST_AUDIENCE,
    kid,
    env: { JWT_JWKS_FILE: jwksFile, JWT_ISSUER: TEST_ISSUER, JWT_AUDIENCE: TEST_AUDIENCE },
    token: (claims, options = {}) =>
      sign(claims, { header: { alg: ALG, kid, ...options.header }, ...(options.expiresIn ? { expiresAt: options.expiresIn } : {}) }),
    // Well past any clock tolerance.
    expiredToken: (claims) => sign(claims, { issuedAt: now() - 7200, expiresAt: now() - 3600 }),
    notYetValidToken: (claims) => sign(claims, { notBefore: now() + 3600 }),
    wrongIssuerToken: (claims) => sign(claims, { issuer: 'https://someone-else.test' }),
    wrongAudienceToken: (claims) => sign(claims, { audience: 'another-service' }),
    badSignatureToken: (claims) => sign(claims, { key: stranger.privateKey }),
    unknownKidToken: (claims) => sign(claims, { key: stranger.privateKey, header: { alg: ALG, kid: 'not-in-jwks' } }),
    noKidToken: (claims) => sign(claims, { header: { alg: ALG } }),
    async algNoneToken(claims) {
      const encode = (value: object) => base64url.encode(JSON.stringify(value));
      const payload = { iss: TEST_ISSUER, aud: TEST_AUDIENCE, iat: now(), exp: now() + 3600, ...claims };
      return `${encode({ alg: 'none', typ: 'JWT', kid })}.${encode(payload)}.`;
    },
    identityConfig: {
      jwks: { kind: 'file', path: jwksFile },
      issuer: TEST_ISSUER,
      audience: [TEST_AUDIENCE],
      algorithms: [ALG],
      clockToleranceSeconds: 5,
      claimNames: { sub: 'sub', role: 'role', project: 'project' },
    },
    cleanup: () => rm(dir, { recursive: true, force: true }),
  };
}
