// The budgets as one gateway process enforces them: the budget of every
// project (read once, then kept current by an etcd watch on /budgets/), the
// shared ledger (ledger.ts), the calls in flight and their settling, and the
// usage they add up to (usage.ts).
//
// A call's reservation is named by nginx's $request_id (128 random bits,
// never sent upstream); APISIX's http-logger later posts the response
// (status, the upstream's status and body) with that id back to the runner,
// which settles the call to the usage the LLM reported (settle). An id
// settles once: a post that names no call in flight changes nothing.
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { blockTokens, limitsFor, type Budget, type BudgetLimit } from './definition.js';
import { BUDGETS_PREFIX, HOUR_MS, projectOfBudgetKey } from './keys.js';
import { parseStoredBudget } from './store.js';
import { BudgetLedger, type Hold, type ReserveResult } from './ledger.js';
import { UsageRecorder } from './usage.js';
import type { AnswerUsage } from './answer-usage.js';
import { callCost, type LlmCall } from './call.js';

/** What names a reservation: nginx's $request_id, 32 hex digits. */
export const RESERVATION_ID = /^[0-9a-f]{32}$/;

/**
 * A model is whatever the caller writes in the body; an unknown one costs
 * nothing (the LLM refuses it), so unchecked, one caller could make a usage
 * record and a metrics series per call. Usage is recorded under a call's
 * model when the budget names it, or when the LLM took the call (it
 * answered with usage or a success), and then for at most this many models
 * per project and hour in a process; the rest under OTHER_MODELS.
 */
export const USAGE_MODELS_PER_HOUR = 64;
export const OTHER_MODELS = '(other)';

/** How long a call waits for a process's budgets to be read from etcd before it is refused with 503. */
export const BUDGETS_LOAD_WAIT_MS = 3_000;

export interface GatewayBudgetsOptions {
  client: Etcd3;
  gateway: string;
  log: Logger;
  /** A call never settled is charged its reservation after this long (BUDGET_SETTLE_TIMEOUT_SECONDS, default 900). */
  settleTimeoutMs?: number;
  leaseTtlSeconds?: number;
  idleReturnMs?: number;
  events?: BudgetEvents;
}

export interface BudgetEvents {
  /** A call settled: what it used and what the budget was charged. */
  settled(project: string, model: string, usage: { prompt: number; completion: number; charged: number; seen: boolean }): void;
  refused(project: string, reason: 'exhausted' | 'unavailable' | 'too-large'): void;
  /** The usage an answer reported was not charged (the call kept its reservation): `invalid` (not finite, negative, unreadable) or `implausible` (above what the call could cost). */
  usageRefused(project: string, reason: 'invalid' | 'implausible'): void;
}

/** What settling a call needs of its response, as the gateway logged it. */
export interface SettledAnswer {
  /** The status the client was sent (nginx's 499: the client left before it). */
  status: number;
  /** nginx's $upstream_status: each upstream attempt's status ("502, 200"; "-": no answer), null when no upstream was contacted. */
  upstreamStatus: string | null;
  usage: AnswerUsage;
}

/**
 * What a provider's count can exceed a call's reservation by: the prompt
 * bound counts every byte as a token and a completion never runs past its
 * limit, so only formatting a provider adds beyond the 8 tokens a message
 * counted can; usage above reservation x (1 + share) + tokens is not
 * believed (nor above the smallest limit of its windows).
 */
export const USAGE_OVERRUN = { share: 0.1, tokens: 64 };

/** Whether the upstream itself refused the call: every attempt answered 4xx (nginx's 499, the client leaving, is not the upstream's). */
export function refusedByUpstream(upstreamStatus: string): boolean {
  const attempts = upstreamStatus.split(/[,:]/).map((s) => s.trim());
  return attempts.every((status) => /^4\d\d$/.test(status) && status !== '499');
}

interface InFlight {
  hold: Hold;
  project: string;
  /** The model the call was sent with ('unknown' when it named none). */
  model: string;
  /** Whether the project's budget names that model (its usage is then always recorded under it). */
  named: boolean;
  /** The smallest limit the call is charged against: no call can use more. */
  limitTokens: number;
  startedAt: number;
}

/** What a settled call is charged, and what is known of it. */
interface Charge {
  /** Whether the LLM took the call (it answered with usage or a success), null when nobody knows. */
  taken: boolean | null;
  /** The tokens the LLM reported (0: none reported). */
  prompt?: number;
  completion?: number;
  /** What the budget is charged: the usage, nothing, or the reservation. */
  charged: number;
  /** Whether the call is settled from what its answer showed (false: charged its reservation, counted unsettled). */
  seen: boolean;
}

/** What settling a call did: the model it was sent with, what was reserved, reported and charged. */
export interface SettledCall {
  model: string;
  reserved: number;
  /** The tokens the LLM reported (0: none believed). */
  prompt: number;
  completion: number;
  charged: number;
  /** Whether the charge is what the answer showed (false: the reservation was kept). */
  seen: boolean;
}

/** What a policy sees of a project's budget for a call (the opa input's `budget`). */
export interface BudgetView {
  model: string | null;
  estimated_cost: number;
  max_tokens: number | null;
  /** The smallest remaining of the limits this call is charged against. */
  remaining_tokens: number;
  limits: { scope: string; per: string; tokens: number; remaining: number; resets_at: string }[];
}

export class GatewayBudgets {
  private readonly budgets = new Map<string, Budget>();
  private readonly inFlight = new Map<string, InFlight>();
  /** The models given their own usage records, per project, in the current hour. */
  private usageModels = { hour: 0, byProject: new Map<string, Set<string>>() };
  readonly ledger: BudgetLedger;
  readonly usage: UsageRecorder;
  private loaded = false;
  private readonly loadWaiters: (() => void)[] = [];
  private watcher: { cancel(): Promise<void> } | null = null;
  private sweeper: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(private readonly options: GatewayBudgetsOptions) {
    this.ledger = new BudgetLedger({
      client: options.client,
      gateway: options.gateway,
      log: options.log,
      ...(options.leaseTtlSeconds ? { leaseTtlSeconds: options.leaseTtlSeconds } : {}),
      ...(options.idleReturnMs ? { idleReturnMs: options.idleReturnMs } : {}),
    });
    this.usage = new UsageRecorder(options.client, options.log);
  }

  /** Whether the budgets were read from etcd (until then budgeted calls wait for them, up to BUDGETS_LOAD_WAIT_MS, then answer 503). */
  get isLoaded(): boolean {
    return this.loaded;
  }

  /**
   * Whether the budgets are loaded, waiting up to `timeoutMs` for them: a
   * call that reaches a process just started (or respawned) waits out the
   * one etcd read rather than being refused.
   */
  whenLoaded(timeoutMs: number): Promise<boolean> {
    if (this.loaded) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(this.loaded), timeoutMs);
      this.loadWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Reads every budget, then follows changes; retried in the background while etcd is away. */
  async start(): Promise<void> {
    const sweepEvery = Math.min(10_000, this.settleTimeoutMs);
    this.sweeper = setInterval(() => this.expire(), sweepEvery);
    this.sweeper.unref();
    await this.untilDone(() => this.load(), 'budgets not loaded yet; budgeted calls answer 503 until they are');
    await this.untilDone(() => this.ledger.start(), 'budget ledger not reachable yet; calls that need a block are refused');
  }

  private get settleTimeoutMs(): number {
    return this.options.settleTimeoutMs ?? 900_000;
  }

  /** Runs `task` until it succeeds (or the budgets stop), backing off from 0.5 s to 10 s. */
  private async untilDone(task: () => Promise<void>, failure: string): Promise<void> {
    for (let delay = 500; !this.stopped; delay = Math.min(delay * 2, 10_000)) {
      try {
        return await task();
      } catch (err) {
        this.options.log.warn({ err: (err as Error).message }, failure);
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  private async load(): Promise<void> {
    const client = this.options.client;
    const response = await client.getAll().prefix(BUDGETS_PREFIX).exec();
    // Replaced in one step once read (no await in between): until then the loaded budgets stay in force.
    this.budgets.clear();
    for (const kv of response.kvs) this.apply(kv.key.toString('utf8'), kv.value.toString('utf8'));
    // On a namespace of its own (same keys), hence its own etcd3 watch manager
    // and gRPC stream: one watch dropped after a cancel cannot upset another.
    // Not awaited: it starts from the revision read, so nothing is missed.
    const watcher = client
      .namespace('')
      .watch()
      .prefix(BUDGETS_PREFIX)
      .startRevision(String(BigInt(response.header.revision) + 1n))
      .watcher();
    watcher.on('put', (kv) => this.apply(kv.key.toString('utf8'), kv.value.toString('utf8')));
    watcher.on('delete', (kv) => {
      const project = projectOfBudgetKey(kv.key.toString('utf8'));
      if (project) this.budgets.delete(project);
    });
    watcher.on('error', (err: Error) => {
      // A canceled watch (most often: the revision to resume from was
      // compacted away) may have missed changes: read every budget again.
      if (this.watcher !== watcher || this.stopped) return;
      this.options.log.warn({ err: err.message }, 'budget watch canceled; reading every budget again');
      this.watcher = null;
      void watcher.cancel().catch(() => undefined);
      void this.untilDone(() => this.load(), 'budgets not read again yet; enforcing the ones loaded');
    });
    this.watcher = watcher;
    this.loaded = true;
    for (const wake of this.loadWaiters.splice(0)) wake();
    this.options.log.info({ budgets: this.budgets.size }, 'budgets loaded');
  }

  private apply(key: string, text: string): void {
    const project = projectOfBudgetKey(key);
    if (!project) return;
    try {
      // The store's own reader: the project must be the key's, the budget valid; a deleted one is none.
      const stored = parseStoredBudget(text, project, key);
      if (stored.budget === null) throw new Error(`${key} holds no budget`);
      this.budgets.set(project, stored.budget);
    } catch (err) {
      // A budget that cannot be read allows nothing (the CMS validates, so this is damage).
      this.budgets.delete(project);
      this.options.log.error({ project, err: (err as Error).message }, 'unreadable budget; calls of this project are refused');
    }
  }

  budget(project: string): Budget | null {
    return this.budgets.get(project) ?? null;
  }

  /** The tokens a call can cost at most, given the completion limit it will be sent with. */
  static cost(call: LlmCall, maxTokens: number): number {
    return callCost(call, maxTokens);
  }

  view(project: string, budget: Budget, call: LlmCall, model: string | null, maxTokens: number | null): BudgetView {
    const limits = limitsFor(budget, model);
    const remaining = this.ledger.remaining(project, limits);
    return {
      model,
      estimated_cost: maxTokens === null ? call.promptTokensBound : GatewayBudgets.cost(call, maxTokens),
      max_tokens: maxTokens,
      remaining_tokens: Math.min(...remaining.map((r) => r.remaining)),
      limits: remaining.map((r) => ({
        scope: r.limit.scope,
        per: r.limit.per,
        tokens: r.limit.tokens,
        remaining: r.remaining,
        resets_at: new Date(r.resetsAt).toISOString(),
      })),
    };
  }

  /** Limits a call of this cost can never fit in, whatever is spent. */
  static tooLarge(budget: Budget, model: string | null, cost: number): BudgetLimit | null {
    return limitsFor(budget, model).find((limit) => limit.tokens < cost) ?? null;
  }

  refusedTooLarge(project: string): void {
    this.options.events?.refused(project, 'too-large');
  }

  /** Reserves a call's worst case under `id` (its $request_id). */
  async reserve(id: string, project: string, budget: Budget, model: string | null, cost: number): Promise<{ ok: true } | Exclude<ReserveResult, { ok: true }>> {
    const limits = limitsFor(budget, model).map((limit) => ({ limit, block: blockTokens(budget, limit) }));
    const result = await this.ledger.reserve(project, limits, cost);
    if (!result.ok) {
      this.options.events?.refused(project, result.reason);
      return result;
    }
    // An id seen twice (it cannot be, from nginx) keeps the first call's reservation as its charge.
    const earlier = this.inFlight.get(id);
    if (earlier) this.charge(earlier, { taken: null, charged: earlier.hold.cost, seen: false });
    const named = model !== null && budget.models?.[model] !== undefined;
    const limitTokens = Math.min(...limits.map(({ limit }) => limit.tokens));
    this.inFlight.set(id, { hold: result.hold, project, model: model ?? 'unknown', named, limitTokens, startedAt: Date.now() });
    return { ok: true };
  }

  /** The model a call's usage is recorded under (see USAGE_MODELS_PER_HOUR); `taken`: whether the LLM took the call, null when unknown. */
  private usageModel(call: InFlight, taken: boolean | null, nowMs = Date.now()): string {
    const { project, model } = call;
    if (call.named) return model;
    if (taken === false) return OTHER_MODELS;
    const hour = Math.floor(nowMs / HOUR_MS);
    if (this.usageModels.hour !== hour) this.usageModels = { hour, byProject: new Map() };
    let seen = this.usageModels.byProject.get(project);
    if (!seen) this.usageModels.byProject.set(project, (seen = new Set()));
    if (seen.has(model)) return model;
    if (seen.size >= USAGE_MODELS_PER_HOUR) return OTHER_MODELS;
    seen.add(model);
    return model;
  }

  /**
   * Settles a call from its response as the gateway logged it. The usage the
   * LLM reported is charged, if it can be believed (USAGE_OVERRUN); usage
   * that cannot (not finite, negative, unreadable, implausible) is logged,
   * counted, and the call keeps its reservation. Without usage, a call is
   * charged nothing only when the upstream itself refused it (4xx), or when
   * it never reached an upstream and failed; a call the client abandoned,
   * one the upstream failed (5xx, no answer) and a success without usage
   * keep their reservation: the provider may have run them. Returns false
   * for an id naming no call in flight.
   */
  settle(id: string, answer: SettledAnswer): boolean {
    return this.settleCall(id, answer) !== null;
  }

  /** settle(), returning what the call was charged (for its trace), null for an id naming no call in flight. */
  settleCall(id: string, answer: SettledAnswer): SettledCall | null {
    const call = this.inFlight.get(id);
    if (!call) return null;
    this.inFlight.delete(id);
    const { usage, status, upstreamStatus } = answer;
    const reserved = call.hold.cost;
    if (usage.kind === 'usage') {
      const total = usage.prompt + usage.completion;
      const bound = Math.min(call.limitTokens, Math.ceil(reserved * (1 + USAGE_OVERRUN.share)) + USAGE_OVERRUN.tokens);
      if (total <= bound) return this.charge(call, { taken: true, prompt: usage.prompt, completion: usage.completion, charged: total, seen: true });
      return this.refuseUsage(
        call,
        'implausible',
        `reported ${usage.prompt}+${usage.completion} tokens, above the ${bound} the call could use (reserved ${reserved}, smallest limit ${call.limitTokens})`,
        status,
        upstreamStatus,
      );
    }
    if (usage.kind === 'invalid') return this.refuseUsage(call, 'invalid', usage.reason, status, upstreamStatus);
    if (upstreamStatus ? refusedByUpstream(upstreamStatus) : status >= 400) return this.charge(call, { taken: false, charged: 0, seen: true });
    return this.charge(call, { taken: status < 400 ? true : null, charged: reserved, seen: false });
  }

  /** Usage that cannot be believed: the call keeps its reservation; logged and counted. */
  private refuseUsage(call: InFlight, reason: 'invalid' | 'implausible', detail: string, status: number, upstreamStatus: string | null): SettledCall {
    this.options.log.warn(
      { project: call.project, model: call.model, status, upstreamStatus, reserved: call.hold.cost, detail },
      'usage reported for an LLM call not believed; charged its reservation',
    );
    this.options.events?.usageRefused(call.project, reason);
    return this.charge(call, { taken: null, charged: call.hold.cost, seen: false });
  }

  private charge(call: InFlight, { taken, prompt = 0, completion = 0, charged, seen }: Charge): SettledCall {
    const model = this.usageModel(call, taken);
    this.ledger.settle(call.hold, charged);
    this.usage.record(call.project, model, Date.now(), {
      requests: 1,
      prompt_tokens: prompt,
      completion_tokens: completion,
      charged_tokens: charged,
      unsettled: seen ? 0 : 1,
    });
    this.options.events?.settled(call.project, model, { prompt, completion, charged, seen });
    return { model: call.model, reserved: call.hold.cost, prompt, completion, charged, seen };
  }

  /** Calls never settled within the timeout keep their reservation as their charge. */
  private expire(now = Date.now()): void {
    for (const [id, call] of this.inFlight) {
      if (now - call.startedAt < this.settleTimeoutMs) continue;
      this.inFlight.delete(id);
      this.options.log.warn({ project: call.project, model: call.model, reserved: call.hold.cost }, 'no usage arrived for a call; charged its reservation');
      this.charge(call, { taken: null, charged: call.hold.cost, seen: false });
    }
  }

  get callsInFlight(): number {
    return this.inFlight.size;
  }

  /** Charges calls still in flight their reservation, writes pending usage, gives blocks back. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.sweeper) clearInterval(this.sweeper);
    await this.watcher?.cancel().catch(() => undefined);
    this.expire(Number.POSITIVE_INFINITY);
    await this.usage.flush().catch(() => undefined);
    await this.ledger.stop();
  }
}
