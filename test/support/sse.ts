// Reading a server-sent event stream (an OpenAI-style streamed completion) as
// a client does, recording when each read and each `data:` event arrived, so
// tests can tell a stream that arrived piece by piece from one that arrived
// whole.

export interface SseEvent {
  /** The `data:` payload (`[DONE]` included). */
  data: string;
  /** Date.now() when the read that completed this event returned. */
  at: number;
}

export interface SseRead {
  events: SseEvent[];
  /** Every read that returned bytes: when, and how many. */
  reads: { at: number; bytes: number }[];
  /** The whole body as received. */
  text: string;
}

/** Reads the body to its end, splitting it into events as they complete. */
export async function readSse(body: AsyncIterable<Uint8Array>): Promise<SseRead> {
  const decoder = new TextDecoder();
  const events: SseEvent[] = [];
  const reads: SseRead['reads'] = [];
  let text = '';
  let pending = '';
  for await (const chunk of body) {
    const at = Date.now();
    reads.push({ at, bytes: chunk.byteLength });
    const piece = decoder.decode(chunk, { stream: true });
    text += piece;
    pending += piece;
    for (let end = pending.indexOf('\n\n'); end !== -1; end = pending.indexOf('\n\n')) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      events.push(...parseBlock(block).map((data) => ({ data, at })));
    }
  }
  text += decoder.decode();
  return { events, reads, text };
}

/** The `data:` payloads of a whole event-stream text. */
export function sseData(text: string): string[] {
  return text
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .flatMap(parseBlock);
}

function parseBlock(block: string): string[] {
  const data = block
    .split('\n')
    .filter((line) => line.startsWith('data:'))
    .map((line) => line.slice(5).replace(/^ /, ''));
  return data.length > 0 ? [data.join('\n')] : [];
}

/** An OpenAI chat.completion.chunk, as far as the tests read it. */
export interface CompletionChunk {
  id: string;
  object: string;
  choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

/** The JSON chunks of a completion stream, `[DONE]` left out. */
export function completionChunks(data: readonly string[]): CompletionChunk[] {
  return data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as CompletionChunk);
}
