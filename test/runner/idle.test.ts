// An idle runner sleeps: its thread is woken a few dozen times a second (the
// event-loop lag sample, timers), not the two hundred times prom-client's
// default lag sampling (every 10 ms) woke it, which was most of what an idle
// runner worker spent (runtime/process-metrics.ts).
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../dev/apisix/index.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';

/** How many times the process's main thread has gone to sleep (blocked) so far. */
function sleeps(pid: number): number {
  const status = readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8');
  return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)![1]);
}

describe('an idle runner', () => {
  let runner: RunnerProcess;

  beforeAll(async () => {
    // Metrics on: the process metrics, event-loop lag included, are collected.
    runner = await startRunner({ env: { RUNNER_METRICS_PORT: String(await freePort()), LOG_LEVEL: 'warn' } });
  }, 30_000);

  afterAll(async () => {
    await runner?.stop();
  });

  it('is woken fewer than 60 times a second', async () => {
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const pid = runner.child.pid!;
    const before = sleeps(pid);
    const started = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const perSecond = ((sleeps(pid) - before) * 1000) / (Date.now() - started);
    expect(perSecond).toBeGreaterThan(0);
    expect(perSecond).toBeLessThan(60);
  }, 30_000);
});
