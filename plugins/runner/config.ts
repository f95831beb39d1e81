// Runner configuration from the environment APISIX gives it (only variables
// listed under nginx_config.envs in APISIX's config.yaml reach the runner).
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunnerConfig {
  listenAddress: string;
  confExpireSeconds: number;
  shutdownGraceMs: number;
  stallTimeoutMs: number;
  /** Empty when policies are not enforced by this runner (the opa plugin then denies with 503). */
  etcdEndpoints: string[];
  /** Where the last-known-good policy snapshot is kept. */
  stateDir: string;
  /** null disables the metrics/health port. */
  metricsPort: number | null;
  metricsHost: string;
  /** Where APISIX's http-logger posts LLM responses to settle budgets; null: off (no etcd, or "off"). */
  settlePort: number | null;
  /** Processes serving the socket (cluster.ts); 1 serves it from this process alone. */
  workers: number;
}

function positiveNumber(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return value;
}

function port(name: string, raw: string | undefined, fallback: number | null): number | null {
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'off') return null;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0 || value > 65535) throw new Error(`${name} must be a port number or "off"`);
  return value;
}

export function runnerConfigFromEnv(env: NodeJS.ProcessEnv = process.env): RunnerConfig {
  const etcdEndpoints = (env.ETCD_ENDPOINTS ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return {
    // APISIX always sets it; the default serves a runner started by hand
    // for `ext-plugin.path_for_test`.
    listenAddress: env.APISIX_LISTEN_ADDRESS || `unix:${join(tmpdir(), 'gatehouse-runner.sock')}`,
    confExpireSeconds: positiveNumber('APISIX_CONF_EXPIRE_TIME', env.APISIX_CONF_EXPIRE_TIME, 3600),
    shutdownGraceMs: positiveNumber('RUNNER_SHUTDOWN_GRACE_MS', env.RUNNER_SHUTDOWN_GRACE_MS, 800),
    // APISIX's own send/read timeout.
    stallTimeoutMs: positiveNumber('RUNNER_STALL_TIMEOUT_MS', env.RUNNER_STALL_TIMEOUT_MS, 60_000),
    etcdEndpoints,
    stateDir: env.RUNNER_STATE_DIR || join(tmpdir(), 'gatehouse-runner-state'),
    metricsPort: port('RUNNER_METRICS_PORT', env.RUNNER_METRICS_PORT, 9091),
    metricsHost: env.RUNNER_METRICS_HOST || '127.0.0.1',
    settlePort: etcdEndpoints.length > 0 ? port('RUNNER_SETTLE_PORT', env.RUNNER_SETTLE_PORT, 9092) : null,
    workers: workerCount(env.RUNNER_WORKERS),
  };
}

function workerCount(raw: string | undefined): number {
  if (raw === undefined || raw.trim() === '') return availableParallelism();
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1 || value > 64) throw new Error(`RUNNER_WORKERS must be a whole number from 1 to 64, got ${JSON.stringify(raw)}`);
  return value;
}
