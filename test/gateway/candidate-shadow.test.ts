// A candidate's shadow evaluation never waits for its tenant: one the
// evaluator would make wait (the candidate ran away and waits out its
// penalty) is dropped and counted, not queued to hold the thread later; and a
// candidate whose evaluation failed or was stopped rests 99 times as long as
// that evaluation took, its shadows dropped meanwhile. The
// evaluator's side (EvaluationWouldWaitError on the thread and in the pool)
// is tested against real policies in metering.test.ts and evaluation-pool.test.ts.
import { describe, expect, it } from 'vitest';
import { CandidateShadow, SHADOW_REST_FACTOR, type ShadowCall, type ShadowOutcome } from '../../policy/candidate/shadow.js';
import { EvaluationWouldWaitError, type EvaluateOptions } from '../../policy/engine/evaluation.js';
import type { LoadedPolicy } from '../../policy/watcher/policy-set.js';

function policy(name: string, version: number, evaluate: LoadedPolicy['evaluate'] = async () => ({})): LoadedPolicy {
  return { name, meta: { version }, evaluate } as unknown as LoadedPolicy;
}

describe('shadow evaluation of a candidate', () => {
  it('asks not to wait; a refusal to wait is counted as dropped, another failure as an error', async () => {
    const outcomes: ShadowOutcome[] = [];
    const shadow = new CandidateShadow({ gateway: 'g', onOutcome: (_policy, outcome) => outcomes.push(outcome) });
    const asked: (EvaluateOptions | undefined)[] = [];
    const answers = [
      () => Promise.reject(new EvaluationWouldWaitError('waits out a penalty')),
      () => Promise.reject(new Error('out of fuel')),
      () => Promise.resolve({ allow: true }),
    ];
    const candidate = policy('p.candidate', 2, (_tenant, _input, options) => {
      asked.push(options);
      return answers.shift()!();
    });
    const live = policy('p', 1);
    for (let i = 0; i < 3; i++) {
      shadow.shadow({
        live,
        candidate,
        tenant: 'p',
        input: {},
        liveResult: { allow: true },
        agree: (a, b) => JSON.stringify(a) === JSON.stringify(b),
        sampleInput: () => ({}),
      });
    }
    while (outcomes.length < 3) await new Promise((resolve) => setImmediate(resolve));
    expect(asked).toEqual([{ wait: false }, { wait: false }, { wait: false }]);
    expect(outcomes).toEqual(['dropped', 'error', 'agreed']);
    expect(shadow.takeChanged()).toMatchObject([{ policy: 'p', candidateVersion: 2, evaluated: 1, errors: 1, dropped: 1, diverged: 0 }]);
  });

  it('a candidate stopped after holding the thread 10 ms rests 990 ms: its shadows are dropped without an evaluation, then made again', async () => {
    let clock = 0;
    const outcomes: ShadowOutcome[] = [];
    const shadow = new CandidateShadow({ gateway: 'g', now: () => clock, onOutcome: (_policy, outcome) => outcomes.push(outcome) });
    let evaluations = 0;
    const runaway = policy('p.candidate', 3, () => {
      evaluations++;
      clock += 10; // held the thread 10 ms, then its fuel was burned
      return Promise.reject(new Error('out of fuel'));
    });
    const call = (candidate: LoadedPolicy): ShadowCall => ({
      live: policy('p', 1),
      candidate,
      tenant: 'p',
      input: {},
      liveResult: { allow: true },
      agree: () => true,
      sampleInput: () => ({}),
    });
    const settled = async (n: number) => {
      while (outcomes.length < n) await new Promise((resolve) => setImmediate(resolve));
    };
    shadow.shadow(call(runaway));
    await settled(1);
    expect(outcomes).toEqual(['error']);
    // Rests until 10 + 10 x 99 = 1000.
    expect(10 + 10 * SHADOW_REST_FACTOR).toBe(1000);
    clock = 500;
    shadow.shadow(call(runaway));
    clock = 999;
    shadow.shadow(call(runaway));
    await settled(3);
    expect(outcomes).toEqual(['error', 'dropped', 'dropped']);
    expect(evaluations).toBe(1);
    clock = 1000;
    shadow.shadow(call(runaway));
    await settled(4);
    expect(evaluations).toBe(2);
    // A new candidate version starts rested.
    const fixed = policy('p.candidate', 4, async () => ({ allow: true }));
    shadow.shadow(call(fixed));
    await settled(5);
    expect(outcomes).toEqual(['error', 'dropped', 'dropped', 'error', 'agreed']);
  });
});
