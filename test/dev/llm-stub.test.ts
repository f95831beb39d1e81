// The LLM stub the gateway tests stream through: OpenAI's chunk stream,
// deterministic usage (the same streamed or whole), max_tokens, and the
// record of what it reported that budget tests compare a gateway's charge with.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CANNED_ANSWER, PROMPT_TOKENS_PER_MESSAGE, startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';
import { completionChunks, readSse, sseData } from '../support/sse.js';

let stub: LlmStub;

beforeAll(async () => {
  stub = await startLlmStub();
});

afterAll(async () => {
  await stub?.close();
});

const MESSAGES = [
  { role: 'system', content: 'You answer briefly.' },
  {
    role: 'user',
    content: [
      { type: 'text', text: 'Grüße aus   Köln' },
      { type: 'image_url', image_url: { url: 'x' } },
    ],
  },
  { role: 'user', content: 'how   are\nyou today?' },
];
// Words: 3 + 3 + 4, plus the per-message overhead.
const EXPECTED_PROMPT = 10 + 3 * PROMPT_TOKENS_PER_MESSAGE;
const ANSWER_WORDS = CANNED_ANSWER.split(' ');

interface Completion {
  id: string;
  choices: { message: { content: string }; finish_reason: string }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

const json = async (res: Response) => (await res.json()) as Completion;

async function complete(body: Record<string, unknown>) {
  const res = await fetch(`${stub.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'llama-3', messages: MESSAGES, ...body }),
  });
  return res;
}

describe('LLM stub', () => {
  it('the canned answer is 64 words', () => {
    expect(ANSWER_WORDS).toHaveLength(64);
  });

  it('answers whole with the documented usage, the same every time', async () => {
    const first = await json(await complete({}));
    const second = await json(await complete({}));
    expect(first.usage).toEqual({ prompt_tokens: EXPECTED_PROMPT, completion_tokens: 64, total_tokens: EXPECTED_PROMPT + 64 });
    expect(second.usage).toEqual(first.usage);
    expect(first.choices[0]!.message.content).toBe(CANNED_ANSWER);
    expect(first.choices[0]!.finish_reason).toBe('stop');
    expect(stub.usage.at(-1)).toMatchObject({
      id: second.id,
      streamed: false,
      usageReported: true,
      promptTokens: EXPECTED_PROMPT,
      completionTokens: 64,
      tokensWritten: 64,
    });
  });

  it('streams OpenAI chunks, one word each, and the usage chunk only when asked; the usage equals the whole answer', async () => {
    const whole = await json(await complete({ max_tokens: 20 }));

    const withUsage = await complete({ max_tokens: 20, stream: true, stream_options: { include_usage: true } });
    expect(withUsage.headers.get('content-type')).toBe('text/event-stream');
    const data = sseData(await withUsage.text());
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = completionChunks(data);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0]!.id)).toBe(true);
    expect(chunks[0]!.choices[0]!.delta).toEqual({ role: 'assistant', content: '' });
    const contentChunks = chunks.filter((c) => c.choices[0]?.delta.content);
    expect(contentChunks).toHaveLength(20);
    expect(contentChunks.map((c) => c.choices[0]!.delta.content).join('')).toBe(whole.choices[0]!.message.content);
    const last = chunks.at(-1)!;
    expect(last.choices).toEqual([]);
    expect(last.usage).toEqual(whole.usage);
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(chunks.at(-2)!.choices[0]!.finish_reason).toBe('length');
    expect(stub.usage.at(-1)).toMatchObject({
      id: chunks[0]!.id,
      streamed: true,
      usageReported: true,
      completionTokens: 20,
      tokensWritten: 20,
      aborted: false,
    });

    const withoutUsage = completionChunks(sseData(await (await complete({ max_tokens: 20, stream: true })).text()));
    expect(withoutUsage.some((c) => 'usage' in c)).toBe(false);
    expect(withoutUsage.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(withoutUsage.filter((c) => c.choices[0]?.delta.content)).toHaveLength(20);
    expect(stub.usage.at(-1)).toMatchObject({ streamed: true, usageReported: false, completionTokens: 20 });
  });

  it('honours max_tokens and max_completion_tokens (which wins), never more than the answer has', async () => {
    const cut = await json(await complete({ max_tokens: 5 }));
    expect(cut.choices[0]!.message.content).toBe(ANSWER_WORDS.slice(0, 5).join(' '));
    expect(cut.usage.completion_tokens).toBe(5);
    expect(cut.choices[0]!.finish_reason).toBe('length');
    const both = await json(await complete({ max_tokens: 5, max_completion_tokens: 7 }));
    expect(both.usage.completion_tokens).toBe(7);
    const large = await json(await complete({ max_tokens: 100_000 }));
    expect(large.usage.completion_tokens).toBe(64);
    expect(large.choices[0]!.finish_reason).toBe('stop');
    expect((await complete({ max_tokens: 0 })).status).toBe(400);
    expect((await complete({ stream_options: { include_usage: true } })).status).toBe(400);
  });

  it('never counts more prompt tokens than the UTF-8 bytes of the contents plus 8 per message', async () => {
    const cases = [
      [],
      [{ role: 'user', content: '' }],
      [{ role: 'user', content: 'a b c d e f g h' }],
      [
        { role: 'user', content: '日 本 語' },
        { role: 'assistant', content: null },
      ],
      [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'x y' },
            { type: 'text', text: 'z' },
          ],
        },
      ],
    ];
    for (const messages of cases) {
      const res = await fetch(`${stub.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'm', messages }) });
      const { usage } = await json(res);
      const bytes = messages.reduce((sum, m) => {
        const content = m.content;
        const text = typeof content === 'string' ? content : Array.isArray(content) ? content.map((p) => p.text).join('') : '';
        return sum + Buffer.byteLength(text, 'utf8');
      }, 0);
      expect(usage.prompt_tokens).toBeLessThanOrEqual(bytes + 8 * messages.length);
    }
  });

  it('writes chunks one at a time, the configured delay apart, and records when', async () => {
    stub.setChunkDelay(30);
    try {
      const res = await complete({ max_tokens: 6, stream: true });
      const read = await readSse(res.body!);
      const record = stub.usage.at(-1)!;
      // role, six words, finish, [DONE]: nine chunks, eight gaps.
      expect(read.events).toHaveLength(9);
      expect(record.lastChunkAt! - record.firstChunkAt!).toBeGreaterThanOrEqual(8 * 30 - 10);
      expect(read.events[0]!.at).toBeLessThan(record.lastChunkAt!);
      expect(read.reads.length).toBeGreaterThanOrEqual(5);
      // A request may ask for its own delay.
      const quick = await readSse((await complete({ max_tokens: 6, stream: true, stub_chunk_delay_ms: 0 })).body!);
      expect(quick.events).toHaveLength(9);
      const quickRecord = stub.usage.at(-1)!;
      expect(quickRecord.lastChunkAt! - quickRecord.firstChunkAt!).toBeLessThan(8 * 30 - 10);
    } finally {
      stub.setChunkDelay(0);
    }
  });

  it('stops writing when the client goes away, and records how far it got', async () => {
    const controller = new AbortController();
    const res = await fetch(`${stub.url}/v1/chat/completions`, {
      method: 'POST',
      body: JSON.stringify({ model: 'm', messages: [], stream: true, stub_chunk_delay_ms: 40 }),
      signal: controller.signal,
    });
    const reader = res.body!.getReader();
    await reader.read();
    controller.abort();
    await new Promise((r) => setTimeout(r, 200));
    const record = stub.usage.at(-1)!;
    expect(record.aborted).toBe(true);
    expect(record.tokensWritten).toBeLessThan(record.completionTokens);
  });

  it('keeps the old call form and the 401 for keys it was told to refuse', async () => {
    const other = await startLlmStub(0, '127.0.0.1');
    try {
      other.acceptKeys(['good']);
      const refused = await fetch(`${other.url}/v1/chat/completions`, { method: 'POST', body: '{}', headers: { authorization: 'Bearer bad' } });
      expect(refused.status).toBe(401);
      expect(other.usage).toHaveLength(0);
      const ok = await fetch(`${other.url}/v1/chat/completions`, { method: 'POST', body: '{"model":"x"}', headers: { authorization: 'Bearer good' } });
      expect(ok.status).toBe(200);
      expect(other.usage).toHaveLength(1);
    } finally {
      await other.close();
    }
  });
});
