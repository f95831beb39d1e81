// A candidate's shadow evaluation never waits for its tenant: one the
// evaluator would make wait (the candidate ran away and waits out its
// penalty) is dropped and counted, not queued to hold the thread later. The
// evaluator's side (EvaluationWouldWaitError on the thread and in the pool)
// is tested against real policies in metering.test.ts and evaluation-pool.test.ts.
import { describe, expect, it } from 'vitest';
import { CandidateShadow, type ShadowOutcome } from '../../policy/candidate/shadow.js';
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
});
