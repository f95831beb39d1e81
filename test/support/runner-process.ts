// Starts the built runner (`dist/plugins/runner/main.js`) the way APISIX does:
// a child process with APISIX_LISTEN_ADDRESS and APISIX_CONF_EXPIRE_TIME.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const runnerBin = join(repoRoot, 'dist/plugins/runner/main.js');

export interface RunnerProcess {
  socketPath: string;
  child: ChildProcess;
  stderr: () => string;
  /** Sends SIGTERM and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Resolves once something accepts connections on `socketPath`. */
export async function waitForSocket(socketPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await canConnect(socketPath))) {
    if (Date.now() > deadline) throw new Error(`nothing listened on ${socketPath} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startRunner(options: { socketPath?: string; env?: Record<string, string>; expireSeconds?: number } = {}): Promise<RunnerProcess> {
  if (!existsSync(runnerBin)) throw new Error(`${runnerBin} is missing: run npm run build first`);
  const socketPath = options.socketPath ?? join(mkdtempSync(join(tmpdir(), 'gh-runner-')), 'runner.sock');
  let stderr = '';
  const child = spawn(process.execPath, [runnerBin], {
    env: {
      PATH: process.env.PATH ?? '',
      APISIX_LISTEN_ADDRESS: `unix:${socketPath}`,
      APISIX_CONF_EXPIRE_TIME: String(options.expireSeconds ?? 3600),
      LOG_LEVEL: 'debug',
      RUNNER_METRICS_PORT: 'off',
      // Like metrics: parallel runners would all want 9092; tests of budgets give a port.
      RUNNER_SETTLE_PORT: 'off',
      // One process unless a test asks for workers (RUNNER_WORKERS defaults to half the cores).
      RUNNER_WORKERS: '1',
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  // Generous: a runner starts in about 1.5 s, but several started at once on a
  // loaded 2-core machine (each also warming binaryen in its metering thread) take longer.
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`runner exited early: ${stderr}`);
    if (await canConnect(socketPath)) break;
    if (Date.now() > deadline) throw new Error(`runner did not listen in time: ${stderr}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    socketPath,
    child,
    stderr: () => stderr,
    get stdout() {
      return stdout;
    },
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal);
      return exited;
    },
  } as RunnerProcess;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    if (!existsSync(path)) return resolve(false);
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
