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

/** How one evaluation may be made. */
export interface EvaluateOptions {
  /**
   * false: rejected at once (EvaluationWouldWaitError) where the evaluation
   * would have to wait for its tenant: one that waits out a penalty on the
   * thread, or holds its share of the pool. For work that may be left undone
   * (a candidate's shadow evaluation), so that it never piles up behind a
   * runaway tenant and runs long after. Default true.
   */
  wait?: boolean;
}

/** An evaluation asked not to wait (EvaluateOptions.wait false) that would have had to. */
export class EvaluationWouldWaitError extends Error {
  override readonly name = 'EvaluationWouldWaitError';
}

/** Evaluates policies for tenants, within the bounds (evaluator.ts). */
export interface Evaluator {
  /**
   * Rejects on an engine that cannot load, a failed evaluation, a bound
   * (EvaluationBudgetError, EvaluationTimeoutError, EvaluationMemoryError),
   * or, asked not to wait, a tenant that would have to (EvaluationWouldWaitError).
   */
  evaluate(tenant: string, target: EvaluationTarget, input: unknown, options?: EvaluateOptions): Promise<unknown>;
  /** Builds `target`'s engine wherever decisions run (a policy in use being swapped in is ready before its first decision). */
  prepare(target: EvaluationTarget): Promise<void>;
  stats(): Promise<EngineCacheStats>;
  close(): Promise<void>;
}
