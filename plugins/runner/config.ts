// Runner configuration from the environment APISIX gives it.
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunnerConfig {
  listenAddress: string;
  confExpireSeconds: number;
  shutdownGraceMs: number;
  stallTimeoutMs: number;
}

function positiveNumber(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return value;
}

export function runnerConfigFromEnv(env: NodeJS.ProcessEnv = process.env): RunnerConfig {
  return {
    // APISIX always sets it; the default serves a runner started by hand
    // for `ext-plugin.path_for_test`.
    listenAddress: env.APISIX_LISTEN_ADDRESS || `unix:${join(tmpdir(), 'gatehouse-runner.sock')}`,
    confExpireSeconds: positiveNumber('APISIX_CONF_EXPIRE_TIME', env.APISIX_CONF_EXPIRE_TIME, 3600),
    shutdownGraceMs: positiveNumber('RUNNER_SHUTDOWN_GRACE_MS', env.RUNNER_SHUTDOWN_GRACE_MS, 800),
    // APISIX's own send/read timeout.
    stallTimeoutMs: positiveNumber('RUNNER_STALL_TIMEOUT_MS', env.RUNNER_STALL_TIMEOUT_MS, 60_000),
  };
}
