// Usage accounting: what each project's LLM calls used, per hour and model,
// in etcd (budget/keys.ts). Gateways add to it in the background, coalesced
// (one transaction per hour and model touched, about once a second); the CMS
// reads it back for a time range.
import { randomUUID } from 'node:crypto';
import { Range, type Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { emptyUsage, HOUR_MS, parseUsageKey, usageKey, type UsageRecord } from './keys.js';

const USAGE_FIELDS = ['requests', 'prompt_tokens', 'completion_tokens', 'charged_tokens', 'unsettled'] as const;

function addInto(target: UsageRecord, delta: UsageRecord): void {
  for (const field of USAGE_FIELDS) target[field] += delta[field];
}

/** A stored record: its counts, and the ids of the latest additions it remembers. */
function parseStored(text: string): { record: UsageRecord; ops: string[] } {
  const parsed = JSON.parse(text) as Partial<UsageRecord> & { ops?: unknown };
  const record = emptyUsage();
  for (const field of USAGE_FIELDS) {
    const value = parsed[field];
    if (typeof value === 'number' && Number.isFinite(value)) record[field] = value;
  }
  const ops = Array.isArray(parsed.ops) ? parsed.ops.filter((o): o is string => typeof o === 'string') : [];
  return { record, ops };
}

/** How many of its latest additions a record remembers, to recognise one retried after its answer was lost. */
const REMEMBERED_OPS = 64;

/**
 * Adds `delta` to one usage record (compare-and-swap, retried on a concurrent
 * write). With an `op` id, an addition whose commit went through but whose
 * answer was lost (and that is tried again) is recognised and counted once.
 */
export async function addUsage(client: Etcd3, project: string, hourStart: number, model: string, delta: UsageRecord, op?: string): Promise<void> {
  const key = usageKey(project, hourStart, model);
  for (let attempt = 0; attempt < 20; attempt++) {
    const current = await client.get(key).exec();
    const kv = current.kvs[0];
    const { record, ops } = kv ? parseStored(kv.value.toString('utf8')) : { record: emptyUsage(), ops: [] };
    if (op && ops.includes(op)) return;
    addInto(record, delta);
    const stored = op ? { ...record, ops: [...ops, op].slice(-REMEMBERED_OPS) } : { ...record, ops };
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

/** The usage of calls in the hours that start in [fromMs, toMs). */
export async function readUsage(client: Etcd3, project: string, fromMs: number, toMs: number): Promise<UsageSummary> {
  const fromHour = Math.floor(fromMs / HOUR_MS) * HOUR_MS;
  const range = new Range(usageKey(project, fromHour, ''), usageKey(project, Math.ceil(toMs / HOUR_MS) * HOUR_MS, ''));
  const kvs = (await client.getAll().inRange(range).exec()).kvs;
  const summary: UsageSummary = { project, from: new Date(fromHour).toISOString(), to: new Date(Math.ceil(toMs / HOUR_MS) * HOUR_MS).toISOString(), total: emptyUsage(), models: {}, hours: [] };
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

/**
 * A gateway's pending usage, written in the background: calls add in memory,
 * a flush a second later writes one transaction per (project, hour, model).
 * A failed write is tried again as it was, with the same op id (so one that
 * went through after all is not counted twice); nothing is lost while the
 * process lives.
 */
export class UsageRecorder {
  private readonly pending = new Map<string, { project: string; hour: number; model: string; delta: UsageRecord }>();
  private retry: { project: string; hour: number; model: string; delta: UsageRecord; op: string }[] = [];
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<void> | null = null;

  constructor(
    private readonly client: Etcd3,
    private readonly log: Logger,
    private readonly flushDelayMs = 1_000,
  ) {}

  record(project: string, model: string, atMs: number, delta: UsageRecord): void {
    const hour = Math.floor(atMs / HOUR_MS) * HOUR_MS;
    const id = `${project}\n${hour}\n${model}`;
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
    if (this.pending.size === 0 && this.retry.length === 0) return;
    const batch = [...this.retry, ...[...this.pending.values()].map((entry) => ({ ...entry, op: randomUUID() }))];
    this.pending.clear();
    this.retry = [];
    this.flushing = (async () => {
      for (const entry of batch) {
        try {
          await addUsage(this.client, entry.project, entry.hour, entry.model, entry.delta, entry.op);
        } catch (err) {
          this.log.warn({ project: entry.project, model: entry.model, err: (err as Error).message }, 'usage not written yet; kept for the next flush');
          this.retry.push(entry);
          this.schedule();
        }
      }
    })();
    try {
      await this.flushing;
    } finally {
      this.flushing = null;
    }
  }
}
