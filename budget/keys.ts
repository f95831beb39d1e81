/**
 * The etcd key layout of LLM budgets, their ledger and usage. This module is
 * the only place that knows it.
 *
 *   /budgets/<project>                          StoredBudget JSON: the budget in force (absent: no budget)
 *   /budget-history/<project>/<v>               StoredBudget JSON of version v (a deletion is a version with budget null)
 *   /budget-ledger/<project>/<scope>/<per>/<start>
 *                                               Allocation JSON of one window of one limit: how much
 *                                               is spent and which gateway holds which block
 *   /gatehouse/budget-holders/<holder>          one key per live gateway process holding blocks, under
 *                                               its etcd lease (gone with it: its blocks are reclaimed)
 *   /usage/<project>/<hour>/<model>             UsageRecord JSON: what calls of that hour used
 *
 * <v> is zero-padded to 12 digits, <start> and <hour> are epoch milliseconds
 * zero-padded to 13 digits (key order is time order), <scope> is "*" for the
 * project's own windows or the model, and <model> is URI-encoded.
 *
 * The current budget and its history version are written in one transaction.
 * Ledger windows are written under a lease that outlives the window, so old
 * windows vanish by themselves; usage records are kept.
 */
import { isValidPolicyName, PLATFORM_POLICY_NAME } from '../policy/store/names.js';
import type { Budget, WindowKind } from './definition.js';

export const BUDGETS_PREFIX = '/budgets/';
export const BUDGET_HISTORY_PREFIX = '/budget-history/';
export const LEDGER_PREFIX = '/budget-ledger/';
export const HOLDERS_PREFIX = '/gatehouse/budget-holders/';
export const USAGE_PREFIX = '/usage/';

export interface StoredBudget {
  project: string;
  version: number;
  /** null: the budget was deleted at this version (history only). */
  budget: Budget | null;
  updatedAt: string;
  updatedBy: string;
}

/** One window of one limit, shared by every gateway (ledger.ts). */
export interface Allocation {
  limit: number;
  /** Tokens charged for calls that are over (settled, or reclaimed from a dead holder's block). */
  consumed: number;
  /** Tokens each live holder has leased and not yet returned. */
  held: Record<string, number>;
  /** A holder that could not get a block asks the others to return what they do not use. */
  wanted?: { by: string; at: number };
  /** Each live holder's latest write to the record (holder and sequence): a write whose answer was lost is recognised by it. */
  ops?: Record<string, string>;
}

export interface UsageRecord {
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  /** What the budget was charged: the actual usage, or the reservation when the gateway never saw the usage. */
  charged_tokens: number;
  /** Calls whose usage the gateway could not see (charged their reservation). */
  unsettled: number;
}

export function emptyUsage(): UsageRecord {
  return { requests: 0, prompt_tokens: 0, completion_tokens: 0, charged_tokens: 0, unsettled: 0 };
}

/** Budgets belong to projects: a policy name that is not the platform's. */
export function isBudgetProject(project: string): boolean {
  return isValidPolicyName(project) && project !== PLATFORM_POLICY_NAME;
}

function project(name: string): string {
  if (!isBudgetProject(name)) throw new Error(`invalid project ${JSON.stringify(name)}`);
  return name;
}

const pad = (n: number, digits: number) => String(Math.trunc(n)).padStart(digits, '0');

export function budgetKey(name: string): string {
  return `${BUDGETS_PREFIX}${project(name)}`;
}

export function budgetHistoryPrefix(name: string): string {
  return `${BUDGET_HISTORY_PREFIX}${project(name)}/`;
}

export function budgetHistoryKey(name: string, version: number): string {
  return `${budgetHistoryPrefix(name)}${pad(version, 12)}`;
}

/** The project of a /budgets/<project> key, or null. */
export function projectOfBudgetKey(key: string): string | null {
  if (!key.startsWith(BUDGETS_PREFIX)) return null;
  const name = key.slice(BUDGETS_PREFIX.length);
  return isBudgetProject(name) ? name : null;
}

export function ledgerKey(name: string, scope: string, per: WindowKind, windowStart: number): string {
  return `${LEDGER_PREFIX}${project(name)}/${scope === '*' ? '*' : encodeURIComponent(scope)}/${per}/${pad(windowStart, 13)}`;
}

export function holderKey(holder: string): string {
  if (!/^[A-Za-z0-9._:-]{1,160}$/.test(holder)) throw new Error(`invalid holder id ${JSON.stringify(holder)}`);
  return `${HOLDERS_PREFIX}${holder}`;
}

export const HOUR_MS = 3_600_000;

export function usagePrefix(name: string): string {
  return `${USAGE_PREFIX}${project(name)}/`;
}

export function usageKey(name: string, hourStart: number, model: string): string {
  return `${usagePrefix(name)}${pad(hourStart, 13)}/${encodeURIComponent(model)}`;
}

/** The hour and model of a usage key of `name`, or null. */
export function parseUsageKey(name: string, key: string): { hour: number; model: string } | null {
  const prefix = usagePrefix(name);
  if (!key.startsWith(prefix)) return null;
  const [hour, model, ...rest] = key.slice(prefix.length).split('/');
  if (rest.length > 0 || !hour || !/^\d{13}$/.test(hour) || model === undefined) return null;
  try {
    return { hour: Number(hour), model: decodeURIComponent(model) };
  } catch {
    return null;
  }
}
