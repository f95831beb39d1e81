// Stopping a child process the way every local server here needs it:
// SIGTERM, then SIGKILL if it is still there after a grace period.
import type { ChildProcess } from 'node:child_process';

export async function stopChild(child: ChildProcess | undefined, killAfterMs = 5_000): Promise<void> {
  // A process killed by a signal has a null exitCode but a signalCode.
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const killTimer = setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  await exited;
  clearTimeout(killTimer);
}
