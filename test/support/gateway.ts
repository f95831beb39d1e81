// The gateway the gateway tests run on: the real APISIX 3.9.1, which `npm
// test`'s setup builds from the APISIX kit (or APISIX_HOME names). A machine
// without it fails these tests rather than quietly testing something else.
import { pino } from 'pino';
import type { Document } from 'yaml';
import { findApisix, freePort, startApisix, type ApisixInstallation } from '../../dev/apisix/index.js';
import { repoRoot } from './runner-process.js';

export function apisixInstallation(): ApisixInstallation {
  const installation = findApisix(repoRoot);
  if (!installation) throw new Error('no APISIX on this machine: `npm run setup` builds it from ../shared/apisix-kit, or set APISIX_HOME');
  return installation;
}

/** The Server header APISIX answers with (config.yaml turns its version off). */
export const SERVER_HEADER = /^APISIX$/;

export interface TestGatewayHandle {
  url: string;
  stop(): Promise<void>;
  runnerOutput(): string[];
  /** The runner the gateway started, or null (none yet, or an external one). */
  runnerPid(): number | null;
  waitForRunner(timeoutMs?: number): Promise<void>;
}

export interface TestGatewayOptions {
  /** A standalone routes file (ending with #END). */
  routesPath: string;
  /** Edits of apisix-conf/config.yaml for this gateway. */
  editConfig?: (config: Document) => void;
  /** Environment for the gateway, hence (through nginx_config.envs) the runner. */
  env?: Record<string, string>;
  /** Use a runner started elsewhere on this socket (ext-plugin.path_for_test) instead of ext-plugin.cmd. */
  externalRunnerSocket?: string;
}

/** APISIX with apisix-conf/config.yaml, serving the given routes. */
export async function startTestGateway(options: TestGatewayOptions): Promise<TestGatewayHandle> {
  const installation = apisixInstallation();
  const external = options.externalRunnerSocket;
  const edit = (config: Document) => {
    options.editConfig?.(config);
    if (external) {
      config.deleteIn(['ext-plugin', 'cmd']);
      config.setIn(['ext-plugin', 'path_for_test'], external);
    }
  };
  // Metrics off unless asked for: runners of parallel tests would all want port 9091.
  // The settle port of its own (the LLM route's http-logger posts there, apisix.yaml reads it from the environment).
  const env = { PATH: process.env.PATH ?? '', RUNNER_METRICS_PORT: 'off', RUNNER_SETTLE_PORT: String(await freePort()), ...options.env };
  const gateway = await startApisix({
    installation,
    repoRoot,
    routesPath: options.routesPath,
    port: await freePort(),
    workerProcesses: 2,
    env,
    edit,
    logger: pino({ level: 'silent' }),
  });
  return {
    url: gateway.url,
    stop: () => gateway.stop(),
    runnerOutput: () => gateway.runnerOutput(),
    runnerPid: () => gateway.runnerPid(),
    waitForRunner: (ms) => gateway.waitForRunner(ms),
  };
}
