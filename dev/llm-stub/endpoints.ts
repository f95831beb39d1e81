// The LLM stub's endpoints besides chat completions, billed the way OpenAI's
// API documents them, deterministically (the same rules as chat: a word of
// text is one token, a token id is one token, one completion token per word
// of the canned answer, cut at the request's limit):
//
// - POST /v1/completions: `prompt` is a string, an array of strings, an
//   array of token ids (one prompt) or an array of token-id arrays (one
//   prompt each). Each prompt gets `n` completions back, and `best_of`
//   candidates (at least `n`, default `n`) are generated and billed:
//   completion_tokens = prompts x best_of x min(max_tokens, answer words),
//   max_tokens 16 when absent (OpenAI's default). prompt_tokens = the
//   prompts' tokens, plus the words of `suffix` once per prompt.
// - POST /v1/embeddings: `input` in the same four shapes; prompt_tokens are
//   its tokens, no completion.
// - POST /v1/responses: `input` is a string or an array of items (messages,
//   function calls and their outputs: the words of their text plus
//   TOKENS_PER_ITEM each), plus the words of `instructions`; output_tokens =
//   min(max_output_tokens, answer words).
//
// These answer whole: a request with `stream: true` is refused with 400 (and
// billed nothing), as is one that continues a stored response (the stub
// stores none). A refused request is never billed.
/** The usage of one chat completion the stub answered. */
export interface LlmStubUsage {
  /** The completion's `id`, as the client sees it in the answer or in every chunk. */
  id: string;
  model: string;
  streamed: boolean;
  /** Whether the answer carried `usage`: always when whole, with `stream_options.include_usage` when streamed. */
  usageReported: boolean;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Content chunks written (streamed), or completionTokens (whole); fewer when the client went away mid-stream. */
  tokensWritten: number;
  /** The client closed the connection before the answer was complete. */
  aborted: boolean;
  /** Date.now() when the request was read, when the first and the last chunk were written (whole: the one write). */
  receivedAt: number;
  firstChunkAt: number | null;
  lastChunkAt: number | null;
}

/** Added to each responses input item's words (a chat message's PROMPT_TOKENS_PER_MESSAGE). */
export const TOKENS_PER_ITEM = 3;
/** OpenAI's max_tokens for a completion that gives none. */
export const COMPLETION_DEFAULT_MAX_TOKENS = 16;

export class StubBadRequest extends Error {}

export interface StubAnswer {
  status: number;
  payload: unknown;
  /** What the call billed (null: refused, nothing billed). */
  usage: LlmStubUsage | null;
}

export interface StubContext {
  answerWords: string[];
  /** The next call's number, for its id. */
  nextId(): number;
  receivedAt: number;
}

const words = (text: string): string[] => text.split(/\s+/).filter((w) => w.length > 0);
const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isTokenId = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;

/** The tokens of each prompt (or embedding input), as documented above. */
export function promptList(value: unknown, field: string): number[] {
  if (typeof value === 'string') return [words(value).length];
  if (!Array.isArray(value) || value.length === 0) throw new StubBadRequest(`'${field}' must be a non-empty string or array`);
  if (value.every(isTokenId)) return [value.length];
  if (value.every((item) => typeof item === 'string')) return value.map((item: string) => words(item).length);
  if (value.every((item) => Array.isArray(item) && item.every(isTokenId))) return value.map((item: unknown[]) => item.length);
  throw new StubBadRequest(`'${field}' must be a string, an array of strings, an array of token ids or an array of token-id arrays`);
}

function optionalPositive(req: Record<string, unknown>, field: string): number | null {
  const value = req[field];
  if (value === undefined || value === null) return null;
  if (!Number.isSafeInteger(value) || (value as number) < 1) throw new StubBadRequest(`${field} must be an integer of at least 1`);
  return value as number;
}

/** Words of a responses item's text: a string, or the text of its parts. */
function itemText(value: unknown): string {
  if (typeof value === 'string') return value;
  if (!Array.isArray(value)) return '';
  return value.map((part) => (isRecord(part) && typeof part.text === 'string' ? part.text : '')).join(' ');
}

/** input_tokens of a responses request, as documented above. */
export function responsesInputTokens(input: unknown, instructions: unknown): number {
  const extra = typeof instructions === 'string' ? words(instructions).length : 0;
  if (typeof input === 'string') return words(input).length + extra;
  if (!Array.isArray(input)) throw new StubBadRequest("'input' must be a string or an array of input items");
  return input.reduce<number>((sum, item) => {
    if (!isRecord(item)) throw new StubBadRequest("'input' items must be objects");
    const text = item.type === 'function_call' ? item.arguments : item.type === 'function_call_output' ? item.output : item.content;
    return sum + words(itemText(text)).length + TOKENS_PER_ITEM;
  }, extra);
}

function usageRecord(id: string, model: string, prompt: number, completion: number, receivedAt: number): LlmStubUsage {
  const now = Date.now();
  return {
    id,
    model,
    streamed: false,
    usageReported: true,
    promptTokens: prompt,
    completionTokens: completion,
    totalTokens: prompt + completion,
    tokensWritten: completion,
    aborted: false,
    receivedAt,
    firstChunkAt: now,
    lastChunkAt: now,
  };
}

function completion(req: Record<string, unknown>, model: string, ctx: StubContext): StubAnswer {
  const prompts = promptList(req.prompt, 'prompt');
  const limit = optionalPositive(req, 'max_tokens') ?? COMPLETION_DEFAULT_MAX_TOKENS;
  const n = optionalPositive(req, 'n') ?? 1;
  const bestOf = optionalPositive(req, 'best_of') ?? n;
  if (bestOf < n) throw new StubBadRequest('best_of must be greater than or equal to n');
  if (req.suffix !== undefined && req.suffix !== null && typeof req.suffix !== 'string') throw new StubBadRequest('suffix must be a string');
  const suffix = typeof req.suffix === 'string' ? words(req.suffix).length : 0;
  const each = Math.min(limit, ctx.answerWords.length);
  const text = ctx.answerWords.slice(0, each).join(' ');
  const finishReason = each < ctx.answerWords.length ? 'length' : 'stop';
  const promptTokens = prompts.reduce((sum, tokens) => sum + tokens + suffix, 0);
  const completionTokens = prompts.length * bestOf * each;
  const id = `cmpl-stub-${ctx.nextId()}`;
  const choices = prompts.flatMap((_, p) => Array.from({ length: n }, (__, k) => ({ text, index: p * n + k, logprobs: null, finish_reason: finishReason })));
  return {
    status: 200,
    payload: {
      id,
      object: 'text_completion',
      created: Math.floor(ctx.receivedAt / 1000),
      model,
      choices,
      usage: { prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens },
    },
    usage: usageRecord(id, model, promptTokens, completionTokens, ctx.receivedAt),
  };
}

function embedding(req: Record<string, unknown>, model: string, ctx: StubContext): StubAnswer {
  const inputs = promptList(req.input, 'input');
  const promptTokens = inputs.reduce((sum, tokens) => sum + tokens, 0);
  const id = `embd-stub-${ctx.nextId()}`;
  return {
    status: 200,
    payload: {
      object: 'list',
      data: inputs.map((tokens, index) => ({ object: 'embedding', index, embedding: [tokens, index, 0.5] })),
      model,
      usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
    },
    usage: usageRecord(id, model, promptTokens, 0, ctx.receivedAt),
  };
}

function response(req: Record<string, unknown>, model: string, ctx: StubContext): StubAnswer {
  if (req.previous_response_id !== undefined && req.previous_response_id !== null) throw new StubBadRequest('the stub stores no responses to continue');
  const inputTokens = responsesInputTokens(req.input, req.instructions);
  const limit = optionalPositive(req, 'max_output_tokens');
  const outputTokens = limit === null ? ctx.answerWords.length : Math.min(limit, ctx.answerWords.length);
  const cut = outputTokens < ctx.answerWords.length;
  const id = `resp-stub-${ctx.nextId()}`;
  return {
    status: 200,
    payload: {
      id,
      object: 'response',
      created_at: Math.floor(ctx.receivedAt / 1000),
      status: cut ? 'incomplete' : 'completed',
      incomplete_details: cut ? { reason: 'max_output_tokens' } : null,
      model,
      output: [
        {
          type: 'message',
          id: `msg-${id}`,
          status: cut ? 'incomplete' : 'completed',
          role: 'assistant',
          content: [{ type: 'output_text', text: ctx.answerWords.slice(0, outputTokens).join(' '), annotations: [] }],
        },
      ],
      usage: {
        input_tokens: inputTokens,
        input_tokens_details: { cached_tokens: 0 },
        output_tokens: outputTokens,
        output_tokens_details: { reasoning_tokens: 0 },
        total_tokens: inputTokens + outputTokens,
      },
    },
    usage: usageRecord(id, model, inputTokens, outputTokens, ctx.receivedAt),
  };
}

const ENDPOINTS: Record<string, (req: Record<string, unknown>, model: string, ctx: StubContext) => StubAnswer> = {
  '/v1/completions': completion,
  '/v1/embeddings': embedding,
  '/v1/responses': response,
};

/** The answer to a POST to one of these endpoints (null for any other path). */
export function answerEndpoint(path: string, body: string, ctx: StubContext): StubAnswer | null {
  const endpoint = Object.keys(ENDPOINTS).find((e) => path.endsWith(e));
  if (!endpoint) return null;
  try {
    let req: unknown;
    try {
      req = JSON.parse(body);
    } catch {
      throw new StubBadRequest('invalid JSON body');
    }
    if (!isRecord(req)) throw new StubBadRequest('the body must be a JSON object');
    if (req.stream === true) throw new StubBadRequest(`the stub does not stream ${endpoint}`);
    return ENDPOINTS[endpoint]!(req, typeof req.model === 'string' ? req.model : 'unknown', ctx);
  } catch (err) {
    if (!(err instanceof StubBadRequest)) throw err;
    return { status: 400, payload: { error: { message: err.message, type: 'invalid_request_error' } }, usage: null };
  }
}
