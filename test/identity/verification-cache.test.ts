// The jwt plugin's verification cache: hits skip the signature check, but an
// entry never outlives the token's exp or the maximum age, and failures are
// never remembered.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFile } from 'node:fs/promises';
import type { webcrypto } from 'node:crypto';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { createIdentityVerifier, type IdentityVerifier } from '../../identity/index.js';
import { cachingVerifier } from '../../identity/index.js';

let keys: TestKeys;
let real: IdentityVerifier;
let calls = 0;
const counting: IdentityVerifier = {
  verifyToken: (token) => (calls++, real.verifyToken(token)),
  verifyAuthorizationHeader: (header) => (calls++, real.verifyAuthorizationHeader(header)),
  keysGeneration: () => real.keysGeneration(),
};

beforeAll(async () => {
  keys = await createTestKeys();
  real = createIdentityVerifier({
    jwks: { kind: 'file', path: keys.jwksFile },
    issuer: keys.issuer,
    audience: [keys.audience],
    algorithms: ['ES256'],
    clockToleranceSeconds: 0,
    claimNames: { sub: 'sub', role: 'role', project: 'project' },
  });
});
afterAll(() => keys?.cleanup());

describe('verification cache', () => {
  it('verifies a token once, then answers from memory until the maximum age', async () => {
    let clock = Date.now();
    const verifier = cachingVerifier(counting, { maxAgeMs: 1000, now: () => clock });
    const token = await keys.token({ sub: 'a', role: 'r', project: 'p' });
    calls = 0;
    for (let i = 0; i < 5; i++) expect((await verifier.verifyAuthorizationHeader(`Bearer ${token}`)).sub).toBe('a');
    expect(calls).toBe(1);
    clock += 1001;
    await verifier.verifyToken(token);
    expect(calls).toBe(2);
  });

  it('never serves a token past its exp', async () => {
    let clock = Date.now();
    const verifier = cachingVerifier(counting, { maxAgeMs: 3_600_000, now: () => clock });
    const token = await keys.token({ sub: 'b' }, { expiresIn: '2s' });
    await verifier.verifyToken(token);
    clock += 2_500;
    calls = 0;
    await new Promise((r) => setTimeout(r, 2_500)); // the real verifier reads the real clock
    await expect(verifier.verifyToken(token)).rejects.toMatchObject({ failure: 'expired' });
    expect(calls).toBe(1);
  });

  it('does not remember failures', async () => {
    const verifier = cachingVerifier(counting);
    const forged = await keys.badSignatureToken({ sub: 'c' });
    calls = 0;
    await expect(verifier.verifyToken(forged)).rejects.toMatchObject({ failure: 'bad_signature' });
    await expect(verifier.verifyToken(forged)).rejects.toMatchObject({ failure: 'bad_signature' });
    expect(calls).toBe(2);
  });

  it('answers a header at once only for a token verified a moment ago, under the same rules', async () => {
    let clock = Date.now();
    const verifier = cachingVerifier(counting, { maxAgeMs: 1000, now: () => clock });
    const token = await keys.token({ sub: 'd', role: 'r', project: 'p' });
    // Never verified: nothing to answer from, whatever the header.
    expect(verifier.rememberedIdentity!(`Bearer ${token}`)).toBeUndefined();
    for (const header of [undefined, '', 'Bearer', `Basic ${token}`, `Bearer ${token} extra`]) expect(verifier.rememberedIdentity!(header)).toBeUndefined();
    await verifier.verifyAuthorizationHeader(`Bearer ${token}`);
    expect(verifier.rememberedIdentity!(`Bearer ${token}`)?.sub).toBe('d');
    expect(verifier.rememberedIdentity!(`Bearer ${token}x`)).toBeUndefined();
    // Remembered by the header as sent: the same token spelt otherwise, as the grammar allows, is verified again (and admitted).
    expect(verifier.rememberedIdentity!(`bearer   ${token} `)).toBeUndefined();
    calls = 0;
    expect((await verifier.verifyAuthorizationHeader(`bearer   ${token} `)).sub).toBe('d');
    expect(calls).toBe(1);
    expect(verifier.rememberedIdentity!(`bearer   ${token} `)?.sub).toBe('d');
    clock += 1001;
    expect(verifier.rememberedIdentity!(`Bearer ${token}`)).toBeUndefined();
    // A failure is never remembered, so never answered at once.
    const forged = await keys.badSignatureToken({ sub: 'e' });
    await expect(verifier.verifyAuthorizationHeader(`Bearer ${forged}`)).rejects.toMatchObject({ failure: 'bad_signature' });
    expect(verifier.rememberedIdentity!(`Bearer ${forged}`)).toBeUndefined();
  });

  it('a header without a bearer token is refused as a rejection, never a throw', async () => {
    const verifier = cachingVerifier(counting);
    let pending: Promise<unknown> | undefined;
    expect(() => (pending = verifier.verifyAuthorizationHeader('Basic abc'))).not.toThrow();
    await expect(pending).rejects.toMatchObject({ failure: 'missing_token' });
    expect(() => (pending = real.verifyAuthorizationHeader(undefined))).not.toThrow();
    await expect(pending).rejects.toMatchObject({ failure: 'missing_token' });
  });

  it('a key removed from the JWKS file revokes its tokens within about a second, cached or not', async () => {
    const file = `${keys.jwksFile}.revocable`;
    const kept = await generateKeyPair('ES256', { extractable: true });
    const revoked = await generateKeyPair('ES256', { extractable: true });
    const jwk = async (key: webcrypto.CryptoKey, kid: string) => ({ ...(await exportJWK(key)), kid, alg: 'ES256' });
    await writeFile(file, JSON.stringify({ keys: [await jwk(kept.publicKey, 'kept'), await jwk(revoked.publicKey, 'revoked')] }));
    const verifier = cachingVerifier(
      createIdentityVerifier({
        jwks: { kind: 'file', path: file },
        issuer: keys.issuer,
        audience: [keys.audience],
        algorithms: ['ES256'],
        clockToleranceSeconds: 0,
        claimNames: { sub: 'sub', role: 'role', project: 'project' },
      }),
      { maxAgeMs: 60_000 },
    );
    const sign = (kid: string, key: webcrypto.CryptoKey) =>
      new SignJWT({ sub: kid }).setProtectedHeader({ alg: 'ES256', kid }).setIssuer(keys.issuer).setAudience(keys.audience).setExpirationTime('1h').sign(key);
    const revokedToken = await sign('revoked', revoked.privateKey);
    const keptToken = await sign('kept', kept.privateKey);
    expect((await verifier.verifyToken(revokedToken)).sub).toBe('revoked'); // now cached for a minute
    await writeFile(file, JSON.stringify({ keys: [await jwk(kept.publicKey, 'kept')] }));
    const deadline = Date.now() + 3_000;
    let refused = false;
    while (!refused && Date.now() < deadline) {
      refused = await verifier.verifyToken(revokedToken).then(
        () => false,
        () => true,
      );
      if (!refused) await new Promise((r) => setTimeout(r, 50));
    }
    expect(refused).toBe(true);
    expect(verifier.rememberedIdentity!(`Bearer ${revokedToken}`)).toBeUndefined();
    expect((await verifier.verifyToken(keptToken)).sub).toBe('kept');
  });
});
