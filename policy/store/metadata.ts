// What the store writes under a policy's meta key (keys.ts): read by the
// store's operations (store.ts) and by its scans (scan.ts) alike, and the
// content hash its sha256 fields hold (gateways check wasm and data by it).
import { createHash } from 'node:crypto';

/** sha256 of `bytes` (text as UTF-8), hex: how the metadata names content. */
export function sha256Hex(bytes: string | Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export interface PolicyMetadata {
  name: string;
  /** Monotonic per name, starting at 1; it continues after a delete. The CMS's ETag. */
  version: number;
  /** sha256 (hex) of the policy object text as GET returns it: {"rego":...,"data":...}. */
  sha256: string;
  /** sha256 (hex) of the compiled wasm under the wasm key. */
  wasmSha256: string;
  /** `sub` of the identity that wrote this version. */
  author: string;
  /** ISO 8601 time of the write. */
  updatedAt: string;
  opaVersion: string;
  /** The wasm entrypoint: the module's package path with slashes, e.g. "project/authz". */
  entrypoint: string;
  syntaxVersion: 'v0' | 'v1';
  /**
   * The parts of the input the policy can read, as the compiler listed them
   * (`opa deps`): each a path of object keys, e.g. ["request", "path"].
   * Gateways show the policy only these (policy/engine/serialised-input.ts
   * InputProjection). Absent: the whole input (a version written before
   * refs were listed, a v0 policy, or refs opa could not list).
   */
  inputRefs?: string[][];
  /** The CMS's Ed25519 signature of this version (policy/signing); absent when it wrote it unsigned. */
  signature?: PolicySignature;
  /** A candidate's rollout (names.ts): never on a live version. */
  rollout?: CandidateRollout;
}

/**
 * How gateways treat a policy's candidate: `enforcePercent` of its callers
 * (by a stable hash of their subject, policy/candidate/canary.ts) get the
 * candidate enforced; the decisions of the others are shadowed, `samplePercent`
 * of them evaluated by the candidate too (never enforced) and compared.
 */
export interface CandidateRollout {
  samplePercent: number;
  enforcePercent: number;
}

/** A version's signature: by the key `kid`, base64url, over policy/signing's signed document. */
export interface PolicySignature {
  alg: 'EdDSA';
  kid: string;
  sig: string;
}

/** Stands in for the metadata of a policy whose own cannot be read (it is then enforced as unloadable: denied). */
export function unknownMetadata(name: string): PolicyMetadata {
  return {
    name,
    version: 0,
    sha256: '',
    wasmSha256: '',
    author: '',
    updatedAt: new Date(0).toISOString(),
    opaVersion: '',
    entrypoint: '',
    syntaxVersion: 'v1',
  };
}
