// A stub of an OpenAI-compatible LLM API, for tests and the local demo (the
// real LLM is external). It records what it received, so tests can check
// which credential reached it, and answers chat completions with a canned
// reply, whole or streamed as server-sent events the way OpenAI streams. It
// checks nothing itself unless told which keys are valid.
//
// Token counting is deterministic, so that a test can hold what a gateway
// charged against what the stub reported:
//
// - completion tokens: one per word of the canned answer, cut to
//   `max_completion_tokens` (or else `max_tokens`) when the request gives it:
//   min(limit, words in the answer). A streamed answer carries exactly one
//   word per content chunk, so it is also the number of content chunks.
// - prompt tokens: for each message, the whitespace-separated words of its
//   content (a string, or the `text` of its text parts) plus
//   PROMPT_TOKENS_PER_MESSAGE. A word is at least one UTF-8 byte, so this
//   never exceeds the UTF-8 byte length of all message contents plus 8 per
//   message, the upper bound a budget may estimate a prompt with.
//
// A streamed and a whole answer to the same request report the same usage.
// A provider that misreports is played by a request's `stub_usage`: JSON
// text written as the whole answer's `usage` member, as it is (`1e400`
// included); the stub's own bill (`usage`) is unchanged.
// A chat completion with `n` above 1 is billed n completions (whole answers
// only; the stub streams one choice). Completions, embeddings and the
// responses API are answered and billed as endpoints.ts documents.
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { answerEndpoint, type LlmStubUsage } from './endpoints.js';

export type { LlmStubUsage };

export interface LlmStubRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface LlmStubOptions {
  port?: number;
  host?: string;
  /**
   * Milliseconds between two chunks of a streamed answer (default 0). A
   * request may set its own with a `stub_chunk_delay_ms` body field.
   */
  chunkDelayMs?: number;
  /** The canned answer (default CANNED_ANSWER, 64 words); one completion token per word. */
  answer?: string;
}

export interface LlmStub {
  url: string;
  port: number;
  requests: LlmStubRequest[];
  /** One entry per call answered (200) and billed (chat, completions, embeddings, responses), in the order they were answered. */
  usage: LlmStubUsage[];
  /** Only these `Authorization: Bearer` keys are accepted (all when empty). */
  acceptKeys(keys: string[]): void;
  /** Changes the delay between chunks for later requests. */
  setChunkDelay(ms: number): void;
  close(): Promise<void>;
}

/** Added to each message's words in prompt_tokens (at most 8: see the bound above). */
export const PROMPT_TOKENS_PER_MESSAGE = 3;

/** 64 words. */
export const CANNED_ANSWER =
  'This is the LLM stub answering. It has no model behind it and says the same thing to every request, ' +
  'one word per token, so that tests can count what a gateway lets through. Streamed answers carry one ' +
  'word in each chunk and may be slowed down on purpose, which lets a test see whether the chunks reach ' +
  'the client as they are written.';

const words = (text: string): string[] => text.split(/\s+/).filter((w) => w.length > 0);

interface ChatMessage {
  content?: unknown;
}

/** The text of a message's content: a string, or the text parts of a content array. */
function messageText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return content
    .map((part) => {
      const p = part as { type?: unknown; text?: unknown } | null;
      return p && p.type === 'text' && typeof p.text === 'string' ? p.text : '';
    })
    .join(' ');
}

/** prompt_tokens as documented at the top of this file. */
export function promptTokens(messages: unknown): number {
  if (!Array.isArray(messages)) return 0;
  return messages.reduce<number>((sum, m) => sum + words(messageText((m as ChatMessage | null)?.content)).length + PROMPT_TOKENS_PER_MESSAGE, 0);
}

/** completion_tokens as documented at the top of this file; null limit = the whole answer. */
export function completionTokens(answer: string, limit: number | null): number {
  const available = words(answer).length;
  return limit === null ? available : Math.min(limit, available);
}

class BadRequest extends Error {}

interface ChatRequest {
  model: string;
  messages: unknown;
  stream: boolean;
  includeUsage: boolean;
  limit: number | null;
  delayMs: number | null;
  /** Choices asked for (`n`), each billed. */
  n: number;
  /** `stub_usage`: the usage member a whole answer reports instead of the true one, as JSON text. */
  reportedUsage: string | null;
}

function parseChatRequest(body: string): ChatRequest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new BadRequest('invalid JSON body');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new BadRequest('the body must be a JSON object');
  const req = parsed as Record<string, unknown>;
  const limitField = req.max_completion_tokens !== undefined && req.max_completion_tokens !== null ? 'max_completion_tokens' : 'max_tokens';
  const rawLimit = req[limitField];
  let limit: number | null = null;
  if (rawLimit !== undefined && rawLimit !== null) {
    if (!Number.isInteger(rawLimit) || (rawLimit as number) < 1) throw new BadRequest(`${limitField} must be an integer of at least 1`);
    limit = rawLimit as number;
  }
  const stream = req.stream === true;
  const options = req.stream_options;
  // OpenAI refuses stream_options on a request that does not stream.
  if (options !== undefined && options !== null && !stream) throw new BadRequest('stream_options is only allowed when stream is true');
  const includeUsage = typeof options === 'object' && options !== null && (options as { include_usage?: unknown }).include_usage === true;
  const n = req.n ?? 1;
  if (!Number.isSafeInteger(n) || (n as number) < 1) throw new BadRequest('n must be an integer of at least 1');
  if ((n as number) > 1 && stream) throw new BadRequest('the stub streams one choice: n above 1 is answered whole only');
  const rawDelay = req.stub_chunk_delay_ms;
  const delayMs = typeof rawDelay === 'number' && rawDelay >= 0 ? rawDelay : null;
  const reportedUsage = typeof req.stub_usage === 'string' ? req.stub_usage : null;
  return {
    model: typeof req.model === 'string' ? req.model : 'unknown',
    messages: req.messages,
    stream,
    includeUsage,
    limit,
    delayMs,
    n: n as number,
    reportedUsage,
  };
}

export async function startLlmStub(portOrOptions: number | LlmStubOptions = {}, hostArg?: string): Promise<LlmStub> {
  const options: LlmStubOptions = typeof portOrOptions === 'number' ? { port: portOrOptions } : portOrOptions;
  const port = options.port ?? 0;
  const host = hostArg ?? options.host ?? '127.0.0.1';
  const answerWords = words(options.answer ?? CANNED_ANSWER);
  if (answerWords.length === 0) throw new Error('the canned answer needs at least one word');
  let chunkDelayMs = options.chunkDelayMs ?? 0;
  const requests: LlmStubRequest[] = [];
  const usage: LlmStubUsage[] = [];
  let accepted: string[] = [];
  let completions = 0;

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const receivedAt = Date.now();
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      const send = (status: number, payload: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(payload));
      const key = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (accepted.length > 0 && (!key || !accepted.includes(key))) {
        send(401, { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' } });
        return;
      }
      const path = (req.url ?? '').split('?')[0]!;
      if (req.method === 'GET' && path.endsWith('/v1/models')) {
        send(200, {
          object: 'list',
          data: [
            { id: 'gpt-4o-mini', object: 'model' },
            { id: 'llama-3', object: 'model' },
          ],
        });
        return;
      }
      if (req.method === 'POST' && path.endsWith('/v1/chat/completions')) {
        let chat: ChatRequest;
        try {
          chat = parseChatRequest(body);
        } catch (err) {
          if (!(err instanceof BadRequest)) throw err;
          send(400, { error: { message: err.message, type: 'invalid_request_error' } });
          return;
        }
        completions++;
        const prompt = promptTokens(chat.messages);
        const completion = completionTokens(answerWords.join(' '), chat.limit) * chat.n;
        const record: LlmStubUsage = {
          id: `chatcmpl-stub-${completions}`,
          model: chat.model,
          streamed: chat.stream,
          usageReported: !chat.stream || chat.includeUsage,
          promptTokens: prompt,
          completionTokens: completion,
          totalTokens: prompt + completion,
          tokensWritten: 0,
          aborted: false,
          receivedAt,
          firstChunkAt: null,
          lastChunkAt: null,
        };
        usage.push(record);
        holdAnswer(res, record, body);
        const finishReason = chat.limit !== null && chat.limit < answerWords.length ? 'length' : 'stop';
        const created = Math.floor(receivedAt / 1000);
        if (!chat.stream) {
          const payload = {
            id: record.id,
            object: 'chat.completion',
            created,
            model: chat.model,
            choices: Array.from({ length: chat.n }, (_, index) => ({
              index,
              message: { role: 'assistant', content: answerWords.slice(0, completion / chat.n).join(' ') },
              finish_reason: finishReason,
            })),
            usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
          };
          if (chat.reportedUsage === null) send(200, payload);
          else
            res
              .writeHead(200, { 'content-type': 'application/json' })
              .end(JSON.stringify({ ...payload, usage: null }).replace(/"usage":null}$/, `"usage":${chat.reportedUsage}}`));
          record.tokensWritten = completion;
          record.firstChunkAt = record.lastChunkAt = Date.now();
          return;
        }
        void streamAnswer(res, record, {
          created,
          words: answerWords.slice(0, completion),
          finishReason,
          includeUsage: chat.includeUsage,
          delayMs: chat.delayMs ?? chunkDelayMs,
        });
        return;
      }
      const other = req.method === 'POST' ? answerEndpoint(path, body, { answerWords, nextId: () => ++completions, receivedAt }) : null;
      if (other) {
        if (other.usage) usage.push(other.usage);
        send(other.status, other.payload);
        return;
      }
      send(404, { error: { message: `no route ${req.method} ${path}`, type: 'invalid_request_error' } });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${actual}`,
    port: actual,
    requests,
    usage,
    acceptKeys(keys) {
      accepted = keys;
    },
    setChunkDelay(ms) {
      chunkDelayMs = ms;
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // A stream still being written would hold close() until its last chunk.
        server.closeAllConnections();
      }),
  };
}

/**
 * Writes an OpenAI chat.completion.chunk stream: a chunk with the role, one
 * chunk per word, a chunk with the finish reason, the usage chunk
 * (`choices: []`) when asked for, then `data: [DONE]`; each written on its
 * own, `delayMs` apart.
 */
async function streamAnswer(
  res: ServerResponse,
  record: LlmStubUsage,
  plan: { created: number; words: string[]; finishReason: string; includeUsage: boolean; delayMs: number },
): Promise<void> {
  let closed = false;
  res.once('close', () => {
    closed = true;
    if (!res.writableFinished) record.aborted = true;
  });
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const base = { id: record.id, object: 'chat.completion.chunk', created: plan.created, model: record.model };
  // With include_usage OpenAI sends `usage: null` on every chunk but the last.
  const usageField = plan.includeUsage ? { usage: null } : {};
  const chunk = (delta: Record<string, unknown>, finishReason: string | null) =>
    `data: ${JSON.stringify({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }], ...usageField })}\n\n`;

  const events: { text: string; token: boolean }[] = [{ text: chunk({ role: 'assistant', content: '' }, null), token: false }];
  plan.words.forEach((word, i) => events.push({ text: chunk({ content: i === 0 ? word : ` ${word}` }, null), token: true }));
  events.push({ text: chunk({}, plan.finishReason), token: false });
  if (plan.includeUsage) {
    const usage = { prompt_tokens: record.promptTokens, completion_tokens: record.completionTokens, total_tokens: record.totalTokens };
    events.push({ text: `data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`, token: false });
  }
  events.push({ text: 'data: [DONE]\n\n', token: false });

  for (const [i, event] of events.entries()) {
    if (i > 0 && plan.delayMs > 0) await new Promise((r) => setTimeout(r, plan.delayMs));
    if (closed) return;
    res.write(event.text);
    const now = Date.now();
    record.firstChunkAt ??= now;
    record.lastChunkAt = now;
    if (event.token) record.tokensWritten++;
  }
  res.end();
}

/**
 * A provider runs (and bills) a call whether or not its client stays for
 * the answer: a request's `stub_answer_delay_ms` holds the answer back that
 * long, the call recorded (billed) already; a client that leaves meanwhile
 * marks it aborted and gets nothing.
 */
function holdAnswer(res: ServerResponse, record: LlmStubUsage, body: string): void {
  const delay = (JSON.parse(body) as { stub_answer_delay_ms?: unknown }).stub_answer_delay_ms;
  if (typeof delay !== 'number' || !(delay > 0)) return;
  // What the answer writes meanwhile waits, in order.
  const held: (() => void)[] = [];
  const hold = res as unknown as Record<'writeHead' | 'write' | 'end', (...args: unknown[]) => unknown>;
  const originals = { writeHead: hold.writeHead.bind(res), write: hold.write.bind(res), end: hold.end.bind(res) };
  for (const method of ['writeHead', 'write', 'end'] as const) {
    hold[method] = (...args: unknown[]) => {
      held.push(() => originals[method](...args));
      return method === 'writeHead' ? res : true;
    };
  }
  res.once('close', () => {
    if (!res.writableFinished) record.aborted = true;
  });
  setTimeout(() => {
    Object.assign(hold, originals);
    if (res.destroyed) return;
    for (const write of held) write();
  }, delay);
}
