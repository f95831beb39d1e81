/**
 * Policy store operations on etcd. Every write is one transaction guarded by
 * a compare on the policy's meta key, so concurrent writers cannot interleave
 * and a watcher never sees a half-written policy (see keys.ts).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Etcd3, GRPCDeadlineExceededError, GRPCUnavailableError, Range, isRecoverableError, type IKeyValue, type IOptions, type IResponseOp } from 'etcd3';
import {
  CircuitState,
  ConsecutiveBreaker,
  ExponentialBackoff,
  TimeoutStrategy,
  circuitBreaker,
  handleWhen,
  noop,
  retry,
  timeout,
  wrap,
  type CircuitBreakerPolicy,
  type IDefaultPolicyContext,
  type IPolicy,
} from 'cockatiel';
import { policyKeys, POLICIES_PREFIX, parsePolicyKey, type HistoryPart } from './keys.js';

export const DEFAULT_HISTORY_RETENTION = 50;
export const DEFAULT_ETCD_CALL_TIMEOUT_MS = 2_000;
/** Attempts of an unconditional write before giving up to a stream of concurrent writers. */
const MAX_WRITE_ATTEMPTS = 5;

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
}

export interface StoredPolicy {
  meta: PolicyMetadata;
  rego: string;
  /** The data document as JSON text, exactly as it was stored. */
  dataText: string;
  /** The policy object as JSON text: {"rego": <rego>, "data": <dataText>}. */
  body: string;
  /** Present when asked for (current versions only). */
  wasm?: Buffer;
}

export interface PolicySubmission {
  rego: string;
  dataText: string;
  wasm: Uint8Array;
  author: string;
  opaVersion: string;
  entrypoint: string;
  syntaxVersion: 'v0' | 'v1';
}

/** Preconditions of a write, in store terms (the CMS maps If-Match / If-None-Match onto them). */
export interface WriteConditions {
  /** The current version must be one of these; 'any' means the policy must exist. */
  ifVersion?: number[] | 'any';
  /** The policy must not exist. */
  ifAbsent?: boolean;
}

export interface PutResult {
  created: boolean;
  meta: PolicyMetadata;
  /** Time spent in etcd calls for this write (reads and the transaction), milliseconds. */
  etcdMs: number;
}

export class PolicyNotFoundError extends Error {
  override readonly name = 'PolicyNotFoundError';
}
export class PreconditionFailedError extends Error {
  override readonly name = 'PreconditionFailedError';
}
export class WriteConflictError extends Error {
  override readonly name = 'WriteConflictError';
}
export class PolicyTooLargeError extends Error {
  override readonly name = 'PolicyTooLargeError';
}
/** etcd could not be reached or did not answer in time; nothing was written. */
export class StoreUnavailableError extends Error {
  override readonly name = 'StoreUnavailableError';
}

export interface EtcdTlsFiles {
  /** PEM file of the CA that signed the members' certificates (system roots when absent). */
  caFile?: string;
  /** PEM files of this client's certificate and key, for members that require client certificates (mutual TLS). */
  certFile?: string;
  keyFile?: string;
}

export interface EtcdClientOptions {
  /** Deadline of each attempt of a unary call, ms; with several endpoints a failed attempt is retried on another member for up to twice this long (see createEtcdClient). */
  callTimeoutMs?: number;
  /** TLS to the members; the endpoints must then be https://. */
  tls?: EtcdTlsFiles;
}

/**
 * gRPC keepalive towards every member. A member cut off the network (packets
 * dropped, nothing refused) leaves the client with a TCP connection that
 * looks alive until the kernel gives up, many minutes later; a ping that is
 * not answered within the timeout closes it, which fails the calls and the
 * watch stream on it so that they move to another member.
 *
 * etcd 3.4 enforces a minimum interval between client pings
 * (--grpc-keepalive-min-time, default 5 s) and does not permit pings on a
 * connection without an active call (its enforcement policy has
 * PermitWithoutStream false): a client that pings more often, or pings an
 * idle connection, gets GOAWAY "too_many_pings" after three offences and
 * grpc-js then doubles its own interval for good. Hence 6 s (the interval
 * grpc-js keeps is this plus a round trip, so it never falls under 5 s) and
 * no pings without calls: idle connections are checked by the ping grpc-js
 * sends when the next call starts on them, and the watch stream is an
 * active call all the time. The 3 s timeout leaves room for a busy member
 * while still giving up on a silent one within 9 s of its last answer.
 */
export const ETCD_GRPC_KEEPALIVE = {
  'grpc.keepalive_time_ms': 6_000,
  'grpc.keepalive_timeout_ms': 3_000,
  'grpc.keepalive_permit_without_calls': 0,
} as const;

/** How long a member that failed a call is skipped before one call may try it again. */
export const ETCD_MEMBER_RETRY_AFTER_MS = 5_000;

/** ETCD_CACERT, ETCD_CERT, ETCD_KEY (PEM file paths) as createEtcdClient options. */
export function etcdClientOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): EtcdClientOptions {
  const file = (name: string) => env[name]?.trim() || undefined;
  const caFile = file('ETCD_CACERT');
  const certFile = file('ETCD_CERT');
  const keyFile = file('ETCD_KEY');
  if (!caFile && !certFile && !keyFile) return {};
  return { tls: { ...(caFile ? { caFile } : {}), ...(certFile ? { certFile } : {}), ...(keyFile ? { keyFile } : {}) } };
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new Error(`cannot read the etcd ${what} ${path}: ${(error as Error).message}`, { cause: error });
  }
}

function etcdCredentials(endpoints: string[], tls: EtcdTlsFiles | undefined): IOptions['credentials'] {
  if (!tls || (!tls.caFile && !tls.certFile && !tls.keyFile)) return undefined;
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile)) throw new Error('an etcd client certificate needs its key, and a key its certificate (ETCD_CERT and ETCD_KEY)');
  const plain = endpoints.filter((endpoint) => !endpoint.startsWith('https://'));
  // etcd3 would speak TLS to them anyway; say so rather than fail at the first call.
  if (plain.length > 0) throw new Error(`etcd TLS settings are given but these endpoints are not https://: ${plain.join(', ')}`);
  return {
    // grpc-js falls back to the system's roots when there is no CA; etcd3's type insists on one.
    rootCertificate: (tls.caFile ? readPem(tls.caFile, 'CA certificate') : null) as Buffer,
    ...(tls.certFile && tls.keyFile
      ? { certChain: readPem(tls.certFile, 'client certificate'), privateKey: readPem(tls.keyFile, 'client key') }
      : {}),
  };
}

/**
 * Errors counted against the member that gave them: it is unreachable,
 * reset, silent past a keepalive (UNAVAILABLE from the transport), or it let
 * the deadline pass. Not etcd's own UNAVAILABLE answers ("etcdserver: no
 * leader", "leader changed", "request timed out"): during an election every
 * member gives them for a second or two, and skipping them all would refuse
 * calls after the election is over. Not CANCELLED either: etcd3 cancels a
 * watch stream on purpose when its last watch ends.
 */
function isMemberFailure(error: Error): boolean {
  if (error instanceof GRPCDeadlineExceededError) return true;
  return error instanceof GRPCUnavailableError && !error.message.includes('etcdserver:');
}

/**
 * One circuit breaker per member, sharing a view of the others: a member
 * that failed a call is skipped for ETCD_MEMBER_RETRY_AFTER_MS (then one
 * call tries it again), unless no member is left to go to. Then calls go
 * through anyway: every member failed recently (etcd lost quorum, or this
 * node its network), and refusing without trying would only delay the
 * first success once etcd is back.
 */
function memberBreakers(): (host: string) => IPolicy<IDefaultPolicyContext> {
  const breakers: CircuitBreakerPolicy[] = [];
  return () => {
    const breaker = circuitBreaker(handleWhen(isMemberFailure), {
      halfOpenAfter: ETCD_MEMBER_RETRY_AFTER_MS,
      breaker: new ConsecutiveBreaker(1),
    });
    breakers.push(breaker);
    const policy: Pick<IPolicy<IDefaultPolicyContext>, 'execute'> = {
      execute: (fn, signal) =>
        breakers.every((b) => b.state !== CircuitState.Closed)
          ? Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal }))
          : breaker.execute(fn, signal),
    };
    // etcd3 only ever calls execute() on a host's policy.
    return policy as IPolicy<IDefaultPolicyContext>;
  };
}

/**
 * An etcd3 client that fails fast but fails over. Every unary call attempt
 * has a deadline of `callTimeoutMs`. With several endpoints (the members of
 * one cluster):
 *
 * - a call that fails for a transient reason (member unreachable, deadline
 *   passed, an election in progress) is tried again on the next member, at
 *   once and then with short growing pauses (50 ms to 500 ms), until
 *   2 × `callTimeoutMs` have passed since the call began: after an attempt
 *   that used its whole deadline on a silent member, another member still
 *   gets one; an election (a second or two with the deploy/ settings) is
 *   waited out. A call therefore answers or fails within 3 × `callTimeoutMs`
 *   (6 s by default), and in practice within one deadline, since members
 *   that failed are skipped:
 * - a member that failed a call is skipped by later calls and watch streams
 *   (see memberBreakers).
 *
 * A write retried after a deadline may have been committed by the first
 * attempt: PolicyStore's writes are transactions guarded by a compare, so
 * the retry cannot apply twice (see PolicyStore.put).
 *
 * With one endpoint there is nowhere to fail over to: no retry and no
 * breaker, so a call fails within `callTimeoutMs` and the next call tries
 * again at once. Streams (watches) get no deadline; a watch stream on a
 * member that failed is re-established on another one by etcd3 (and see
 * PolicyWatcher for one that goes silent).
 */
export function createEtcdClient(endpoints: string[], options: EtcdClientOptions = {}): Etcd3 {
  const callTimeout = options.callTimeoutMs ?? DEFAULT_ETCD_CALL_TIMEOUT_MS;
  const credentials = etcdCredentials(endpoints, options.tls);
  // The retries stop when the window closes (the attempt then running still
  // ends at its own deadline); the count only bounds a flood of fast failures.
  const failover = wrap(
    timeout(2 * callTimeout, TimeoutStrategy.Cooperative),
    retry(handleWhen(isRecoverableError), { maxAttempts: 20, backoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: 500 }) }),
  );
  return new Etcd3({
    hosts: endpoints,
    ...(credentials ? { credentials } : {}),
    grpcOptions: { ...ETCD_GRPC_KEEPALIVE },
    // Evaluated for each attempt (etcd3 resolves call options inside the
    // retried function), so a retry gets a fresh deadline.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callTimeout }),
    faultHandling: endpoints.length > 1 ? { host: memberBreakers(), global: failover } : { host: () => noop, global: noop },
  });
}

/** The policy object text GET returns; data is spliced in as text so its numbers stay exact. */
export function renderPolicyObject(rego: string, dataText: string): string {
  return `{"rego":${JSON.stringify(rego)},"data":${dataText}}`;
}

function sha256Hex(bytes: string | Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function firstValue(op: IResponseOp | undefined): IKeyValue | undefined {
  return op?.response_range?.kvs?.[0];
}

/** One stored version from its keys, or null when any of the three is missing. */
function storedPolicy(
  meta: IKeyValue | undefined,
  source: IKeyValue | undefined,
  data: IKeyValue | undefined,
  wasm?: IKeyValue,
): StoredPolicy | null {
  if (!meta || !source || !data) return null;
  const rego = source.value.toString('utf8');
  const dataText = data.value.toString('utf8');
  return {
    meta: JSON.parse(meta.value.toString('utf8')) as PolicyMetadata,
    rego,
    dataText,
    body: renderPolicyObject(rego, dataText),
    ...(wasm ? { wasm: wasm.value } : {}),
  };
}

export class PolicyStore {
  readonly historyRetention: number;

  constructor(
    private readonly client: Etcd3,
    options: { historyRetention?: number } = {},
  ) {
    const retention = options.historyRetention ?? DEFAULT_HISTORY_RETENTION;
    if (!Number.isSafeInteger(retention) || retention < 1) throw new RangeError('history retention must be at least 1');
    this.historyRetention = retention;
  }

  /** Turns any etcd client failure into StoreUnavailableError (or a size refusal). */
  private async etcd<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (message.includes('request is too large')) {
        throw new PolicyTooLargeError('the policy is too large for etcd', { cause: error });
      }
      throw new StoreUnavailableError('etcd is unavailable', { cause: error });
    }
  }

  /** Succeeds when etcd answers a read. */
  async ping(): Promise<void> {
    await this.etcd(() => this.client.get(`${POLICIES_PREFIX}`).exec());
  }

  async get(name: string, options: { withWasm?: boolean } = {}): Promise<StoredPolicy | null> {
    const keys = policyKeys(name);
    const reads = [this.client.get(keys.meta), this.client.get(keys.source), this.client.get(keys.data)];
    if (options.withWasm) reads.push(this.client.get(keys.wasm));
    // One read-only transaction: the three or four keys come from the same revision.
    const response = await this.etcd(() => this.client.if(keys.meta, 'Create', '>', 0).then(...reads).commit());
    if (!response.succeeded) return null;
    const [meta, source, data, wasm] = response.responses.map(firstValue);
    return storedPolicy(meta, source, data, wasm);
  }

  /** Metadata of every current policy, sorted by name. */
  async list(): Promise<PolicyMetadata[]> {
    const keys = await this.etcd(() => this.client.getAll().prefix(POLICIES_PREFIX).keys());
    const metaKeys = keys.filter((key) => {
      const parsed = parsePolicyKey(key);
      return parsed?.kind === 'current' && parsed.part === 'meta';
    });
    const values = await this.etcd(() => Promise.all(metaKeys.map((key) => this.client.get(key).string())));
    return values
      .filter((value): value is string => value !== null)
      .map((value) => JSON.parse(value) as PolicyMetadata)
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Metadata of the retained versions, newest first. Survives a delete of the policy. */
  async history(name: string): Promise<PolicyMetadata[]> {
    const keys = policyKeys(name);
    const response = await this.etcd(() =>
      this.client.getAll().prefix(keys.historyPrefix('meta')).sort('Key', 'Descend').exec(),
    );
    return response.kvs.map((kv) => JSON.parse(kv.value.toString('utf8')) as PolicyMetadata);
  }

  async historyVersion(name: string, version: number): Promise<StoredPolicy | null> {
    const keys = policyKeys(name);
    const response = await this.etcd(() =>
      this.client
        .if(keys.history('meta', version), 'Create', '>', 0)
        .then(
          this.client.get(keys.history('meta', version)),
          this.client.get(keys.history('source', version)),
          this.client.get(keys.history('data', version)),
        )
        .commit(),
    );
    if (!response.succeeded) return null;
    const [meta, source, data] = response.responses.map(firstValue);
    return storedPolicy(meta, source, data);
  }

  private async readMeta(name: string): Promise<{ meta: PolicyMetadata; modRevision: string } | null> {
    const response = await this.etcd(() => this.client.get(policyKeys(name).meta).exec());
    const kv = response.kvs[0];
    if (!kv) return null;
    return { meta: JSON.parse(kv.value.toString('utf8')) as PolicyMetadata, modRevision: kv.mod_revision };
  }

  private async lastHistoryVersion(name: string): Promise<number> {
    const keys = policyKeys(name);
    const newest = await this.etcd(() =>
      this.client.getAll().prefix(keys.historyPrefix('meta')).sort('Key', 'Descend').limit(1).keys(),
    );
    const parsed = newest[0] === undefined ? null : parsePolicyKey(newest[0]);
    return parsed?.kind === 'history' ? parsed.version : 0;
  }

  private checkConditions(current: PolicyMetadata | null, conditions: WriteConditions): void {
    if (conditions.ifAbsent && current) throw new PreconditionFailedError('the policy already exists');
    const expected = conditions.ifVersion;
    if (expected === undefined) return;
    if (!current) throw new PreconditionFailedError('the policy does not exist');
    if (expected !== 'any' && !expected.includes(current.version)) {
      throw new PreconditionFailedError(`the policy is at version ${current.version}`);
    }
  }

  /** Raises PreconditionFailedError if the conditions do not hold now (an early check; put re-checks atomically). */
  async checkWriteConditions(name: string, conditions: WriteConditions): Promise<void> {
    this.checkConditions((await this.readMeta(name))?.meta ?? null, conditions);
  }

  /**
   * Writes a new version. The transaction only commits if the meta key is
   * unchanged since it was read; a writer that loses re-reads, re-checks its
   * conditions (so a stale If-Match fails with PreconditionFailedError) and,
   * when it has none, tries again on top of the winner.
   */
  async put(name: string, submission: PolicySubmission, conditions: WriteConditions = {}): Promise<PutResult> {
    const keys = policyKeys(name);
    const started = performance.now();
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const current = await this.readMeta(name);
      this.checkConditions(current?.meta ?? null, conditions);
      const version = current ? current.meta.version + 1 : (await this.lastHistoryVersion(name)) + 1;
      const body = renderPolicyObject(submission.rego, submission.dataText);
      const meta: PolicyMetadata = {
        name,
        version,
        sha256: sha256Hex(body),
        wasmSha256: sha256Hex(submission.wasm),
        author: submission.author,
        updatedAt: new Date().toISOString(),
        opaVersion: submission.opaVersion,
        entrypoint: submission.entrypoint,
        syntaxVersion: submission.syntaxVersion,
      };
      const metaText = JSON.stringify(meta);
      const wasm = Buffer.from(submission.wasm.buffer, submission.wasm.byteOffset, submission.wasm.byteLength);
      const ops = [
        this.client.put(keys.source).value(submission.rego),
        this.client.put(keys.data).value(submission.dataText),
        this.client.put(keys.wasm).value(wasm),
        this.client.put(keys.history('meta', version)).value(metaText),
        this.client.put(keys.history('source', version)).value(submission.rego),
        this.client.put(keys.history('data', version)).value(submission.dataText),
        this.client.put(keys.meta).value(metaText),
        ...this.pruneHistoryOps(name, version),
      ];
      const guard = current
        ? this.client.if(keys.meta, 'Mod', '==', current.modRevision)
        : this.client.if(keys.meta, 'Create', '==', 0);
      const response = await this.etcd(() => guard.then(...ops).commit());
      if (response.succeeded || (await this.committedEarlier(keys.history('meta', version), metaText))) {
        return { created: current === null, meta, etcdMs: performance.now() - started };
      }
    }
    throw new WriteConflictError('too many concurrent writes to this policy; try again');
  }

  /**
   * After a transaction's compare failed: whether that same transaction had
   * committed already. It happens when the client retried it on another
   * member because the first attempt's answer was lost (deadline passed, the
   * member cut off after the commit): the retry then finds its own write and
   * fails the compare. Without this check an unconditional write would go in
   * a second time as the next version, and an If-Match write would report
   * 412 against itself. The history entry of the version, written by the
   * same transaction, decides: its metadata names the author, the digests
   * and the time to the millisecond, so holding exactly ours means ours
   * committed. A concurrent writer's version never matches, and is handled
   * as before (re-read, re-check, try again on top).
   */
  private async committedEarlier(historyMetaKey: string, metaText: string): Promise<boolean> {
    const stored = await this.etcd(() => this.client.get(historyMetaKey).string());
    return stored === metaText;
  }

  /** Deletes of history entries older than the retention window, for the write of `version`. */
  private pruneHistoryOps(name: string, version: number) {
    const oldestKept = version - this.historyRetention + 1;
    if (oldestKept <= 1) return [];
    const keys = policyKeys(name);
    const parts: HistoryPart[] = ['meta', 'source', 'data'];
    return parts.map((part) =>
      this.client.delete().range(new Range(keys.history(part, 0), keys.history(part, oldestKept))),
    );
  }

  /** Removes the current version (history stays). Throws PolicyNotFoundError when there is none. */
  async delete(name: string, conditions: WriteConditions = {}): Promise<PolicyMetadata> {
    const keys = policyKeys(name);
    let attempted: PolicyMetadata | null = null;
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const current = await this.readMeta(name);
      // Our transaction failed its compare and the policy is gone: either it
      // had committed (a retried attempt whose first answer was lost) or a
      // concurrent delete removed the same version. Either way the version
      // this request meant to delete is deleted, which is what it asked for.
      if (!current && attempted) return attempted;
      if (!current) {
        if (conditions.ifVersion !== undefined) throw new PreconditionFailedError('the policy does not exist');
        throw new PolicyNotFoundError(`no policy named ${name}`);
      }
      this.checkConditions(current.meta, conditions);
      attempted = current.meta;
      const response = await this.etcd(() =>
        this.client
          .if(keys.meta, 'Mod', '==', current.modRevision)
          .then(
            this.client.delete().key(keys.source),
            this.client.delete().key(keys.data),
            this.client.delete().key(keys.wasm),
            this.client.delete().key(keys.meta),
          )
          .commit(),
      );
      if (response.succeeded) return current.meta;
    }
    throw new WriteConflictError('too many concurrent writes to this policy; try again');
  }
}
