// How an LLM call travels along a chain: read from the request body once
// (budget/call.ts), shared by `opa` (the budget in its input, the model its
// decision may name) and `llm-budget` (the reservation).
import type { CallContext } from '../api/plugin.js';
import type { GatewayRequest } from '../api/http.js';
import { LlmCallError, readLlmCall, type LlmCall } from '../../budget/call.js';

const CALL_KEY = 'gatehouse.llm-call';
const MODEL_KEY = 'gatehouse.llm-model';

/** The call in the request body, or the reason it cannot be read. */
export async function llmCall(ctx: CallContext, request: GatewayRequest): Promise<LlmCall | LlmCallError> {
  const cached = ctx.state.get(CALL_KEY) as LlmCall | LlmCallError | undefined;
  if (cached) return cached;
  let call: LlmCall | LlmCallError;
  try {
    call = readLlmCall(await request.body());
  } catch (err) {
    if (!(err instanceof LlmCallError)) throw err;
    call = err;
  }
  ctx.state.set(CALL_KEY, call);
  return call;
}

/** A policy named the model this call must use. */
export function setDecidedModel(ctx: CallContext, model: string): void {
  if (!ctx.state.has(MODEL_KEY)) ctx.state.set(MODEL_KEY, model);
}

export function decidedModel(ctx: CallContext): string | null {
  return (ctx.state.get(MODEL_KEY) as string | undefined) ?? null;
}
