/**
 * A real etcd for integration tests: Debian's `etcd` binary on free loopback
 * ports, its data under <repo>/.local/test-etcd/<random> (ignored by git).
 *
 *   const etcd = await startEtcd();
 *   etcd.endpoints            // ['http://127.0.0.1:<port>']
 *   await etcd.stop();        // kill it, keep the data (to test an outage)
 *   await etcd.restart();     // same ports, same data
 *   await etcd.cleanup();     // kill it and remove the data (afterAll)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ETCD_BINARY = process.env.ETCD_BINARY ?? 'etcd';

export interface TestEtcd {
  endpoints: string[];
  dataDir: string;
  stop(): Promise<void>;
  restart(): Promise<void>;
  cleanup(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
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

export async function startEtcd(): Promise<TestEtcd> {
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const dataDir = join(repoRoot, '.local', 'test-etcd', randomBytes(6).toString('hex'));
  await mkdir(dataDir, { recursive: true });
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name', 'test',
    '--data-dir', dataDir,
    '--listen-client-urls', clientUrl,
    '--advertise-client-urls', clientUrl,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `test=${peerUrl}`,
    '--log-level', 'warn',
  ];
  let child: ChildProcess | undefined;
  let tail = '';

  async function launch(): Promise<void> {
    tail = '';
    const started = spawn(ETCD_BINARY, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const keepTail = (chunk: Buffer) => {
      tail = (tail + chunk.toString()).slice(-4_000);
    };
    started.stdout?.on('data', keepTail);
    started.stderr?.on('data', keepTail);
    child = started;
    await waitForHealth(clientUrl, started, () => tail);
  }

  async function stop(): Promise<void> {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = new Promise((resolve) => running.once('exit', resolve));
    running.kill('SIGTERM');
    const killTimer = setTimeout(() => running.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(killTimer);
  }

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
