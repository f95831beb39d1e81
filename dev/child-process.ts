// Running a local server as a child process the way every one here needs
// it: started, waited for until it answers (its last output kept for the
// error), stopped with SIGTERM, then SIGKILL after a grace period, and
// started again on demand.
import { spawn, type ChildProcess } from 'node:child_process';

export async function stopChild(child: ChildProcess | undefined, killAfterMs = 5_000): Promise<void> {
  // A process killed by a signal has a null exitCode but a signalCode.
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const killTimer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  await exited;
  clearTimeout(killTimer);
}

export interface LocalServerProcess {
  /** Starts it and waits until `ready` resolves; on failure stops it and rejects. */
  launch(): Promise<void>;
  stop(): Promise<void>;
}

/** A server process, started (again) by `launch` and stopped by `stop`. */
export function localServerProcess(options: {
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  /** Resolves once the process serves; rejects (with its output) when it exits or never does. */
  ready: (child: ChildProcess, output: () => string) => Promise<void>;
}): LocalServerProcess {
  let child: ChildProcess | undefined;
  let tail = '';
  async function stop(): Promise<void> {
    const running = child;
    child = undefined;
    await stopChild(running);
  }
  return {
    async launch() {
      tail = '';
      const started = spawn(options.command, options.args, { stdio: ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: options.env } : {}) });
      const keepTail = (chunk: Buffer) => {
        tail = (tail + chunk.toString()).slice(-4_000);
      };
      started.stdout?.on('data', keepTail);
      started.stderr?.on('data', keepTail);
      child = started;
      try {
        await options.ready(started, () => tail);
      } catch (err) {
        await stop();
        throw err;
      }
    },
    stop,
  };
}
