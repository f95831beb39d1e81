// `npm start` (dist/scripts/start.js) when it cannot start: a port or the
// stack's etcd data in use is refused at once, in one line that says which
// and by what; a start that fails partway stops everything it had started
// (a dev-mode Vault left behind would answer the next start's new root token
// with 403).
import { afterEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../../dev/apisix/index.js';
import { portHolder } from '../../dev/in-use.js';
import { startLocalEtcd, type LocalEtcd } from '../../dev/local-etcd/index.js';
import { processTable } from '../../dev/proc.js';
import { repoRoot } from '../support/runner-process.js';

const PORT_VARIABLES = ['GATEWAY_PORT', 'CMS_PORT', 'DECISION_PORT', 'RAG_PORT', 'LLM_PORT', 'VAULT_PORT', 'RUNNER_METRICS_PORT', 'ETCD_CLIENT_PORT'];

let runs = 0;
const groups: number[] = [];
const cleanups: (() => Promise<unknown> | unknown)[] = [];

afterEach(async () => {
  // Whatever a failed assertion left running.
  for (const group of groups.splice(0)) {
    try {
      process.kill(-group, 'SIGKILL');
    } catch {
      // none left
    }
  }
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface StartRun {
  ports: Record<string, number>;
  stackName: string;
  code: number | null;
  stderr: string;
  stdout: string;
  elapsedMs: number;
  /** Processes of start's process group still there after it exited (Vault, etcd: children it did not stop). */
  leftBehind: number[];
}

/** Free ports for every variable, unless given; STACK_NAME of its own. */
async function portsFor(given: Record<string, number> = {}): Promise<Record<string, number>> {
  const ports: Record<string, number> = {};
  for (const name of PORT_VARIABLES) ports[name] = given[name] ?? (await freePort());
  return ports;
}

function newStackName(): string {
  const stackName = `test-failed-${process.pid}-${++runs}`;
  cleanups.push(() => {
    for (const dir of [`stack-${stackName}`, `demo-${stackName}`, join('stack-etcd', stackName)])
      rmSync(join(repoRoot, '.local', dir), { recursive: true, force: true });
  });
  return stackName;
}

/** Runs start.js in a process group of its own until it exits (it must, within 90 s). */
async function runStart(ports: Record<string, number>, stackName: string, env: Record<string, string> = {}): Promise<StartRun> {
  const began = Date.now();
  const child = spawn(process.execPath, [join(repoRoot, 'dist/scripts/start.js')], {
    cwd: repoRoot,
    env: { ...process.env, ...Object.fromEntries(Object.entries(ports).map(([k, v]) => [k, String(v)])), STACK_NAME: stackName, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  groups.push(child.pid!);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start neither came up nor failed in 90 s:\n${stdout}\n${stderr}`)), 90_000);
    child.once('exit', (exitCode) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  });
  const elapsedMs = Date.now() - began;
  // A moment for children that are on their way out anyway.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const leftBehind = processTable()
    .filter((p) => p.pgrp === child.pid)
    .map((p) => p.pid);
  return { ports, stackName, code, stderr, stdout, elapsedMs, leftBehind };
}

/** A port held by this process (connections to it are closed at once). */
async function occupy(): Promise<Server> {
  const server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return server;
}

/** Who holds each of the run's ports, by variable (leaving out `except`): null for a free one. */
async function portHolders(run: StartRun, except: string[] = []): Promise<Record<string, string | null>> {
  const holders: Record<string, string | null> = {};
  for (const [name, port] of Object.entries(run.ports)) if (!except.includes(name)) holders[name] = await portHolder(port);
  return holders;
}
const nobody = (except: string[] = []) => Object.fromEntries(PORT_VARIABLES.filter((name) => !except.includes(name)).map((name) => [name, null]));

describe('npm start that cannot start', () => {
  it('a port in use is refused at once, in one line naming the port, its variable and who holds it; nothing is left running', async () => {
    const server = await occupy();
    const taken = (server.address() as { port: number }).port;
    const run = await runStart(await portsFor({ ETCD_CLIENT_PORT: taken }), newStackName());
    expect(run.code, run.stderr).not.toBe(0);
    const lines = run.stderr.trim().split('\n');
    expect(lines, run.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`port ${taken} \\(ETCD_CLIENT_PORT\\) is in use by pid ${process.pid} \\(`));
    expect(run.leftBehind).toEqual([]);
    expect(await portHolders(run, ['ETCD_CLIENT_PORT'])).toEqual(nobody(['ETCD_CLIENT_PORT']));
    expect(run.elapsedMs).toBeLessThan(15_000);
  }, 120_000);

  it("the stack's etcd data in use (the same STACK_NAME running) is refused at once, naming the directory and the etcd that has it", async () => {
    const stackName = newStackName();
    const first: LocalEtcd = await startLocalEtcd({ dataRoot: 'stack-etcd', name: stackName });
    cleanups.push(() => first.stop());
    const run = await runStart(await portsFor(), stackName);
    expect(run.code, run.stderr).not.toBe(0);
    const lines = run.stderr.trim().split('\n');
    expect(lines, run.stderr).toHaveLength(1);
    expect(lines[0]).toContain(`etcd data directory ${first.dataDir} is in use by pid `);
    expect(lines[0]).toMatch(/in use by pid \d+ \(etcd\)/);
    // Not the health check's 20 s wait for an etcd that waits for the lock.
    expect(run.elapsedMs).toBeLessThan(15_000);
    expect(run.leftBehind).toEqual([]);
    expect(await portHolders(run)).toEqual(nobody());
  }, 120_000);

  it('a start that fails partway (etcd does not start, after Vault did) stops everything it had started', async () => {
    const run = await runStart(await portsFor(), newStackName(), { ETCD_BINARY: 'false' });
    expect(run.code, run.stderr).not.toBe(0);
    expect(run.stderr).toMatch(/npm start failed: .*etcd exited with 1/);
    expect(run.leftBehind).toEqual([]);
    expect(await portHolders(run)).toEqual(nobody());
    // And the next start on the same ports is not refused.
    const again = await runStart(run.ports, newStackName(), { ETCD_BINARY: 'false' });
    expect(again.stderr).not.toMatch(/in use by/);
    expect(again.stderr).toMatch(/etcd exited with 1/);
  }, 180_000);
});
