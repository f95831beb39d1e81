// Every service's process metrics (prom-client's default set: CPU, memory,
// handles, garbage collection, event-loop lag), under the service's prefix.
import { collectDefaultMetrics, type Registry } from 'prom-client';

/**
 * How often the event-loop lag is sampled, ms. prom-client's default (10)
 * wakes an idle process about 200 times a second, most of what an idle
 * runner worker spent (about 10 ms of CPU a second); each sample still
 * measures the lag exactly, there are only fewer of them.
 */
export const EVENT_LOOP_SAMPLE_MS = 100;

export function collectProcessMetrics(registry: Registry, prefix: string): void {
  collectDefaultMetrics({ register: registry, prefix, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS });
}
