// Who holds a TCP port or a directory, as Linux's /proc tells it: for the
// local stack, which says so in one line instead of waiting for a server that
// cannot start (a port taken, an etcd data directory another etcd has locked).
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { resolve, sep } from 'node:path';
import { commandLine } from './proc.js';

/** "pid 123 (etcd)": a process as a person would look for it in ps. */
export function describeProcess(pid: number): string {
  let name = '';
  try {
    name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    name = commandLine(pid)?.split('\0')[0] ?? '';
  }
  return name ? `pid ${pid} (${name})` : `pid ${pid}`;
}

function numericEntries(dir: string): string[] {
  try {
    return readdirSync(dir).filter((entry) => /^\d+$/.test(entry));
  } catch {
    return [];
  }
}

function link(path: string): string | null {
  try {
    return readlinkSync(path);
  } catch {
    return null;
  }
}

/** The other processes with an open file (a /proc/<pid>/fd link target: a path, or socket:[inode]) or a working directory that `match` accepts. */
function processesWith(match: (target: string) => boolean): number[] {
  const pids: number[] = [];
  for (const pid of numericEntries('/proc')) {
    if (Number(pid) === process.pid) continue;
    const targets = [link(`/proc/${pid}/cwd`), ...numericEntries(`/proc/${pid}/fd`).map((fd) => link(`/proc/${pid}/fd/${fd}`))];
    if (targets.some((target) => target !== null && match(target))) pids.push(Number(pid));
  }
  return pids;
}

/** The socket inodes listening on `port` (any address, IPv4 or IPv6). */
function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // local_address is fields[1] (hex address:port), st fields[3] (0A: LISTEN), inode fields[9].
      if (fields.length > 9 && fields[1]!.endsWith(`:${hexPort}`) && fields[3] === '0A') inodes.add(fields[9]!);
    }
  }
  return inodes;
}

/**
 * Null when `port` on `host` can be listened on now; otherwise what holds
 * it: "pid 123 (vault)", or "another process" when /proc does not tell
 * (another user's process, say).
 */
export async function portHolder(port: number, host = '127.0.0.1'): Promise<string | null> {
  const error = await new Promise<NodeJS.ErrnoException | null>((done) => {
    const server = createServer();
    server.once('error', (err: NodeJS.ErrnoException) => done(err));
    server.listen({ port, host, exclusive: true }, () => server.close(() => done(null)));
  });
  if (!error) return null;
  if (error.code !== 'EADDRINUSE') return `an error (${error.code ?? error.message})`;
  const sockets = new Set([...listeningInodes(port)].map((inode) => `socket:[${inode}]`));
  const pids = sockets.size > 0 ? processesWith((target) => sockets.has(target)) : [];
  return pids.length > 0 ? pids.map(describeProcess).join(', ') : 'another process';
}

/** Null when no other process has a file under `dir` open or works in it; otherwise which: "pid 123 (etcd)". */
export function directoryHolder(dir: string): string | null {
  const root = resolve(dir);
  const pids = processesWith((target) => target === root || target.startsWith(root + sep));
  return pids.length > 0 ? pids.map(describeProcess).join(', ') : null;
}
