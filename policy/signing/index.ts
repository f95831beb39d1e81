/**
 * Signed policy versions. The CMS signs every version it writes (Ed25519,
 * over the canonical document below) and the signature travels in the
 * version's metadata (store/metadata.ts); every gateway that enforces
 * policies verifies it against its configured public keys before it loads
 * the version. A version written into etcd past the CMS (anyone with etcd
 * write access) carries no valid signature, and is then enforced as
 * unloadable: every decision that needs it is denied.
 *
 * The signed document names what a gateway enforces, as the gateway can
 * check it: the policy and version, the sha256 of the compiled wasm and of
 * the data document, the entrypoint, and the parts of the input the policy
 * is shown (its `inputRefs`, when it has them: who could change them could
 * blind a policy to what it reads). JSON of exactly these fields in this
 * order, UTF-8:
 *
 *   {"type":"gatehouse-policy-version/1","name":...,"version":...,
 *    "wasmSha256":...,"dataSha256":...,"entrypoint":...}
 *
 * and, for a version with `inputRefs`:
 *
 *   {"type":"gatehouse-policy-version/2",...the same...,"inputRefs":[[...],...]}
 *
 * Keys: the CMS signs with a private key (a PEM file, or a Vault transit key
 * that never leaves Vault); gateways verify with a JWKS file of Ed25519 (OKP)
 * public keys, each with its `kid`, re-read when it changes, so keys rotate
 * without a restart: add the new key, re-sign (or keep the old key listed
 * until every version signed with it is replaced), then remove the old key.
 */
import { EventEmitter } from 'node:events';
import { createPrivateKey, createPublicKey, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { PolicyMetadata, PolicySignature } from '../store/metadata.js';

/** What a signature covers. */
export interface SignedFields {
  name: string;
  version: number;
  wasmSha256: string;
  dataSha256: string;
  entrypoint: string;
  /** Absent: the policy is shown the whole input. */
  inputRefs?: string[][];
}

/** What a signature of `meta` covers, its data's sha256 given. */
export function signedFieldsOf(meta: PolicyMetadata, dataSha256: string): SignedFields {
  return {
    name: meta.name,
    version: meta.version,
    wasmSha256: meta.wasmSha256,
    dataSha256,
    entrypoint: meta.entrypoint,
    ...(meta.inputRefs !== undefined ? { inputRefs: meta.inputRefs } : {}),
  };
}

/** The bytes a version's signature is made over (see the module comment). */
export function signedDocument(fields: SignedFields): Buffer {
  const common = {
    name: fields.name,
    version: fields.version,
    wasmSha256: fields.wasmSha256,
    dataSha256: fields.dataSha256,
    entrypoint: fields.entrypoint,
  };
  const document =
    fields.inputRefs === undefined
      ? { type: 'gatehouse-policy-version/1', ...common }
      : { type: 'gatehouse-policy-version/2', ...common, inputRefs: fields.inputRefs };
  return Buffer.from(JSON.stringify(document), 'utf8');
}

/** Signs policy versions (the CMS's): a key named by `kid`, held here or in Vault. */
export interface PolicySigner {
  readonly kid: string;
  /** Where the key is, for the start log (never the key). */
  readonly description: string;
  sign(fields: SignedFields): Promise<PolicySignature>;
}

/** A signer over an Ed25519 private key in a PEM file (PKCS#8), read once. */
export function pemFileSigner(path: string, kid: string): PolicySigner {
  let key: KeyObject;
  try {
    key = createPrivateKey(readFileSync(path));
  } catch (cause) {
    throw new Error(`the policy signing key ${path} cannot be read as a PEM private key`, { cause });
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`the policy signing key ${path} is ${key.asymmetricKeyType ?? 'not asymmetric'}, not Ed25519`);
  return {
    kid,
    description: `file ${path}`,
    sign: async (fields) => ({ alg: 'EdDSA', kid, sig: cryptoSign(null, signedDocument(fields), key).toString('base64url') }),
  };
}

/** What a Vault transit signer needs of a Vault client (plugins/vault/session.ts VaultSession). */
export interface TransitClient {
  /** The signature as Vault answers it: "vault:v<version>:<base64>". */
  transitSign(mount: string, key: string, input: Buffer): Promise<string>;
  /** The public keys of a transit key by version, base64. */
  transitPublicKeys(mount: string, key: string): Promise<Map<number, string>>;
}

/** The kid of version `version` of a Vault transit key: what the gateways' keys file names its public key by. */
export function transitKid(key: string, version: number): string {
  return `${key}-v${version}`;
}

/**
 * A signer over an Ed25519 key of Vault's transit engine (type ed25519): the
 * private key never leaves Vault. Each signature names the key version Vault
 * signed with (`<key>-v<n>`), so rotating the key in Vault needs no change
 * here: list the new version's public key on the gateways first
 * (transitVerifyKeys), then rotate.
 */
export function vaultTransitSigner(client: TransitClient, mount: string, key: string): PolicySigner {
  return {
    // Each signature names its version; the log shows the key's kids as a pattern.
    kid: `${key}-v<n>`,
    description: `Vault transit key ${mount}/${key}`,
    async sign(fields) {
      const answer = await client.transitSign(mount, key, signedDocument(fields));
      const match = /^vault:v(\d+):([A-Za-z0-9+/=]+)$/.exec(answer);
      if (!match) throw new Error(`Vault's transit engine answered a signature of an unknown form for ${mount}/${key}`);
      return { alg: 'EdDSA', kid: transitKid(key, Number(match[1])), sig: Buffer.from(match[2]!, 'base64').toString('base64url') };
    },
  };
}

/** The gateways' keys file (a JWKS) for every version of a Vault transit key: what POLICY_VERIFY_KEYS_FILE holds. */
export async function transitVerifyKeys(client: TransitClient, mount: string, key: string): Promise<{ keys: object[] }> {
  const versions = await client.transitPublicKeys(mount, key);
  return {
    keys: [...versions].map(([version, publicKey]) => ({
      kty: 'OKP',
      crv: 'Ed25519',
      x: Buffer.from(publicKey, 'base64').toString('base64url'),
      kid: transitKid(key, version),
      alg: 'EdDSA',
      use: 'sig',
    })),
  };
}

/** Why a version may not be loaded: it carries no signature, or none that a listed key made over these bytes. */
export type SignatureProblem = 'unsigned' | 'bad signature';

export type SignatureVerdict = { ok: true; kid: string } | { ok: false; problem: SignatureProblem; reason: string };

/** Checks versions' signatures against the public keys of a JWKS file, re-read when it changes. */
export interface SignatureVerifier extends EventEmitter {
  /** The kids of the keys in use. */
  readonly kids: string[];
  verify(meta: PolicyMetadata, dataSha256: string): SignatureVerdict;
  /** Stops looking at the file. */
  close(): void;
}

/** How often the verify keys file is looked at for changes. */
const KEYS_CHECK_INTERVAL_MS = 1_000;

/** The Ed25519 public keys of a JWKS text, by kid; throws when it is not one (a private key in it included). */
export function parseVerifyKeys(text: string): Map<string, KeyObject> {
  const parsed = JSON.parse(text) as { keys?: unknown };
  if (!parsed || !Array.isArray(parsed.keys)) throw new Error('not a JWKS: no "keys" array');
  const keys = new Map<string, KeyObject>();
  for (const jwk of parsed.keys as Record<string, unknown>[]) {
    const kid = jwk?.kid;
    if (typeof kid !== 'string' || kid === '') throw new Error('every key needs a kid');
    if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519') throw new Error(`key ${kid} is not an Ed25519 (OKP) key`);
    if ('d' in jwk) throw new Error(`key ${kid} holds a private key; the verify keys file takes public keys only`);
    if (keys.has(kid)) throw new Error(`kid ${kid} is listed twice`);
    keys.set(kid, createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: jwk.x as string }, format: 'jwk' }));
  }
  return keys;
}

/** The verdict on `meta`'s signature by `keys`, its data's sha256 as the gateway computed it. */
export function verifySignature(keys: ReadonlyMap<string, KeyObject>, meta: PolicyMetadata, dataSha256: string): SignatureVerdict {
  const signature = meta.signature;
  if (signature === undefined || signature === null) {
    return { ok: false, problem: 'unsigned', reason: `unsigned: version ${meta.version} carries no signature` };
  }
  if (typeof signature.kid !== 'string' || typeof signature.sig !== 'string') {
    return { ok: false, problem: 'bad signature', reason: `bad signature: version ${meta.version} carries a malformed signature` };
  }
  const key = keys.get(signature.kid);
  if (!key) {
    return {
      ok: false,
      problem: 'bad signature',
      reason: `bad signature: version ${meta.version} is signed by key ${JSON.stringify(signature.kid)}, which is not among the verify keys`,
    };
  }
  const document = signedDocument(signedFieldsOf(meta, dataSha256));
  let valid = false;
  try {
    valid = signature.alg === 'EdDSA' && cryptoVerify(null, document, key, Buffer.from(signature.sig, 'base64url'));
  } catch {
    valid = false;
  }
  if (!valid) {
    return {
      ok: false,
      problem: 'bad signature',
      reason: `bad signature: the signature of version ${meta.version} by key ${JSON.stringify(signature.kid)} does not match its name, version, wasm, data, entrypoint or input refs`,
    };
  }
  return { ok: true, kid: signature.kid };
}

/**
 * A verifier over a JWKS file. The file is read now (a missing or invalid
 * file throws: the gateway does not start), then looked at once a second;
 * when its contents change the verifier emits 'change' with the new kids,
 * and the watcher checks every loaded version again. A file that becomes
 * unreadable or invalid keeps the keys last read (a rotation written in two
 * steps must not deny everything in between), reported through `onError`.
 */
export class FileSignatureVerifier extends EventEmitter implements SignatureVerifier {
  private text: string;
  private keys: Map<string, KeyObject>;
  private seen: string;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly path: string,
    onError: (error: Error) => void = () => undefined,
  ) {
    super();
    this.seen = fileIdentity(path);
    this.text = readFileSync(path, 'utf8');
    this.keys = parseVerifyKeys(this.text);
    this.timer = setInterval(() => {
      try {
        this.check();
      } catch (error) {
        onError(new Error(`the policy verify keys file ${path} cannot be used; keeping the keys read before`, { cause: error }));
      }
    }, KEYS_CHECK_INTERVAL_MS);
    this.timer.unref();
  }

  /** Reads the file again when it may have changed; emits 'change' when its keys did. */
  check(): void {
    const now = fileIdentity(this.path);
    if (now === this.seen) return;
    this.seen = now;
    const next = readFileSync(this.path, 'utf8');
    if (next === this.text) return;
    this.keys = parseVerifyKeys(next);
    this.text = next;
    this.emit('change', this.kids);
  }

  get kids(): string[] {
    return [...this.keys.keys()];
  }

  verify(meta: PolicyMetadata, dataSha256: string): SignatureVerdict {
    return verifySignature(this.keys, meta, dataSha256);
  }

  close(): void {
    clearInterval(this.timer);
  }
}

function fileIdentity(path: string): string {
  try {
    const info = statSync(path);
    return `${info.ino}:${info.size}:${info.mtimeMs}`;
  } catch {
    return 'missing';
  }
}

/** POLICY_VERIFY_KEYS_FILE of `env`, for the services' configuration modules; null: signatures not checked. */
export function verifyKeysFileFromEnv(env: NodeJS.ProcessEnv): string | null {
  return env.POLICY_VERIFY_KEYS_FILE?.trim() || null;
}
