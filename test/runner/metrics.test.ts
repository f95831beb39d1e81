import { describe, expect, it } from 'vitest';
import { AggregatorRegistry, Counter, Histogram, Registry } from 'prom-client';
import { createRunnerMetrics } from '../../plugins/runner/metrics.js';

/** The decision metrics as prom-client's own Counter and Histogram would hold them. */
function reference() {
  const registry = new Registry();
  const total = new Counter({
    name: 'gatehouse_decisions_total',
    help: 'Policy decisions by kind of policy and outcome',
    labelNames: ['policy', 'outcome'],
    registers: [registry],
  });
  const seconds = new Histogram({
    name: 'gatehouse_decision_seconds',
    help: 'Time to evaluate one policy for one request',
    labelNames: ['policy'],
    buckets: [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05],
    registers: [registry],
  });
  return {
    registry,
    record(kind: string, outcome: string, s: number) {
      total.inc({ policy: kind, outcome });
      if (outcome === 'allow' || outcome === 'deny') seconds.observe({ policy: kind }, s);
    },
  };
}

const NAMES = ['gatehouse_decisions_total', 'gatehouse_decision_seconds'];
const decisions: [Parameters<ReturnType<typeof createRunnerMetrics>['decisions']['record']>[0], 'allow' | 'deny' | 'error' | 'unavailable', number][] = [];
for (let i = 0; i < 500; i++) {
  const kind = (['platform', 'caller-project', 'project', 'cms-access'] as const)[i % 4]!;
  const outcome = (['allow', 'allow', 'deny', 'error', 'unavailable'] as const)[i % 5]!;
  // Every bucket, the bounds themselves, and past the last one.
  decisions.push([kind, outcome, i % 13 === 0 ? 0.00001 : i % 17 === 0 ? 0.2 : (i % 50) * 0.0002 + 0.000003]);
}

describe('decision metrics', () => {
  it('read exactly as prom-client counters and histograms, in text, in JSON and summed across workers', async () => {
    const ours = [createRunnerMetrics(), createRunnerMetrics()];
    const theirs = [reference(), reference()];
    decisions.forEach(([kind, outcome, s], i) => {
      ours[i % 2]!.decisions.record(kind, outcome, s);
      theirs[i % 2]!.record(kind, outcome, s);
    });
    for (const name of NAMES) {
      expect(await ours[0]!.registry.getSingleMetricAsString(name)).toBe(await theirs[0]!.registry.getSingleMetricAsString(name));
    }
    const json = async (registry: Registry) => (await registry.getMetricsAsJSON()).filter((m) => NAMES.includes(m.name));
    expect(await json(ours[1]!.registry)).toEqual(await json(theirs[1]!.registry));
    // As the cluster's primary sums its workers.
    const aggregated = async (registries: Registry[]) => {
      const merged = AggregatorRegistry.aggregate(await Promise.all(registries.map((r) => json(r))));
      return Promise.all(NAMES.map((name) => merged.getSingleMetricAsString(name)));
    };
    expect(await aggregated(ours.map((m) => m.registry))).toEqual(await aggregated(theirs.map((m) => m.registry)));
    // Read again after more decisions: counted from where the last read left off.
    ours[0]!.decisions.record('platform', 'allow', 0.0001);
    theirs[0]!.record('platform', 'allow', 0.0001);
    for (const name of NAMES) {
      expect(await ours[0]!.registry.getSingleMetricAsString(name)).toBe(await theirs[0]!.registry.getSingleMetricAsString(name));
    }
  });
});
