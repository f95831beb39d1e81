// The call context's slots (plugins/api/slots.ts): what one plugin of a
// chain leaves for a later one, typed, without either importing the other.
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { GatewayRequest, toBytes, type ExtraInfoSource } from '../../plugins/api/http.js';
import type { CallContext } from '../../plugins/api/plugin.js';
import { decidedModelSlot, endpointOfPath, identitySlot, llmCall, llmCallSlot } from '../../plugins/api/slots.js';
import { LlmCallError, type LlmCall } from '../../budget/call.js';
import type { Identity } from '../../identity/index.js';

const log = pino({ level: 'silent' });
const context = (): CallContext => ({ state: new Map(), log });

/** A request whose body APISIX would send when asked; counts how often it is asked. */
function request(path: string, body: string): { request: GatewayRequest; bodyReads: () => number } {
  let reads = 0;
  const extra: ExtraInfoSource = {
    variable: () => Promise.resolve(null),
    requestBody: () => {
      reads++;
      return Promise.resolve(toBytes(body));
    },
    responseBody: () => Promise.reject(new Error('no response here')),
  };
  const req = new GatewayRequest(
    { id: 1, method: 'POST', path, srcIp: '127.0.0.1', headers: [{ name: 'content-type', value: 'application/json' }], args: [] },
    extra,
  );
  return { request: req, bodyReads: () => reads };
}

describe('call context slots', () => {
  it('a slot holds what an earlier plugin left, for this call only', () => {
    const identity: Identity = { sub: 'alice', role: 'developer', project: 'team-a', claims: {}, isPlatformAdmin: false };
    const first = context();
    const second = context();
    expect(identitySlot.get(first)).toBeNull();
    expect(identitySlot.has(first)).toBe(false);
    identitySlot.set(first, identity);
    expect(identitySlot.get(first)).toBe(identity);
    expect(identitySlot.has(first)).toBe(true);
    expect(identitySlot.get(second)).toBeNull();
    decidedModelSlot.set(first, 'small-model');
    expect(decidedModelSlot.get(first)).toBe('small-model');
    // The names the chain's state shows (the example plugin echoes them) stay as they were.
    expect([...first.state.keys()]).toEqual(['gatehouse.identity', 'gatehouse.llm-model']);
  });

  it('the LLM call is read from the body once per endpoint and kept for the plugins after', async () => {
    const ctx = context();
    const { request: req, bodyReads } = request(
      '/llm/v1/chat/completions',
      JSON.stringify({ model: 'gpt-x', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] }),
    );
    const seenByOpa = await llmCall(ctx, req);
    expect(seenByOpa).not.toBeInstanceOf(LlmCallError);
    expect((seenByOpa as LlmCall).model).toBe('gpt-x');
    expect((seenByOpa as LlmCall).endpoint).toBe('/v1/chat/completions');
    const seenByBudget = await llmCall(ctx, req, '/v1/chat/completions');
    expect(seenByBudget).toBe(seenByOpa);
    expect(llmCallSlot('/v1/chat/completions').get(ctx)).toBe(seenByOpa);
    expect(bodyReads()).toBe(1);
    // Priced for another endpoint, the same body is another call (in its own slot).
    expect(llmCallSlot('/v1/completions').get(ctx)).toBeNull();
  });

  it('a body that cannot be priced is kept as its reason; a path with no priced endpoint is one', async () => {
    const ctx = context();
    const { request: req, bodyReads } = request('/v1/chat/completions', '{"model": 5}');
    const first = await llmCall(ctx, req);
    expect(first).toBeInstanceOf(LlmCallError);
    expect(await llmCall(ctx, req)).toBe(first);
    expect(bodyReads()).toBe(1);

    const elsewhere = request('/v1/models', '{}');
    const refused = await llmCall(context(), elsewhere.request);
    expect(refused).toBeInstanceOf(LlmCallError);
    expect((refused as LlmCallError).message).toMatch(/no LLM endpoint/);
    expect(elsewhere.bodyReads()).toBe(0);
    expect(endpointOfPath('/llm/v1/embeddings')).toBe('/v1/embeddings');
    expect(endpointOfPath('/v1/models')).toBeNull();
  });
});
