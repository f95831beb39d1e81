/**
 * What every part of the CMS API reads from a request the same way: the
 * verified identity, If-Match / If-None-Match, ETags, history versions, list
 * page tokens, and the 405 answer for methods a path does not implement; and
 * how the stores' shared failures are answered.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuthenticationError, Identity } from '../identity/index.js';
import { HttpProblem, ProblemType } from '../http/problem.js';
import { PreconditionFailedError, StoreRefusedError, StoreUnavailableError, WriteConflictError, type WriteConditions } from '../etcd/store-errors.js';
import { PolicySigningError } from '../policy/store/index.js';

declare module 'fastify' {
  interface FastifyRequest {
    identity: Identity | null;
  }
}

export const REALM = 'gatehouse';
export const ALL_METHODS = ['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE', 'OPTIONS'];

export function wwwAuthenticate(error?: AuthenticationError): string {
  if (!error || error.failure === 'missing_token') return `Bearer realm="${REALM}"`;
  return `Bearer realm="${REALM}", error="invalid_token", error_description="${error.publicReason}"`;
}

/** The identity the onRequest hook established; refuses when there is none (never expected: defence in depth). */
export function verifiedIdentity(request: FastifyRequest): Identity {
  if (!request.identity) {
    throw new HttpProblem({
      status: 401,
      type: ProblemType.unauthenticated,
      title: 'Unauthorized',
      detail: 'no verified identity',
      headers: { 'WWW-Authenticate': wwwAuthenticate() },
    });
  }
  return request.identity;
}

export function etag(version: number): string {
  return `"${version}"`;
}

/** If-Match: `*` or a list of our strong ETags; anything unrecognised can never match. */
export function ifMatchCondition(header: string | undefined): WriteConditions['ifVersion'] {
  if (header === undefined) return undefined;
  if (header.trim() === '*') return 'any';
  return header
    .split(',')
    .map((tag) => tag.trim().match(/^"(\d{1,15})"$/)?.[1])
    .filter((version): version is string => version !== undefined)
    .map(Number);
}

export function writeConditions(request: FastifyRequest): WriteConditions {
  const conditions: WriteConditions = {};
  const ifVersion = ifMatchCondition(request.headers['if-match']);
  if (ifVersion !== undefined) conditions.ifVersion = ifVersion;
  if (request.headers['if-none-match']?.trim() === '*') conditions.ifAbsent = true;
  return conditions;
}

/** Whether a GET's If-None-Match names this ETag (a 304 then). */
export function notModified(request: FastifyRequest, tag: string): boolean {
  const ifNoneMatch = request.headers['if-none-match'];
  return ifNoneMatch !== undefined && ifNoneMatch.split(',').some((candidate) => candidate.trim().replace(/^W\//, '') === tag);
}

/** 405 for the methods a path does not implement (after identity and access, like every API answer). */
export function methodNotAllowed(app: FastifyInstance, url: string, implemented: string[]): void {
  const allow = implemented.includes('GET') ? [...implemented, 'HEAD'] : implemented;
  app.route({
    method: ALL_METHODS.filter((method) => !allow.includes(method)),
    url,
    config: { undocumented: true },
    handler: async (_request, reply) => {
      reply.header('Allow', allow.join(', '));
      throw new HttpProblem({ status: 405, detail: `allowed methods: ${allow.join(', ')}` });
    },
  });
}

/** The {version} of a history path: a positive integer (400 otherwise). */
export function versionOf(request: FastifyRequest): number {
  const { version } = request.params as { version: string };
  if (!/^[1-9]\d{0,11}$/.test(version)) {
    throw new HttpProblem({ status: 400, type: ProblemType.invalidPath, title: 'Invalid version', detail: 'versions are positive integers' });
  }
  return Number(version);
}

export const DEFAULT_LIST_LIMIT = 100;
export const MAX_LIST_LIMIT = 1_000;
const PAGE_TOKEN_PREFIX = 'after:';

/** An opaque continuation: the last name of the previous page. */
export function encodePageToken(after: string): string {
  return Buffer.from(`${PAGE_TOKEN_PREFIX}${after}`).toString('base64url');
}

/** A `prefix` of a list by name: the start of a lowercase DNS label. */
const LIST_PREFIX_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/**
 * `limit` and `page_token` of a list request, and `prefix` where the list
 * takes one (`options.prefix`), nothing else. `isName` checks what a token
 * decodes to, so a token names only something the list could have given out.
 */
export function listQuery(
  query: unknown,
  endpoint: string,
  isName: (name: string) => boolean,
  options: { prefix?: boolean } = {},
): { limit: number; after?: string; prefix?: string } {
  const { limit: rawLimit, page_token: token, ...rest } = (query ?? {}) as Record<string, unknown>;
  const rawPrefix = options.prefix ? rest.prefix : undefined;
  const unknown = Object.keys(rest).filter((key) => !(options.prefix && key === 'prefix'));
  if (unknown.length > 0) {
    throw new HttpProblem({
      status: 400,
      detail: `unknown query parameter ${unknown[0]}; ${endpoint} takes limit${options.prefix ? ', prefix' : ''} and page_token`,
    });
  }
  let prefix: string | undefined;
  if (rawPrefix !== undefined) {
    if (typeof rawPrefix !== 'string' || !LIST_PREFIX_PATTERN.test(rawPrefix)) {
      throw new HttpProblem({ status: 400, detail: 'prefix must be 1 to 63 characters of a-z, 0-9 and -, starting with a letter or digit' });
    }
    prefix = rawPrefix;
  }
  const listed = (page: { limit: number; after?: string }) => (prefix === undefined ? page : { ...page, prefix });
  let limit = DEFAULT_LIST_LIMIT;
  if (rawLimit !== undefined) {
    limit = typeof rawLimit === 'string' && /^\d{1,4}$/.test(rawLimit) ? Number(rawLimit) : NaN;
    if (!(limit >= 1 && limit <= MAX_LIST_LIMIT)) throw new HttpProblem({ status: 400, detail: `limit must be an integer from 1 to ${MAX_LIST_LIMIT}` });
  }
  if (token === undefined) return listed({ limit });
  const text = typeof token === 'string' && /^[A-Za-z0-9_-]{1,200}$/.test(token) ? Buffer.from(token, 'base64url').toString('utf8') : '';
  const after = text.startsWith(PAGE_TOKEN_PREFIX) ? text.slice(PAGE_TOKEN_PREFIX.length) : '';
  if (!isName(after)) throw new HttpProblem({ status: 400, detail: 'page_token is not a token this API gave out' });
  return listed({ limit, after });
}

/** "Policy store" for "policy": how an answer's title names a store. */
function storeTitle(store: string): string {
  return `${store.charAt(0).toUpperCase()}${store.slice(1)} store`;
}

/** A failure every store shares (etcd/store-errors.ts) as its answer; null for any other error. */
export function storeProblem(error: unknown): HttpProblem | null {
  if (error instanceof PreconditionFailedError) {
    return new HttpProblem({ status: 412, type: ProblemType.preconditionFailed, title: 'Precondition Failed', detail: error.message });
  }
  if (error instanceof WriteConflictError) {
    return new HttpProblem({ status: 409, type: ProblemType.writeConflict, title: 'Conflict', detail: error.message });
  }
  if (error instanceof StoreRefusedError) {
    return new HttpProblem({
      status: 500,
      type: ProblemType.storeRefused,
      title: `${storeTitle(error.store)} refused the request`,
      detail: `etcd refused the CMS's request (${error.reason}): the CMS's etcd user lacks a permission it needs, or its credentials are wrong; nothing was written`,
    });
  }
  if (error instanceof StoreUnavailableError) {
    return new HttpProblem({
      status: 503,
      type: ProblemType.storeUnavailable,
      title: `${storeTitle(error.store)} unavailable`,
      detail: 'etcd did not answer in time; a write is one transaction, so it happened entirely or not at all',
      headers: { 'Retry-After': '1' },
    });
  }
  if (error instanceof PolicySigningError) {
    return new HttpProblem({
      status: 503,
      type: ProblemType.signingUnavailable,
      title: 'Policy signing unavailable',
      detail: `${error.message}; nothing was written`,
      headers: { 'Retry-After': '1' },
    });
  }
  return null;
}
