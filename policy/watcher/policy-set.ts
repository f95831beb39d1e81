// An immutable set of loaded policies at one etcd revision. The watcher
// builds a new set off to the side and swaps it in with one assignment, so a
// decision that takes the current set once sees every policy of one etcd
// transaction, never a mix of old and new.
import type { PolicyEngine } from '../engine/index.js';
import type { PolicyMetadata } from '../store/index.js';

export interface LoadedPolicy {
  name: string;
  meta: PolicyMetadata;
  engine: PolicyEngine;
  /** The etcd revision of the transaction that wrote this version. */
  modRevision: number;
  /** The data document as JSON text (kept for the on-disk snapshot). */
  dataText: string;
  /** The compiled policy (kept for the on-disk snapshot). */
  wasm: Uint8Array;
  /** When this process swapped it in (ms since the epoch). */
  loadedAt: number;
}

/** Where the current set came from: etcd, the local last-known-good snapshot, or nothing yet. */
export type PolicySource = 'etcd' | 'snapshot' | 'none';

export class PolicySet {
  static readonly empty = new PolicySet(0, new Map(), 'none');

  constructor(
    /** The etcd revision this set reflects (0 when nothing was loaded). */
    readonly revision: number,
    readonly policies: ReadonlyMap<string, LoadedPolicy>,
    readonly source: PolicySource,
  ) {}

  get(name: string): LoadedPolicy | undefined {
    return this.policies.get(name);
  }

  /** False until policies were loaded from etcd or a snapshot: decisions must then fail closed. */
  get isLoaded(): boolean {
    return this.source !== 'none';
  }
}
