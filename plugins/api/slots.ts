// What one plugin of a chain tells a later one, through the call's context
// (CallContext.state): typed slots, defined here so that no plugin imports
// another.
//
//   identitySlot      the verified caller; `jwt` fills it, `opa`, `vault` and
//                     `llm-budget` read it
//   llmCallSlot(e)    the LLM call in the request body, priced for endpoint e
//                     (budget/call.ts), read from the body once (llmCall):
//                     by `opa` for its input, by `llm-budget` for the reservation
//   decidedModelSlot  the model a policy named for this call; `opa` fills it,
//                     `llm-budget` charges it and sends it upstream
import type { CallContext } from './plugin.js';
import type { GatewayRequest } from './http.js';
import type { Identity } from '../../identity/index.js';
import { LLM_ENDPOINTS, LlmCallError, readLlmCall, type LlmCall, type LlmEndpoint } from '../../budget/call.js';

/** A typed key into a call's state: what a plugin leaves there, for plugins later in the chain. */
export class Slot<T> {
  constructor(readonly key: string) {}

  /** The value an earlier plugin left, or null when none did. */
  get(ctx: CallContext): T | null {
    return (ctx.state.get(this.key) as T | undefined) ?? null;
  }

  has(ctx: CallContext): boolean {
    return ctx.state.has(this.key);
  }

  set(ctx: CallContext, value: T): void {
    ctx.state.set(this.key, value);
  }
}

/** The identity verified earlier in this chain (by `jwt`). */
export const identitySlot = new Slot<Identity>('gatehouse.identity');

/** The model a policy decided this call must use (by `opa`, with_budget). */
export const decidedModelSlot = new Slot<string>('gatehouse.llm-model');

const llmCallSlots = Object.fromEntries(
  LLM_ENDPOINTS.map((endpoint) => [endpoint, new Slot<LlmCall | LlmCallError>(`gatehouse.llm-call:${endpoint}`)]),
) as Record<LlmEndpoint, Slot<LlmCall | LlmCallError>>;

/** The call in the request body as priced for `endpoint`, or the reason it cannot be read. */
export function llmCallSlot(endpoint: LlmEndpoint): Slot<LlmCall | LlmCallError> {
  return llmCallSlots[endpoint];
}

/**
 * The priced endpoint a path ends with, or null. What `opa` shows a policy
 * before `llm-budget` has checked the path against its route's allow-list
 * (which then reads the call for the endpoint it matched exactly).
 */
export function endpointOfPath(path: string): LlmEndpoint | null {
  return LLM_ENDPOINTS.find((endpoint) => path.endsWith(endpoint)) ?? null;
}

/**
 * The call in the request body, priced for `endpoint` (by default the one the
 * path ends with), or the reason it cannot be read: read once per endpoint,
 * then kept in its slot for the plugins after.
 */
export async function llmCall(ctx: CallContext, request: GatewayRequest, endpoint = endpointOfPath(request.path)): Promise<LlmCall | LlmCallError> {
  if (!endpoint) return new LlmCallError(`no LLM endpoint a budget can price is at ${request.path}`);
  const slot = llmCallSlot(endpoint);
  const cached = slot.get(ctx);
  if (cached) return cached;
  let call: LlmCall | LlmCallError;
  try {
    call = readLlmCall(await request.body(), endpoint);
  } catch (err) {
    if (!(err instanceof LlmCallError)) throw err;
    call = err;
  }
  slot.set(ctx, call);
  return call;
}
