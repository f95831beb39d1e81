#!/usr/bin/env node
// APISIX STAND-IN command line — a local stand-in for APISIX, not APISIX.
// Serves the routes of a standalone apisix.yaml on GATEWAY_PORT (default
// 9080) and runs the Gatehouse plugin runner the way APISIX would.
//
//   node dist/tools/apisix-standin/main.js [--config apisix-conf/config.yaml]
//        [--routes apisix-conf/apisix.yaml] [--port 9080] [--runner-socket /tmp/x.sock]
//
// Environment: GATEWAY_PORT, APISIX_CONFIG (config.yaml), APISIX_ROUTES
// (apisix.yaml), APISIX_CONF_EXPIRE_TIME, LOG_LEVEL. Logs (pino) go to stderr.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { loadGatewayConfig } from './gateway-config.js';
import { findRepoRoot } from '../repo-root.js';
import { startStandin } from './standin.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      routes: { type: 'string' },
      port: { type: 'string' },
      'runner-socket': { type: 'string' },
    },
  });
  const log = pino({ name: 'apisix-standin', level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
  const root = findRepoRoot();
  const configPath = resolve(values.config ?? process.env.APISIX_CONFIG ?? `${root}/apisix-conf/config.yaml`);
  const routesPath = resolve(values.routes ?? process.env.APISIX_ROUTES ?? `${root}/apisix-conf/apisix.yaml`);
  const portText = values.port ?? process.env.GATEWAY_PORT;
  const port = portText ? Number(portText) : (loadGatewayConfig(configPath).nodeListen ?? 9080);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid port ${JSON.stringify(portText)}`);
  const expire = process.env.APISIX_CONF_EXPIRE_TIME ? Number(process.env.APISIX_CONF_EXPIRE_TIME) : undefined;

  const standin = await startStandin({
    repoRoot: root,
    configPath,
    routesPath,
    port,
    host: process.env.GATEWAY_HOST ?? '127.0.0.1',
    confExpireSeconds: expire,
    runnerSocketPath: values['runner-socket'],
    logger: log,
  });
  log.info({ url: standin.url }, 'APISIX stand-in ready (this is not APISIX)');

  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping the APISIX stand-in');
    standin.stop().then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

main().catch((err) => {
  process.stderr.write(`apisix-standin: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
