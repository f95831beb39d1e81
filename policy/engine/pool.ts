/**
 * Policy evaluation off the request thread, under a deadline, with tenants
 * kept apart in time.
 *
 * OPA's wasm evaluates synchronously: on the runner's own thread, one
 * evaluation that runs for seconds (an input-driven `numbers.range`, `walk`,
 * a large comprehension) would hold every other tenant's decision. Here
 * evaluations run in worker threads, each with its own engines:
 *
 * - a deadline per evaluation (POLICY_EVAL_TIMEOUT_MS): past it the worker
 *   is stopped (V8 interrupts wasm too) and replaced, and that decision
 *   fails closed;
 * - each instance's memory has a ceiling (POLICY_MEMORY_MAX_MB, enforced by
 *   the engine): past it that decision fails and the instance is replaced;
 * - a tenant (the caller's project) has at most workers - 1 evaluations in
 *   flight, and waiting tenants are served in turn, so a tenant sending
 *   runaway requests holds at most that many workers while others go on.
 *
 * A worker is sent a policy's bytes the first time it needs them; it keeps
 * them (and asks again if it let them go).
 *
 * Every evaluation is also bounded by its fuel (POLICY_EVAL_FUEL, metered
 * inside the wasm: meter.ts), as on the calling thread. The gateways
 * evaluate on their own thread unless POLICY_EVAL_WORKERS asks for this pool
 * (evaluator.ts).
 *
 * The CMS's load check (a submitted policy evaluated once before it is
 * written) runs in a pool of its own, under the same bounds.
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { EngineCache, withWasmBytes, type EngineCacheStats, type EngineSource } from './cache.js';
import { DEFAULT_EVAL_FUEL, EvaluationBudgetError, PolicyEngineError } from './index.js';
import { EvaluationWouldWaitError, type AbortReason, type EvaluateOptions, type EvaluationTarget, type Evaluator } from './evaluation.js';
import type { WorkerAnswer, WorkerNotice, WorkerRequest, WorkerSettings } from './pool-worker.js';

export const DEFAULT_EVAL_TIMEOUT_MS = 500;
/**
 * How long building an engine in a worker may take (compiling and metering
 * the wasm, loading the data): not counted against the evaluation's deadline,
 * since a cold worker meters a module in about a second.
 */
const BUILD_TIMEOUT_MS = 30_000;

export class EvaluationTimeoutError extends Error {
  override readonly name = 'EvaluationTimeoutError';
}

/** The evaluation needed more linear memory than the instance's ceiling (memoryMaxBytes). */
export class EvaluationMemoryError extends Error {
  override readonly name = 'EvaluationMemoryError';
}

export interface EvaluationPoolOptions {
  workers: number;
  timeoutMs?: number;
  /** The engine budget, shared out between the workers. */
  cacheBytes: number;
  memoryMaxBytes: number;
  /** Each evaluation's fuel (default: POLICY_EVAL_FUEL's, DEFAULT_EVAL_FUEL; null: not metered). */
  fuel?: number | null;
  /** Told of every evaluation stopped or failed: 'timeout', 'budget' (its fuel burned) or 'error'. */
  onAbort?: (reason: AbortReason, tenant: string) => void;
}

interface Job {
  tenant: string;
  target: EvaluationTarget;
  input: ArrayBuffer | null;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

interface Slot {
  worker: Worker;
  /** Engine keys whose source this worker was sent. */
  known: Set<string>;
  job: Job | null;
  timer: NodeJS.Timeout | null;
  /** Answers awaited from this worker, by message id. */
  waiting: Map<number, (answer: WorkerAnswer) => void>;
  /** Jobs are dispatched to a worker once it is ready (its metering warm). */
  ready: boolean;
}

/**
 * The worker script: beside this module once built; when this module runs
 * from its TypeScript source (the tests, in-process), the built one in dist/,
 * since a worker thread cannot load TypeScript.
 */
function workerScript(): string {
  const beside = fileURLToPath(new URL('./pool-worker.js', import.meta.url));
  if (existsSync(beside) || !import.meta.url.endsWith('.ts')) return beside;
  return fileURLToPath(new URL('../../dist/policy/engine/pool-worker.js', import.meta.url));
}

const WORKER_SCRIPT = workerScript();

export class EvaluationPool implements Evaluator {
  private readonly slots: Slot[] = [];
  private readonly queues = new Map<string, Job[]>();
  /** Tenants with waiting jobs, in the order they are served. */
  private readonly turn: string[] = [];
  private readonly inFlight = new Map<string, number>();
  private readonly perTenant: number;
  private readonly timeoutMs: number;
  private readonly fuel: number | null;
  private nextId = 1;
  private closed = false;

  constructor(private readonly options: EvaluationPoolOptions) {
    const workers = Math.max(2, Math.floor(options.workers));
    this.perTenant = workers - 1;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_EVAL_TIMEOUT_MS;
    this.fuel = options.fuel !== undefined ? options.fuel : DEFAULT_EVAL_FUEL;
    for (let i = 0; i < workers; i++) this.slots.push(this.spawn());
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_SCRIPT, {
      workerData: {
        cacheBytes: Math.floor(this.options.cacheBytes / Math.max(2, this.options.workers)),
        memoryMaxBytes: this.options.memoryMaxBytes,
        fuel: this.fuel,
      } satisfies WorkerSettings,
    });
    const slot: Slot = { worker, known: new Set(), job: null, timer: null, waiting: new Map(), ready: false };
    worker.on('message', (answer: WorkerAnswer | WorkerNotice) => {
      if ('notice' in answer && answer.notice === 'ready') {
        slot.ready = true;
        this.dispatch();
      } else if ('notice' in answer) this.notice(slot, answer);
      else slot.waiting.get(answer.id)?.(answer);
    });
    worker.on('error', () => undefined); // an 'exit' follows; replace() handles it
    worker.on('exit', () => {
      if (!this.closed && this.slots.includes(slot)) this.replace(slot, new Error('the evaluation worker exited'));
    });
    worker.unref();
    return slot;
  }

  /** Stops a slot's worker, fails what it was doing, and puts a fresh worker in its place. */
  private replace(slot: Slot, error: Error): void {
    const index = this.slots.indexOf(slot);
    if (index < 0) return;
    if (slot.timer) clearTimeout(slot.timer);
    const job = slot.job;
    slot.job = null;
    for (const answer of slot.waiting.values()) answer({ id: -1, ok: false, error: error.message });
    slot.waiting.clear();
    void slot.worker.terminate();
    // Closed meanwhile: no fresh worker (close() stops the ones it knows).
    if (!this.closed) this.slots[index] = this.spawn();
    if (job) this.finish(job, null, error);
    this.dispatch();
  }

  private send(slot: Slot, message: WorkerRequest, transfer: ArrayBuffer[] = []): Promise<WorkerAnswer> {
    return new Promise((resolve) => {
      // An idle worker does not keep the process alive, one with an answer owed does: a
      // process whose only pending work is this (the decision API warming the platform
      // policy up before it listens) would otherwise exit, status 0, before the answer.
      if (slot.waiting.size === 0) slot.worker.ref();
      slot.waiting.set(message.id, (answer) => {
        slot.waiting.delete(message.id);
        if (slot.waiting.size === 0) slot.worker.unref();
        resolve(answer);
      });
      slot.worker.postMessage(message, transfer);
    });
  }

  /** Evaluates `target` for `tenant`; rejects on an engine that cannot load, a failed evaluation, or the deadline. */
  evaluate(tenant: string, target: EvaluationTarget, input: unknown, options: EvaluateOptions = {}): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('the evaluation pool is closed'));
    if (options.wait === false && (this.queues.has(tenant) || (this.inFlight.get(tenant) ?? 0) >= this.perTenant))
      return Promise.reject(new EvaluationWouldWaitError(`tenant ${JSON.stringify(tenant)} holds its share of the pool`));
    const bytes = input === undefined ? null : (new TextEncoder().encode(JSON.stringify(input)).buffer as ArrayBuffer);
    return new Promise((resolve, reject) => {
      const job: Job = { tenant, target, input: bytes, resolve, reject };
      const queue = this.queues.get(tenant);
      if (queue) queue.push(job);
      else {
        this.queues.set(tenant, [job]);
        this.turn.push(tenant);
      }
      this.dispatch();
    });
  }

  /** Builds `target`'s engine in every worker (a policy in use being swapped in is ready before its first decision). */
  async prepare(target: EvaluationTarget): Promise<void> {
    const key = EngineCache.key(target.source);
    const source = await withWasmBytes(target.source);
    const answers = await Promise.all(
      this.slots.map((slot) => {
        slot.known.add(key);
        return this.send(slot, { type: 'prepare', id: this.nextId++, key, source });
      }),
    );
    const failed = answers.find((answer) => !answer.ok && answer.unloadable);
    if (failed && !failed.ok) throw new PolicyEngineError(failed.error);
  }

  /** The workers' engine caches, added up (a worker busy past the deadline answers after it is replaced: then zeros). */
  async stats(): Promise<EngineCacheStats> {
    const total: EngineCacheStats = {
      unloadable: 0,
      instances: 0,
      instanceBytes: 0,
      modules: 0,
      moduleBytes: 0,
      compiles: 0,
      instantiations: 0,
      evictions: 0,
      released: 0,
    };
    const answers = await Promise.all(this.slots.map((slot) => this.send(slot, { type: 'stats', id: this.nextId++ })));
    for (const answer of answers) {
      if (!answer.ok) continue;
      const stats = answer.result as EngineCacheStats;
      for (const key of Object.keys(total) as (keyof EngineCacheStats)[]) total[key] += stats[key];
    }
    return total;
  }

  private dispatch(): void {
    // Closed: an answer still on its way (posted before its worker stopped) starts nothing.
    if (this.closed) return;
    for (const slot of this.slots) {
      if (slot.job || !slot.ready) continue;
      const job = this.nextJob();
      if (!job) return;
      this.run(slot, job);
    }
  }

  /** The first waiting job of the next tenant in turn that is under its share of workers. */
  private nextJob(): Job | null {
    for (let i = 0; i < this.turn.length; i++) {
      const tenant = this.turn[i]!;
      if ((this.inFlight.get(tenant) ?? 0) >= this.perTenant) continue;
      const queue = this.queues.get(tenant)!;
      const job = queue.shift()!;
      this.turn.splice(i, 1);
      if (queue.length > 0)
        this.turn.push(tenant); // back of the line
      else this.queues.delete(tenant);
      return job;
    }
    return null;
  }

  /** Starts (again) the deadline of the slot's job: the evaluation's, or while its engine is built, the build's. */
  /** Arms `slot`'s timer for `job`: an evaluation's deadline, or a longer one while its engine is being built. */
  private deadline(slot: Slot, job: Job, phase: 'building' | 'evaluating'): void {
    const building = phase === 'building';
    if (slot.timer) clearTimeout(slot.timer);
    slot.timer = setTimeout(
      () => {
        this.options.onAbort?.('timeout', job.tenant);
        this.replace(
          slot,
          new EvaluationTimeoutError(
            building ? `building the policy's engine ran past ${BUILD_TIMEOUT_MS} ms` : `policy evaluation ran past ${this.timeoutMs} ms`,
          ),
        );
      },
      building ? Math.max(BUILD_TIMEOUT_MS, this.timeoutMs) : this.timeoutMs,
    );
  }

  private notice(slot: Slot, notice: WorkerNotice): void {
    if (this.closed) return; // no deadline armed after the close cleared them
    const job = slot.job;
    if (job && slot.waiting.has(notice.id)) this.deadline(slot, job, notice.notice === 'building' ? 'building' : 'evaluating');
  }

  private run(slot: Slot, job: Job): void {
    slot.job = job;
    this.inFlight.set(job.tenant, (this.inFlight.get(job.tenant) ?? 0) + 1);
    this.deadline(slot, job, 'evaluating');
    const key = EngineCache.key(job.target.source);
    const attempt = async (withSource: boolean): Promise<void> => {
      let source: EngineSource | undefined;
      try {
        // A worker thread cannot be handed a loader: the wasm is read here, when the worker lacks the module.
        if (withSource) source = await withWasmBytes(job.target.source);
      } catch (error) {
        if (slot.job !== job) return;
        if (slot.timer) clearTimeout(slot.timer);
        slot.job = null;
        this.finish(job, null, error instanceof Error ? error : new Error(String(error)));
        this.dispatch();
        return;
      }
      const input = job.input === null ? null : job.input.slice(0);
      const message: WorkerRequest = { type: 'eval', id: this.nextId++, key, entrypoint: job.target.entrypoint, input, ...(source ? { source } : {}) };
      if (withSource) slot.known.add(key);
      const answer = await this.send(slot, message, input ? [input] : []);
      if (slot.job !== job) return; // replaced meanwhile: already failed
      if (!answer.ok && answer.needSource && !withSource) return attempt(true);
      if (slot.timer) clearTimeout(slot.timer);
      slot.job = null;
      if (answer.ok) this.finish(job, answer.result, null);
      else {
        if (!answer.unloadable) {
          this.options.onAbort?.(answer.outOfFuel ? 'budget' : 'error', job.tenant);
        }
        const error = answer.unloadable
          ? new PolicyEngineError(answer.error)
          : answer.outOfMemory
            ? new EvaluationMemoryError(`policy evaluation needed more than ${Math.round(this.options.memoryMaxBytes / (1024 * 1024))} MiB: ${answer.error}`)
            : answer.outOfFuel
              ? new EvaluationBudgetError(answer.error)
              : new Error(answer.error);
        this.finish(job, null, error);
      }
      this.dispatch();
    };
    void attempt(!slot.known.has(key));
  }

  private finish(job: Job, result: unknown, error: Error | null): void {
    const left = (this.inFlight.get(job.tenant) ?? 1) - 1;
    if (left > 0) this.inFlight.set(job.tenant, left);
    else this.inFlight.delete(job.tenant);
    if (error) job.reject(error);
    else job.resolve(result);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const slot of this.slots) if (slot.timer) clearTimeout(slot.timer);
    for (const [, queue] of this.queues) for (const job of queue) job.reject(new Error('the evaluation pool is closed'));
    this.queues.clear();
    this.turn.length = 0;
    await Promise.all(this.slots.map((slot) => slot.worker.terminate()));
  }
}

/** POLICY_EVAL_TIMEOUT_MS (default 500): the deadline of one evaluation, for the gateways and the CMS's load check alike. */
export function evaluationTimeoutMs(env: NodeJS.ProcessEnv): number {
  const rawTimeout = env.POLICY_EVAL_TIMEOUT_MS?.trim();
  const timeoutMs = rawTimeout ? Number(rawTimeout) : DEFAULT_EVAL_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 1) throw new Error('POLICY_EVAL_TIMEOUT_MS must be a positive number of milliseconds');
  return timeoutMs;
}
