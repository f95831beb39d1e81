// Usage accounting: what each project's LLM calls used, per hour and model,
// in etcd (budget/keys.ts). Gateways add to it in the background, coalesced
// (one transaction per hour and model touched, about once a second); the CMS
// reads it back for a time range.
//
// An addition whose commit went through but whose answer was lost is tried
// again, and must count once. Each writer (a gateway process) numbers its
// additions, writes those to one record in order, and the record keeps the
// latest number of each writer: a small map, however many additions, and
// exact however long the retry comes after (a datacenter cut off for hours).
import { randomBytes } from 'node:crypto';
import { Range, type Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { emptyUsage, HOUR_MS, parseUsageKey, usageKey, type UsageRecord } from './keys.js';

const USAGE_FIELDS = ['requests', 'prompt_tokens', 'completion_tokens', 'charged_tokens', 'unsettled'] as const;

function addInto(target: UsageRecord, delta: UsageRecord): void {
  for (const field of USAGE_FIELDS) target[field] += delta[field];
}

/** Which writer made an addition, and its number: a writer's additions to one record are numbered upwards. */
export interface UsageOp {
  writer: string;
  seq: number;
}

/** A stored record: its counts, and the latest addition of each writer. */
function parseStored(text: string): { record: UsageRecord; writers: Record<string, number> } {
  const parsed = JSON.parse(text) as Partial<UsageRecord> & { writers?: unknown };
  const record = emptyUsage();
  for (const field of USAGE_FIELDS) {
    const value = parsed[field];
    if (typeof value === 'number' && Number.isFinite(value)) record[field] = value;
  }
  const writers: Record<string, number> = {};
  if (parsed.writers && typeof parsed.writers === 'object') {
    for (const [writer, seq] of Object.entries(parsed.writers)) if (typeof seq === 'number') writers[writer] = seq;
  }
  return { record, writers };
}

/**
 * Adds `delta` to one usage record (compare-and-swap, retried on a concurrent
 * write). With an `op`, an addition the record already holds (its commit
 * went through, its answer was lost, and it is tried again) is not counted
 * twice: the record keeps each writer's latest number.
 */
export async function addUsage(client: Etcd3, project: string, hourStart: number, model: string, delta: UsageRecord, op?: UsageOp): Promise<void> {
  const key = usageKey(project, hourStart, model);
  for (let attempt = 0; attempt < 20; attempt++) {
    const current = await client.get(key).exec();
    const kv = current.kvs[0];
    const { record, writers } = kv ? parseStored(kv.value.toString('utf8')) : { record: emptyUsage(), writers: {} };
    if (op && (writers[op.writer] ?? 0) >= op.seq) return;
    addInto(record, delta);
    const stored = { ...record, writers: op ? { ...writers, [op.writer]: op.seq } : writers };
    const guard = kv ? client.if(key, 'Mod', '==', kv.mod_revision) : client.if(key, 'Create', '==', 0);
    const result = await guard.then(client.put(key).value(JSON.stringify(stored))).commit();
    if (result.succeeded) return;
  }
  throw new Error(`usage record ${key} kept changing under 20 attempts`);
}

export interface UsageSummary {
  project: string;
  from: string;
  to: string;
  total: UsageRecord;
  models: Record<string, UsageRecord>;
  /** Per hour (UTC, its start) and model, in time order. */
  hours: ({ hour: string; model: string } & UsageRecord)[];
}

/** A summary by UTC day instead of hour: the same totals, `days` in place of `hours`. */
export type DailyUsageSummary = Omit<UsageSummary, 'hours'> & { days: ({ day: string; model: string } & UsageRecord)[] };

/** Adds a summary's hours up by UTC day (YYYY-MM-DD) and model, in time order. */
export function usageByDay(summary: UsageSummary): DailyUsageSummary {
  const { hours, ...rest } = summary;
  const days = new Map<string, { day: string; model: string } & UsageRecord>();
  for (const { hour, model, ...record } of hours) {
    const day = hour.slice(0, 10);
    const key = `${day}\n${model}`;
    let entry = days.get(key);
    if (!entry) days.set(key, (entry = { day, model, ...emptyUsage() }));
    addInto(entry, record);
  }
  return { ...rest, days: [...days.values()] };
}

/** The usage of calls in the hours that start in [fromMs, toMs). */
export async function readUsage(client: Etcd3, project: string, fromMs: number, toMs: number): Promise<UsageSummary> {
  const fromHour = Math.floor(fromMs / HOUR_MS) * HOUR_MS;
  const range = new Range(usageKey(project, fromHour, ''), usageKey(project, Math.ceil(toMs / HOUR_MS) * HOUR_MS, ''));
  const kvs = (await client.getAll().inRange(range).exec()).kvs;
  const summary: UsageSummary = {
    project,
    from: new Date(fromHour).toISOString(),
    to: new Date(Math.ceil(toMs / HOUR_MS) * HOUR_MS).toISOString(),
    total: emptyUsage(),
    models: {},
    hours: [],
  };
  for (const kv of kvs) {
    const where = parseUsageKey(project, kv.key.toString('utf8'));
    if (!where) continue;
    const { record } = parseStored(kv.value.toString('utf8'));
    addInto(summary.total, record);
    addInto((summary.models[where.model] ??= emptyUsage()), record);
    summary.hours.push({ hour: new Date(where.hour).toISOString(), model: where.model, ...record });
  }
  return summary;
}

interface PendingUsage {
  project: string;
  hour: number;
  model: string;
  delta: UsageRecord;
}

/**
 * A gateway's pending usage, written in the background: calls add in memory,
 * a flush a second later writes one transaction per (project, hour, model).
 * A failed write is tried again as it was, with the same number (so one that
 * went through after all is not counted twice), before anything newer for
 * the same record; nothing is lost while the process lives.
 */
export class UsageRecorder {
  private readonly pending = new Map<string, PendingUsage>();
  /** Writes that failed, by record: each goes before any newer addition to its record. */
  private retry = new Map<string, PendingUsage & { op: UsageOp }>();
  /** This process as a writer of usage records: random, so a restarted process is a new writer. */
  private readonly writer = randomBytes(9).toString('base64url');
  private seq = 0;
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;

  constructor(
    private readonly client: Etcd3,
    private readonly log: Logger,
    private readonly flushDelayMs = 1_000,
  ) {}

  record(project: string, model: string, atMs: number, delta: UsageRecord): void {
    const hour = Math.floor(atMs / HOUR_MS) * HOUR_MS;
    const id = recordId(project, hour, model);
    const entry = this.pending.get(id);
    if (entry) addInto(entry.delta, delta);
    else this.pending.set(id, { project, hour, model, delta: { ...delta } });
    this.schedule();
  }

  private schedule(): void {
    this.timer ??= setTimeout(() => void this.flush(), this.flushDelayMs);
    this.timer.unref();
  }

  /** Writes everything pending (waits for a flush in progress first). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    while (this.flushing) await this.flushing;
    if (this.pending.size === 0 && this.retry.size === 0) return;
    // The failed writes first, then what is pending.
    const batch: [string, PendingUsage & { op?: UsageOp }][] = [...this.retry, ...this.pending];
    this.retry = new Map();
    this.flushing = (async () => {
      for (const [id, entry] of batch) {
        let write = entry as PendingUsage & { op: UsageOp };
        if (!entry.op) {
          // Behind a failed write of its record, it stays pending; numbered only when written,
          // so a record's additions go in the order of their numbers.
          if (this.retry.has(id)) continue;
          this.pending.delete(id);
          write = { ...entry, op: { writer: this.writer, seq: ++this.seq } };
        }
        try {
          await addUsage(this.client, write.project, write.hour, write.model, write.delta, write.op);
        } catch (err) {
          this.failed(id, write, err as Error);
        }
      }
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = null;
    }
  }

  private failed(id: string, entry: PendingUsage & { op: UsageOp }, err: Error): void {
    this.log.warn({ project: entry.project, model: entry.model, err: err.message }, 'usage not written yet; kept for the next flush');
    this.retry.set(id, entry);
    this.schedule();
  }
}

function recordId(project: string, hour: number, model: string): string {
  return `${project}\n${hour}\n${model}`;
}
