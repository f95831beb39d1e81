#!/usr/bin/env node
// gatehouse-runner: the process APISIX starts through `ext-plugin.cmd`. With
// RUNNER_WORKERS above 1 (the default: half the cores) it becomes the primary
// of that many worker processes serving the same socket (cluster.ts), and
// loads none of what serves calls (worker.ts), which each worker loads.
import cluster from 'node:cluster';
import { createLogger } from '../../runtime/logger.js';
import { logLevelFromEnv, runnerConfigFromEnv } from './config.js';
import { socketPathOf } from './socket-file.js';

const log = createLogger('gatehouse-runner', logLevelFromEnv());

async function main(): Promise<void> {
  const config = runnerConfigFromEnv();
  if (cluster.isPrimary && config.workers > 1) {
    const { runPrimary } = await import('./cluster.js');
    await runPrimary({
      workers: config.workers,
      socketPath: socketPathOf(config.listenAddress),
      confExpireSeconds: config.confExpireSeconds,
      metrics: config.metricsPort === null ? null : { host: config.metricsHost, port: config.metricsPort },
      settlePort: config.settlePort,
      shutdownGraceMs: config.shutdownGraceMs,
      log,
    });
    log.flush();
    process.exit(0);
  }
  const { runWorker } = await import('./worker.js');
  await runWorker(config);
}

process.on('uncaughtException', (err) => {
  // Keep serving other connections: one bad call must not take the runner down.
  log.error({ err }, 'uncaught exception');
});
process.on('unhandledRejection', (err) => {
  log.error({ err }, 'unhandled rejection');
});

main().catch((err) => {
  log.fatal({ err }, 'runner failed to start');
  log.flush();
  process.exit(1);
});
