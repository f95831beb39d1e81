// What the benchmarks through APISIX share (bench:gateway, bench:soak): the
// Go tools they build (the upstream, the load generator, the Go runner) and
// the checks made through the gateway before measuring.
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ApisixHandle } from '../dev/apisix/index.js';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const bin = join(root, '.local', 'bin');

/** The Go yardsticks and tools (cached by Go after the first time). */
export function buildGoTools(): Record<'goRunner' | 'load' | 'upstream', string> {
  const out = { goRunner: join(bin, 'gatehouse-bench-go-runner'), load: join(bin, 'gatehouse-http-load'), upstream: join(bin, 'gatehouse-bench-upstream') };
  for (const [path, pkg] of [
    [out.goRunner, './go-runner'],
    [out.load, './httpload'],
    [out.upstream, './upstream'],
  ] as const) {
    execFileSync('go', ['build', '-o', path, pkg], { cwd: join(root, 'bench', 'go'), stdio: 'inherit' });
  }
  return out;
}

export const tcpAccepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

export const answers = (url: string) =>
  fetch(url, { signal: AbortSignal.timeout(1_000) }).then(
    (r) => r.arrayBuffer().then(() => r.ok),
    () => false,
  );

/** One request through the gateway, for the checks before measuring. */
export async function status(apisix: ApisixHandle, path: string, init: RequestInit = {}): Promise<number> {
  const res = await fetch(`${apisix.url}${path}`, { ...init, signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return res.status;
}

export async function expectStatus(what: string, expected: number, get: () => Promise<number>, attempts = 100): Promise<void> {
  let got = 0;
  for (let i = 0; i < attempts; i++) {
    got = await get();
    if (got === expected) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what}: expected ${expected}, got ${got}`);
}
