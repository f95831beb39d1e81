/**
 * Gatehouse's etcd client: TLS (etcd/config.ts reads it from the environment), gRPC keepalive,
 * failover across the members of one cluster, and a new auth token when
 * etcd's access control changes. The CMS, the gateway's runner and the
 * decision API all connect through createEtcdClient.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Etcd3, GRPCDeadlineExceededError, GRPCUnavailableError, isRecoverableError, type IOptions } from 'etcd3';
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

export const DEFAULT_ETCD_CALL_TIMEOUT_MS = 2_000;

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
  /**
   * etcd user and password, when the cluster has auth enabled and this
   * client does not authenticate with its certificate's common name.
   */
  auth?: { username: string; password: string };
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

/** A file the etcd client needs (a PEM, a password file), or an error naming it. */
export function readEtcdFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    throw new Error(`cannot read the etcd ${what} ${path}: ${(error as Error).message}`, { cause: error });
  }
}

function etcdCredentials(endpoints: string[], tls: EtcdTlsFiles | undefined): IOptions['credentials'] {
  if (!tls || (!tls.caFile && !tls.certFile && !tls.keyFile)) return undefined;
  if (Boolean(tls.certFile) !== Boolean(tls.keyFile))
    throw new Error('an etcd client certificate needs its key, and a key its certificate (ETCD_CERT and ETCD_KEY)');
  const plain = endpoints.filter((endpoint) => !endpoint.startsWith('https://'));
  // etcd3 would speak TLS to them anyway; say so rather than fail at the first call.
  if (plain.length > 0) throw new Error(`etcd TLS settings are given but these endpoints are not https://: ${plain.join(', ')}`);
  return {
    // grpc-js falls back to the system's roots when there is no CA; etcd3's type insists on one.
    rootCertificate: (tls.caFile ? readEtcdFile(tls.caFile, 'CA certificate') : null) as Buffer,
    ...(tls.certFile && tls.keyFile
      ? { certChain: readEtcdFile(tls.certFile, 'client certificate'), privateKey: readEtcdFile(tls.keyFile, 'client key') }
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
 *
 * With any number of endpoints, a call etcd refused because its access
 * control changed meanwhile is tried again with a new token (see
 * isAuthStoreChanged and renewTokenOnAuthStoreChange).
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
  let renewToken = () => {};
  const reauthenticate = retry(handleWhen(isAuthStoreChanged), {
    maxAttempts: ETCD_AUTH_STORE_RETRIES,
    backoff: new ExponentialBackoff({ initialDelay: 20, maxDelay: 500 }),
  });
  // The first retry keeps the token: a write overtaken by a change needs no
  // other (with a simple token or a certificate, etcd checks each request
  // against the auth store as it is when the request arrives); a JWT token
  // carries the store's revision it was issued at, and needs renewing.
  reauthenticate.onRetry(({ attempt }) => attempt > 1 && renewToken());
  const client = new Etcd3({
    hosts: endpoints,
    ...(credentials ? { credentials } : {}),
    ...(options.auth ? { auth: options.auth } : {}),
    grpcOptions: { ...ETCD_GRPC_KEEPALIVE },
    // Evaluated for each attempt (etcd3 resolves call options inside the
    // retried function), so a retry gets a fresh deadline.
    defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + callTimeout }),
    faultHandling: endpoints.length > 1 ? { host: memberBreakers(), global: wrap(reauthenticate, failover) } : { host: () => noop, global: reauthenticate },
  });
  renewToken = renewTokenOnAuthStoreChange(client);
  return client;
}

/** How many times a call refused with "revision of auth store is old" is tried again (after 20 ms to 500 ms; from the second time, with a new token). */
export const ETCD_AUTH_STORE_RETRIES = 5;

const AUTH_STORE_CHANGED = 'revision of auth store is old';

/**
 * etcd's refusal of a request checked against an older state of its access
 * control (users, roles, permissions) than the one it is applied under:
 * gRPC INVALID_ARGUMENT "etcdserver: revision of auth store is old", or a
 * watch canceled for that reason. It happens to a write that was in flight
 * while an operator changed a role or added a user (whatever the client
 * authenticates with: certificate, simple token or JWT), and to every call
 * made with a JWT token issued before the change. Nothing was applied: the
 * call may be made again, and with a JWT token it succeeds only with a new
 * token. etcd's Go client does the same (it authenticates again and retries);
 * etcd3 (1.1) only does it for "invalid auth token".
 */
export function isAuthStoreChanged(error: unknown): boolean {
  const message = error instanceof Error ? error.message : typeof error === 'string' ? error : '';
  return message.includes(AUTH_STORE_CHANGED);
}

/** The parts of etcd3's ConnectionPool (etcd3 1.1, lib/connection-pool.js) used below; not part of its typed API. */
interface EtcdPoolInternals {
  authenticator: { invalidateMetadata(): void };
  withConnection(service: string, fn: (...args: never[]) => unknown, ...rest: unknown[]): Promise<unknown>;
}

/**
 * Returns what drops the client's cached auth token, so that its next call
 * authenticates again; and makes a watch canceled because the auth store
 * changed drop it too, before the watch's owner hears of the cancel and
 * watches again (PolicyWatcher, GatewayBudgets and BudgetLedger all do, each
 * on a new stream, which then carries the new token). Without it, a client
 * holding a JWT token issued before the change would have every new watch
 * canceled for good. etcd3 keeps the token in its connection pool, shared
 * by the client and all its namespaces; that pool is not part of its typed
 * API, so its shape is checked here, once, when the client is made.
 */
function renewTokenOnAuthStoreChange(client: Etcd3): () => void {
  const pool = (client as unknown as { pool?: Partial<EtcdPoolInternals> }).pool;
  const authenticator = pool?.authenticator;
  if (!pool || typeof authenticator?.invalidateMetadata !== 'function' || typeof pool.withConnection !== 'function') {
    throw new Error('the etcd3 library no longer has the connection pool this client renews auth tokens through (etcd/client.ts)');
  }
  const renew = () => authenticator.invalidateMetadata();
  const withConnection = pool.withConnection.bind(pool);
  pool.withConnection = async (service, fn, ...rest) => {
    const result = await withConnection(service, fn, ...rest);
    if (service === 'Watch' && result instanceof EventEmitter) {
      result.on('data', (response: { canceled?: boolean; cancel_reason?: string }) => {
        if (response.canceled && isAuthStoreChanged(response.cancel_reason)) renew();
      });
    }
    return result;
  };
  return renew;
}
