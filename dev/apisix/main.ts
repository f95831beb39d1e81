#!/usr/bin/env node
// Runs the real APISIX in the foreground with one of apisix-conf/'s configs:
// renders its own prefix with APISIX's CLI, then runs openresty there. Used
// where a gateway must be a process of its own (the two-datacenter rehearsal);
// SIGTERM or SIGINT stop APISIX gracefully (SIGQUIT), and its exit status is ours.
//
//   node dist/dev/apisix/main.js [--config apisix-conf/config.yaml]
//        [--routes apisix-conf/apisix.yaml] [--host 127.0.0.1] [--port 9080] [--prefix DIR]
//
// The environment is passed to nginx, which hands the runner the variables
// config.yaml lists in nginx_config.envs.
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../../runtime/paths.js';
import { findApisix } from './installation.js';
import { prepareApisix } from './instance.js';

function main(): void {
  const { values } = parseArgs({
    options: {
      config: { type: 'string' },
      routes: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      prefix: { type: 'string' },
    },
  });
  const root = packageRoot();
  const installation = findApisix(root);
  if (!installation) throw new Error('no APISIX on this machine: run `npm run setup`, or set APISIX_HOME');
  const port = Number(values.port ?? 9080);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`invalid port ${JSON.stringify(values.port)}`);
  const env = Object.fromEntries(Object.entries(process.env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  const prepared = prepareApisix({
    installation,
    repoRoot: root,
    configPath: resolve(values.config ?? `${root}/apisix-conf/config.yaml`),
    routesPath: resolve(values.routes ?? `${root}/apisix-conf/apisix.yaml`),
    host: values.host ?? '127.0.0.1',
    port,
    ...(values.prefix ? { prefix: resolve(values.prefix) } : {}),
    env,
  });
  const [command, ...args] = prepared.command;
  const nginx = spawn(command, args, { cwd: prepared.prefix, env: prepared.env, stdio: 'inherit' });
  process.stderr.write(`APISIX starting in ${prepared.prefix} (pid ${nginx.pid}), http://${values.host ?? '127.0.0.1'}:${port}\n`);
  const stop = () => nginx.kill('SIGQUIT');
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  nginx.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
}

try {
  main();
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(1);
}
