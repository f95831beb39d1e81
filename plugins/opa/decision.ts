// Reading a policy's answer the way APISIX's `opa` plugin reads `result`:
// `true`, or an object whose `allow` is true, lets the request through;
// anything else denies with `status_code` (default 403), `headers` and
// `reason`. An undefined result (no rule matched) denies. An allowing
// decision may name a `model` for an LLM call (opa's with_budget).
import { isModelName } from '../../budget/definition.js';

export interface Decision {
  allow: boolean;
  status: number;
  reason: unknown;
  headers: Record<string, string>;
  /** A model the call must use (an LLM route's policy may route a call to another model). */
  model?: string;
}

export const DEFAULT_DENY_STATUS = 403;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function validStatus(value: unknown): number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 100 && value <= 599 ? value : DEFAULT_DENY_STATUS;
}

export function readDecision(result: unknown): Decision {
  if (result === true) return { allow: true, status: 200, reason: undefined, headers: {} };
  if (!isRecord(result)) return { allow: false, status: DEFAULT_DENY_STATUS, reason: undefined, headers: {} };
  const headers: Record<string, string> = {};
  if (isRecord(result.headers)) {
    for (const [name, value] of Object.entries(result.headers)) {
      if (typeof value === 'string' || typeof value === 'number') headers[name.toLowerCase()] = String(value);
    }
  }
  const allow = result.allow === true;
  const model = typeof result.model === 'string' && isModelName(result.model) ? result.model : undefined;
  return {
    allow,
    status: allow ? 200 : validStatus(result.status_code),
    reason: result.reason,
    headers,
    ...(model ? { model } : {}),
  };
}
