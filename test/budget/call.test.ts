// Reading an LLM call's worst case from its body, and its usage from the answer.
import { describe, expect, it } from 'vitest';
import { IMAGE_TOKENS_BOUND, LlmCallError, readLlmCall, usageFromResponse } from '../../budget/call.js';
import { promptTokens } from '../../tools/llm-stub/index.js';

const bytes = (value: unknown) => new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value));

describe('readLlmCall', () => {
  it('bounds the prompt from above by its bytes, per message overhead and priming, tools included', () => {
    const messages = [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: [{ type: 'text', text: 'héllo wörld' }] },
    ];
    const call = readLlmCall(bytes({ model: 'gpt-4o', max_tokens: 100, messages, tools: [{ type: 'function', function: { name: 'f' } }] }));
    const textBytes = Buffer.byteLength('systemBe brief.userhéllo wörld' + 'text', 'utf8') + Buffer.byteLength('functionf', 'utf8');
    expect(call.promptTokensBound).toBe(textBytes + 2 * 8 + 8);
    expect(call).toMatchObject({ model: 'gpt-4o', maxTokens: 100, stream: false, includeUsage: false });
    // Never below what the model counts (the stub counts as a tokenizer would, at most a token per byte).
    expect(call.promptTokensBound).toBeGreaterThanOrEqual(promptTokens(messages));
  });

  it('bounds the completion by the larger of max_tokens and max_completion_tokens; reads streaming, include_usage, and completions with a prompt', () => {
    const call = readLlmCall(bytes({ model: 'm', max_tokens: 5, max_completion_tokens: 7, stream: true, stream_options: { include_usage: true }, messages: [] }));
    expect(call).toMatchObject({ maxTokens: 7, stream: true, includeUsage: true, promptTokensBound: 8 });
    // An upstream that honours max_tokens over max_completion_tokens could answer 10,000.
    expect(readLlmCall(bytes({ max_tokens: 10_000, max_completion_tokens: 10, messages: [] })).maxTokens).toBe(10_000);
    expect(readLlmCall(bytes({ model: 'm', prompt: 'abc' })).promptTokensBound).toBe(3 + 8);
    expect(readLlmCall(bytes({ messages: [] })).maxTokens).toBeNull();
  });

  it('counts each image part at the bound of one image, whatever its URL\'s length', () => {
    const image = { type: 'image_url', image_url: { url: 'https://x.example/a.png' } };
    const withImages = readLlmCall(bytes({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }, image, image] }] }));
    const withoutImages = readLlmCall(bytes({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }] }] }));
    expect(withImages.promptTokensBound - withoutImages.promptTokensBound).toBe(2 * (IMAGE_TOKENS_BOUND + Buffer.byteLength('image_urlhttps://x.example/a.png')));
  });

  it.each([
    ['not JSON', '{"model":', /not JSON/],
    ['an array', [], /JSON object/],
    ['no messages or prompt', { model: 'm' }, /neither messages nor prompt/],
    ['a model that is not a string', { model: 3, messages: [] }, /model must be a string/],
    ['an empty model', { model: '', messages: [] }, /model must be a model name/],
    ['a model name longer than any provider gives', { model: 'm'.repeat(257), messages: [] }, /model must be a model name/],
    ['a model name a budget could not name', { model: 'gpt 4o\n', messages: [] }, /model must be a model name/],
    ['max_tokens as text', { messages: [], max_tokens: '10' }, /max_tokens must be a positive integer/],
    ['max_tokens zero', { messages: [], max_tokens: 0 }, /max_tokens/],
    ['a fractional max_completion_tokens', { messages: [], max_completion_tokens: 1.5 }, /max_completion_tokens/],
    ['n above one', { messages: [], n: 2 }, /n other than 1/],
    ['stream as text', { messages: [], stream: 'yes' }, /stream must be a boolean/],
  ])('refuses %s with a clear message', (_name, body, message) => {
    expect(() => readLlmCall(bytes(body))).toThrow(LlmCallError);
    expect(() => readLlmCall(bytes(body))).toThrow(message);
  });
});

describe('usageFromResponse', () => {
  it('reads a whole answer and the last usage chunk of a stream; nothing from an answer without usage', () => {
    expect(usageFromResponse(JSON.stringify({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }))).toEqual({ prompt: 3, completion: 4 });
    const stream = [
      `data: ${JSON.stringify({ choices: [{ delta: { content: 'a' } }], usage: null })}`,
      'data: {broken',
      `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 9, completion_tokens: 2 } })}`,
      'data: [DONE]',
      '',
    ].join('\n\n');
    expect(usageFromResponse(stream)).toEqual({ prompt: 9, completion: 2 });
    expect(usageFromResponse(`data: ${JSON.stringify({ choices: [{ delta: { content: 'a' } }] })}\n\ndata: [DONE]\n\n`)).toBeNull();
    expect(usageFromResponse('{"usage": {"prompt_tokens": -1, "completion_tokens": 2}}')).toBeNull();
    expect(usageFromResponse('')).toBeNull();
    // Responses-style names.
    expect(usageFromResponse('{"usage": {"input_tokens": 5, "output_tokens": 6}}')).toEqual({ prompt: 5, completion: 6 });
  });
});
