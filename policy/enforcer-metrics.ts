/**
 * The series every process that enforces policies exports alike (each runner
 * worker, each decision API), from what its enforcer (enforcer.ts) reports:
 * decision log events, candidates' shadow evaluations, policies refused for
 * their signature, and the decision memo's lookups. Each service registers
 * them in its own registry beside its own series.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { ShadowOutcome } from './candidate/index.js';
import type { PolicyWatcher } from './watcher/watcher.js';

export interface EnforcerMetrics {
  /** Decision log events handed to the sink, or dropped (the buffer was full: the sink is too slow). */
  decisionLog: { written(n: number): void; dropped(n: number): void };
  /** A candidate's shadow evaluation: agreed with the live decision, diverged, failed, or dropped (too many pending). */
  candidateShadowed(policy: string, outcome: ShadowOutcome): void;
  /** Reads the watcher's policies refused for their signature at each scrape. */
  watch(watcher: PolicyWatcher): void;
}

export function registerEnforcerMetrics(registry: Registry): EnforcerMetrics {
  const decisionLogEvents = new Counter({
    name: 'gatehouse_decision_log_events_total',
    help: 'Decision log events written to the sink, or dropped because the sink did not keep up (DECISION_LOG_BUFFER full)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const candidateEvaluations = new Counter({
    name: 'gatehouse_candidate_evaluations_total',
    help: "Decisions a policy's candidate was evaluated for in the shadow of the live version: agreed, diverged, error (did not load or ran past its bounds), dropped (too many pending)",
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
  });
  return {
    decisionLog: {
      written: (n) => decisionLogEvents.inc({ outcome: 'written' }, n),
      dropped: (n) => decisionLogEvents.inc({ outcome: 'dropped' }, n),
    },
    candidateShadowed: (policy, outcome) => candidateEvaluations.inc({ policy, outcome }),
    watch(watcher) {
      new Gauge({
        name: 'gatehouse_policies_refused_signature',
        // Across a runner's workers (cluster.ts): the worst worker.
        aggregator: 'max',
        help: 'Policies refused for their signature (unsigned, or a bad signature: none by a listed key over these bytes); every decision that needs one is denied',
        labelNames: ['problem'] as const,
        registers: [registry],
        collect() {
          const unloadable = watcher.unloadable();
          for (const problem of ['unsigned', 'bad signature'] as const) this.set({ problem }, unloadable.filter((u) => u.signature === problem).length);
        },
      });
      const reported = { hits: 0, misses: 0, rests: 0 };
      new Counter({
        name: 'gatehouse_decision_memo_lookups_total',
        help: 'Decisions looked up in the decision memo (POLICY_DECISION_CACHE_MB): hit (answered as remembered, not evaluated) or miss (evaluated)',
        labelNames: ['outcome'] as const,
        registers: [registry],
        collect() {
          const stats = watcher.memoStats;
          if (!stats) return;
          this.inc({ outcome: 'hit' }, stats.hits - reported.hits);
          this.inc({ outcome: 'miss' }, stats.misses - reported.misses);
          reported.hits = stats.hits;
          reported.misses = stats.misses;
        },
      });
      new Counter({
        name: 'gatehouse_decision_memo_rests_total',
        help: 'Times a policy version stopped being remembered for a while: its inputs repeated too rarely (fewer than one lookup in 16 hit)',
        registers: [registry],
        collect() {
          const stats = watcher.memoStats;
          if (!stats) return;
          this.inc(stats.rests - reported.rests);
          reported.rests = stats.rests;
        },
      });
      new Gauge({
        name: 'gatehouse_decision_memo_bytes',
        // Across a runner's workers (cluster.ts): all of them together.
        aggregator: 'sum',
        help: 'Bytes the remembered decisions are counted at, against POLICY_DECISION_CACHE_MB',
        registers: [registry],
        collect() {
          this.set(watcher.memoStats?.bytes ?? 0);
        },
      });
    },
  };
}
