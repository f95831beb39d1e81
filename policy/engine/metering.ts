/**
 * Policy wasm metered (meter.ts) off the request thread.
 *
 * binaryen rewrites a module synchronously: on a cold start its own code
 * compiles for most of a second, and each later module takes tens to
 * hundreds of milliseconds. On the gateway's request thread that would hold
 * every other tenant's decisions while one cold project's module is metered.
 * So the rewrite runs in one long-lived worker thread per process:
 *
 * - started on first use (or ahead of it: startMetering), binaryen loaded
 *   and warmed up in it;
 * - one job at a time, in order; the wasm goes there and back as a
 *   transferred ArrayBuffer (one copy on the way in: the caller keeps its
 *   bytes);
 * - a job that binaryen refuses, whose worker dies, or that runs past
 *   METERING_TIMEOUT_MS rejects with a MeteringError (the policy fails
 *   closed as unloadable); a worker that died or ran past the deadline is
 *   replaced, and the jobs behind it go on in the new one;
 * - idle, the worker does not keep the process alive; with a job owed it
 *   does;
 * - after METERING_JOBS_PER_WORKER modules the worker is replaced by a fresh
 *   one (warming up at once, off the request thread): binaryen's own wasm
 *   memory only grows, by about 0.1 MB a module, and a process that meters
 *   a policy write a second for hours would otherwise grow without end.
 *   Measured (`npm run bench:metering-memory`: versions of one policy,
 *   each metered, compiled and decided once): in one worker the process
 *   went from 256 to 311 MB RSS over 600 versions with its JS heap flat
 *   (unmetered, about 120 MB throughout); renewed every 100 modules, it
 *   moves between about 250 and 305 MB, flat from the 300th version to the
 *   800th.
 *
 * Concurrent compiles of one module are one job already: the EngineCache
 * keeps one compile per wasm sha256. A thread that is off the request path
 * itself (the evaluation pool's workers) meters on its own thread instead
 * (meterOnThisThread).
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { MeteringError, meterPolicyWasm } from './meter.js';
import type { MeteringAnswer, MeteringRequest } from './meter-worker.js';

/** How long one job may take, warming a fresh worker's binaryen up included (about a second cold). */
export const METERING_TIMEOUT_MS = 30_000;

/** Modules one worker meters before a fresh one replaces it (see above): about a second of warm-up per hundred. */
export const METERING_JOBS_PER_WORKER = 100;

/**
 * The worker script: beside this module once built; when this module runs
 * from its TypeScript source (the tests, in-process), the built one in dist/,
 * since a worker thread cannot load TypeScript.
 */
function workerScript(): string {
  const beside = fileURLToPath(new URL('./meter-worker.js', import.meta.url));
  if (existsSync(beside) || !import.meta.url.endsWith('.ts')) return beside;
  return fileURLToPath(new URL('../../dist/policy/engine/meter-worker.js', import.meta.url));
}

const WORKER_SCRIPT = workerScript();

interface Job {
  id: number;
  wasm: ArrayBuffer;
  resolve: (metered: Uint8Array) => void;
  reject: (error: Error) => void;
}

export class MeteringWorker {
  private worker: Worker | null = null;
  private readonly queue: Job[] = [];
  private current: Job | null = null;
  private timer: NodeJS.Timeout | null = null;
  private nextId = 1;
  private closed = false;
  private readonly timeoutMs: number;
  private readonly jobsPerWorker: number;
  /** Jobs the current worker has answered. */
  private jobsDone = 0;

  constructor(options: { timeoutMs?: number; jobsPerWorker?: number } = {}) {
    this.timeoutMs = options.timeoutMs ?? METERING_TIMEOUT_MS;
    this.jobsPerWorker = options.jobsPerWorker ?? METERING_JOBS_PER_WORKER;
  }

  /** Starts the worker ahead of the first job, so that binaryen is warm by then. */
  start(): void {
    if (!this.closed) this.spawn();
  }

  /** The worker thread now, if one runs (its threadId tells a replaced worker apart). */
  get thread(): Worker | null {
    return this.worker;
  }

  /** `wasm` metered (meterPolicyWasm) in the worker. Rejects with a MeteringError. */
  meter(wasm: Uint8Array): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new MeteringError('the metering worker is closed'));
    // An exact copy (a Node Buffer may be a view into a shared pool), whose buffer moves to the worker.
    const copy = new Uint8Array(wasm).buffer as ArrayBuffer;
    return new Promise((resolve, reject) => {
      this.queue.push({ id: this.nextId++, wasm: copy, resolve, reject });
      this.next();
    });
  }

  private spawn(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SCRIPT);
    worker.on('message', (answer: MeteringAnswer) => this.answer(worker, answer));
    worker.on('error', (error) => this.lost(worker, new MeteringError(`the metering worker failed: ${error.message}`)));
    worker.on('exit', (code) => this.lost(worker, new MeteringError(`the metering worker exited (code ${code})`)));
    // Idle, it does not keep the process alive; next() refs it while a job is owed.
    worker.unref();
    this.worker = worker;
    this.jobsDone = 0;
    return worker;
  }

  private next(): void {
    if (this.current || this.closed) return;
    const job = this.queue.shift();
    if (!job) {
      this.worker?.unref();
      return;
    }
    const worker = this.spawn();
    worker.ref();
    this.current = job;
    this.timer = setTimeout(() => this.lost(worker, new MeteringError(`metering the policy wasm ran past ${this.timeoutMs} ms`)), this.timeoutMs);
    worker.postMessage({ id: job.id, wasm: job.wasm } satisfies MeteringRequest, [job.wasm]);
  }

  private answer(worker: Worker, answer: MeteringAnswer): void {
    const job = this.current;
    if (worker !== this.worker || !job || job.id !== answer.id) return;
    this.settle();
    if (answer.ok) job.resolve(new Uint8Array(answer.wasm));
    else job.reject(new MeteringError(answer.error));
    if (++this.jobsDone >= this.jobsPerWorker) this.renew(worker);
    this.next();
  }

  /** The worker died, failed, or ran past the deadline: its job fails, a fresh worker takes the ones behind it. */
  private lost(worker: Worker, error: Error): void {
    if (worker !== this.worker) return; // one already replaced, exiting
    this.worker = null;
    const job = this.current;
    this.settle();
    void worker.terminate();
    job?.reject(error);
    this.next();
  }

  /**
   * Replaces a worker that has metered its share with a fresh one, which
   * warms up once the old one is gone (the two binaryen heaps do not stand
   * side by side) rather than at the next module; a module owed meanwhile
   * starts the fresh one at once.
   */
  private renew(worker: Worker): void {
    this.worker = null; // its exit is then not a loss (lost() ignores a replaced worker)
    void worker.terminate().finally(() => {
      if (!this.closed && !this.worker) this.spawn();
    });
  }

  private settle(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.current = null;
  }

  async close(): Promise<void> {
    this.closed = true;
    const error = new MeteringError('the metering worker is closed');
    const owed = [...(this.current ? [this.current] : []), ...this.queue.splice(0)];
    this.settle();
    for (const job of owed) job.reject(error);
    const worker = this.worker;
    this.worker = null;
    await worker?.terminate();
  }
}

let shared: MeteringWorker | null = null;
let onThisThread = false;

/** The process's metering worker. */
export function meteringWorker(): MeteringWorker {
  shared ??= new MeteringWorker();
  return shared;
}

/** For a thread that is itself off the request path (an evaluation pool worker): meter here, not in a worker of its own. */
export function meterOnThisThread(): void {
  onThisThread = true;
}

/** Starts the metering worker (binaryen warming up in it) before the first module needs it. */
export function startMetering(): void {
  if (!onThisThread) meteringWorker().start();
}

/** `wasm` metered (meter.ts): in the metering worker, or on this thread where meterOnThisThread was called. */
export function meterWasm(wasm: Uint8Array): Promise<Uint8Array> {
  return onThisThread ? meterPolicyWasm(wasm) : meteringWorker().meter(wasm);
}
