// Reading an LLM call's worst case from its body, and its usage from the answer.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IMAGE_TOKENS_BOUND, LLM_ENDPOINTS, LlmCallError, callCost, readLlmCall, usageFromResponse, type LlmEndpoint } from '../../budget/call.js';
import { promptTokens, startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';

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
    const call = readLlmCall(
      bytes({ model: 'm', max_tokens: 5, max_completion_tokens: 7, stream: true, stream_options: { include_usage: true }, messages: [] }),
    );
    expect(call).toMatchObject({ maxTokens: 7, stream: true, includeUsage: true, promptTokensBound: 8 });
    // An upstream that honours max_tokens over max_completion_tokens could answer 10,000.
    expect(readLlmCall(bytes({ max_tokens: 10_000, max_completion_tokens: 10, messages: [] })).maxTokens).toBe(10_000);
    expect(readLlmCall(bytes({ model: 'm', prompt: 'abc' }), '/v1/completions').promptTokensBound).toBe(3 + 8);
    expect(readLlmCall(bytes({ messages: [] })).maxTokens).toBeNull();
  });

  it("counts each image part at the bound of one image, whatever its URL's length", () => {
    const image = { type: 'image_url', image_url: { url: 'https://x.example/a.png' } };
    const withImages = readLlmCall(bytes({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }, image, image] }] }));
    const withoutImages = readLlmCall(bytes({ messages: [{ role: 'user', content: [{ type: 'text', text: 'what is this?' }] }] }));
    expect(withImages.promptTokensBound - withoutImages.promptTokensBound).toBe(
      2 * (IMAGE_TOKENS_BOUND + Buffer.byteLength('image_urlhttps://x.example/a.png')),
    );
  });

  it.each([
    ['not JSON', '{"model":', /not JSON/],
    ['an array', [], /JSON object/],
    ['no messages', { model: 'm', prompt: 'a chat call has messages' }, /no messages/],
    ['a model that is not a string', { model: 3, messages: [] }, /model must be a string/],
    ['an empty model', { model: '', messages: [] }, /model must be a model name/],
    ['a model name longer than any provider gives', { model: 'm'.repeat(257), messages: [] }, /model must be a model name/],
    ['a model name a budget could not name', { model: 'gpt 4o\n', messages: [] }, /model must be a model name/],
    ['max_tokens as text', { messages: [], max_tokens: '10' }, /max_tokens must be a positive integer/],
    ['max_tokens zero', { messages: [], max_tokens: 0 }, /max_tokens/],
    ['a fractional max_completion_tokens', { messages: [], max_completion_tokens: 1.5 }, /max_completion_tokens/],
    ['n zero', { messages: [], n: 0 }, /n must be a positive integer/],
    ['stream as text', { messages: [], stream: 'yes' }, /stream must be a boolean/],
  ])('refuses %s with a clear message', (_name, body, message) => {
    expect(() => readLlmCall(bytes(body))).toThrow(LlmCallError);
    expect(() => readLlmCall(bytes(body))).toThrow(message);
  });
});

describe('pricing every request shape the upstream bills', () => {
  const cost = (endpoint: LlmEndpoint, body: unknown, maxTokens?: number) => {
    const call = readLlmCall(bytes(body), endpoint);
    return callCost(call, maxTokens ?? call.maxTokens ?? 0);
  };

  it('a prompt array is one completion per prompt, each up to max_tokens (20 prompts x 500 was admitted as one)', () => {
    const prompt = Array.from({ length: 20 }, (_, i) => `prompt ${i}`);
    const call = readLlmCall(bytes({ model: 'm', prompt, max_tokens: 500 }), '/v1/completions');
    expect(call).toMatchObject({ completions: 20, maxTokens: 500, maxTokensField: 'max_tokens' });
    const promptBytes = prompt.reduce((n, p) => n + Buffer.byteLength(p), 0);
    expect(call.promptTokensBound).toBe(promptBytes + 20 * 8);
    // What the report measured the real API billing for it: 10,020.
    expect(callCost(call, 500)).toBeGreaterThanOrEqual(10_020);
  });

  it('best_of candidates are billed, per prompt, whatever n returns', () => {
    const call = readLlmCall(bytes({ model: 'm', prompt: 'hi', max_tokens: 500, best_of: 8 }), '/v1/completions');
    expect(call.completions).toBe(8);
    // Measured: 4,001 billed.
    expect(callCost(call, 500)).toBeGreaterThanOrEqual(4_001);
    expect(readLlmCall(bytes({ prompt: ['a', 'b', 'c'], n: 2, best_of: 5 }), '/v1/completions').completions).toBe(15);
    // best_of below n is refused upstream; n bounds it all the same.
    expect(readLlmCall(bytes({ prompt: 'a', n: 4, best_of: 2 }), '/v1/completions').completions).toBe(4);
    expect(readLlmCall(bytes({ prompt: 'a', n: 3 }), '/v1/completions').completions).toBe(3);
    // A chat call's n completions, each up to the limit.
    expect(cost('/v1/chat/completions', { messages: [], n: 3, max_tokens: 100 })).toBe(8 + 300);
  });

  it('a token id is one token; an array of token-id arrays is several prompts', () => {
    const ids = Array.from({ length: 2_500 }, (_, i) => i + 1000);
    const call = readLlmCall(bytes({ prompt: ids, max_tokens: 10 }), '/v1/completions');
    // Measured: 2,510 billed (and 0 bytes of text in it).
    expect(call.promptTokensBound).toBe(2_500 + 8);
    expect(callCost(call, 10)).toBeGreaterThanOrEqual(2_510);
    const several = readLlmCall(bytes({ prompt: [ids.slice(0, 100), ids.slice(0, 50), []], max_tokens: 10 }), '/v1/completions');
    expect(several).toMatchObject({ completions: 3, promptTokensBound: 150 + 3 * 8 });
    // The suffix goes with every prompt.
    expect(readLlmCall(bytes({ prompt: ['a', 'b'], suffix: 'xyz' }), '/v1/completions').promptTokensBound).toBe(2 + 2 * 8 + 2 * 3);
  });

  it('embeddings: every input counts, nothing is generated, no completion limit is needed', () => {
    for (const [input, tokens] of [
      ['héllo', Buffer.byteLength('héllo') + 8],
      [['one', 'three'], 3 + 5 + 2 * 8],
      [[5, 6, 7], 3 + 8],
      [[[5, 6], [7], [8, 9, 10]], 6 + 3 * 8],
    ] as const) {
      const call = readLlmCall(bytes({ model: 'text-embedding-3-small', input }), '/v1/embeddings');
      expect(call).toMatchObject({ completions: 0, maxTokens: null, maxTokensField: null, promptTokensBound: tokens, stream: false });
      expect(callCost(call, 1_000)).toBe(tokens);
    }
  });

  it('responses: input, instructions and function tools count; max_output_tokens is the limit; a stream needs no usage option', () => {
    const input = [
      {
        role: 'user',
        content: [
          { type: 'input_text', text: 'what is in it?' },
          { type: 'input_image', image_url: 'https://x.example/a.png' },
        ],
      },
      { type: 'function_call', call_id: 'c1', name: 'f', arguments: '{}' },
      { type: 'function_call_output', call_id: 'c1', output: 'forty-two' },
    ];
    const tools = [{ type: 'function', name: 'f', parameters: { type: 'object' } }];
    const call = readLlmCall(bytes({ model: 'm', input, instructions: 'Be brief.', tools, max_output_tokens: 50, stream: true }), '/v1/responses');
    const text = Buffer.byteLength(
      'userinput_textwhat is in it?input_imagehttps://x.example/a.png' +
        'function_callc1f{}' +
        'function_call_outputc1forty-two' +
        'Be brief.' +
        'functionfobject',
    );
    expect(call).toMatchObject({ completions: 1, maxTokens: 50, maxTokensField: 'max_output_tokens', stream: true, usageNeedsOption: false });
    expect(call.promptTokensBound).toBe(text + IMAGE_TOKENS_BOUND + 3 * 8 + 8);
    expect(readLlmCall(bytes({ input: 'hi' }), '/v1/responses')).toMatchObject({ promptTokensBound: 2 + 16, maxTokens: null });
    // A chat call's max_tokens is not a responses limit.
    expect(readLlmCall(bytes({ input: 'hi', max_tokens: 5 }), '/v1/responses').maxTokens).toBeNull();
  });

  it("a chat call's predicted output counts on top of its limit (rejected predicted tokens are billed)", () => {
    const call = readLlmCall(bytes({ messages: [], max_tokens: 10, prediction: { type: 'content', content: 'abcdef' } }));
    expect(call.extraTokensBound).toBe(Buffer.byteLength('contentabcdef'));
    expect(callCost(call, 10)).toBe(8 + 10 + 13);
  });

  it.each([
    [
      '/v1/chat/completions',
      {
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'hi' },
              { type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } },
            ],
          },
        ],
      },
      '/messages/0/content/1/type',
    ],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'file', file: { file_id: 'file-1' } }] }] }, '/messages/0/content/0/type'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: ['bare text'] }] }, '/messages/0/content/0/type'],
    [
      '/v1/chat/completions',
      {
        messages: [
          { role: 'user', content: 'hi' },
          { role: 'assistant', audio: { id: 'audio_1' } },
        ],
      },
      '/messages/1/audio',
    ],
    ['/v1/chat/completions', { messages: ['hi'] }, '/messages/0'],
    ['/v1/chat/completions', { messages: [], audio: { voice: 'alloy', format: 'wav' } }, '/audio'],
    ['/v1/chat/completions', { messages: [], modalities: ['text', 'audio'] }, '/modalities'],
    ['/v1/chat/completions', { messages: [], web_search_options: {} }, '/web_search_options'],
    ['/v1/chat/completions', { messages: 'hi' }, '/messages'],
    ['/v1/completions', { prompt: ['a', 5] }, '/prompt/1'],
    ['/v1/completions', { prompt: [1, 2, 2.5] }, '/prompt/2'],
    ['/v1/completions', { prompt: [[1], [-1]] }, '/prompt/1/0'],
    ['/v1/completions', { prompt: [[1], 'a'] }, '/prompt/1'],
    ['/v1/completions', { prompt: [] }, '/prompt'],
    ['/v1/completions', { prompt: { text: 'a' } }, '/prompt'],
    ['/v1/completions', { messages: [] }, '/prompt'],
    ['/v1/completions', { prompt: 'a', best_of: 0 }, '/best_of'],
    ['/v1/completions', { prompt: 'a', n: 1.5 }, '/n'],
    ['/v1/completions', { prompt: 'a', suffix: 3 }, '/suffix'],
    ['/v1/completions', { prompt: 'a', max_tokens: 2 ** 60 }, '/max_tokens'],
    ['/v1/embeddings', { model: 'e' }, '/input'],
    ['/v1/embeddings', { input: [null] }, '/input/0'],
    ['/v1/responses', { input: 'hi', previous_response_id: 'resp_1' }, '/previous_response_id'],
    ['/v1/responses', { input: 'hi', conversation: 'conv_1' }, '/conversation'],
    ['/v1/responses', { input: 'hi', prompt: { id: 'pmpt_1' } }, '/prompt'],
    ['/v1/responses', { input: 'hi', tools: [{ type: 'function', name: 'f' }, { type: 'web_search' }] }, '/tools/1/type'],
    [
      '/v1/responses',
      {
        input: [
          {
            role: 'user',
            content: [
              { type: 'input_text', text: 'read' },
              { type: 'input_file', file_id: 'file-1' },
            ],
          },
        ],
      },
      '/input/0/content/1/type',
    ],
    [
      '/v1/responses',
      {
        input: [
          { role: 'user', content: 'hi' },
          { type: 'item_reference', id: 'msg_1' },
        ],
      },
      '/input/1/type',
    ],
    ['/v1/responses', { input: [{ type: 'function_call_output', call_id: 'c', output: [{ type: 'input_file', file_id: 'f' }] }] }, '/input/0/output/0/type'],
    ['/v1/responses', { instructions: 'only instructions' }, '/input'],
    ['/v1/responses', { input: 'hi', instructions: ['a'] }, '/instructions'],
    ['/v1/responses', { input: 'hi', max_output_tokens: 0 }, '/max_output_tokens'],
    ['/v1/responses', { input: 'hi', model: 'a b' }, '/model'],
  ] as const)('%s refuses %j at %s', (endpoint, body, pointer) => {
    let error: unknown;
    try {
      readLlmCall(bytes(body), endpoint);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(LlmCallError);
    expect((error as LlmCallError).pointer).toBe(pointer);
  });

  it('a body that is not an object is refused as a whole', () => {
    for (const endpoint of LLM_ENDPOINTS) {
      expect(() => readLlmCall(bytes('[1]'), endpoint)).toThrow(expect.objectContaining({ pointer: '' }));
      expect(() => readLlmCall(bytes('{"x":'), endpoint)).toThrow(expect.objectContaining({ pointer: '', message: 'the request body is not JSON' }));
    }
  });
});

describe('what the LLM stub bills never exceeds the reservation, for any shape the gateway admits', () => {
  let stub: LlmStub;
  // Long enough that every completion runs to its limit.
  const answer = Array.from({ length: 3_000 }, (_, i) => `w${i}`).join(' ');
  beforeAll(async () => {
    stub = await startLlmStub({ answer });
  });
  afterAll(async () => {
    await stub?.close();
  });

  // A small deterministic generator (mulberry32), so a failure can be replayed.
  function random(seed: number) {
    let a = seed;
    return () => {
      a = (a + 0x6d2b79f5) | 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function shapes(rand: () => number): { endpoint: LlmEndpoint; body: Record<string, unknown> } {
    const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
    const text = () => Array.from({ length: int(0, 12) }, () => ['a', 'word', 'héllo', '用户', 'x y', '🙂'][int(0, 5)]).join(rand() < 0.5 ? ' ' : '');
    const ids = () => Array.from({ length: int(0, 40) }, () => int(0, 100_000));
    const prompts = () => {
      switch (int(0, 3)) {
        case 0:
          return text();
        case 1:
          return Array.from({ length: int(1, 6) }, text);
        case 2:
          return [int(0, 9), ...ids()];
        default:
          return Array.from({ length: int(1, 5) }, ids);
      }
    };
    const maybe = (value: unknown) => (rand() < 0.5 ? value : undefined);
    switch (int(0, 3)) {
      case 0:
        return {
          endpoint: '/v1/chat/completions',
          body: {
            model: 'm',
            messages: Array.from({ length: int(0, 4) }, () => ({ role: 'user', content: rand() < 0.5 ? text() : [{ type: 'text', text: text() }] })),
            max_tokens: int(1, 40),
            n: maybe(int(1, 4)),
          },
        };
      case 1: {
        const n = int(1, 3);
        return {
          endpoint: '/v1/completions',
          body: { model: 'm', prompt: prompts(), max_tokens: maybe(int(1, 40)) ?? 16, n, best_of: maybe(int(n, 6)), suffix: maybe(text()) },
        };
      }
      case 2:
        return { endpoint: '/v1/embeddings', body: { model: 'e', input: prompts() } };
      default:
        return {
          endpoint: '/v1/responses',
          body: {
            model: 'm',
            input: rand() < 0.5 ? text() : Array.from({ length: int(1, 3) }, () => ({ role: 'user', content: [{ type: 'input_text', text: text() }] })),
            instructions: maybe(text()),
            max_output_tokens: int(1, 40),
          },
        };
    }
  }

  it('300 generated calls to the four endpoints: billed <= reserved, each', async () => {
    const rand = random(20_240_601);
    for (let i = 0; i < 300; i++) {
      const { endpoint, body } = shapes(rand);
      const sent = JSON.stringify(body);
      const call = readLlmCall(bytes(sent), endpoint);
      const reserved = callCost(call, call.maxTokens ?? 0);
      const before = stub.usage.length;
      const res = await fetch(`${stub.url}${endpoint}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: sent });
      expect(res.status, `${endpoint} ${sent}: ${await res.text()}`).toBe(200);
      const billed = stub.usage[before]!;
      expect(billed.totalTokens, `${endpoint} ${sent}`).toBeLessThanOrEqual(reserved);
      // The completion side is exact: every completion the stub generated ran to its limit.
      if (call.maxTokens !== null) expect(billed.completionTokens).toBe(call.completions * call.maxTokens);
    }
  });
});

describe('usageFromResponse', () => {
  it('reads a whole answer and the last usage chunk of a stream; nothing from an answer without usage', () => {
    expect(usageFromResponse(JSON.stringify({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }))).toEqual({
      prompt: 3,
      completion: 4,
    });
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
