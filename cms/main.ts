#!/usr/bin/env node
/**
 * gatehouse-cms: serves the policy CMS with configuration from the
 * environment (see cms/config.ts), logs as pino JSON on stderr, and stops
 * gracefully on SIGTERM/SIGINT (in-flight requests finish, then etcd closes).
 */
import { pino } from 'pino';
import { buildCmsApp } from './app.js';
import { cmsConfigFromEnv } from './config.js';
import { createLogger } from '../runtime/logger.js';

async function main(): Promise<void> {
  const bootLog = pino({ name: 'gatehouse-cms' }, pino.destination(2));
  let config;
  try {
    config = cmsConfigFromEnv();
  } catch (error) {
    bootLog.fatal({ err: error }, 'invalid configuration');
    process.exit(2);
  }
  const logger = createLogger('gatehouse-cms', config.logLevel);
  const app = await buildCmsApp({ ...config, logger });
  await app.listen({ port: config.port, host: config.host });

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    const forceExit = setTimeout(() => process.exit(1), 10_000);
    forceExit.unref();
    app.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

main().catch((error: unknown) => {
  process.stderr.write(`gatehouse-cms failed to start: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
