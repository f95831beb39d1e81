// The runner's socket file: removed when stale, never when it is not a socket.
import { existsSync, lstatSync, unlinkSync } from 'node:fs';

export function removeStaleSocket(path: string): void {
  if (!existsSync(path)) return;
  // Only ever remove a socket, never a regular file someone pointed us at.
  if (lstatSync(path).isSocket()) unlinkSync(path);
  else throw new Error(`${path} exists and is not a socket`);
}

/** APISIX_LISTEN_ADDRESS (`unix:/path.sock`, or a bare path) as a path. */
export function socketPathOf(listenAddress: string): string {
  return listenAddress.startsWith('unix:') ? listenAddress.slice('unix:'.length) : listenAddress;
}
