#!/usr/bin/env node
// gatehouse-runner: the process APISIX starts through `ext-plugin.cmd`.
import { createLogger } from './logger.js';
import { runnerConfigFromEnv } from './config.js';
import { PluginRegistry } from './registry.js';
import { Runner } from './server.js';
import { builtinPlugins } from './builtin.js';

const log = createLogger('gatehouse-runner');

async function main(): Promise<void> {
  const config = runnerConfigFromEnv();
  const runner = new Runner({
    listenAddress: config.listenAddress,
    confExpireSeconds: config.confExpireSeconds,
    shutdownGraceMs: config.shutdownGraceMs,
    stallTimeoutMs: config.stallTimeoutMs,
    registry: new PluginRegistry(builtinPlugins()),
    log,
  });
  await runner.listen();

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    runner
      .stop()
      .then(() => log.flush())
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
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
  process.exitCode = 1;
});
