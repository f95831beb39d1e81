// Shadow evaluation of a policy's candidate on a gateway: after a decision
// was made by the live version, the same input is evaluated by the candidate
// (never enforced) and the two outcomes compared. Off the decision's path:
// the comparison is queued behind the answer (setImmediate), runs under the
// same evaluation bounds as any decision, as a tenant of its own (a runaway
// candidate is made to wait, not the project's live decisions: evaluator.ts),
// and at most `maxInFlight` are pending: past that a shadow evaluation is
// dropped and counted, never queued without end. One the evaluator would
// make wait (its candidate ran away) is dropped and counted too. Shadowing
// is work that may be left undone, so a candidate whose evaluation was
// stopped or failed rests longer than a live tenant would wait: 99 times as
// long as that evaluation took, so that a runaway candidate holds the
// thread about 1% of the time, where a runaway project holds it 10%.
//
// What it saw is kept per policy, for the candidate's current version only:
// counts, and the last few divergent samples (the input masked as decision
// logs mask it, both results), each bounded in size. report.ts tells etcd.
import type { LoadedPolicy, PolicySet } from '../watcher/policy-set.js';
import { candidateName } from '../store/names.js';
import { EvaluationWouldWaitError } from '../engine/evaluation.js';
import { onCandidate } from './canary.js';

export interface ShadowSample {
  time: string;
  gateway: string;
  /** The decision input, masked as the decision log masks it (credentials, the route's mask pointers). */
  input: unknown;
  live: unknown;
  candidate: unknown;
}

/** What one gateway saw of one policy's candidate version. */
export interface ShadowReport {
  gateway: string;
  policy: string;
  candidateVersion: number;
  /** Decisions shadowed: evaluated by the candidate and compared. */
  evaluated: number;
  diverged: number;
  /** Shadow evaluations that failed (the candidate did not load, ran out of fuel or memory). */
  errors: number;
  /** Shadow evaluations not made: too many were pending, or the candidate rested or was made to wait (it failed or ran away). */
  dropped: number;
  /** Decisions enforced by each version (the canary's split). */
  enforced: { live: number; candidate: number };
  /** The most recent divergences, newest first. */
  samples: ShadowSample[];
  reportedAt: string;
}

export type ShadowOutcome = 'agreed' | 'diverged' | 'error' | 'dropped';

/** How many times as long as a failed (or stopped) shadow evaluation took its candidate rests: its shadows are dropped meanwhile. */
export const SHADOW_REST_FACTOR = 99;

export interface CandidateShadowOptions {
  gateway: string;
  /** Shadow evaluations pending at most (default 64). */
  maxInFlight?: number;
  /** Divergent samples kept per policy (default 10). */
  maxSamples?: number;
  /** A sample whose JSON is longer keeps its results but not its input (default 8 KiB). */
  maxSampleBytes?: number;
  /** Told of each shadow evaluation's outcome (metrics). */
  onOutcome?: (policy: string, outcome: ShadowOutcome) => void;
  /** Draws whether a decision is sampled (tests); Math.random by default. */
  random?: () => number;
  /** The clock, in ms (tests); performance.now by default. */
  now?: () => number;
}

/** How one decision of a policy meets its candidate. */
export interface CandidateRoute {
  /** The version that decides: the candidate for the canary's callers, else the live one. */
  policy: LoadedPolicy;
  /** The candidate to evaluate in the shadow of the live decision when this one is sampled, else null. */
  shadowed: LoadedPolicy | null;
}

export interface ShadowCall {
  live: LoadedPolicy;
  candidate: LoadedPolicy;
  /** The tenant the live decision was evaluated for (the caller's project). */
  tenant: string;
  /** The input the live version was given (a SerialisedInput is reused as is). */
  input: unknown;
  liveResult: unknown;
  /** The part of the candidate's document that is compared with liveResult (default: all of it). */
  select?(document: unknown): unknown;
  /** Whether two results would be enforced alike (the gateway's reading of a decision). */
  agree(live: unknown, candidate: unknown): boolean;
  /** The input for a sample, masked; called only for a divergence. */
  sampleInput(): unknown;
}

interface Tally extends Omit<ShadowReport, 'reportedAt' | 'gateway'> {
  changed: boolean;
  /** Until when (now()) this candidate version's shadows are dropped: it failed or was stopped. */
  restingUntil: number;
}

export class CandidateShadow {
  private readonly tallies = new Map<string, Tally>();
  /**
   * Each live version's candidate name, made once: asked on every decision,
   * a name built anew is a new string to concatenate and hash in the set's
   * lookup, where a kept one is hashed once.
   */
  private readonly candidateNames = new WeakMap<LoadedPolicy, string>();
  private inFlight = 0;
  private readonly maxInFlight: number;
  private readonly maxSamples: number;
  private readonly maxSampleBytes: number;

  constructor(private readonly options: CandidateShadowOptions) {
    this.maxInFlight = options.maxInFlight ?? 64;
    this.maxSamples = options.maxSamples ?? 10;
    this.maxSampleBytes = options.maxSampleBytes ?? 8 * 1024;
  }

  get gateway(): string {
    return this.options.gateway;
  }

  /**
   * Which version of `live` decides for `subject`, given the candidate `set`
   * holds beside it (canary.ts: the candidate for `enforcePercent` of
   * callers), counted; and whether the decision is shadowed (`samplePercent`
   * of the others). A policy without a candidate is decided by its live version.
   */
  route(live: LoadedPolicy, set: PolicySet, subject: string | null): CandidateRoute {
    let name = this.candidateNames.get(live);
    if (name === undefined) this.candidateNames.set(live, (name = candidateName(live.name)));
    const candidate = set.get(name);
    const rollout = candidate?.meta.rollout;
    if (!candidate || !rollout) return { policy: live, shadowed: null };
    const canary = onCandidate(live.name, subject, rollout.enforcePercent);
    const tally = this.tally(live.name, candidate.meta.version);
    tally.enforced[canary ? 'candidate' : 'live']++;
    tally.changed = true;
    if (canary) return { policy: candidate, shadowed: null };
    return { policy: live, shadowed: (this.options.random ?? Math.random)() * 100 < rollout.samplePercent ? candidate : null };
  }

  /** Queues the candidate's evaluation of a decision the live version made (dropped when too many are pending). */
  shadow(call: ShadowCall): void {
    const policy = call.live.name;
    const tally = this.tally(policy, call.candidate.meta.version);
    if (this.inFlight >= this.maxInFlight || this.now() < tally.restingUntil) return this.dropped(policy, tally);
    this.inFlight++;
    setImmediate(() => {
      const started = this.now();
      // A runaway candidate is penalised as a tenant of its own, apart from the project's live decisions.
      // Never waits: a candidate made to wait (it ran away) drops the decisions it would have shadowed, where
      // queued ones would each hold the thread in turn long after the traffic that asked for them.
      call.candidate
        .evaluate(`${call.tenant}\0candidate`, call.input, { wait: false })
        .then(
          (document) => this.compared(call, tally, call.select ? call.select(document) : document),
          (error: unknown) => {
            if (error instanceof EvaluationWouldWaitError) return this.dropped(policy, tally);
            const now = this.now();
            tally.restingUntil = Math.max(tally.restingUntil, now + (now - started) * SHADOW_REST_FACTOR);
            this.count(policy, tally, 'error');
          },
        )
        .finally(() => this.inFlight--);
    });
  }

  /** The reports whose counts changed since they were last taken; marks them taken. */
  takeChanged(): ShadowReport[] {
    const reportedAt = new Date().toISOString();
    const changed: ShadowReport[] = [];
    for (const tally of this.tallies.values()) {
      if (!tally.changed) continue;
      tally.changed = false;
      const { changed: _changed, restingUntil: _restingUntil, ...report } = tally;
      changed.push({ ...report, enforced: { ...report.enforced }, samples: [...report.samples], gateway: this.options.gateway, reportedAt });
    }
    return changed;
  }

  /** Policies whose candidate this process has a tally for, with its version. */
  tracked(): { policy: string; candidateVersion: number }[] {
    return [...this.tallies.values()].map((t) => ({ policy: t.policy, candidateVersion: t.candidateVersion }));
  }

  /** Marks a policy's report to be taken again (its last write failed). */
  markChanged(policy: string): void {
    const tally = this.tallies.get(policy);
    if (tally) tally.changed = true;
  }

  /** Drops a policy's tally (its candidate is gone). */
  forget(policy: string): void {
    this.tallies.delete(policy);
  }

  private compared(call: ShadowCall, tally: Tally, result: unknown): void {
    if (call.agree(call.liveResult, result)) return this.count(call.live.name, tally, 'agreed');
    this.count(call.live.name, tally, 'diverged');
    let sample: ShadowSample = {
      time: new Date().toISOString(),
      gateway: this.options.gateway,
      input: call.sampleInput(),
      live: call.liveResult,
      candidate: result,
    };
    if (JSON.stringify(sample).length > this.maxSampleBytes) {
      sample = { ...sample, input: { truncated: true } };
      if (JSON.stringify(sample).length > this.maxSampleBytes) sample = { ...sample, live: { truncated: true }, candidate: { truncated: true } };
    }
    tally.samples.unshift(sample);
    if (tally.samples.length > this.maxSamples) tally.samples.length = this.maxSamples;
  }

  private now(): number {
    return this.options.now ? this.options.now() : performance.now();
  }

  private dropped(policy: string, tally: Tally): void {
    tally.dropped++;
    tally.changed = true;
    this.options.onOutcome?.(policy, 'dropped');
  }

  private count(policy: string, tally: Tally, outcome: 'agreed' | 'diverged' | 'error'): void {
    if (outcome !== 'error') tally.evaluated++;
    if (outcome === 'diverged') tally.diverged++;
    if (outcome === 'error') tally.errors++;
    tally.changed = true;
    this.options.onOutcome?.(policy, outcome);
  }

  /** The tally of `policy`'s candidate at `version`: a new candidate version starts from nothing. */
  private tally(policy: string, version: number): Tally {
    let tally = this.tallies.get(policy);
    if (!tally || tally.candidateVersion !== version) {
      tally = {
        policy,
        candidateVersion: version,
        evaluated: 0,
        diverged: 0,
        errors: 0,
        dropped: 0,
        enforced: { live: 0, candidate: 0 },
        samples: [],
        changed: true,
        restingUntil: 0,
      };
      this.tallies.set(policy, tally);
    }
    return tally;
  }
}
