// `gatehouse policy replay NAME --log FILE`: the decisions a gateway logged
// (DECISION_LOG=file:<path>, one JSON event a line: policy/decision-log),
// replayed on the CMS with the live version and the draft (POST
// /policies/{name}/check with `replay`), and the ones the draft would decide
// differently. Only events whose `policies` name NAME are replayed. The log
// is read line by line and sent in batches within the CMS's replay limits
// (inputs and bytes, cms/replay.ts); a batch the CMS still finds too large,
// or that runs past its time budget, is split in two and sent again. Every
// batch is checked as a whole (compile, tests, load): a draft the CMS
// refuses stops the replay.
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { MAX_REPLAY_BYTES, MAX_REPLAY_INPUTS, ReplayProblemType, type ReplayChange, type ReplayError, type ReplayReport } from '../../cms/replay.js';
import { CmsError, type CmsClient } from '../cms-client.js';
import { policyObject, type PolicyFiles } from './files.js';

/** Where an input came from, as the event says it. */
interface LoggedDecision {
  line: number;
  time?: string;
  gateway?: string;
  route?: string | null;
  method?: string;
  path?: string;
  /** What the gateway decided then, and the status it answered. */
  result?: string;
  status?: number;
}

interface Pending {
  decision: LoggedDecision;
  text: string;
}

export interface Flip extends LoggedDecision, Omit<ReplayChange, 'index'> {}

export interface ReplaySummary {
  /** Events naming the policy, replayed. */
  evaluated: number;
  liveVersion: number | null;
  flips: Flip[];
  batches: number;
  skipped: { notJson: number; notEvent: number; noInput: number; tooLarge: number; lines: number[] };
}

/** Lines skipped listed at most (the counts are whole). */
const MAX_LISTED_LINES = 20;

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function loggedDecision(line: number, event: Record<string, unknown>, input: Record<string, unknown>): LoggedDecision {
  const request = isRecord(input.request) ? input.request : {};
  return {
    line,
    ...(typeof event.time === 'string' ? { time: event.time } : {}),
    ...(typeof event.gateway === 'string' ? { gateway: event.gateway } : {}),
    ...(typeof event.route === 'string' || event.route === null ? { route: event.route } : {}),
    ...(typeof request.method === 'string' ? { method: request.method } : {}),
    ...(typeof request.path === 'string' ? { path: request.path } : {}),
    ...(typeof event.result === 'string' ? { result: event.result } : {}),
    ...(typeof event.status === 'number' ? { status: event.status } : {}),
  };
}

/** Replays the decisions of `logFile` that name `name` with `draft`; the flips, in log order. */
export async function replayLog(client: CmsClient, name: string, logFile: string, draft: PolicyFiles): Promise<ReplaySummary> {
  const policy = policyObject(draft);
  const summary: ReplaySummary = {
    evaluated: 0,
    liveVersion: null,
    flips: [],
    batches: 0,
    skipped: { notJson: 0, notEvent: 0, noInput: 0, tooLarge: 0, lines: [] },
  };
  const skip = (kind: keyof Omit<ReplaySummary['skipped'], 'lines'>, line: number) => {
    summary.skipped[kind]++;
    if (summary.skipped.lines.length < MAX_LISTED_LINES) summary.skipped.lines.push(line);
  };

  const send = async (batch: Pending[]): Promise<void> => {
    const body = `${policy.slice(0, -1)},"replay":[${batch.map((p) => p.text).join(',')}]}`;
    const answer = await client.call('POST', `/policies/${name}/check`, { body });
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(answer.text);
    } catch {
      // not JSON: reported below
    }
    if (answer.status === 200 && isRecord(parsed) && isRecord(parsed.replay)) {
      const report = parsed.replay as unknown as ReplayReport;
      summary.batches++;
      summary.evaluated += report.evaluated;
      summary.liveVersion = report.liveVersion;
      for (const { index, ...change } of report.changed) summary.flips.push({ ...batch[index]!.decision, ...change });
      return;
    }
    const problem = isRecord(parsed) ? (parsed as CmsError['problem'] & { type?: string }) : null;
    // Too large for this CMS, or past its time budget: in halves.
    if (batch.length > 1 && (problem?.type === ReplayProblemType.replayTooLarge || problem?.type === ReplayProblemType.replayStopped)) {
      const half = Math.ceil(batch.length / 2);
      await send(batch.slice(0, half));
      await send(batch.slice(half));
      return;
    }
    throw new CmsError(
      answer.status,
      problem,
      `${name}: ${answer.status} ${problem?.title ?? (answer.status === 200 ? 'the CMS did not replay (it predates replay)' : '')}${problem?.detail ? `: ${problem.detail}` : ''}`,
    );
  };

  let batch: Pending[] = [];
  let bytes = 0;
  let line = 0;
  const lines = createInterface({ input: createReadStream(logFile, { encoding: 'utf8' }), crlfDelay: Infinity });
  for await (const raw of lines) {
    line++;
    if (raw.trim() === '') continue;
    let event: unknown;
    try {
      event = JSON.parse(raw);
    } catch {
      skip('notJson', line);
      continue;
    }
    if (!isRecord(event) || !Array.isArray(event.policies)) {
      skip('notEvent', line);
      continue;
    }
    if (!event.policies.some((p) => isRecord(p) && p.name === name)) continue;
    if (!isRecord(event.input)) {
      skip('noInput', line);
      continue;
    }
    const text = JSON.stringify(event.input);
    const size = Buffer.byteLength(text);
    if (size > MAX_REPLAY_BYTES) {
      skip('tooLarge', line);
      continue;
    }
    if (batch.length === MAX_REPLAY_INPUTS || bytes + size + 1 > MAX_REPLAY_BYTES) {
      await send(batch);
      batch = [];
      bytes = 0;
    }
    batch.push({ decision: loggedDecision(line, event, event.input), text });
    bytes += size + 1;
  }
  if (batch.length > 0) await send(batch);
  return summary;
}

const SHOWN_CHARS = 200;

function shown(document: unknown, error: ReplayError | undefined): string {
  if (error) return `error (${error.kind}: ${error.message})`;
  if (document === undefined) return 'undefined';
  const text = JSON.stringify(document);
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}...` : text;
}

/** The lines a person reads: one per flip, then what was skipped. */
export function describeReplay(name: string, logFile: string, summary: ReplaySummary): string[] {
  const against = summary.liveVersion === null ? 'no live version (every live document undefined)' : `live version ${summary.liveVersion}`;
  const out = [`${name}: ${summary.evaluated} decisions from ${logFile} replayed against ${against}: ${summary.flips.length} changed`];
  for (const flip of summary.flips) {
    const request = [
      flip.time,
      flip.method && flip.path ? `${flip.method} ${flip.path}` : flip.path,
      flip.route ? `route ${flip.route}` : undefined,
      flip.gateway ? `gateway ${flip.gateway}` : undefined,
      flip.result ? `was ${flip.result}${flip.status !== undefined ? ` ${flip.status}` : ''}` : undefined,
    ]
      .filter(Boolean)
      .join(', ');
    out.push(`  line ${flip.line}${request ? ` (${request})` : ''}: ${shown(flip.live, flip.liveError)} -> ${shown(flip.draft, flip.draftError)}`);
  }
  const { notJson, notEvent, noInput, tooLarge, lines } = summary.skipped;
  const skipped = notJson + notEvent + noInput + tooLarge;
  if (skipped > 0) {
    const kinds = [
      notJson ? `${notJson} not JSON` : '',
      notEvent ? `${notEvent} not a decision event` : '',
      noInput ? `${noInput} without input` : '',
      tooLarge ? `${tooLarge} with an input over ${MAX_REPLAY_BYTES} bytes` : '',
    ].filter(Boolean);
    out.push(`skipped ${skipped} lines: ${kinds.join(', ')} (lines ${lines.join(', ')}${skipped > lines.length ? ', ...' : ''})`);
  }
  return out;
}
