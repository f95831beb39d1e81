// The runner's Prometheus metrics: decisions, decision latency, what policy
// revision is loaded, how long a CMS write took to reach this runner, and
// how stale the loaded policies are when etcd is away.
import { Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';
import { collectProcessMetrics } from '../../runtime/process-metrics.js';
import type { DecisionRecorder } from '../opa/index.js';
import type { VaultEvents } from '../vault/index.js';
import type { BudgetEvents } from '../../budget/gateway.js';
import type { PolicyWatcher, SwapEvent } from '../../policy/watcher/watcher.js';
import type { EngineCacheStats } from '../../policy/engine/cache.js';
import type { AbortReason } from '../../policy/engine/evaluator.js';
import { registerEnforcerMetrics, type EnforcerMetrics } from '../../policy/enforcer-metrics.js';

export interface RunnerMetrics extends EnforcerMetrics {
  registry: Registry;
  /** An evaluation stopped at its deadline or when its fuel was burned, or failed (out of memory, aborted). */
  evaluationAborted(reason: AbortReason): void;
  decisions: DecisionRecorder;
  vault: VaultEvents;
  /** LLM calls settled against their budgets, and calls refused. */
  budgets: BudgetEvents;
  watch(watcher: PolicyWatcher): void;
}

type DecisionKind = Parameters<DecisionRecorder['record']>[0];
type DecisionOutcome = Parameters<DecisionRecorder['record']>[1];

/**
 * Decision latency by kind of policy, counted in plain arrays: prom-client's
 * observe() checks and hashes its labels at every call, and a request makes
 * one or two decisions. It reads as a prom-client histogram (the same series,
 * text and JSON, so the cluster's primary sums it across workers as before).
 */
class DecisionHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly upperBounds: readonly number[],
  ) {}

  observe(policy: string, seconds: number): void {
    let series = this.series.get(policy);
    if (!series) {
      series = { counts: this.upperBounds.map(() => 0), sum: 0, count: 0 };
      this.series.set(policy, series);
    }
    const bounds = this.upperBounds;
    for (let i = 0; i < bounds.length; i++) {
      if (seconds <= bounds[i]!) {
        series.counts[i]!++;
        break;
      }
    }
    series.sum += seconds;
    series.count++;
  }

  /** As prom-client's Histogram#getForPromString: bucket labels, the series' labels shared. */
  getForPromString() {
    const values: { labels: Record<string, string | number>; sharedLabels: Record<string, string>; value: number; metricName: string; exemplar?: null }[] = [];
    for (const [policy, series] of this.series) {
      const shared = { policy };
      let cumulative = 0;
      this.upperBounds.forEach((le, i) => {
        cumulative += series.counts[i]!;
        values.push({ labels: { le }, sharedLabels: shared, value: cumulative, metricName: `${this.name}_bucket`, exemplar: null });
      });
      values.push(
        { labels: { le: '+Inf' }, sharedLabels: shared, value: series.count, metricName: `${this.name}_bucket`, exemplar: null },
        { labels: {}, sharedLabels: shared, value: series.sum, metricName: `${this.name}_sum` },
        { labels: {}, sharedLabels: shared, value: series.count, metricName: `${this.name}_count` },
      );
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  /** As prom-client's Histogram#get: the series' labels joined into each value's. */
  get() {
    const data = this.getForPromString();
    return {
      ...data,
      values: data.values.map(({ sharedLabels, labels, ...value }) => ({ ...value, labels: { ...labels, ...sharedLabels } })),
    };
  }

  reset(): void {
    this.series.clear();
  }
}

/** Decision latencies (see DecisionHistogram) in `registry` as gatehouse_decision_seconds. */
export function decisionLatencyHistogram(registry: Registry): DecisionHistogram {
  const histogram = new DecisionHistogram(
    'gatehouse_decision_seconds',
    'Time to evaluate one policy for one request',
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
  );
  registry.registerMetric(histogram as unknown as Metric);
  return histogram;
}

export function createRunnerMetrics(): RunnerMetrics {
  const registry = new Registry();
  collectProcessMetrics(registry, 'gatehouse_runner_');
  // The series the decision API exports too (decision log, candidates, signatures).
  const enforcer = registerEnforcerMetrics(registry);

  // Decisions are counted here and handed to the counter when it is read
  // (its labels checked and hashed once per series and scrape, not per decision).
  type Pending = { kind: DecisionKind; outcome: DecisionOutcome; n: number };
  const decisionCounts = new Map<DecisionKind, Map<DecisionOutcome, Pending>>();
  // In the order first seen, as the counter would list them.
  const decisionSeries: Pending[] = [];
  new Counter({
    name: 'gatehouse_decisions_total',
    help: 'Policy decisions by kind of policy and outcome',
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
    collect() {
      for (const pending of decisionSeries) {
        if (pending.n === 0) continue;
        this.inc({ policy: pending.kind, outcome: pending.outcome }, pending.n);
        pending.n = 0;
      }
    },
  });
  const decisionSeconds = decisionLatencyHistogram(registry);
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
    decisionLog: enforcer.decisionLog,
    candidateShadowed: enforcer.candidateShadowed,
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
        let byOutcome = decisionCounts.get(kind);
        if (!byOutcome) decisionCounts.set(kind, (byOutcome = new Map()));
        const pending = byOutcome.get(outcome);
        if (pending) pending.n++;
        else {
          const series = { kind, outcome, n: 1 };
          byOutcome.set(outcome, series);
          decisionSeries.push(series);
        }
        if (outcome === 'allow' || outcome === 'deny') decisionSeconds.observe(kind, seconds);
      },
    },
    watch(watcher) {
      enforcer.watch(watcher);
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
      const reported = { compiles: 0, instantiations: 0, evictions: 0, released: 0 };
      new Counter({
        name: 'gatehouse_policy_engine_events_total',
        help: 'Module compilations, instantiations, evictions (the budget) and releases (no current policy names the engine) of policy engines',
        labelNames: ['event'] as const,
        registers: [registry],
        async collect() {
          const stats = await engineStats();
          for (const event of ['compiles', 'instantiations', 'evictions', 'released'] as const) {
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
