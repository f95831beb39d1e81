// What an OpenAI-compatible call can cost at most, read from its request
// body before it goes upstream: the model, the completion limit, whether it
// streams, how many completions the upstream may generate and bill, and an
// upper bound on its prompt tokens. Each endpoint a budgeted route may serve
// (LLM_ENDPOINTS) is priced the way the upstream bills it; a part of a body
// whose tokens cannot be bounded from the body (audio, files, stored
// conversations, server-side tools) is refused, never passed through
// unpriced.
//
// The prompt bound: byte-level BPE tokenizers (GPT, Llama, Mistral) never
// make a token of less than one byte, so a text of n UTF-8 bytes is at most
// n tokens; a token id is one token. Each chat message or responses input
// item adds a few formatting tokens (OpenAI documents 3-4), counted as 8,
// plus 8 for the reply's priming; each prompt of a completion or input of an
// embedding counts 8 more too (special tokens a server may add). The bound is
// loose (real prompts run about 4 bytes a token) but never low, which is
// what a reservation needs: the call is settled to its actual usage
// afterwards. Images are not text: each image part counts
// IMAGE_TOKENS_BOUND, above what the providers document for one image at its
// largest (OpenAI's patch-based models: 1,536 patches x 1.62 = 2,489; tiled:
// 1,105; Anthropic: about 1,600).
//
// The completion bound: each completion is cut at the call's limit, and the
// upstream generates (and bills) `completions` of them: a chat call's `n`;
// for a completion, one per prompt (a `prompt` array holds several) times
// the larger of `n` and `best_of` (candidates generated server-side and
// billed, though only `n` are returned); none for an embedding. A chat
// call's predicted output is billed as completion tokens where the model
// rejects it, so its bytes count on top of the limit.

import { usageOfAnswer } from './answer-usage.js';
import { isModelName } from './definition.js';

/** The endpoints a budgeted route can price, by their path on the upstream. */
export const LLM_ENDPOINTS = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v1/responses'] as const;
export type LlmEndpoint = (typeof LLM_ENDPOINTS)[number];

export interface LlmCall {
  endpoint: LlmEndpoint;
  /** The model asked for, or null when the body names none. */
  model: string | null;
  /** The completion limit the call gives (max_tokens / max_completion_tokens, max_output_tokens for responses), or null when absent. */
  maxTokens: number | null;
  /** The field a default completion limit is sent upstream in; null when the endpoint generates nothing (embeddings). */
  maxTokensField: 'max_tokens' | 'max_output_tokens' | null;
  /** How many completions of up to the limit each the upstream may generate and bill (0 for embeddings). */
  completions: number;
  stream: boolean;
  /** Whether the client itself asked for the final usage chunk. */
  includeUsage: boolean;
  /** Whether a stream carries its usage only when `stream_options.include_usage` asks for it (chat and completions; a responses stream always ends with it). */
  usageNeedsOption: boolean;
  /** Upper bound on the prompt's tokens. */
  promptTokensBound: number;
  /** Tokens billed beyond completions x limit: a chat call's predicted output. */
  extraTokensBound: number;
  /** The parsed body, for rewriting. */
  body: Record<string, unknown>;
}

export class LlmCallError extends Error {
  override readonly name = 'LlmCallError';

  /** `pointer`: the JSON pointer (RFC 6901) of the member at fault, '' for the whole body. */
  constructor(
    message: string,
    readonly pointer = '',
  ) {
    super(message);
  }
}

const MESSAGE_OVERHEAD = 8;
const REPLY_PRIMING = 8;
/** Per prompt of a completion and per input of an embedding. */
const PROMPT_OVERHEAD = 8;
export const IMAGE_TOKENS_BOUND = 4_096;

/** Content parts whose tokens are bounded: text by its bytes, an image by IMAGE_TOKENS_BOUND. Anything else (audio, files, video) is refused. */
const CHAT_PARTS = new Set(['text', 'image_url', 'refusal']);
const RESPONSES_PARTS = new Set(['input_text', 'output_text', 'refusal', 'input_image']);
/** Responses input items that carry their own text; others (item references, server-side tool calls) pull in what the body does not hold. */
const RESPONSES_ITEMS = new Set(['message', 'function_call', 'function_call_output']);

const utf8Length = (text: string) => Buffer.byteLength(text, 'utf8');
const escapePointer = (key: string) => key.replaceAll('~', '~0').replaceAll('/', '~1');

/** Bytes of every string in a value (message content may be text or an array of parts), and a bound per image part. */
function textBytes(value: unknown): number {
  if (typeof value === 'string') return utf8Length(value);
  if (Array.isArray(value)) return value.reduce((n: number, item) => n + textBytes(item), 0);
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    const image = record.type === 'image_url' || record.type === 'image' || record.type === 'input_image' ? IMAGE_TOKENS_BOUND : 0;
    return image + Object.values(record).reduce((n: number, item) => n + textBytes(item), 0);
  }
  return 0;
}

function positiveInteger(value: unknown, field: string): number | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) throw new LlmCallError(`${field} must be a positive integer`, `/${field}`);
  return value;
}

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isTokenId = (value: unknown) => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;

/** Refuses a member whose tokens the body does not bound. */
function refuseMember(record: Record<string, unknown>, field: string, why: string, pointer = ''): void {
  if (record[field] !== undefined && record[field] !== null)
    throw new LlmCallError(`${field} is not allowed on a budgeted route: ${why}`, `${pointer}/${escapePointer(field)}`);
}

/** Each content part must be of a type whose tokens are bounded. */
function checkParts(content: unknown, allowed: Set<string>, pointer: string): void {
  if (!Array.isArray(content)) return;
  content.forEach((part, j) => {
    const type = isRecord(part) ? part.type : undefined;
    if (typeof type !== 'string' || !allowed.has(type)) {
      throw new LlmCallError(
        `a content part of type ${JSON.stringify(type ?? null)} is not allowed on a budgeted route: its tokens cannot be bounded from the request (allowed: ${[...allowed].join(', ')})`,
        `${pointer}/${j}/type`,
      );
    }
  });
}

/**
 * The prompts of a completion or the inputs of an embedding: a string, an
 * array of strings, an array of token ids (one prompt), or an array of
 * token-id arrays. How many there are, and a bound on all their tokens.
 */
function readPrompts(value: unknown, field: string): { count: number; tokens: number } {
  const pointer = `/${field}`;
  if (typeof value === 'string') return { count: 1, tokens: utf8Length(value) + PROMPT_OVERHEAD };
  const shape = `${field} must be a string, an array of strings, an array of token ids or an array of token-id arrays`;
  if (!Array.isArray(value)) throw new LlmCallError(value === undefined ? `the request has no ${field}` : shape, pointer);
  if (value.length === 0) throw new LlmCallError(`${field} must not be empty`, pointer);
  if (typeof value[0] === 'number') {
    const bad = value.findIndex((id) => !isTokenId(id));
    if (bad >= 0) throw new LlmCallError(`${field}[${bad}] must be a token id (an integer from 0)`, `${pointer}/${bad}`);
    return { count: 1, tokens: value.length + PROMPT_OVERHEAD };
  }
  let tokens = 0;
  value.forEach((item, i) => {
    if (typeof value[0] === 'string') {
      if (typeof item !== 'string') throw new LlmCallError(shape, `${pointer}/${i}`);
      tokens += utf8Length(item) + PROMPT_OVERHEAD;
      return;
    }
    if (!Array.isArray(item)) throw new LlmCallError(shape, `${pointer}/${i}`);
    const bad = item.findIndex((id) => !isTokenId(id));
    if (bad >= 0) throw new LlmCallError(`${field}[${i}][${bad}] must be a token id (an integer from 0)`, `${pointer}/${i}/${bad}`);
    tokens += item.length + PROMPT_OVERHEAD;
  });
  return { count: value.length, tokens };
}

type Priced = Pick<LlmCall, 'maxTokens' | 'maxTokensField' | 'completions' | 'promptTokensBound' | 'extraTokensBound'>;

function priceChat(record: Record<string, unknown>): Priced {
  if (!Array.isArray(record.messages))
    throw new LlmCallError(record.messages === undefined ? 'the request has no messages' : 'messages must be an array', '/messages');
  refuseMember(record, 'audio', 'audio output is billed by its length, which no limit in the request bounds');
  if (Array.isArray(record.modalities) && record.modalities.includes('audio'))
    throw new LlmCallError('audio output is not allowed on a budgeted route', '/modalities');
  refuseMember(record, 'web_search_options', 'the search results it adds to the prompt are not in the request');
  record.messages.forEach((message, i) => {
    if (!isRecord(message)) throw new LlmCallError('a message must be an object', `/messages/${i}`);
    // An assistant message's `audio` names an earlier audio answer by id: its tokens are not in the request.
    refuseMember(message, 'audio', 'it refers to audio the request does not hold', `/messages/${i}`);
    checkParts(message.content, CHAT_PARTS, `/messages/${i}/content`);
  });
  // Every field of a message counts (role, name, content, tool calls): all of it is sent to the model.
  let promptTokensBound = record.messages.reduce((n: number, message) => n + textBytes(message) + MESSAGE_OVERHEAD, 0) + REPLY_PRIMING;
  // Tools and response formats are sent to the model as text too.
  promptTokensBound += textBytes(record.tools) + textBytes(record.functions) + textBytes(record.response_format) + textBytes(record.tool_choice);
  // Both may be sent; which one an upstream honours varies, so the larger bounds the call.
  const completionLimits = [positiveInteger(record.max_completion_tokens, 'max_completion_tokens'), positiveInteger(record.max_tokens, 'max_tokens')].filter(
    (n): n is number => n !== null,
  );
  const completions = positiveInteger(record.n, 'n') ?? 1;
  return {
    maxTokens: completionLimits.length > 0 ? Math.max(...completionLimits) : null,
    maxTokensField: 'max_tokens',
    completions,
    promptTokensBound,
    // Rejected predicted tokens are billed at completion rates, in each completion.
    extraTokensBound: textBytes(record.prediction) * completions,
  };
}

function priceCompletion(record: Record<string, unknown>): Priced {
  const prompts = readPrompts(record.prompt, 'prompt');
  if (record.suffix !== undefined && record.suffix !== null && typeof record.suffix !== 'string') throw new LlmCallError('suffix must be a string', '/suffix');
  // The suffix goes with every prompt.
  const suffix = typeof record.suffix === 'string' ? utf8Length(record.suffix) * prompts.count : 0;
  const n = positiveInteger(record.n, 'n') ?? 1;
  // best_of candidates are generated (and billed) per prompt, n of them returned; best_of below n is an error upstream, so the larger counts.
  const bestOf = positiveInteger(record.best_of, 'best_of') ?? n;
  return {
    maxTokens: positiveInteger(record.max_tokens, 'max_tokens'),
    maxTokensField: 'max_tokens',
    completions: prompts.count * Math.max(n, bestOf),
    promptTokensBound: prompts.tokens + suffix,
    extraTokensBound: 0,
  };
}

function priceEmbedding(record: Record<string, unknown>): Priced {
  const inputs = readPrompts(record.input, 'input');
  return { maxTokens: null, maxTokensField: null, completions: 0, promptTokensBound: inputs.tokens, extraTokensBound: 0 };
}

function priceResponse(record: Record<string, unknown>): Priced {
  refuseMember(record, 'previous_response_id', 'the stored conversation it continues is billed as input, and is not in the request');
  refuseMember(record, 'conversation', 'the stored conversation is billed as input, and is not in the request');
  refuseMember(record, 'prompt', 'a stored prompt template is billed as input, and is not in the request');
  if (record.instructions !== undefined && record.instructions !== null && typeof record.instructions !== 'string')
    throw new LlmCallError('instructions must be a string', '/instructions');
  if (record.tools !== undefined && record.tools !== null) {
    if (!Array.isArray(record.tools)) throw new LlmCallError('tools must be an array', '/tools');
    record.tools.forEach((tool, i) => {
      // Built-in tools (web search, file search, code interpreter, MCP, ...) run server-side and add what they find to the input.
      if (!isRecord(tool) || tool.type !== 'function')
        throw new LlmCallError('only function tools are allowed on a budgeted route: built-in tools add tokens the request does not bound', `/tools/${i}/type`);
    });
  }
  let promptTokensBound: number;
  if (typeof record.input === 'string') {
    promptTokensBound = utf8Length(record.input) + MESSAGE_OVERHEAD + REPLY_PRIMING;
  } else if (Array.isArray(record.input)) {
    record.input.forEach((item, i) => {
      if (!isRecord(item)) throw new LlmCallError('an input item must be an object', `/input/${i}`);
      const type = item.type ?? 'message';
      if (typeof type !== 'string' || !RESPONSES_ITEMS.has(type)) {
        throw new LlmCallError(
          `an input item of type ${JSON.stringify(type)} is not allowed on a budgeted route: its tokens cannot be bounded from the request (allowed: ${[...RESPONSES_ITEMS].join(', ')})`,
          `/input/${i}/type`,
        );
      }
      if (type === 'message') checkParts(item.content, RESPONSES_PARTS, `/input/${i}/content`);
      if (type === 'function_call_output') checkParts(item.output, RESPONSES_PARTS, `/input/${i}/output`);
    });
    promptTokensBound = record.input.reduce((n: number, item) => n + textBytes(item) + MESSAGE_OVERHEAD, 0) + REPLY_PRIMING;
  } else {
    throw new LlmCallError(record.input === undefined ? 'the request has no input' : 'input must be a string or an array of input items', '/input');
  }
  promptTokensBound += textBytes(record.instructions) + textBytes(record.tools) + textBytes(record.tool_choice) + textBytes(record.text);
  return {
    maxTokens: positiveInteger(record.max_output_tokens, 'max_output_tokens'),
    maxTokensField: 'max_output_tokens',
    completions: 1,
    promptTokensBound,
    extraTokensBound: 0,
  };
}

const PRICING: Record<LlmEndpoint, (record: Record<string, unknown>) => Priced> = {
  '/v1/chat/completions': priceChat,
  '/v1/completions': priceCompletion,
  '/v1/embeddings': priceEmbedding,
  '/v1/responses': priceResponse,
};

/** Reads a call to one of LLM_ENDPOINTS: a chat completion (`messages`), a completion (`prompt`), an embedding (`input`) or a response (`input`). */
export function readLlmCall(bytes: Uint8Array, endpoint: LlmEndpoint = '/v1/chat/completions'): LlmCall {
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new LlmCallError('the request body is not JSON');
  }
  if (!isRecord(body)) throw new LlmCallError('the request body must be a JSON object');
  const record = body;
  if (record.model !== undefined && typeof record.model !== 'string') throw new LlmCallError('model must be a string', '/model');
  if (typeof record.model === 'string' && !isModelName(record.model)) {
    // A model names etcd keys (limits, usage) and metrics series: the same rule as a budget's models.
    throw new LlmCallError('model must be a model name: 1 to 128 letters, digits and . _ : / @ + -, the first a letter or digit', '/model');
  }
  const priced = PRICING[endpoint](record);
  // An embedding does not stream (the field is not sent to it by any client that works).
  const streams = endpoint !== '/v1/embeddings';
  if (streams && record.stream !== undefined && typeof record.stream !== 'boolean') throw new LlmCallError('stream must be a boolean', '/stream');
  const options = record.stream_options as Record<string, unknown> | undefined;
  return {
    endpoint,
    model: (record.model as string | undefined) ?? null,
    ...priced,
    stream: streams && record.stream === true,
    includeUsage: options?.include_usage === true,
    usageNeedsOption: endpoint === '/v1/chat/completions' || endpoint === '/v1/completions',
    body: record,
  };
}

/** The tokens a call can cost at most, given the completion limit it will be sent with. */
export function callCost(call: LlmCall, maxTokens: number): number {
  return call.promptTokensBound + call.extraTokensBound + call.completions * maxTokens;
}

/** Prompt and completion tokens an upstream reported, from a JSON answer or the last usage chunk of a stream (budget/answer-usage.ts); null when it reported none, or none that can be trusted. */
export function usageFromResponse(body: string): { prompt: number; completion: number } | null {
  const usage = usageOfAnswer(body);
  return usage.kind === 'usage' ? { prompt: usage.prompt, completion: usage.completion } : null;
}
