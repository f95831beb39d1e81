// A real etcd (Debian's etcd-server binary) on loopback, for tests, the
// benchmarks and `npm start`: free ports unless given, data under
// <repo>/.local/<dataRoot>/<name> (ignored by git).
//
//   const etcd = await startLocalEtcd();
//   etcd.endpoints            // ['http://127.0.0.1:<port>']
//   await etcd.stop();        // kill it, keep the data (to test an outage)
//   await etcd.restart();     // same ports, same data
//   await etcd.cleanup();     // kill it and remove the data
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { localServerProcess } from '../child-process.js';
import { directoryHolder } from '../in-use.js';
import { freePort } from '../free-port.js';
import { packageRoot } from '../../runtime/paths.js';

export { freePort };

export interface LocalEtcd {
  endpoints: string[];
  dataDir: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
  cleanup(): Promise<void>;
}

export interface LocalEtcdOptions {
  /** Folder under <repo>/.local for the data dir (default "test-etcd"). */
  dataRoot?: string;
  /** Data dir name (default random): reuse one to keep data across runs. */
  name?: string;
  clientPort?: number;
  peerPort?: number;
  binary?: string;
  /** More etcd flags, e.g. --quota-backend-bytes for a benchmark's large data set. */
  extraArgs?: string[];
}

async function waitForHealth(clientUrl: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`etcd exited with ${child.exitCode}:\n${output()}`);
    try {
      const response = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
      const body = (await response.json()) as { health?: string };
      if (response.ok && body.health === 'true') return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`etcd did not become healthy:\n${output()}`);
}

/** Where startLocalEtcd keeps the data of `options` (a random name gets a new directory each time). */
export function localEtcdDataDir(options: Pick<LocalEtcdOptions, 'dataRoot' | 'name'> = {}): string {
  return join(packageRoot(), '.local', options.dataRoot ?? 'test-etcd', options.name ?? randomBytes(6).toString('hex'));
}

export async function startLocalEtcd(options: LocalEtcdOptions = {}): Promise<LocalEtcd> {
  const clientPort = options.clientPort ?? (await freePort());
  const peerPort = options.peerPort ?? (await freePort());
  const dataDir = localEtcdDataDir(options);
  // Another etcd on the same data waits for its lock for good: say so at once instead.
  const holder = existsSync(dataDir) ? directoryHolder(dataDir) : null;
  if (holder) throw new Error(`etcd data directory ${dataDir} is in use by ${holder}`);
  await mkdir(dataDir, { recursive: true });
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name',
    'local',
    '--data-dir',
    dataDir,
    '--listen-client-urls',
    clientUrl,
    '--advertise-client-urls',
    clientUrl,
    '--listen-peer-urls',
    peerUrl,
    '--initial-advertise-peer-urls',
    peerUrl,
    '--initial-cluster',
    `local=${peerUrl}`,
    '--log-level',
    'warn',
    ...(options.extraArgs ?? []),
  ];
  const binary = options.binary ?? process.env.ETCD_BINARY ?? 'etcd';
  const server = localServerProcess({ command: binary, args, ready: (child, output) => waitForHealth(clientUrl, child, output) });
  const { launch, stop } = server;

  await launch();
  return {
    endpoints: [clientUrl],
    dataDir,
    stop,
    async restart() {
      await stop();
      await launch();
    },
    async cleanup() {
      await stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
