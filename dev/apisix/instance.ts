// One running APISIX: its own prefix directory (conf/, logs/, the runner's
// socket) beside a shared installation, rendered by APISIX's own CLI from one
// of apisix-conf/'s config files and started as APISIX's CLI would start it.
//
// Several instances run at once (parallel tests, the two datacenters of the
// rehearsal), so each gets its own prefix: links to the installation's
// apisix/, deps/ and bin/, a copy of its conf/ with our config.yaml. APISIX's
// CLI takes the current directory as APISIX's home when it is started as
// ./apisix/cli/apisix.lua, which is what bin/apisix does in a source tree.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { isScalar, isSeq, parseDocument, type Document } from 'yaml';
import type { ApisixInstallation } from './installation.js';
import { commandLine, processTable } from '../proc.js';
import { freePort } from '../free-port.js';

export interface ApisixInstanceOptions {
  installation: ApisixInstallation;
  repoRoot: string;
  /** The config.yaml to start from (default apisix-conf/config.yaml). */
  configPath?: string;
  /** Standalone mode: the routes file, copied to conf/apisix.yaml (APISIX re-reads that copy every second). */
  routesPath?: string;
  host?: string;
  port: number;
  /**
   * The port of APISIX's prometheus export server (plugin_attr.prometheus.export_addr), when
   * config.yaml lists the prometheus plugin; default config.yaml's. startApisix picks a free one.
   */
  prometheusPort?: number;
  /** The instance's directory (created); default a new one under the system's temp directory. */
  prefix?: string;
  /** Environment for nginx; only the names config.yaml lists in nginx_config.envs reach the runner. */
  env: Record<string, string>;
  /** nginx worker processes (default: config.yaml's, which is `auto`). */
  workerProcesses?: number;
  /** Further edits of the rendered config.yaml (for example traditional mode's etcd and Admin API). */
  edit?: (config: Document) => void;
}

export interface PreparedApisix {
  prefix: string;
  /** APISIX's prometheus metrics (/apisix/prometheus/metrics on its export server), or null when config.yaml has no prometheus plugin. */
  prometheusUrl: string | null;
  /** ext-plugin.path_for_test: the socket of a runner started elsewhere, or null when APISIX starts it. */
  externalRunnerSocket: string | null;
  /** The openresty command line that starts this instance in the foreground. */
  command: [string, ...string[]];
  env: Record<string, string>;
}

export class ApisixStartError extends Error {}

function run(command: string, args: string[], options: { cwd: string; env: Record<string, string> }): string {
  const result = spawnSync(command, args, { ...options, encoding: 'utf8' });
  const output = `${result.stdout ?? ''}${result.stderr ?? ''}`;
  if (result.status !== 0) {
    throw new ApisixStartError(`${command} ${args.join(' ')} failed (${result.status ?? result.signal ?? result.error?.message}):\n${output}`);
  }
  return output;
}

/** APISIX's CLI: bin/apisix of a source tree, else the packages' `apisix` on PATH (it runs the prefix's ./apisix either way). */
function apisixCli(installation: ApisixInstallation): string {
  const inTree = join(installation.home, 'bin', 'apisix');
  return existsSync(inTree) ? inTree : 'apisix';
}

/** ext-plugin.cmd as the privileged agent must see it: node is this node, paths are absolute. */
function absoluteRunnerCmd(cmd: unknown, repoRoot: string): string[] | null {
  if (!Array.isArray(cmd) || cmd.some((arg) => typeof arg !== 'string')) return null;
  return (cmd as string[]).map((arg, i) => {
    if (i === 0 && arg === 'node') return process.execPath;
    if (i > 0 && !isAbsolute(arg) && existsSync(join(repoRoot, arg))) return join(repoRoot, arg);
    return arg;
  });
}

/**
 * Whether nginx's workers can reach a directory: under a root master they run
 * as nobody, so every directory above it must let others pass through.
 */
export function reachableByWorkers(dir: string): boolean {
  if (process.getuid?.() !== 0) return true;
  for (let current = resolve(dir); ; current = dirname(current)) {
    if (existsSync(current) && (statSync(current).mode & 0o001) === 0) return false;
    if (dirname(current) === current) return true;
  }
}

/** Whether a config.yaml loads APISIX's prometheus plugin with its export server (on by default). */
function prometheusEnabled(config: Document): boolean {
  const plugins = config.getIn(['plugins']);
  const listed = isSeq(plugins) && plugins.items.some((item) => (isScalar(item) ? item.value : item) === 'prometheus');
  return listed && config.getIn(['plugin_attr', 'prometheus', 'enable_export_server']) !== false;
}

/** Where a config's prometheus export server answers (APISIX's defaults: 127.0.0.1:9091); ${{NAME:=default}} read from `env`. */
function prometheusUrl(config: Document, env: Record<string, string>): string | null {
  if (!prometheusEnabled(config)) return null;
  const ip = String(config.getIn(['plugin_attr', 'prometheus', 'export_addr', 'ip']) ?? '127.0.0.1').replace(
    /\$\{\{(\w+)(?::=([^}]*))?\}\}/g,
    (_whole, name: string, fallback?: string) => env[name] ?? fallback ?? '',
  );
  const port = Number(config.getIn(['plugin_attr', 'prometheus', 'export_addr', 'port']) ?? 9091);
  const uri = String(config.getIn(['plugin_attr', 'prometheus', 'export_uri']) ?? '/apisix/prometheus/metrics');
  return `http://${ip === '0.0.0.0' ? '127.0.0.1' : ip}:${port}${uri}`;
}

/** Renders the instance's conf/ and nginx.conf with APISIX's CLI; starts nothing. */
export function prepareApisix(options: ApisixInstanceOptions): PreparedApisix {
  const { installation, repoRoot } = options;
  const prefix = options.prefix ?? mkdtempSync(join(tmpdir(), 'gatehouse-apisix-'));
  if (!reachableByWorkers(dirname(prefix))) {
    throw new ApisixStartError(`nginx's workers (nobody) could not reach the runner's socket under ${prefix}: a directory above it is closed to others`);
  }
  mkdirSync(join(prefix, 'conf'), { recursive: true });
  mkdirSync(join(prefix, 'logs'), { recursive: true });
  // nginx's workers run as nobody when the master is root: they must reach
  // the runner's socket in conf/ (the runner makes the socket itself writable).
  chmodSync(prefix, 0o755);
  for (const name of ['apisix', 'deps', 'bin']) {
    if (existsSync(join(installation.home, name)) && !existsSync(join(prefix, name))) symlinkSync(join(installation.home, name), join(prefix, name));
  }
  for (const entry of readdirSync(join(installation.home, 'conf'))) {
    if (['config.yaml', 'apisix.yaml', 'nginx.conf'].includes(entry) || entry.endsWith('.sock')) continue;
    cpSync(join(installation.home, 'conf', entry), join(prefix, 'conf', entry), { recursive: true });
  }

  const configPath = options.configPath ?? join(repoRoot, 'apisix-conf', 'config.yaml');
  const config = parseDocument(readFileSync(configPath, 'utf8'));
  config.setIn(['apisix', 'node_listen'], [{ ip: options.host ?? '127.0.0.1', port: options.port }]);
  const cmd = absoluteRunnerCmd((config.toJS() as { 'ext-plugin'?: { cmd?: unknown } })['ext-plugin']?.cmd, repoRoot);
  if (cmd) config.setIn(['ext-plugin', 'cmd'], cmd);
  if (options.workerProcesses) config.setIn(['nginx_config', 'worker_processes'], options.workerProcesses);
  if (options.prometheusPort !== undefined && prometheusEnabled(config))
    config.setIn(['plugin_attr', 'prometheus', 'export_addr', 'port'], options.prometheusPort);
  options.edit?.(config);
  writeFileSync(join(prefix, 'conf', 'config.yaml'), config.toString());
  const pathForTest = config.getIn(['ext-plugin', 'path_for_test']);
  // A copy, not a link: the workers (nobody, under a root master) read it
  // every second, and the caller's directory may be private.
  if (options.routesPath) cpSync(options.routesPath, join(prefix, 'conf', 'apisix.yaml'));

  const env = { ...options.env, PATH: `${installation.binDir}:${options.env.PATH ?? process.env.PATH ?? ''}` };
  run(apisixCli(installation), ['init'], { cwd: prefix, env });
  return {
    prefix,
    prometheusUrl: prometheusUrl(config, env),
    externalRunnerSocket: typeof pathForTest === 'string' ? pathForTest : null,
    command: [installation.openresty, '-p', `${prefix}/`, '-c', 'conf/nginx.conf', '-g', 'daemon off;'],
    env,
  };
}

/**
 * APISIX's own check of a config: `apisix test` renders nginx.conf from it
 * (validating config.yaml against APISIX's schema) and runs `nginx -t` on the
 * result. Throws ApisixStartError with APISIX's words when it refuses.
 */
export function testApisixConfig(options: ApisixInstanceOptions): string {
  const prepared = prepareApisix(options);
  return run(apisixCli(options.installation), ['test'], { cwd: prepared.prefix, env: prepared.env });
}

export interface ApisixHandle {
  kind: 'apisix';
  url: string;
  port: number;
  prefix: string;
  /** APISIX's prometheus metrics (/apisix/prometheus/metrics), or null when config.yaml has no prometheus plugin. */
  prometheusUrl: string | null;
  /** The nginx master's pid. */
  pid: number;
  /** Standalone mode: the routes file APISIX reads (conf/apisix.yaml); a change is live within a second. */
  routesPath: string;
  /** The runner's socket: conf/apisix-<master pid>.sock, or ext-plugin.path_for_test. */
  socketPath: string;
  /** The pid of the runner APISIX started (the one process of nginx's group that is not nginx), or null. */
  runnerPid(): number | null;
  /** Lines of logs/error.log, where APISIX writes the runner's output. */
  runnerOutput(): string[];
  /** Resolves when the runner's socket accepts a connection. */
  waitForRunner(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

function connects(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function groupAlive(pid: number): boolean {
  try {
    process.kill(-pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * The runner its privileged agent spawned: the process of nginx's process
 * group that is not nginx and whose parent is (a runner's own worker
 * processes have the runner as parent).
 */
function runnerInGroup(group: number): number | null {
  const members = processTable().filter((p) => p.pgrp === group);
  const nginx = new Set(members.filter((p) => commandLine(p.pid)?.startsWith('nginx:')).map((p) => p.pid));
  return members.find((p) => !nginx.has(p.pid) && nginx.has(p.ppid))?.pid ?? null;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Prepares and starts APISIX; resolves once it answers HTTP and the runner's socket accepts connections. */
export async function startApisix(
  options: ApisixInstanceOptions & { logger: Logger; readyTimeoutMs?: number; /** Wait for the runner's socket too (default true). */ expectRunner?: boolean },
): Promise<ApisixHandle> {
  const log = options.logger;
  // Instances run side by side (parallel tests): each its own metrics port unless told one.
  const prepared = prepareApisix({ ...options, prometheusPort: options.prometheusPort ?? (await freePort()) });
  const [command, ...args] = prepared.command;
  // Its own process group: stop() reaches nginx's workers, the privileged agent and the runner it started.
  const child: ChildProcess = spawn(command, args, { cwd: prepared.prefix, env: prepared.env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid;
  if (pid === undefined) throw new ApisixStartError(`could not start ${command}`);
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  let startupOutput = '';
  const collect = (chunk: Buffer) => {
    if (startupOutput.length < 64 * 1024) startupOutput += chunk.toString();
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);

  const host = options.host ?? '127.0.0.1';
  const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${options.port}`;
  const socketPath = prepared.externalRunnerSocket ?? join(prepared.prefix, 'conf', `apisix-${pid}.sock`);
  const errorLog = join(prepared.prefix, 'logs', 'error.log');
  const runnerOutput = () =>
    existsSync(errorLog)
      ? readFileSync(errorLog, 'utf8')
          .split('\n')
          .filter((line) => line !== '')
      : [];

  const stop = async () => {
    if (!exited) {
      // SIGQUIT: nginx's graceful stop; APISIX then sends the runner SIGTERM.
      child.kill('SIGQUIT');
      await Promise.race([exit, sleep(10_000)]);
    }
    // Whatever is left of the group (a runner still saving its state, a stuck worker).
    for (const [signal, waitMs] of [
      ['SIGTERM', 3_000],
      ['SIGKILL', 1_000],
    ] as const) {
      if (!groupAlive(pid)) break;
      try {
        process.kill(-pid, signal);
      } catch {
        break;
      }
      for (let waited = 0; waited < waitMs && groupAlive(pid); waited += 50) await sleep(50);
    }
  };

  const waitForRunner = async (timeoutMs = 30_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!(await connects(socketPath))) {
      if (exited) throw new ApisixStartError(`APISIX exited:\n${startupOutput}\n${runnerOutput().slice(-30).join('\n')}`);
      if (Date.now() > deadline) throw new ApisixStartError(`the runner's socket ${socketPath} did not come up:\n${runnerOutput().slice(-30).join('\n')}`);
      await sleep(50);
    }
  };

  try {
    const deadline = Date.now() + (options.readyTimeoutMs ?? 30_000);
    for (;;) {
      if (exited) throw new ApisixStartError(`APISIX exited at start:\n${startupOutput}\n${runnerOutput().slice(-30).join('\n')}`);
      const answered = await fetch(`${url}/`, { signal: AbortSignal.timeout(1_000) }).then(
        (r) => r.arrayBuffer().then(() => true),
        () => false,
      );
      if (answered) break;
      if (Date.now() > deadline) throw new ApisixStartError(`APISIX did not answer on ${url}:\n${runnerOutput().slice(-30).join('\n')}`);
      await sleep(100);
    }
    if (options.expectRunner !== false) await waitForRunner(Math.max(1_000, deadline - Date.now()));
  } catch (err) {
    await stop();
    throw err;
  }
  log.info({ url, prefix: prepared.prefix, pid }, 'APISIX started');
  return {
    kind: 'apisix',
    url,
    port: options.port,
    prefix: prepared.prefix,
    prometheusUrl: prepared.prometheusUrl,
    routesPath: join(prepared.prefix, 'conf', 'apisix.yaml'),
    pid,
    socketPath,
    runnerPid: () => runnerInGroup(pid),
    runnerOutput,
    waitForRunner,
    stop,
  };
}
