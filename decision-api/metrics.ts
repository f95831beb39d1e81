// The decision API's Prometheus metrics, in a registry of its own: decisions,
// evaluation time, aborted evaluations, decision log events, candidates'
// shadow evaluations and policies refused for their signature. The service
// (main.ts) and the local stack (dev/local-stack) export the same series.
import { Counter, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../runtime/process-metrics.js';
import { registerEnforcerMetrics } from '../policy/enforcer-metrics.js';
import type { DecisionApiOptions } from './app.js';
import type { EnforcerOptions } from '../policy/enforcer.js';
import type { PolicyWatcher } from '../policy/watcher/watcher.js';

export interface DecisionApiMetrics {
  registry: Registry;
  /** For buildDecisionApp. */
  onDecision: NonNullable<DecisionApiOptions['onDecision']>;
  /** For createEnforcer. */
  enforcer: Required<Pick<EnforcerOptions, 'onAbort' | 'onShadow' | 'onDecisionLogWritten' | 'onDecisionLogDropped'>>;
  /** Reads the watcher's policies refused for their signature at each scrape. */
  watch(watcher: PolicyWatcher): void;
}

export function createDecisionApiMetrics(): DecisionApiMetrics {
  const registry = new Registry();
  collectProcessMetrics(registry, 'gatehouse_decision_api_');
  const decisions = new Counter({
    name: 'gatehouse_decision_api_decisions_total',
    help: 'Decisions by policy and outcome',
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'gatehouse_decision_api_evaluation_seconds',
    help: 'Policy evaluation time',
    buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01],
    registers: [registry],
  });
  const aborted = new Counter({
    name: 'gatehouse_decision_api_evaluations_aborted_total',
    help: 'Evaluations stopped at their deadline or when their fuel was burned, or failed (memory ceiling, abort)',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  // The series every runner worker exports too (decision log, candidates, signatures).
  const enforcer = registerEnforcerMetrics(registry);
  return {
    registry,
    onDecision(policy, outcome, seconds) {
      decisions.inc({ policy, outcome });
      latency.observe(seconds);
    },
    enforcer: {
      onAbort: (reason) => aborted.inc({ reason }),
      onShadow: enforcer.candidateShadowed,
      onDecisionLogWritten: enforcer.decisionLog.written,
      onDecisionLogDropped: enforcer.decisionLog.dropped,
    },
    watch: enforcer.watch,
  };
}
