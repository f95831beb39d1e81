// A client of a budgeted LLM route that spends what is left, as a client
// honouring Retry-After does: a 429 with a short Retry-After (calls in flight,
// or a block another gateway may still give back, hold the rest) is waited
// out; one that names the window's end is final.
import { expect } from 'vitest';

export interface BudgetedAnswer {
  status: number;
  headers: Headers;
  text?: string;
}

/** Calls `callAt(0)`, `callAt(1)`, ... until the budget says it is spent; every answer, in order. */
export async function spendTheRest<A extends BudgetedAnswer>(callAt: (i: number) => Promise<A>): Promise<A[]> {
  const answers: A[] = [];
  for (let i = 0; i < 100; i++) {
    const answer = await callAt(i);
    answers.push(answer);
    if (answer.status === 200) continue;
    expect(answer.status, answer.text).toBe(429);
    const retryAfter = Number(answer.headers.get('retry-after'));
    if (retryAfter > 2) return answers;
    await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
  }
  throw new Error('the budget never said it was spent');
}
