// The runner's configuration: the only part of the runner that reads its
// environment, which APISIX gives it (only variables listed under
// nginx_config.envs in APISIX's config.yaml reach the runner). Everything
// else takes what it needs from RunnerConfig.
//
//   APISIX_LISTEN_ADDRESS        the socket to serve (APISIX sets it; default unix:<tmp>/gatehouse-runner.sock)
//   APISIX_CONF_EXPIRE_TIME      seconds a prepared conf is kept (APISIX sets it; default 3600)
//   RUNNER_WORKERS               processes serving the socket (default: half the cores, rounded up; 1 serves it alone)
//   RUNNER_SHUTDOWN_GRACE_MS     how long calls in flight may finish at a stop (default 800)
//   RUNNER_STALL_TIMEOUT_MS      a connection silent mid-message this long is closed (default 60000, APISIX's own)
//   RUNNER_STATE_DIR             where the last-known-good policy snapshot is kept (default <tmp>/gatehouse-runner-state)
//   RUNNER_METRICS_PORT, RUNNER_METRICS_HOST  metrics and health (default 9091 on 127.0.0.1; "off": none)
//   RUNNER_SETTLE_PORT           where APISIX's http-logger posts LLM answers to settle budgets (default 9092; "off"; none without etcd)
//   LOG_LEVEL                    pino level (default info)
//   ETCD_ENDPOINTS               comma-separated etcd URLs; unset: no policies are enforced (the opa plugin denies with 503)
//   ETCD_CACERT, ETCD_CERT, ETCD_KEY, ETCD_USERNAME, ETCD_PASSWORD, ETCD_PASSWORD_FILE  TLS and user towards etcd (etcd/config.ts)
//   JWT_*                        token verification (identity/config.ts); not set: routes using the jwt plugin fail
//   JWT_VERIFY_CACHE_SECONDS     how long a verified token is remembered (default 30; 0: not at all)
//   VAULT_*                      Vault access for the vault plugin (plugins/vault/config.ts)
//   GATEWAY_ID                   this runner's name in the fleet report and decision logs (default host-runner-pid;
//                                a cluster's workers are <GATEWAY_ID>-w<slot>)
//   GATEHOUSE_DATACENTER         the datacenter named in the fleet report (default none)
//   GATEWAY_REPORT_TTL_SECONDS   how long a dead runner's fleet report outlives it (default 10, 2 to 3600)
//   POLICY_VERIFY_KEYS_FILE      a JWKS of Ed25519 public keys: a policy version loads only when signed by one of
//                                them (policy/signing), re-read when it changes; unset: signatures are not checked
//   DECISION_LOG                 stdout, file:<path> or off (default off); DECISION_LOG_BUFFER events may wait (default 10000)
//   RUNNER_POLICY_CACHE_MB       memory for built policy engines, shared out among the workers (default 256)
//   POLICY_EVAL_WORKERS          0: decisions on the worker's own thread; N: in a pool of N threads (default 0)
//   POLICY_EVAL_FUEL             loop iterations and calls one evaluation may make (default 10000000; off: not metered)
//   POLICY_MEMORY_MAX_MB         memory one policy instance may use (default 64)
//   POLICY_EVAL_TIMEOUT_MS       the pool's deadline per evaluation (default 500)
//   BUDGET_SETTLE_TIMEOUT_SECONDS  how long a call's reservation waits for its answer's usage (default 900)
//   BUDGET_HOLDER_TTL_SECONDS    the lease of this runner's share of the budget ledger (default 10)
//   OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME,
//   OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_SDK_DISABLED  traces (runtime/tracing.ts); no endpoint: none
//                                (service name default gatehouse-runner)
//   RUNNER_WORKER_INDEX, RUNNER_WORKER_RESPAWN  set by the primary for each worker it forks (cluster.ts), not by hand
//
// Without ETCD_ENDPOINTS, what only matters with etcd (the POLICY_*, BUDGET_*
// and GATEWAY_REPORT_TTL_SECONDS variables, etcd's TLS) is not read.
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { etcdClientOptionsFromEnv, etcdEndpoints, type EtcdClientOptions } from '../../etcd/index.js';
import { identityConfigFromEnv, verifyCacheSecondsFromEnv, type IdentityConfig } from '../../identity/index.js';
import { evaluationSettings, type EvaluationSettings } from '../../policy/engine/evaluator.js';
import { policyCacheBytesFromEnv } from '../../policy/engine/cache.js';
import { decisionLogSettings, type DecisionLogSettings } from '../../policy/decision-log/index.js';
import { reportTtlSeconds } from '../../policy/fleet/report.js';
import { verifyKeysFileFromEnv } from '../../policy/signing/index.js';
import { vaultConfigFromEnv, type VaultConfig } from '../vault/config.js';
import { tracingConfigFromEnv, type TracingConfig } from '../../runtime/tracing.js';

export interface RunnerConfig {
  listenAddress: string;
  confExpireSeconds: number;
  shutdownGraceMs: number;
  stallTimeoutMs: number;
  /** Empty when policies are not enforced by this runner (the opa plugin then denies with 503). */
  etcdEndpoints: string[];
  /** TLS and user towards etcd. */
  etcdClient: EtcdClientOptions;
  /** Where the last-known-good policy snapshot is kept. */
  stateDir: string;
  /** null disables the metrics/health port. */
  metricsPort: number | null;
  metricsHost: string;
  /** Where APISIX's http-logger posts LLM responses to settle budgets; null: off (no etcd, or "off"). */
  settlePort: number | null;
  /** Processes serving the socket (cluster.ts); 1 serves it from this process alone. */
  workers: number;
  logLevel: string;
  /** As one worker of a cluster: its slot, and whether it replaces one that died (set by the primary). */
  worker: { slot: number; respawned: boolean };
  /** GATEWAY_ID, when set. */
  gatewayId: string | null;
  datacenter: string | null;
  reportTtlSeconds: number;
  /** POLICY_VERIFY_KEYS_FILE; null: policy signatures are not checked. */
  policyVerifyKeysFile: string | null;
  /** The whole runner's engine budget, bytes (its workers share it out). */
  policyCacheBytes: number;
  evaluation: EvaluationSettings;
  decisionLog: DecisionLogSettings | null;
  budgets: { settleTimeoutMs: number; holderTtlSeconds: number };
  /** Token verification, or why it is not configured (routes using the jwt plugin then fail). */
  identity: { config: IdentityConfig; verifyCacheSeconds: number } | { error: string };
  /** Vault access (null: VAULT_ADDR unset), or why its configuration is refused; without it routes using the vault plugin fail. */
  vault: { config: VaultConfig | null } | { error: string };
  /** Where spans are exported (OTEL_*); null: traces are off. */
  tracing: TracingConfig | null;
}

function positiveNumber(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return value;
}

function positiveSeconds(name: string, raw: string | undefined, fallback: number): number {
  const seconds = Number(raw || fallback);
  if (!Number.isFinite(seconds) || seconds <= 0) throw new Error(`${name} must be a positive number of seconds`);
  return seconds;
}

function port(name: string, raw: string | undefined, fallback: number | null): number | null {
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'off') return null;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0 || value > 65535) throw new Error(`${name} must be a port number or "off"`);
  return value;
}

/** LOG_LEVEL (default info), for the logger made before the rest is read. */
export function logLevelFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOG_LEVEL ?? 'info';
}

export function runnerConfigFromEnv(env: NodeJS.ProcessEnv = process.env): RunnerConfig {
  const endpoints = etcdEndpoints(env, { optional: true });
  // What only a runner with etcd uses is read only then (defaults otherwise).
  const withEtcd: NodeJS.ProcessEnv = endpoints.length > 0 ? env : {};
  return {
    // APISIX always sets it; the default serves a runner started by hand
    // for `ext-plugin.path_for_test`.
    listenAddress: env.APISIX_LISTEN_ADDRESS || `unix:${join(tmpdir(), 'gatehouse-runner.sock')}`,
    confExpireSeconds: positiveNumber('APISIX_CONF_EXPIRE_TIME', env.APISIX_CONF_EXPIRE_TIME, 3600),
    shutdownGraceMs: positiveNumber('RUNNER_SHUTDOWN_GRACE_MS', env.RUNNER_SHUTDOWN_GRACE_MS, 800),
    // APISIX's own send/read timeout.
    stallTimeoutMs: positiveNumber('RUNNER_STALL_TIMEOUT_MS', env.RUNNER_STALL_TIMEOUT_MS, 60_000),
    etcdEndpoints: endpoints,
    etcdClient: endpoints.length > 0 ? etcdClientOptionsFromEnv(env) : {},
    stateDir: env.RUNNER_STATE_DIR || join(tmpdir(), 'gatehouse-runner-state'),
    metricsPort: port('RUNNER_METRICS_PORT', env.RUNNER_METRICS_PORT, 9091),
    metricsHost: env.RUNNER_METRICS_HOST || '127.0.0.1',
    settlePort: endpoints.length > 0 ? port('RUNNER_SETTLE_PORT', env.RUNNER_SETTLE_PORT, 9092) : null,
    workers: workerCount(env.RUNNER_WORKERS),
    logLevel: logLevelFromEnv(env),
    worker: { slot: Number(env.RUNNER_WORKER_INDEX ?? 0), respawned: env.RUNNER_WORKER_RESPAWN === '1' },
    gatewayId: env.GATEWAY_ID || null,
    datacenter: env.GATEHOUSE_DATACENTER || null,
    reportTtlSeconds: reportTtlSeconds(withEtcd),
    policyVerifyKeysFile: verifyKeysFileFromEnv(withEtcd),
    policyCacheBytes: policyCacheBytesFromEnv('RUNNER_POLICY_CACHE_MB', env),
    evaluation: evaluationSettings(withEtcd),
    decisionLog: decisionLogSettings(env),
    budgets: {
      settleTimeoutMs: positiveSeconds('BUDGET_SETTLE_TIMEOUT_SECONDS', withEtcd.BUDGET_SETTLE_TIMEOUT_SECONDS, 900) * 1000,
      holderTtlSeconds: positiveSeconds('BUDGET_HOLDER_TTL_SECONDS', withEtcd.BUDGET_HOLDER_TTL_SECONDS, 10),
    },
    identity: identityFromEnv(env),
    vault: vaultFromEnv(env),
    tracing: tracingConfigFromEnv(env, 'gatehouse-runner'),
  };
}

function identityFromEnv(env: NodeJS.ProcessEnv): RunnerConfig['identity'] {
  try {
    const config = identityConfigFromEnv(env);
    return { config, verifyCacheSeconds: verifyCacheSecondsFromEnv(env) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

function vaultFromEnv(env: NodeJS.ProcessEnv): RunnerConfig['vault'] {
  try {
    return { config: vaultConfigFromEnv(env) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/**
 * RUNNER_WORKERS unset: one per two cores, rounded up. APISIX runs an nginx
 * worker on every core, and the runner's share of a request's CPU is below
 * half of it (bench:gateway: the `jwt` + `opa` chain 100-136 µs beside
 * APISIX's 157-190), so workers for half the cores keep up with every nginx
 * worker. More cost without paying: every process is woken for each call it
 * serves, and two processes woken for half the calls each spend more than
 * one woken for all of them. Measured through APISIX on two cores (eight
 * runs), two workers served the chain at 0.96-1.17x the requests of one for
 * 1.06-1.40x the runner CPU per request, and the pass-through chain at
 * 0.89-0.97x in the last four; each worker also holds its own policies,
 * engines and etcd watch.
 */
export function defaultWorkerCount(cores = availableParallelism()): number {
  return Math.max(1, Math.ceil(cores / 2));
}

/** RUNNER_WORKERS as the runner reads it: unset, defaultWorkerCount(); otherwise 1 to 64 (throws on anything else). */
export function workerCount(raw: string | undefined): number {
  if (raw === undefined || raw.trim() === '') return defaultWorkerCount();
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 64) throw new Error(`RUNNER_WORKERS must be a whole number from 1 to 64, got ${JSON.stringify(raw)}`);
  return value;
}
