// What an OpenAI-compatible call can cost at most, read from its request
// body before it goes upstream: the model, the completion limit, whether it
// streams, and an upper bound on its prompt tokens.
//
// The prompt bound: byte-level BPE tokenizers (GPT, Llama, Mistral) never
// make a token of less than one byte, so a text of n UTF-8 bytes is at most
// n tokens; each chat message adds a few formatting tokens (OpenAI documents
// 3-4), counted as 8, plus 8 for the reply's priming. The bound is loose
// (real prompts run about 4 bytes a token) but never low, which is what a
// reservation needs: the call is settled to its actual usage afterwards.
// Images are not text: each image part counts IMAGE_TOKENS_BOUND, above what
// the providers document for one image at its largest (OpenAI's patch-based
// models: 1,536 patches x 1.62 = 2,489; tiled: 1,105; Anthropic: about 1,600).

import { isModelName } from './definition.js';

export interface LlmCall {
  /** The model asked for, or null when the body names none. */
  model: string | null;
  /** max_tokens / max_completion_tokens, or null when absent. */
  maxTokens: number | null;
  stream: boolean;
  /** Whether the client itself asked for the final usage chunk. */
  includeUsage: boolean;
  /** Upper bound on the prompt's tokens. */
  promptTokensBound: number;
  /** The parsed body, for rewriting. */
  body: Record<string, unknown>;
}

export class LlmCallError extends Error {
  override readonly name = 'LlmCallError';
}

const MESSAGE_OVERHEAD = 8;
const REPLY_PRIMING = 8;
export const IMAGE_TOKENS_BOUND = 4_096;

const utf8Length = (text: string) => Buffer.byteLength(text, 'utf8');

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
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new LlmCallError(`${field} must be a positive integer`);
  return value;
}

/** Reads a chat completion (`messages`) or completion (`prompt`) request. */
export function readLlmCall(bytes: Uint8Array): LlmCall {
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new LlmCallError('the request body is not JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new LlmCallError('the request body must be a JSON object');
  const record = body as Record<string, unknown>;
  if (record.model !== undefined && typeof record.model !== 'string') throw new LlmCallError('model must be a string');
  if (typeof record.model === 'string' && !isModelName(record.model)) {
    // A model names etcd keys (limits, usage) and metrics series: the same rule as a budget's models.
    throw new LlmCallError('model must be a model name: 1 to 128 letters, digits and . _ : / @ + -, the first a letter or digit');
  }
  let promptTokensBound: number;
  if (Array.isArray(record.messages)) {
    // Every field of a message counts (role, name, content, tool calls): all of it is sent to the model.
    promptTokensBound = record.messages.reduce((n: number, message) => n + textBytes(message) + MESSAGE_OVERHEAD, 0) + REPLY_PRIMING;
  } else if (record.prompt !== undefined) {
    promptTokensBound = textBytes(record.prompt) + REPLY_PRIMING;
  } else {
    throw new LlmCallError('the request has neither messages nor prompt');
  }
  // Tools and response formats are sent to the model as text too.
  promptTokensBound += textBytes(record.tools) + textBytes(record.functions) + textBytes(record.response_format);
  // Both may be sent; which one an upstream honours varies, so the larger bounds the call.
  const completionLimits = [positiveInteger(record.max_completion_tokens, 'max_completion_tokens'), positiveInteger(record.max_tokens, 'max_tokens')].filter((n): n is number => n !== null);
  const maxTokens = completionLimits.length > 0 ? Math.max(...completionLimits) : null;
  const n = positiveInteger(record.n, 'n') ?? 1;
  if (n !== 1) throw new LlmCallError('n other than 1 is not supported on a budgeted route');
  if (record.stream !== undefined && typeof record.stream !== 'boolean') throw new LlmCallError('stream must be a boolean');
  const options = record.stream_options as Record<string, unknown> | undefined;
  return {
    model: (record.model as string | undefined) ?? null,
    maxTokens,
    stream: record.stream === true,
    includeUsage: options?.include_usage === true,
    promptTokensBound,
    body: record,
  };
}

/** Prompt and completion tokens an upstream reported, from a JSON answer or the last usage chunk of a stream. */
export function usageFromResponse(body: string): { prompt: number; completion: number } | null {
  const trimmed = body.trimStart();
  if (trimmed.startsWith('{')) {
    try {
      return usageOf(JSON.parse(trimmed));
    } catch {
      return null;
    }
  }
  // Server-sent events: the usage chunk is the last data line carrying usage.
  let found: { prompt: number; completion: number } | null = null;
  for (const line of body.split(/\r?\n/)) {
    if (!line.startsWith('data:')) continue;
    const data = line.slice(5).trim();
    if (data === '' || data === '[DONE]') continue;
    try {
      found = usageOf(JSON.parse(data)) ?? found;
    } catch {
      // a malformed event carries no usage
    }
  }
  return found;
}

function usageOf(value: unknown): { prompt: number; completion: number } | null {
  const usage = (value as { usage?: Record<string, unknown> } | null)?.usage;
  if (!usage || typeof usage !== 'object') return null;
  const prompt = usage.prompt_tokens ?? usage.input_tokens;
  const completion = usage.completion_tokens ?? usage.output_tokens ?? 0;
  if (typeof prompt !== 'number' || typeof completion !== 'number' || prompt < 0 || completion < 0) return null;
  return { prompt: Math.round(prompt), completion: Math.round(completion) };
}
