/**
 * What the stores kept in etcd (policy/store, budget/store) fail with, and
 * the preconditions both take: the CMS answers each failure with one status
 * (409, 412, 500, 503), whichever store raised it. Every write of these
 * stores is one transaction, so none of these failures leaves a partial
 * write.
 */
import { EtcdAuthenticationFailedError, EtcdPermissionDeniedError, EtcdRoleNotGrantedError } from 'etcd3';

/** Preconditions of a write (the CMS maps If-Match / If-None-Match onto them). */
export interface WriteConditions {
  /** The current version must be one of these; 'any' means the item must exist. */
  ifVersion?: number[] | 'any';
  /** The item must not exist. */
  ifAbsent?: boolean;
}

/** The item is not in the state the write's conditions ask for: 412. */
export class PreconditionFailedError extends Error {
  override readonly name = 'PreconditionFailedError';
}

/** Concurrent writers won every attempt: 409, try again. */
export class WriteConflictError extends Error {
  override readonly name = 'WriteConflictError';
}

/** etcd could not be reached or did not answer in time: 503. A write was not made, or (its answer lost) made whole. */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
  constructor(
    /** Which store, for the answer's title: "policy", "budget". */
    readonly store: string,
    options?: ErrorOptions,
  ) {
    super('etcd is unavailable', options);
  }
}

/**
 * etcd answered, and said no: the service's etcd user may not do this, or
 * its credentials are wrong. A fault of the deployment (500), not a
 * moment's outage: asking again changes nothing.
 */
export class StoreRefusedError extends Error {
  override readonly name = 'StoreRefusedError';
  constructor(
    /** Which store, for the answer's title: "policy", "budget". */
    readonly store: string,
    /** What etcd said. */
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(`etcd refused the request: ${reason}`, options);
  }
}

/** What a store reports for an etcd client failure: refused when etcd said no to these credentials, else unavailable. */
export function storeFailure(store: string, error: unknown): StoreRefusedError | StoreUnavailableError {
  if (error instanceof EtcdPermissionDeniedError || error instanceof EtcdRoleNotGrantedError || error instanceof EtcdAuthenticationFailedError) {
    return new StoreRefusedError(store, error.message, { cause: error });
  }
  return new StoreUnavailableError(store, { cause: error });
}

/**
 * Checks a write's conditions against what is stored now: `what` names the
 * item ("the policy"), `current` says whether it exists and at which
 * version (undefined: it exists but its version cannot be read).
 */
export function checkWriteConditions(what: string, current: { exists: boolean; version: number | undefined }, conditions: WriteConditions): void {
  if (conditions.ifAbsent && current.exists) throw new PreconditionFailedError(`${what} already exists`);
  const expected = conditions.ifVersion;
  if (expected === undefined) return;
  if (!current.exists) throw new PreconditionFailedError(`${what} does not exist`);
  if (expected === 'any') return;
  if (current.version === undefined) throw new PreconditionFailedError(`${what} stored has no readable version`);
  if (!expected.includes(current.version)) throw new PreconditionFailedError(`${what} is at version ${current.version}`);
}
