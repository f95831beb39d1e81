// How an LLM call travels along a chain: read from the request body once
// (budget/call.ts) for the endpoint it goes to, shared by `opa` (the budget
// in its input, the model its decision may name) and `llm-budget` (the
// reservation, and the route's allow-list of endpoints).
import type { CallContext } from '../api/plugin.js';
import type { GatewayRequest } from '../api/http.js';
import { LLM_ENDPOINTS, LlmCallError, readLlmCall, type LlmCall, type LlmEndpoint } from '../../budget/call.js';

const CALL_KEY = 'gatehouse.llm-call';
const MODEL_KEY = 'gatehouse.llm-model';

/**
 * The priced endpoint a path ends with, or null. What `opa` shows a policy
 * before `llm-budget` has checked the path against its route's allow-list
 * (which then reads the call for the endpoint it matched exactly).
 */
export function endpointOfPath(path: string): LlmEndpoint | null {
  return LLM_ENDPOINTS.find((endpoint) => path.endsWith(endpoint)) ?? null;
}

/** The call in the request body, priced for `endpoint` (by default the one the path ends with), or the reason it cannot be read. */
export async function llmCall(ctx: CallContext, request: GatewayRequest, endpoint = endpointOfPath(request.path)): Promise<LlmCall | LlmCallError> {
  if (!endpoint) return new LlmCallError(`no LLM endpoint a budget can price is at ${request.path}`);
  const key = `${CALL_KEY}:${endpoint}`;
  const cached = ctx.state.get(key) as LlmCall | LlmCallError | undefined;
  if (cached) return cached;
  let call: LlmCall | LlmCallError;
  try {
    call = readLlmCall(await request.body(), endpoint);
  } catch (err) {
    if (!(err instanceof LlmCallError)) throw err;
    call = err;
  }
  ctx.state.set(key, call);
  return call;
}

/** A policy named the model this call must use. */
export function setDecidedModel(ctx: CallContext, model: string): void {
  if (!ctx.state.has(MODEL_KEY)) ctx.state.set(MODEL_KEY, model);
}

export function decidedModel(ctx: CallContext): string | null {
  return (ctx.state.get(MODEL_KEY) as string | undefined) ?? null;
}
