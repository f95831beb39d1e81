/**
 * Where a gateway evaluates its decisions, bounded:
 *
 * - on its own thread (the default, POLICY_EVAL_WORKERS=0): each evaluation
 *   is bounded by its fuel (POLICY_EVAL_FUEL, metered inside the policy's
 *   wasm: meter.ts) and by the instance's memory ceiling
 *   (POLICY_MEMORY_MAX_MB); past either, the decision fails closed and the
 *   instance is replaced. No thread hop: a decision costs what the
 *   evaluation costs.
 * - in the evaluation pool (POLICY_EVAL_WORKERS=N): the same bounds, plus a
 *   wall-clock deadline per evaluation (POLICY_EVAL_TIMEOUT_MS), in worker
 *   threads (pool.ts).
 *
 * On the thread, a tenant (the caller's project) whose evaluation was
 * stopped, or took long, has its next evaluations wait: nine times as long as
 * that evaluation held the thread. A tenant sending runaway requests thus
 * holds the thread at most a tenth of the time, each time for at most what
 * its fuel buys, while other tenants' decisions go on.
 */
import { LRUCache } from 'lru-cache';
import { EngineCache, type EngineCacheStats } from './cache.js';
import { EvaluationBudgetError, evaluationFuel, policyMemoryMaxBytes } from './index.js';
import { engineInput } from './serialised-input.js';
import { EvaluationPool, evaluationTimeoutMs } from './pool.js';
import { decisionCacheBytes } from './decision-memo.js';
import { EvaluationWouldWaitError, type AbortReason, type EvaluateOptions, type EvaluationTarget, type Evaluator } from './evaluation.js';

export { EvaluationWouldWaitError, type AbortReason, type EvaluateOptions, type EvaluationTarget, type Evaluator } from './evaluation.js';

/** How many times as long as a stopped (or long) evaluation held the thread its tenant waits before its next one. */
export const THREAD_PENALTY_FACTOR = 9;

export interface ThreadEvaluatorOptions {
  /** The engines, built with the fuel every evaluation gets (EngineCache's fuel). */
  engines: EngineCache;
  /** An evaluation that burns more than this share of the fuel counts as long (default 0.1). */
  longShare?: number;
  /** Told of every evaluation stopped or failed. */
  onAbort?: (reason: AbortReason, tenant: string) => void;
}

/** Evaluation on the calling thread, bounded by fuel and memory, runaway tenants made to wait. */
export class ThreadEvaluator implements Evaluator {
  /** When each penalised tenant may next start an evaluation (performance.now() ms). */
  private readonly waitUntil = new LRUCache<string, number>({ max: 100_000 });
  private readonly longFuel: number;

  constructor(private readonly options: ThreadEvaluatorOptions) {
    const fuel = options.engines.fuel;
    this.longFuel = fuel === null ? Infinity : Math.floor(fuel * (options.longShare ?? 0.1));
  }

  async evaluate(tenant: string, target: EvaluationTarget, input: unknown, options: EvaluateOptions = {}): Promise<unknown> {
    const { engines } = this.options;
    let engine = engines.ready(target.source) ?? (await engines.engine(target.source));
    // No tenant waits out a penalty (the usual case): nothing to look up.
    while (this.waitUntil.size > 0) {
      const until = this.waitUntil.get(tenant);
      if (until === undefined) break;
      const wait = until - performance.now();
      if (wait <= 0) {
        this.waitUntil.delete(tenant);
        break;
      }
      if (options.wait === false) throw new EvaluationWouldWaitError(`tenant ${JSON.stringify(tenant)} waits out a penalty`);
      await new Promise((resolve) => setTimeout(resolve, Math.ceil(wait)));
      // Replaced meanwhile (another of this tenant's evaluations was stopped): take the current one.
      engine = engines.ready(target.source) ?? (await engines.engine(target.source));
    }
    const started = performance.now();
    try {
      const result = engine.evaluate(engineInput(input), target.entrypoint);
      if (engine.fuelUsed > this.longFuel) this.penalise(tenant, started);
      return result;
    } catch (error) {
      // Stopped, out of memory or aborted: the instance's heap may be in any state, build a fresh one next time.
      engines.discard(target.source);
      this.penalise(tenant, started);
      this.options.onAbort?.(error instanceof EvaluationBudgetError ? 'budget' : 'error', tenant);
      throw error;
    }
  }

  private penalise(tenant: string, started: number): void {
    const now = performance.now();
    const from = Math.max(now, this.waitUntil.get(tenant) ?? 0);
    this.waitUntil.set(tenant, from + (now - started) * THREAD_PENALTY_FACTOR);
  }

  async prepare(target: EvaluationTarget): Promise<void> {
    await this.options.engines.engine(target.source);
  }

  async stats(): Promise<EngineCacheStats> {
    return this.options.engines.stats;
  }

  async close(): Promise<void> {}
}

/** How a process evaluates its decisions: its services' configuration reads it from the environment (evaluationSettings). */
export interface EvaluationSettings {
  /** POLICY_EVAL_WORKERS (default 0): 0 evaluates on the calling thread; N in an evaluation pool of N worker threads. */
  workers: number;
  /** POLICY_EVAL_FUEL (default DEFAULT_EVAL_FUEL); null (off): modules not metered. */
  fuel: number | null;
  /** POLICY_MEMORY_MAX_MB (default 64), bytes: each instance's memory ceiling. */
  memoryMaxBytes: number;
  /** POLICY_EVAL_TIMEOUT_MS (default 500): the pool's deadline per evaluation. */
  timeoutMs: number;
  /** POLICY_DECISION_CACHE_MB (default 16), bytes: recent decisions remembered (decision-memo.ts); 0: none. */
  decisionCacheBytes: number;
}

/**
 * The evaluation settings in `env` (POLICY_EVAL_WORKERS, POLICY_EVAL_FUEL,
 * POLICY_MEMORY_MAX_MB, POLICY_EVAL_TIMEOUT_MS, POLICY_DECISION_CACHE_MB);
 * throws on nonsense.
 */
export function evaluationSettings(env: NodeJS.ProcessEnv): EvaluationSettings {
  const rawWorkers = env.POLICY_EVAL_WORKERS?.trim();
  const workers = rawWorkers ? Number(rawWorkers) : 0;
  if (!Number.isInteger(workers) || workers < 0 || workers > 64) throw new Error('POLICY_EVAL_WORKERS must be a whole number from 0 to 64');
  return {
    workers,
    fuel: evaluationFuel(env),
    memoryMaxBytes: policyMemoryMaxBytes(env),
    timeoutMs: evaluationTimeoutMs(env),
    decisionCacheBytes: decisionCacheBytes(env),
  };
}

/**
 * The evaluator `settings` ask for: `workers` workers in an evaluation pool
 * with `timeoutMs` per evaluation, or, with 0, `engines` on the calling
 * thread. Fuel and memory bound every evaluation either way (`engines` must
 * be built with the same fuel and memory ceiling).
 */
export function createEvaluator(
  options: EvaluationSettings & { engines: EngineCache; cacheBytes: number; onAbort?: (reason: AbortReason, tenant: string) => void },
): Evaluator {
  const { engines, workers, timeoutMs, fuel, memoryMaxBytes, cacheBytes, onAbort } = options;
  if (workers === 0) return new ThreadEvaluator({ engines, ...(onAbort ? { onAbort } : {}) });
  return new EvaluationPool({ workers, timeoutMs, fuel, memoryMaxBytes, cacheBytes, ...(onAbort ? { onAbort } : {}) });
}
