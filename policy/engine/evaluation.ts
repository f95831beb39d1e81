// What evaluates a policy for a tenant, whichever way it runs (on the
// calling thread, evaluator.ts, or in the pool's threads, pool.ts): the
// interface both implement, what they are asked to evaluate, and why an
// evaluation can be stopped.
import type { EngineCacheStats, EngineSource } from './cache.js';

/** Why an evaluation was stopped or failed: its deadline, its fuel, or an error (memory ceiling, abort). */
export type AbortReason = 'timeout' | 'budget' | 'error';

/** What to evaluate: a policy's engine source and entrypoint, on behalf of a tenant. */
export interface EvaluationTarget {
  source: EngineSource;
  entrypoint: string;
}

/** Evaluates policies for tenants, within the bounds (evaluator.ts). */
export interface Evaluator {
  /** Rejects on an engine that cannot load, a failed evaluation, or a bound (EvaluationBudgetError, EvaluationTimeoutError, EvaluationMemoryError). */
  evaluate(tenant: string, target: EvaluationTarget, input: unknown): Promise<unknown>;
  /** Builds `target`'s engine wherever decisions run (a policy being swapped in is ready before its first decision). */
  prepare(target: EvaluationTarget): Promise<void>;
  stats(): Promise<EngineCacheStats>;
  close(): Promise<void>;
}
