// Which gateway the gateway tests run on: the real APISIX, which `npm test`'s
// setup builds from the APISIX kit (or APISIX_HOME names). A machine without
// it fails these tests rather than quietly testing something else, unless
// GATEHOUSE_GATEWAY=standin asks for the APISIX stand-in explicitly.
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parseDocument, type Document } from 'yaml';
import { findApisix, freePort, startApisix, type ApisixInstallation } from '../../tools/apisix/index.js';
import { startStandin } from '../../tools/apisix-standin/index.js';
import { repoRoot } from './runner-process.js';

export type TestGateway = 'apisix' | 'standin';

export function testGateway(): TestGateway {
  if (process.env.GATEHOUSE_GATEWAY === 'standin') return 'standin';
  if (!findApisix(repoRoot)) {
    throw new Error('no APISIX on this machine: `npm run setup` builds it from ../shared/apisix-kit, or set APISIX_HOME; GATEHOUSE_GATEWAY=standin runs the gateway tests on the APISIX stand-in instead');
  }
  return 'apisix';
}

export function apisixInstallation(): ApisixInstallation {
  const installation = findApisix(repoRoot);
  if (!installation) throw new Error('no APISIX on this machine (see testGateway)');
  return installation;
}

/** The Server header each gateway answers with (config.yaml turns APISIX's version off). */
export const SERVER_HEADER: Record<TestGateway, RegExp> = {
  apisix: /^APISIX$/,
  standin: /Gatehouse stand-in/,
};

export interface TestGatewayHandle {
  kind: TestGateway;
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

/** The gateway under test (see testGateway) with apisix-conf/config.yaml, serving the given routes. */
export async function startTestGateway(options: TestGatewayOptions): Promise<TestGatewayHandle> {
  const kind = testGateway();
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
  if (kind === 'apisix') {
    const gateway = await startApisix({
      installation: apisixInstallation(),
      repoRoot,
      routesPath: options.routesPath,
      port: await freePort(),
      workerProcesses: 2,
      env,
      edit,
      logger: pino({ level: 'silent' }),
    });
    return { kind, url: gateway.url, stop: () => gateway.stop(), runnerOutput: () => gateway.runnerOutput(), runnerPid: () => gateway.runnerPid(), waitForRunner: (ms) => gateway.waitForRunner(ms) };
  }
  const config = parseDocument(readFileSync(join(repoRoot, 'apisix-conf', 'config.yaml'), 'utf8'));
  edit(config);
  const configPath = join(mkdtempSync(join(tmpdir(), 'gh-standin-conf-')), 'config.yaml');
  writeFileSync(configPath, config.toString());
  const standin = await startStandin({
    repoRoot,
    configPath,
    routesPath: options.routesPath,
    logger: pino({ level: 'silent' }),
    parentEnv: env,
    ...(external ? { runnerSocketPath: external } : {}),
  });
  return { kind, url: standin.url, stop: () => standin.stop(), runnerOutput: () => standin.runnerOutput(), runnerPid: () => standin.runnerPid(), waitForRunner: (ms) => standin.waitForRunner(ms) };
}
