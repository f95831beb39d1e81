/**
 * Replay before publish: decision inputs, as the decision logs record them
 * (policy/decision-log: an event's `input`, masked), evaluated with the live
 * version of a policy and with a draft, in the gateways' engine and under
 * their bounds (the CMS's check pool), and the inputs whose decision
 * document changed. POST /policies/{name}/check takes them as `replay`
 * beside the policy object (routes/policies.ts); PolicyWriter.check runs
 * them once the draft compiled, passed its tests and loaded. Nothing is
 * written.
 *
 * Bounds, so that a replay cannot hold the CMS: at most MAX_REPLAY_INPUTS
 * inputs and MAX_REPLAY_BYTES of them (as compact JSON) per check (413); each
 * evaluation has the gateways' deadline, fuel and memory ceiling; the whole
 * replay has a time budget (past it: 422 replay-stopped, nothing reported
 * as unchanged); every replay evaluates as one tenant of the pool, so that
 * replays together hold at most all but one of its workers and the load
 * checks of PUTs go on beside them.
 *
 * Undefined in JSON: a document that is undefined (no rule matched, or no
 * live version) is an absent member, as OPA's Data API leaves `result` out:
 * `{"index": 3, "draft": {"allow": true}}` is an input the live version
 * leaves undefined and the draft allows. An evaluation that fails (a bound,
 * a runtime error; the gateway denies with 500) is `liveError` / `draftError`.
 */
import { isDeepStrictEqual } from 'node:util';
import { isLosslessNumber, stringify } from 'lossless-json';
import { HttpProblem } from '../http/problem.js';
import { EvaluationBudgetError } from '../policy/engine/index.js';
import type { EvaluationTarget, Evaluator } from '../policy/engine/evaluation.js';
import { EvaluationMemoryError, EvaluationTimeoutError } from '../policy/engine/pool.js';

/** Inputs one check replays at most. */
export const MAX_REPLAY_INPUTS = 1_000;
/** Their size at most, as compact JSON (a comma between two). */
export const MAX_REPLAY_BYTES = 1024 * 1024;
/** The whole replay's evaluations at most, by default (CmsAppOptions.replayTimeoutMs). */
export const DEFAULT_REPLAY_TIMEOUT_MS = 10_000;
/** The pool's tenant of every replay: not a policy name, so never a load check's. */
export const REPLAY_TENANT = '(replay)';
/** Inputs one replay has in evaluation at once (the pool's tenant share bounds it further). */
const REPLAY_CONCURRENCY = 4;

export const ReplayProblemType = {
  invalidReplay: 'urn:gatehouse:problem:invalid-replay',
  replayTooLarge: 'urn:gatehouse:problem:replay-too-large',
  replayStopped: 'urn:gatehouse:problem:replay-stopped',
} as const;

/** Decision inputs to replay, as plain JSON values (numbers as the gateway has them: JavaScript numbers). */
export interface ReplayInputs {
  inputs: unknown[];
  /** Their size as compact JSON. */
  bytes: number;
}

/** An evaluation that did not give a document: which bound stopped it, or 'error'. */
export interface ReplayError {
  kind: 'time' | 'memory' | 'fuel' | 'error';
  message: string;
}

/** One input whose result changed; an undefined document is an absent member. */
export interface ReplayChange {
  index: number;
  live?: unknown;
  draft?: unknown;
  liveError?: ReplayError;
  draftError?: ReplayError;
}

export interface ReplayReport {
  evaluated: number;
  /** The live version replayed against; null when there is none (every document it decides is undefined). */
  liveVersion: number | null;
  changed: ReplayChange[];
}

/** The replay's time budget ran out before every input was evaluated: nothing may be called unchanged. */
export class ReplayStoppedError extends Error {
  override readonly name = 'ReplayStoppedError';
  constructor(
    readonly limitMs: number,
    readonly evaluated: number,
    readonly total: number,
  ) {
    super(
      `the replay ran past its ${limitMs} ms budget after ${evaluated} of ${total} inputs; replay fewer inputs per check (or a policy that decides faster); nothing was written`,
    );
  }
}

function invalid(pointer: string, message: string): HttpProblem {
  return new HttpProblem({
    status: 400,
    type: ReplayProblemType.invalidReplay,
    title: 'Invalid replay',
    detail: `${pointer}: ${message}`,
    extensions: { errors: [{ pointer, message }] },
  });
}

function tooLarge(detail: string): HttpProblem {
  return new HttpProblem({
    status: 413,
    type: ReplayProblemType.replayTooLarge,
    title: 'Replay too large',
    detail,
    extensions: { limits: { inputs: MAX_REPLAY_INPUTS, bytes: MAX_REPLAY_BYTES } },
  });
}

/**
 * The `replay` member of a check (as lossless-json parsed it): an array of
 * decision inputs, each a JSON object. 400 with the JSON pointer of what is
 * wrong; 413 past MAX_REPLAY_INPUTS or MAX_REPLAY_BYTES.
 */
export function parseReplay(value: unknown): ReplayInputs {
  if (!Array.isArray(value)) throw invalid('/replay', 'must be an array of decision inputs (the `input` of decision log events)');
  if (value.length > MAX_REPLAY_INPUTS) {
    throw tooLarge(`replay holds ${value.length} inputs; a check replays at most ${MAX_REPLAY_INPUTS} (send them in batches); nothing was written`);
  }
  const inputs: unknown[] = [];
  let bytes = Math.max(0, value.length - 1);
  for (const [index, item] of value.entries()) {
    if (typeof item !== 'object' || item === null || Array.isArray(item) || isLosslessNumber(item)) {
      throw invalid(`/replay/${index}`, 'must be a decision input: a JSON object, as a decision log event holds it');
    }
    const text = stringify(item) ?? '{}';
    bytes += Buffer.byteLength(text);
    if (bytes > MAX_REPLAY_BYTES) {
      throw tooLarge(`replay inputs exceed ${MAX_REPLAY_BYTES} bytes (as compact JSON) by input ${index}; send them in smaller batches; nothing was written`);
    }
    // As the gateway has its input: plain JSON values, numbers as JavaScript reads them.
    inputs.push(JSON.parse(text));
  }
  return { inputs, bytes };
}

type Outcome = { ok: true; document: unknown } | { ok: false; error: ReplayError };

function errorOf(error: unknown): ReplayError {
  const kind =
    error instanceof EvaluationTimeoutError
      ? 'time'
      : error instanceof EvaluationMemoryError
        ? 'memory'
        : error instanceof EvaluationBudgetError
          ? 'fuel'
          : 'error';
  return { kind, message: error instanceof Error ? error.message : String(error) };
}

async function outcome(pool: Evaluator, target: EvaluationTarget | null, input: unknown): Promise<Outcome> {
  if (!target) return { ok: true, document: undefined };
  try {
    return { ok: true, document: await pool.evaluate(REPLAY_TENANT, target, input) };
  } catch (error) {
    return { ok: false, error: errorOf(error) };
  }
}

/** A change when the documents differ (deep equality) or one side failed and the other did not; both failing deny alike. */
function change(index: number, live: Outcome, draft: Outcome): ReplayChange | null {
  if (live.ok && draft.ok ? isDeepStrictEqual(live.document, draft.document) : !live.ok && !draft.ok) return null;
  return {
    index,
    ...(live.ok ? (live.document === undefined ? {} : { live: live.document }) : { liveError: live.error }),
    ...(draft.ok ? (draft.document === undefined ? {} : { draft: draft.document }) : { draftError: draft.error }),
  };
}

/**
 * Evaluates every input with `live` (null: no live version) and `draft`,
 * and lists the inputs whose result changed, by index. ReplayStoppedError
 * when `timeoutMs` pass first; the evaluations then in flight end within
 * their own deadline, unread.
 */
export async function replay(
  pool: Evaluator,
  targets: { live: EvaluationTarget | null; liveVersion: number | null; draft: EvaluationTarget },
  inputs: readonly unknown[],
  timeoutMs: number,
): Promise<ReplayReport> {
  const changed: ReplayChange[] = [];
  let next = 0;
  let evaluated = 0;
  let stopped = false;
  const lane = async (): Promise<void> => {
    while (!stopped && next < inputs.length) {
      const index = next++;
      const input = inputs[index];
      const [live, draft] = await Promise.all([outcome(pool, targets.live, input), outcome(pool, targets.draft, input)]);
      if (stopped) return;
      evaluated++;
      const changes = change(index, live, draft);
      if (changes) changed.push(changes);
    }
  };
  let timer: NodeJS.Timeout | undefined;
  const budget = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => {
      stopped = true;
      reject(new ReplayStoppedError(timeoutMs, evaluated, inputs.length));
    }, timeoutMs);
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: Math.min(REPLAY_CONCURRENCY, inputs.length) }, lane)), budget]);
  } finally {
    stopped = true;
    clearTimeout(timer);
  }
  changed.sort((a, b) => a.index - b.index);
  return { evaluated, liveVersion: targets.liveVersion, changed };
}
