// A client of a budgeted LLM route that spends what is left, as a client
// honouring Retry-After does: a 429 with a short Retry-After (calls in flight,
// or a block another gateway may still give back, hold the rest) is waited
// out; one that names the window's end is final. A 503 from the budget
// ledger (etcd unreachable for longer than a call waits for it, as while a
// datacenter is cut off and etcd elects a leader) is retried after its
// Retry-After too, a few times in a row at most.
import { expect } from 'vitest';

export interface BudgetedAnswer {
  status: number;
  headers: Headers;
  text?: string;
}

const LEDGER_UNAVAILABLE = /budget ledger is unavailable/;

/** Calls `callAt(0)`, `callAt(1)`, ... until the budget says it is spent; every answer, in order. */
export async function spendTheRest<A extends BudgetedAnswer>(callAt: (i: number) => Promise<A>): Promise<A[]> {
  const answers: A[] = [];
  let unavailableInARow = 0;
  for (let i = 0; i < 100; i++) {
    const answer = await callAt(i);
    answers.push(answer);
    if (answer.status === 200) {
      unavailableInARow = 0;
      continue;
    }
    const retryAfter = Number(answer.headers.get('retry-after'));
    if (answer.status === 503 && answer.text !== undefined && LEDGER_UNAVAILABLE.test(answer.text) && unavailableInARow < 3) {
      unavailableInARow++;
      console.log(`the budget ledger was unavailable (${unavailableInARow} in a row); retrying after ${retryAfter} s`);
      await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
      continue;
    }
    expect(answer.status, answer.text).toBe(429);
    unavailableInARow = 0;
    if (retryAfter > 2) return answers;
    await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
  }
  throw new Error('the budget never said it was spent');
}

type Readiness = { status: string; budgets?: string; workers?: { budgets?: string }[] };

/** Whether the runner whose metrics port this is enforces its policies and has read the budgets, in every worker (its /readyz). */
export async function runnerHasReadBudgets(metricsPort: number): Promise<boolean> {
  const readiness = await fetch(`http://127.0.0.1:${metricsPort}/readyz`).then(
    (r) => r.json() as Promise<Readiness>,
    () => ({ status: 'no answer' }) as Readiness,
  );
  return readiness.status === 'ready' && (readiness.workers ?? [readiness]).every((w) => w.budgets === 'loaded');
}
