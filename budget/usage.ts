// Usage accounting: what each project's LLM calls used, per hour and model,
// in etcd (budget/keys.ts). Gateways add to it in the background, coalesced
// (one transaction per hour and model touched, about once a second); the CMS
// reads it back for a time range.
import { Range, type Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { emptyUsage, HOUR_MS, parseUsageKey, usageKey, usagePrefix, type UsageRecord } from './keys.js';

const USAGE_FIELDS = ['requests', 'prompt_tokens', 'completion_tokens', 'charged_tokens', 'unsettled'] as const;

function addInto(target: UsageRecord, delta: UsageRecord): void {
  for (const field of USAGE_FIELDS) target[field] += delta[field];
}

function parseRecord(text: string): UsageRecord {
  const parsed = JSON.parse(text) as Partial<UsageRecord>;
  const record = emptyUsage();
  for (const field of USAGE_FIELDS) {
    const value = parsed[field];
    if (typeof value === 'number' && Number.isFinite(value)) record[field] = value;
  }
  return record;
}

/** Adds `delta` to one usage record (compare-and-swap, retried on a concurrent write). */
export async function addUsage(client: Etcd3, project: string, hourStart: number, model: string, delta: UsageRecord): Promise<void> {
  const key = usageKey(project, hourStart, model);
  for (let attempt = 0; attempt < 20; attempt++) {
    const current = await client.get(key).exec();
    const kv = current.kvs[0];
    const record = kv ? parseRecord(kv.value.toString('utf8')) : emptyUsage();
    addInto(record, delta);
    const guard = kv ? client.if(key, 'Mod', '==', kv.mod_revision) : client.if(key, 'Create', '==', 0);
    const result = await guard.then(client.put(key).value(JSON.stringify(record))).commit();
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
    const record = parseRecord(kv.value.toString('utf8'));
    addInto(summary.total, record);
    addInto((summary.models[where.model] ??= emptyUsage()), record);
    summary.hours.push({ hour: new Date(where.hour).toISOString(), model: where.model, ...record });
  }
  return summary;
}

/** The prefix of a project's usage records (for deleting them with the project, or listing). */
export { usagePrefix };

/**
 * A gateway's pending usage, written in the background: calls add in memory,
 * a flush a second later writes one transaction per (project, hour, model).
 * A failed write keeps its delta for the next flush; nothing is lost while
 * the process lives.
 */
export class UsageRecorder {
  private readonly pending = new Map<string, { project: string; hour: number; model: string; delta: UsageRecord }>();
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
    this.timer ??= setTimeout(() => void this.flush(), this.flushDelayMs);
    this.timer.unref();
  }

  /** Writes everything pending (waits for a flush in progress first). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    while (this.flushing) await this.flushing;
    if (this.pending.size === 0) return;
    const batch = [...this.pending.values()];
    this.pending.clear();
    this.flushing = (async () => {
      for (const entry of batch) {
        try {
          await addUsage(this.client, entry.project, entry.hour, entry.model, entry.delta);
        } catch (err) {
          this.log.warn({ project: entry.project, model: entry.model, err: (err as Error).message }, 'usage not written yet; kept for the next flush');
          this.record(entry.project, entry.model, entry.hour, entry.delta);
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
