// The runner's Prometheus metrics: decisions, decision latency, what policy
// revision is loaded, how long a CMS write took to reach this runner, and
// how stale the loaded policies are when etcd is away.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { DecisionRecorder } from '../opa/index.js';
import type { VaultEvents } from '../vault/index.js';
import type { BudgetEvents } from '../../budget/gateway.js';
import type { PolicyWatcher, SwapEvent } from '../../policy/watcher/watcher.js';
import type { EngineCacheStats } from '../../policy/engine/cache.js';
import type { AbortReason } from '../../policy/engine/evaluator.js';

export interface RunnerMetrics {
  registry: Registry;
  /** An evaluation stopped at its deadline or when its fuel was burned, or failed (out of memory, aborted). */
  evaluationAborted(reason: AbortReason): void;
  decisions: DecisionRecorder;
  vault: VaultEvents;
  /** Decision log events handed to the sink, or dropped (the buffer was full: the sink is too slow). */
  decisionLog: { written(n: number): void; dropped(n: number): void };
  /** LLM calls settled against their budgets, and calls refused. */
  budgets: BudgetEvents;
  watch(watcher: PolicyWatcher): void;
}

export function createRunnerMetrics(): RunnerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'gatehouse_runner_' });

  const decisionsTotal = new Counter({
    name: 'gatehouse_decisions_total',
    help: 'Policy decisions by kind of policy and outcome',
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
  });
  const decisionSeconds = new Histogram({
    name: 'gatehouse_decision_seconds',
    help: 'Time to evaluate one policy for one request',
    labelNames: ['policy'] as const,
    buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
    registers: [registry],
  });
  const policyRevision = new Gauge({
    name: 'gatehouse_policy_loaded_revision',
    // Across a runner's workers (cluster.ts): what the least advanced worker has.
    aggregator: 'min',
    help: 'etcd revision of the loaded version of each policy',
    labelNames: ['policy'] as const,
    registers: [registry],
  });
  const policyVersion = new Gauge({
    name: 'gatehouse_policy_loaded_version',
    // Across a runner's workers (cluster.ts): what the least advanced worker has.
    aggregator: 'min',
    help: 'CMS version (ETag) of the loaded version of each policy',
    labelNames: ['policy'] as const,
    registers: [registry],
  });
  const propagationSeconds = new Histogram({
    name: 'gatehouse_policy_propagation_seconds',
    help: 'From the commit time in a policy version metadata to its swap into this runner',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });

  const vaultSecrets = new Counter({
    name: 'gatehouse_vault_secret_lookups_total',
    help: 'Credential lookups by outcome: hit, miss, refresh, stale (served while Vault is away), refresh-failed, unavailable',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });

  const aborted = new Counter({
    name: 'gatehouse_policy_evaluations_aborted_total',
    help: 'Evaluations stopped when their fuel was burned (reason budget, POLICY_EVAL_FUEL) or at their deadline (reason timeout, POLICY_EVAL_TIMEOUT_MS, with the evaluation pool), or failed (reason error: memory ceiling, abort); each was denied and its instance replaced',
    labelNames: ['reason'] as const,
    registers: [registry],
  });

  const decisionLogEvents = new Counter({
    name: 'gatehouse_decision_log_events_total',
    help: 'Decision log events written to the sink, or dropped because the sink did not keep up (DECISION_LOG_BUFFER full)',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });

  const llmRequests = new Counter({
    name: 'gatehouse_llm_requests_total',
    help: 'LLM calls settled, by project and model; unsettled: the gateway never saw their usage and charged their reservation',
    labelNames: ['project', 'model', 'settled'] as const,
    registers: [registry],
  });
  const llmTokens = new Counter({
    name: 'gatehouse_llm_tokens_total',
    help: 'Tokens of settled LLM calls: prompt and completion as the LLM reported them, charged as the budget counted them',
    labelNames: ['project', 'model', 'kind'] as const,
    registers: [registry],
  });
  const usageRefused = new Counter({
    name: 'gatehouse_llm_usage_refused_total',
    help: 'LLM calls whose reported usage was not believed and that were charged their reservation: invalid (not finite, negative, unreadable), implausible (above what the call could cost or its window holds)',
    labelNames: ['project', 'reason'] as const,
    registers: [registry],
  });
  const budgetRefusals = new Counter({
    name: 'gatehouse_budget_refusals_total',
    help: 'LLM calls refused by their budget: exhausted (429), unavailable (etcd away and no block held, 503), too-large (can never fit, 400)',
    labelNames: ['project', 'reason'] as const,
    registers: [registry],
  });

  return {
    registry,
    budgets: {
      settled(project, model, usage) {
        llmRequests.inc({ project, model, settled: usage.seen ? 'yes' : 'no' });
        llmTokens.inc({ project, model, kind: 'prompt' }, usage.prompt);
        llmTokens.inc({ project, model, kind: 'completion' }, usage.completion);
        llmTokens.inc({ project, model, kind: 'charged' }, usage.charged);
      },
      refused(project, reason) {
        budgetRefusals.inc({ project, reason });
      },
      usageRefused(project, reason) {
        usageRefused.inc({ project, reason });
      },
    },
    decisionLog: {
      written: (n) => decisionLogEvents.inc({ outcome: 'written' }, n),
      dropped: (n) => decisionLogEvents.inc({ outcome: 'dropped' }, n),
    },
    evaluationAborted(reason) {
      aborted.inc({ reason });
    },
    vault: {
      secret(event) {
        vaultSecrets.inc({ outcome: event });
      },
    },
    decisions: {
      record(kind, outcome, seconds) {
        decisionsTotal.inc({ policy: kind, outcome });
        if (outcome === 'allow' || outcome === 'deny') decisionSeconds.observe({ policy: kind }, seconds);
      },
    },
    watch(watcher) {
      watcher.on('swap', (swap: SwapEvent) => {
        if (swap.policy === null) {
          policyRevision.remove({ policy: swap.name });
          policyVersion.remove({ policy: swap.name });
          return;
        }
        policyRevision.set({ policy: swap.name }, swap.policy.modRevision);
        policyVersion.set({ policy: swap.name }, swap.policy.meta.version);
        if (swap.propagationMs !== null) propagationSeconds.observe(Math.max(0, swap.propagationMs) / 1000);
      });
      new Gauge({
        name: 'gatehouse_policy_stale_seconds',
    // Across a runner's workers (cluster.ts): the worst worker.
    aggregator: 'max',
        help: 'Seconds since the loaded policies were last known to match etcd (0 while watching)',
        registers: [registry],
        collect() {
          this.set(watcher.status.staleSeconds);
        },
      });
      new Gauge({
        name: 'gatehouse_policy_watch_up',
    // Across a runner's workers (cluster.ts): what the least advanced worker has.
    aggregator: 'min',
        help: '1 while the etcd watch is established',
        registers: [registry],
        collect() {
          this.set(watcher.status.state === 'watching' ? 1 : 0);
        },
      });
      // Three metrics read the same figures, collected together in one scrape:
      // with the evaluation pool, one question to the workers serves all three.
      let asking: Promise<EngineCacheStats> | null = null;
      const engineStats = () => (asking ??= watcher.engineStats().finally(() => (asking = null)));
      new Gauge({
        name: 'gatehouse_policy_engines',
    // Across a runner's workers (cluster.ts): all of them together.
    aggregator: 'sum',
        help: 'Policy engines built and kept (within RUNNER_POLICY_CACHE_MB), by what they are',
        labelNames: ['kind'] as const,
        registers: [registry],
        async collect() {
          const stats = await engineStats();
          this.set({ kind: 'instances' }, stats.instances);
          this.set({ kind: 'modules' }, stats.modules);
        },
      });
      new Gauge({
        name: 'gatehouse_policy_engine_bytes',
    // Across a runner's workers (cluster.ts): all of them together.
    aggregator: 'sum',
        help: 'Bytes the kept policy engines are counted at, against the cache budget',
        labelNames: ['kind'] as const,
        registers: [registry],
        async collect() {
          const stats = await engineStats();
          this.set({ kind: 'instances' }, stats.instanceBytes);
          this.set({ kind: 'modules' }, stats.moduleBytes);
        },
      });
      const reported = { compiles: 0, instantiations: 0, evictions: 0 };
      new Counter({
        name: 'gatehouse_policy_engine_events_total',
        help: 'Module compilations, instantiations and evictions of policy engines',
        labelNames: ['event'] as const,
        registers: [registry],
        async collect() {
          const stats = await engineStats();
          for (const event of ['compiles', 'instantiations', 'evictions'] as const) {
            this.inc({ event }, stats[event] - reported[event]);
            reported[event] = stats[event];
          }
        },
      });
      new Gauge({
        name: 'gatehouse_policies_unloadable',
    // Across a runner's workers (cluster.ts): the worst worker.
    aggregator: 'max',
        help: 'Policies that exist but cannot be loaded: every decision that needs one is denied (names in /readyz)',
        registers: [registry],
        collect() {
          this.set(watcher.unloadable().length);
        },
      });
      new Gauge({
        name: 'gatehouse_policies_loaded',
    // Across a runner's workers (cluster.ts): what the least advanced worker has.
    aggregator: 'min',
        help: 'Number of policies loaded',
        registers: [registry],
        collect() {
          this.set(watcher.status.policies);
        },
      });
    },
  };
}
