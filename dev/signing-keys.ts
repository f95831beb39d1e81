// A policy signing key pair for development stacks (npm start, the
// two-datacenter rehearsal): the CMS signs with the private key, every
// gateway verifies with the public one (policy/signing). Made once per
// state directory and kept, so that versions signed by an earlier start stay
// loadable after a restart.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SigningKeyFiles {
  /** The Ed25519 private key, PEM (PKCS#8), mode 0600: the CMS's POLICY_SIGNING_KEY_FILE. */
  privateKeyFile: string;
  /** A JWKS holding its public key: the gateways' POLICY_VERIFY_KEYS_FILE. */
  jwksFile: string;
  kid: string;
}

/** A new Ed25519 key pair as a PEM private key and a public JWK named `kid`. */
export function newSigningKey(kid: string): { privatePem: string; jwk: Record<string, string> } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const { kty, crv, x } = publicKey.export({ format: 'jwk' });
  return {
    privatePem: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    jwk: { kty: kty!, crv: crv!, x: x!, kid, use: 'sig', alg: 'EdDSA' },
  };
}

/** The key pair kept in `dir` (policy-signing/), made when it is not there yet. */
export function ensureSigningKeys(dir: string, kid = 'gatehouse-dev-1'): SigningKeyFiles {
  const keyDir = join(dir, 'policy-signing');
  const files = { privateKeyFile: join(keyDir, `${kid}.pem`), jwksFile: join(keyDir, 'verify-keys.json'), kid };
  if (existsSync(files.privateKeyFile) && existsSync(files.jwksFile)) return files;
  mkdirSync(keyDir, { recursive: true, mode: 0o711 });
  const key = newSigningKey(kid);
  writeFileSync(files.privateKeyFile, key.privatePem, { mode: 0o600 });
  // The gateways may run as another user (nginx's workers): the public keys are readable by all.
  writeFileSync(files.jwksFile, `${JSON.stringify({ keys: [key.jwk] }, null, 2)}\n`, { mode: 0o644 });
  return files;
}
