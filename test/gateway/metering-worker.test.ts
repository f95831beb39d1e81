// Policy wasm is metered in a worker thread (policy/engine/metering.ts), not
// on the gateway's request thread: while a cold project's module is
// rewritten, the event loop keeps turning and other tenants' decisions go
// on. The rewrite is the same as on the calling thread; a worker that dies
// is replaced; an idle worker does not keep the process alive.
import { afterAll, describe, expect, it } from 'vitest';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { isMainThread } from 'node:worker_threads';
import { loadPolicy } from '@open-policy-agent/opa-wasm';
import { RegoCompiler } from '../../cms/rego-compiler.js';
import { PolicyEngineError, compilePolicyModule, loadPolicyEngine } from '../../policy/engine/index.js';
import { FUEL_GLOBAL, MeteringError, meterPolicyWasm } from '../../policy/engine/meter.js';
import { MeteringWorker, meterWasm, meteringWorker } from '../../policy/engine/metering.js';
import { generateInputs } from '../support/input-generator.js';
import { opaPath } from '../support/policies.js';
import { repoRoot } from '../support/runner-process.js';

const compiler = new RegoCompiler({ opaPath, metered: false }); // the gateway's own metering is under test: modules as opa builds them
const run = promisify(execFile);

/** A policy with `rules` rules of comprehensions, strings and regexes: a module of some hundreds of KiB, which binaryen takes a while over. */
function large(rules: number, salt: string): string {
  let rego = `package project.authz\nimport rego.v1\ndefault allow := false\nsalt := "${salt}"\n`;
  for (let i = 0; i < rules; i++) {
    rego += `r${i} if {\n  some h, v in object.get(input.request, "headers", {})\n  startswith(h, "x-${i}")\n  count([c | some c in split(v, ","); contains(c, "t${i}")]) > ${i % 3}\n  regex.match("^/a${i}/", input.request.path)\n}\n`;
  }
  rego += `allow if {\n  input.user.role != ""\n${Array.from({ length: rules }, (_, i) => `  not r${i}`).join('\n')}\n}\n`;
  return rego;
}

/** The CPU time (user + system) this thread has used, ms, in the 10 ms ticks Linux counts it in. */
function threadCpuMs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const dir = mkdtempSync(join(tmpdir(), 'gh-metering-worker-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('metering in a worker thread', () => {
  /**
   * Compiles `wasm` with probes running every 5 ms: the event loop's delay, and the CPU time this
   * thread used between two ticks (unlike the delay, not lengthened while the thread waits for a
   * core that other threads or processes hold: two cores here, shared with other tests).
   */
  async function probedCompile(wasm: Uint8Array): Promise<{ cpu: number; delay: number; elapsed: number; seen: string }> {
    const histogram = monitorEventLoopDelay({ resolution: 5 });
    let lastCpu = threadCpuMs();
    let cpu = 0;
    const tick = () => {
      const now = threadCpuMs();
      cpu = Math.max(cpu, now - lastCpu);
      lastCpu = now;
    };
    const probe = setInterval(tick, 5);
    histogram.enable();
    // Both probes count from their first turn: let them take a few before the compile starts.
    await new Promise((resolve) => setTimeout(resolve, 20));
    const started = performance.now();
    const module = await compilePolicyModule(wasm);
    const elapsed = performance.now() - started;
    // The histogram records a delay when its timer runs at last: give it the turn.
    await new Promise((resolve) => setTimeout(resolve, 20));
    histogram.disable();
    clearInterval(probe);
    tick();
    expect(WebAssembly.Module.exports(module).map((e) => e.name)).toContain(FUEL_GLOBAL);
    const delay = histogram.max / 1e6;
    const seen = `${wasm.byteLength} bytes compiled in ${elapsed.toFixed(0)} ms; at most ${cpu} ms CPU of this thread between two ticks; max event loop delay ${delay.toFixed(0)} ms`;
    console.log(seen);
    return { cpu, delay, elapsed, seen };
  }

  // First in this file: the process has not metered anything yet, as a gateway just started.
  it('compiling fresh, large modules keeps the event loop turning (on the calling thread it was held for hundreds of ms)', async () => {
    expect(isMainThread).toBe(true); // threadCpuMs reads this thread's time
    // Cold (binaryen starting in the worker), then three new modules once it is warm. On the calling thread, each held
    // the loop for its whole metering: hundreds of ms of this thread's CPU at a stretch, the delay about the compile's time.
    // Here the thread is idle meanwhile; the delay may still grow while it waits for a core (two, shared with other
    // tests: up to a few hundred ms seen under load), never for the whole compile.
    for (const salt of ['cold', 'warm-1', 'warm-2', 'warm-3']) {
      const { cpu, delay, elapsed, seen } = await probedCompile((await compiler.compile(large(150, salt), '{}')).wasm);
      expect(cpu, seen).toBeLessThan(50);
      expect(delay, seen).toBeLessThan(elapsed / 2);
    }
  }, 120_000);

  it('meters to the very bytes the calling thread does, and the module decides as the wasm opa built', async () => {
    const policies = [large(20, 'same'), `package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role in {"admin", "viewer"}\n`];
    const inputs = generateInputs(11, 100);
    for (const rego of policies) {
      const { wasm } = await compiler.compile(rego, '{}');
      const inWorker = await meterWasm(wasm);
      expect(Buffer.from(inWorker).equals(Buffer.from(await meterPolicyWasm(wasm)))).toBe(true);
      // The caller's bytes are untouched (a copy went to the worker).
      expect(wasm.byteLength).toBeGreaterThan(0);
      const metered = await loadPolicyEngine(wasm, { data: '{}' });
      const plain = await loadPolicy(new Uint8Array(wasm).buffer as ArrayBuffer);
      plain.setData({});
      for (const input of inputs) {
        const expected = (plain.evaluate(input, 'project/authz') as Array<{ result: unknown }>)[0]?.result;
        expect(metered.evaluate(input, 'project/authz'), JSON.stringify(input)).toEqual(expected);
        expect(metered.fuelUsed).toBeGreaterThan(0);
      }
    }
  }, 60_000);

  it('a module binaryen refuses fails closed as unloadable, and the worker goes on', async () => {
    const before = meteringWorker().thread?.threadId;
    const refused = await meterWasm(new TextEncoder().encode('\0asm not really')).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(MeteringError);
    expect((refused as Error).message).toMatch(/not wasm binaryen can read/);
    // Bytes that are not wasm at all are unloadable before any metering.
    expect(await compilePolicyModule(new TextEncoder().encode('\0asm not really')).catch((e: unknown) => e)).toBeInstanceOf(PolicyEngineError);
    const { wasm } = await compiler.compile(large(3, 'after-refusal'), '{}');
    await compilePolicyModule(wasm);
    expect(meteringWorker().thread?.threadId).toBe(before);
  }, 60_000);

  it('a metering worker that dies fails the job it had, is replaced, and the next compile works', async () => {
    const { wasm } = await compiler.compile(large(40, 'crash'), '{}');
    const worker = meteringWorker().thread;
    expect(worker).not.toBeNull();
    const dying = meterWasm(wasm).catch((e: unknown) => e);
    // Behind it, a job the new worker takes.
    const behind = meterWasm(wasm);
    await worker!.terminate();
    const error = await dying;
    expect(error).toBeInstanceOf(MeteringError);
    expect((error as Error).message).toMatch(/metering worker exited/);
    expect(WebAssembly.Module.exports(await compilePolicyModule(await behind)).map((e) => e.name)).toContain(FUEL_GLOBAL);
    const replacement = meteringWorker().thread;
    expect(replacement).not.toBeNull();
    expect(replacement!.threadId).not.toBe(worker!.threadId);
    const engine = await loadPolicyEngine(wasm, { data: '{}' });
    expect(engine.evaluate({ user: { role: 'r' }, request: { path: '/x' } }, 'project/authz')).toMatchObject({ allow: true });
  }, 60_000);

  it('a job past its deadline is failed and its worker replaced', async () => {
    const { wasm } = await compiler.compile(large(40, 'deadline'), '{}');
    const metering = new MeteringWorker({ timeoutMs: 5 });
    try {
      const first = metering.meter(wasm);
      const thread = metering.thread;
      await expect(first).rejects.toThrow(/ran past 5 ms/);
      await expect(metering.meter(wasm)).rejects.toBeInstanceOf(MeteringError);
      expect(metering.thread === null || metering.thread.threadId !== thread!.threadId).toBe(true);
    } finally {
      await metering.close();
    }
  }, 60_000);

  it('a worker that has metered its share is replaced by a fresh one (binaryen memory only grows), and metering goes on alike', async () => {
    const { wasm } = await compiler.compile(large(2, 'renew'), '{}');
    const metering = new MeteringWorker({ jobsPerWorker: 2 });
    try {
      metering.start();
      const threads: number[] = [];
      const outputs: Uint8Array[] = [];
      for (let i = 0; i < 5; i++) {
        const metered = metering.meter(wasm);
        threads.push(metering.thread!.threadId); // the worker the job went to
        outputs.push(await metered);
      }
      // Two jobs per worker: workers 1, 1, 2, 2, 3.
      expect(threads[0]).toBe(threads[1]);
      expect(threads[2]).toBe(threads[3]);
      expect(new Set(threads).size).toBe(3);
      expect(threads[2]).not.toBe(threads[1]);
      expect(metering.thread!.threadId).toBe(threads[4]);
      // Every worker rewrites the module to the same bytes.
      for (const output of outputs) expect(Buffer.from(output).equals(Buffer.from(outputs[0]!))).toBe(true);
      expect(Buffer.from(outputs[0]!).equals(Buffer.from(await meterPolicyWasm(wasm)))).toBe(true);
      expect(WebAssembly.Module.exports(await WebAssembly.compile(outputs[4]!)).map((e) => e.name)).toContain(FUEL_GLOBAL);
    } finally {
      await metering.close();
    }
  }, 60_000);

  it('a module the CMS stored metered compiles as it is: the gateway never starts a metering worker (the built code, in a process of its own)', async () => {
    const { wasm } = await new RegoCompiler({ opaPath }).compile(large(3, 'stored'), '{}');
    const file = join(dir, 'stored.wasm');
    writeFileSync(file, wasm);
    const index = join(repoRoot, 'dist/policy/engine/index.js');
    const metering = join(repoRoot, 'dist/policy/engine/metering.js');
    const script = `
      import { readFileSync } from 'node:fs';
      const { compilePolicyModule, loadPolicyEngine } = await import(${JSON.stringify(index)});
      const { meteringWorker } = await import(${JSON.stringify(metering)});
      const module = await compilePolicyModule(readFileSync(${JSON.stringify(file)}));
      const engine = await loadPolicyEngine(module, { data: '{}' });
      const decision = engine.evaluate({ request: { headers: {}, path: '/x' }, user: { role: 'r' } }, 'project/authz');
      console.log(JSON.stringify({ worker: meteringWorker().thread !== null, fuelUsed: engine.fuelUsed, allow: decision.allow }));
    `;
    writeFileSync(join(dir, 'stored.mjs'), script);
    const { stdout } = await run(process.execPath, [join(dir, 'stored.mjs')], { timeout: 30_000 });
    // Decided, burning the fuel the CMS metered in, and no binaryen here.
    expect(JSON.parse(stdout.trim())).toEqual({ worker: false, fuelUsed: expect.any(Number), allow: true });
    expect((JSON.parse(stdout.trim()) as { fuelUsed: number }).fuelUsed).toBeGreaterThan(0);
  }, 60_000);

  it('keeps the process alive while a job is owed, and not once idle (the built code, in a process of its own)', async () => {
    const { wasm } = await compiler.compile(large(3, 'alive'), '{}');
    const file = join(dir, 'policy.wasm');
    writeFileSync(file, wasm);
    const index = join(repoRoot, 'dist/policy/engine/index.js');
    const metering = join(repoRoot, 'dist/policy/engine/metering.js');
    // Nothing else pending: without a ref while the job is owed, the process would exit before the answer.
    const script = `
      import { readFileSync } from 'node:fs';
      const { compilePolicyModule } = await import(${JSON.stringify(index)});
      const { startMetering } = await import(${JSON.stringify(metering)});
      startMetering();
      compilePolicyModule(readFileSync(${JSON.stringify(file)})).then((m) => console.log('compiled', WebAssembly.Module.exports(m).some((e) => e.name === ${JSON.stringify(FUEL_GLOBAL)})));
    `;
    // Past the timeout (a worker that kept the process alive once idle) the process is killed and this rejects.
    writeFileSync(join(dir, 'owed.mjs'), script);
    const { stdout } = await run(process.execPath, [join(dir, 'owed.mjs')], { timeout: 30_000 });
    expect(stdout.trim()).toBe('compiled true');
    const idle = `const { startMetering } = await import(${JSON.stringify(metering)}); startMetering(); console.log('started');`;
    writeFileSync(join(dir, 'idle.mjs'), idle);
    const { stdout: idleOut } = await run(process.execPath, [join(dir, 'idle.mjs')], { timeout: 10_000 });
    expect(idleOut.trim()).toBe('started');
  }, 60_000);
});
