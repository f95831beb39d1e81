// Starts and watches the plugin runner the way APISIX's privileged agent
// does: one process from `ext-plugin.cmd`, its stdout and stderr merged and
// logged chunk by chunk at warn level, respawned 3 s after it exits (the
// token cache flushed on exit), and on shutdown SIGTERM then SIGKILL 1 s later.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Logger } from 'pino';

export interface RunnerSupervisorOptions {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  log: Logger;
  /** APISIX waits 3 s before respawning. */
  respawnDelayMs?: number;
  /** APISIX sends SIGKILL 1 s after SIGTERM. */
  killDelayMs?: number;
  /** Called on every exit, before the respawn delay: APISIX flushes its token cache there. */
  onExit: (code: number | null, signal: NodeJS.Signals | null) => void;
  /** How many recent output lines to keep for `recentOutput()`. */
  keepOutputLines?: number;
}

export class RunnerSupervisor {
  private child: ChildProcess | null = null;
  private respawnTimer: NodeJS.Timeout | null = null;
  private stopping = false;
  private spawnCount = 0;
  private readonly output: string[] = [];
  private exitWaiters: (() => void)[] = [];

  constructor(private readonly options: RunnerSupervisorOptions) {}

  start(): void {
    this.stopping = false;
    this.spawnRunner();
  }

  /** The running runner's pid, or null between an exit and the respawn. */
  get pid(): number | null {
    return this.child?.pid ?? null;
  }

  /** How many times the runner was started (1 before any respawn). */
  get spawns(): number {
    return this.spawnCount;
  }

  recentOutput(): string[] {
    return [...this.output];
  }

  /** Resolves at the next exit of the current runner process. */
  waitForExit(): Promise<void> {
    if (!this.child) return Promise.resolve();
    return new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.respawnTimer) clearTimeout(this.respawnTimer);
    this.respawnTimer = null;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    this.options.log.info({ pid: child.pid }, 'terminating the plugin runner with SIGTERM');
    child.kill('SIGTERM');
    const killTimer = setTimeout(() => {
      // Only signal our own child, and only while it is still ours and alive.
      if (child.exitCode === null && child.signalCode === null) {
        this.options.log.warn({ pid: child.pid }, 'plugin runner still running 1 s after SIGTERM: SIGKILL');
        child.kill('SIGKILL');
      }
    }, this.options.killDelayMs ?? 1000);
    await exited;
    clearTimeout(killTimer);
  }

  private spawnRunner(): void {
    const { argv, env, cwd, log } = this.options;
    this.spawnCount++;
    log.info({ argv, attempt: this.spawnCount }, 'starting the plugin runner');
    const child = spawn(argv[0]!, argv.slice(1), { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    // APISIX merges the runner's stderr into stdout and logs each chunk at warn level.
    const onChunk = (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      log.warn({ runner: text.trimEnd() }, 'plugin runner output');
      for (const line of text.split('\n')) if (line.trim()) this.output.push(line);
      const keep = this.options.keepOutputLines ?? 500;
      if (this.output.length > keep) this.output.splice(0, this.output.length - keep);
    };
    child.stdout!.on('data', onChunk);
    child.stderr!.on('data', onChunk);
    let exitHandled = false;
    const handleExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (exitHandled) return;
      exitHandled = true;
      if (this.child === child) this.child = null;
      log.warn({ code, signal }, 'plugin runner exited');
      this.options.onExit(code, signal);
      const waiters = this.exitWaiters;
      this.exitWaiters = [];
      for (const resolve of waiters) resolve();
      if (this.stopping) return;
      const delayMs = this.options.respawnDelayMs ?? 3000;
      log.warn({ delayMs }, 'respawning the plugin runner later');
      this.respawnTimer = setTimeout(() => {
        this.respawnTimer = null;
        if (!this.stopping) this.spawnRunner();
      }, delayMs);
    };
    child.on('error', (err) => {
      log.error({ err, argv }, 'plugin runner process error');
      // A spawn failure (no such program) never emits 'exit': treat it as one so the respawn loop goes on.
      if (child.pid === undefined) handleExit(null, null);
    });
    child.on('exit', handleExit);
  }
}
