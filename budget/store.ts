/**
 * The one writer and reader of LLM budgets in etcd (layout: budget/keys.ts).
 *
 * Every write is one transaction: the current key /budgets/<project> and the
 * history version /budget-history/<project>/<v>, guarded by the current key's
 * mod revision (or its absence) and by the absence of that history version.
 * Two writers that read the same state cannot both commit, so versions go
 * 1, 2, 3... with no gap and no version written twice, and a gateway
 * watching /budgets/ never sees a budget without its history entry. A delete
 * is a version too (budget null in history, the current key removed), so a
 * budget written again after a delete continues the numbering.
 */
import { createHash } from 'node:crypto';
import { Range, type Etcd3, type IKeyValue } from 'etcd3';
import { parseBudget, type Budget } from './definition.js';
import { BUDGETS_PREFIX, budgetHistoryKey, budgetHistoryPrefix, budgetKey, HOUR_MS, isBudgetProject, projectOfBudgetKey, type StoredBudget } from './keys.js';
import { readUsage, type UsageSummary } from './usage.js';
import {
  checkWriteConditions,
  PreconditionFailedError,
  StoreUnavailableError,
  WriteConflictError,
  storeFailure,
  type WriteConditions,
} from '../etcd/store-errors.js';

export const DEFAULT_BUDGET_HISTORY_RETENTION = 50;
/**
 * Attempts of a write before giving up to a stream of concurrent writers
 * (each lost attempt means another writer's version committed).
 */
const MAX_WRITE_ATTEMPTS = 10;
/**
 * Budgets read per etcd range when listing. A budget is at most about 80 KB
 * (256 models with four windows each), so a read stays well under gRPC's
 * 4 MiB message limit whatever the budgets hold.
 */
const LIST_READ_BATCH = 25;
/**
 * Usage is read a day at a time: one etcd range per day keeps each answer
 * bounded however long the asked range is. A day is 24 hours x the models
 * each gateway process records per hour (at most 64 of its own, see
 * budget/gateway.ts) x a record of a hundred or two bytes: under a MiB for
 * a dozen processes, well within gRPC's 4 MiB message limit.
 */
const USAGE_READ_SPAN_MS = 24 * HOUR_MS;

/** A stored version that holds a budget (every current one does). */
export type BudgetVersion = StoredBudget & { budget: Budget };

export interface CurrentBudget {
  stored: BudgetVersion;
  /** The mod revision of /budgets/<project>: the etcd revision this version was written at. */
  modRevision: number;
}

export interface BudgetPutResult {
  created: boolean;
  stored: BudgetVersion;
  /** The etcd revision of the write. */
  revision: number;
}

export interface BudgetDeleteResult {
  /** The version that was in force. */
  deleted: BudgetVersion;
  /** The history version the delete wrote (budget null). */
  stored: StoredBudget;
  revision: number;
}

export interface BudgetListPage {
  budgets: CurrentBudget[];
  /** The last project of this page, to continue after; null on the last page. */
  next: string | null;
}

export class BudgetNotFoundError extends Error {
  override readonly name = 'BudgetNotFoundError';
}
/** A stored value that is not a StoredBudget of its key (written past the store). */
export class StoredBudgetInvalidError extends Error {
  override readonly name = 'StoredBudgetInvalidError';
}

/** sha256 (hex) of a budget as stored (compact JSON, the submitted key order). */
export function budgetSha256(budget: Budget | null): string {
  return createHash('sha256').update(JSON.stringify(budget)).digest('hex');
}

function checkProject(project: string): void {
  if (!isBudgetProject(project)) throw new RangeError(`invalid project ${JSON.stringify(project)}: a lowercase DNS label, not "platform"`);
}

/** A stored value, checked against the key it was read from. */
export function parseStoredBudget(text: string, project: string, where: string): StoredBudget {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new StoredBudgetInvalidError(`${where} is not JSON`);
  }
  const record = value as Partial<StoredBudget> | null;
  if (
    typeof record !== 'object' ||
    record === null ||
    record.project !== project ||
    !Number.isSafeInteger(record.version) ||
    (record.version as number) < 1 ||
    typeof record.updatedAt !== 'string' ||
    typeof record.updatedBy !== 'string' ||
    record.budget === undefined
  ) {
    throw new StoredBudgetInvalidError(`${where} is not a stored budget of ${project}`);
  }
  let budget: Budget | null = null;
  if (record.budget !== null) {
    try {
      budget = parseBudget(record.budget);
    } catch (error) {
      throw new StoredBudgetInvalidError(`${where}: ${(error as Error).message}`);
    }
  }
  return { project, version: record.version as number, budget, updatedAt: record.updatedAt, updatedBy: record.updatedBy };
}

function currentOf(kv: IKeyValue, project: string): CurrentBudget {
  const stored = parseStoredBudget(kv.value.toString('utf8'), project, budgetKey(project));
  if (stored.budget === null) throw new StoredBudgetInvalidError(`${budgetKey(project)} holds no budget`);
  return { stored: stored as BudgetVersion, modRevision: Number(kv.mod_revision) };
}

/** What a write is decided on: the current key as it is, and the newest history version. */
interface WriteState {
  kv: IKeyValue | undefined;
  /** The current budget; null when there is none, or when the current key cannot be read as one. */
  current: CurrentBudget | null;
  lastVersion: number;
}

export class BudgetStore {
  readonly historyRetention: number;

  constructor(
    private readonly client: Etcd3,
    options: { historyRetention?: number } = {},
  ) {
    const retention = options.historyRetention ?? DEFAULT_BUDGET_HISTORY_RETENTION;
    if (!Number.isSafeInteger(retention) || retention < 1) throw new RangeError('history retention must be at least 1');
    this.historyRetention = retention;
  }

  /** Turns any etcd client failure into StoreRefusedError or StoreUnavailableError (etcd/store-errors.ts). */
  private async etcd<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      throw storeFailure('budget', error);
    }
  }

  /** The budget in force for a project, or null. */
  async get(project: string): Promise<CurrentBudget | null> {
    checkProject(project);
    const kv = (await this.etcd(() => this.client.get(budgetKey(project)).exec())).kvs[0];
    return kv ? currentOf(kv, project) : null;
  }

  /** Retained versions, newest first (deletions have budget null); at most the retention. */
  async history(project: string): Promise<StoredBudget[]> {
    checkProject(project);
    const response = await this.etcd(() =>
      this.client.getAll().prefix(budgetHistoryPrefix(project)).sort('Key', 'Descend').limit(this.historyRetention).exec(),
    );
    return response.kvs.map((kv) => parseStoredBudget(kv.value.toString('utf8'), project, kv.key.toString('utf8')));
  }

  /** One retained version, or null. */
  async historyVersion(project: string, version: number): Promise<StoredBudget | null> {
    checkProject(project);
    if (!Number.isSafeInteger(version) || version < 1) return null;
    const key = budgetHistoryKey(project, version);
    const kv = (await this.etcd(() => this.client.get(key).exec())).kvs[0];
    if (!kv) return null;
    const stored = parseStoredBudget(kv.value.toString('utf8'), project, key);
    if (stored.version !== version) throw new StoredBudgetInvalidError(`${key} holds version ${stored.version}`);
    return stored;
  }

  /**
   * One page of budgets in force, by project (byte order), after `after`.
   * Read at one etcd revision, in batches (see LIST_READ_BATCH).
   */
  async listPage(options: { after?: string; limit: number }): Promise<BudgetListPage> {
    if (!Number.isSafeInteger(options.limit) || options.limit < 1) throw new RangeError('a page holds at least one budget');
    if (options.after !== undefined) checkProject(options.after);
    return this.etcd(async () => {
      const budgets: CurrentBudget[] = [];
      const end = Range.prefix(BUDGETS_PREFIX).end;
      let start = options.after === undefined ? BUDGETS_PREFIX : `${budgetKey(options.after)}\0`;
      let revision: string | undefined;
      for (;;) {
        const want = Math.min(LIST_READ_BATCH, options.limit - budgets.length + 1);
        let read = this.client.getAll().inRange(new Range(start, end)).limit(want);
        if (revision !== undefined) read = read.revision(revision);
        const response = await read.exec();
        revision ??= response.header.revision;
        for (const kv of response.kvs) {
          const key = kv.key.toString('utf8');
          const project = projectOfBudgetKey(key);
          // Another prefix's keys cannot be in range; a key the layout does not name is skipped.
          if (project === null) continue;
          if (budgets.length === options.limit) return { budgets, next: budgets[budgets.length - 1]!.stored.project };
          budgets.push(currentOf(kv, project));
        }
        const last = response.kvs[response.kvs.length - 1];
        if (!response.more || !last) return { budgets, next: null };
        start = `${last.key.toString('utf8')}\0`;
      }
    });
  }

  /** Every budget in force, page by page. */
  async list(): Promise<CurrentBudget[]> {
    const all: CurrentBudget[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.listPage({ limit: 500, ...(after === undefined ? {} : { after }) });
      all.push(...page.budgets);
      if (page.next === null) return all;
      after = page.next;
    }
  }

  /**
   * Usage of a project's LLM calls in the hours that start in [fromMs, toMs)
   * (budget/usage.ts), read a day at a time and added up.
   */
  async usage(project: string, fromMs: number, toMs: number): Promise<UsageSummary> {
    checkProject(project);
    if (!(Number.isFinite(fromMs) && Number.isFinite(toMs) && fromMs < toMs)) throw new RangeError('usage needs from < to');
    const first = Math.floor(fromMs / HOUR_MS) * HOUR_MS;
    const end = Math.ceil(toMs / HOUR_MS) * HOUR_MS;
    let summary: UsageSummary | null = null;
    for (let start = first; start < end; start += USAGE_READ_SPAN_MS) {
      const part = await this.etcd(() => readUsage(this.client, project, start, Math.min(start + USAGE_READ_SPAN_MS, end)));
      if (summary === null) {
        summary = part;
        continue;
      }
      summary.to = part.to;
      addRecord(summary.total, part.total);
      for (const [model, record] of Object.entries(part.models)) {
        const own = summary.models[model];
        if (own) addRecord(own, record);
        else summary.models[model] = record;
      }
      summary.hours.push(...part.hours);
    }
    return summary!;
  }

  private async readState(project: string): Promise<WriteState> {
    const current = await this.etcd(() => this.client.get(budgetKey(project)).exec());
    // The newest history version at the same revision as the current key.
    const newest = await this.etcd(() =>
      this.client.getAll().prefix(budgetHistoryPrefix(project)).sort('Key', 'Descend').limit(1).revision(current.header.revision).exec(),
    );
    const kv = current.kvs[0];
    const newestKv = newest.kvs[0];
    const lastVersion = newestKv ? Number(newestKv.key.toString('utf8').slice(budgetHistoryPrefix(project).length)) : 0;
    let parsed: CurrentBudget | null = null;
    if (kv) {
      try {
        parsed = currentOf(kv, project);
      } catch (error) {
        // A current key written past the store: a write may replace it (guarded by its revision), a read reports it.
        if (!(error instanceof StoredBudgetInvalidError)) throw error;
      }
    }
    return { kv, current: parsed, lastVersion: Number.isSafeInteger(lastVersion) ? lastVersion : 0 };
  }

  private checkConditions(state: WriteState, conditions: WriteConditions): void {
    checkWriteConditions('the budget', { exists: state.kv !== undefined, version: state.current?.stored.version }, conditions);
  }

  private nextVersion(state: WriteState): number {
    return Math.max(state.current?.stored.version ?? 0, state.lastVersion) + 1;
  }

  /** The guard of a write decided on `state`: the current key unchanged, the new version not yet written. */
  private guard(project: string, state: WriteState, version: number) {
    const key = budgetKey(project);
    const onCurrent = state.kv ? this.client.if(key, 'Mod', '==', state.kv.mod_revision) : this.client.if(key, 'Create', '==', 0);
    return onCurrent.and(budgetHistoryKey(project, version), 'Create', '==', 0);
  }

  /** Deletes of history versions older than the retention, in the transaction that writes `version`. */
  private pruneOps(project: string, version: number) {
    const oldestKept = version - this.historyRetention + 1;
    if (oldestKept <= 1) return [];
    return [this.client.delete().range(new Range(budgetHistoryKey(project, 0), budgetHistoryKey(project, oldestKept)))];
  }

  /**
   * After a compare failed: whether this very transaction had committed
   * (etcd's client retries a call on another member when the first answer
   * is lost; the retry then fails its compare against its own write). The
   * history version holding exactly our record, written to the millisecond
   * by this author, means it did.
   */
  private async committedEarlier(project: string, version: number, text: string): Promise<number | null> {
    const kv = (await this.etcd(() => this.client.get(budgetHistoryKey(project, version)).exec())).kvs[0];
    return kv && kv.value.toString('utf8') === text ? Number(kv.mod_revision) : null;
  }

  /**
   * Creates or replaces a project's budget as the next version. A writer that
   * loses a race re-reads, re-checks its conditions (a stale If-Match is then
   * PreconditionFailedError) and, without any, writes on top of the winner.
   */
  async put(project: string, budget: Budget, author: string, conditions: WriteConditions = {}): Promise<BudgetPutResult> {
    checkProject(project);
    const document = parseBudget(budget);
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const state = await this.readState(project);
      this.checkConditions(state, conditions);
      const version = this.nextVersion(state);
      const stored: BudgetVersion = { project, version, budget: document, updatedAt: new Date().toISOString(), updatedBy: author };
      const text = JSON.stringify(stored);
      const response = await this.etcd(() =>
        this.guard(project, state, version)
          .then(
            this.client.put(budgetKey(project)).value(text),
            this.client.put(budgetHistoryKey(project, version)).value(text),
            ...this.pruneOps(project, version),
          )
          .commit(),
      );
      const created = state.kv === undefined;
      if (response.succeeded) return { created, stored, revision: Number(response.header.revision) };
      const earlier = await this.committedEarlier(project, version, text);
      if (earlier !== null) return { created, stored, revision: earlier };
    }
    throw new WriteConflictError('too many concurrent writes to this budget; try again');
  }

  /**
   * Removes the budget in force, writing the deletion as the next history
   * version (budget null). BudgetNotFoundError when there is none.
   */
  async delete(project: string, author: string, conditions: WriteConditions = {}): Promise<BudgetDeleteResult> {
    checkProject(project);
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const state = await this.readState(project);
      if (!state.kv) {
        if (conditions.ifVersion !== undefined) throw new PreconditionFailedError('the budget does not exist');
        throw new BudgetNotFoundError(`no budget for ${project}`);
      }
      this.checkConditions(state, conditions);
      if (!state.current) throw new StoredBudgetInvalidError(`${budgetKey(project)} is not a stored budget; write a budget over it first`);
      const version = this.nextVersion(state);
      const stored: StoredBudget = { project, version, budget: null, updatedAt: new Date().toISOString(), updatedBy: author };
      const text = JSON.stringify(stored);
      const response = await this.etcd(() =>
        this.guard(project, state, version)
          .then(
            this.client.delete().key(budgetKey(project)),
            this.client.put(budgetHistoryKey(project, version)).value(text),
            ...this.pruneOps(project, version),
          )
          .commit(),
      );
      if (response.succeeded) return { deleted: state.current.stored, stored, revision: Number(response.header.revision) };
      const earlier = await this.committedEarlier(project, version, text);
      if (earlier !== null) return { deleted: state.current.stored, stored, revision: earlier };
    }
    throw new WriteConflictError('too many concurrent writes to this budget; try again');
  }
}

function addRecord(target: UsageSummary['total'], delta: UsageSummary['total']): void {
  target.requests += delta.requests;
  target.prompt_tokens += delta.prompt_tokens;
  target.completion_tokens += delta.completion_tokens;
  target.charged_tokens += delta.charged_tokens;
  target.unsettled += delta.unsettled;
}
