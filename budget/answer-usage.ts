// The usage an LLM reported in its answer, read as the answer's text comes
// in (UsageScanner) rather than from the whole of it: an answer may run to
// tens of megabytes (a long stream), and all that settling needs of it is the
// usage, a few numbers near its end. Memory stays bounded whatever its size.
//
// - A JSON answer (it starts with `{`): its top-level `usage` member, read
//   only if the answer is one complete object.
// - Anything else is read as server-sent events: the usage is that of the
//   last `data:` event carrying one (OpenAI's final chunk; `usage: null` on
//   the chunks before it is no usage).
//
// Usage is `prompt_tokens` (or `input_tokens`) and `completion_tokens` (or
// `output_tokens`, else 0): numbers, finite, not negative, whose sum is
// finite. A `usage` that is not (1e400 parses to Infinity, say), or that
// cannot be read within the bounds below, is `invalid`: the call then keeps
// its reservation, never a number nobody can trust.

export type AnswerUsage = { kind: 'usage'; prompt: number; completion: number } | { kind: 'none' } | { kind: 'invalid'; reason: string };

/** An event line longer than this is not read; if it was the last to carry usage, the usage is invalid. */
export const MAX_EVENT_CHARS = 1024 * 1024;
/** A JSON answer's `usage` member longer than this is invalid. */
export const MAX_USAGE_CHARS = 64 * 1024;

const NONE: AnswerUsage = { kind: 'none' };

/** The usage in a parsed answer or event: null when it has none (absent or null). */
export function usageIn(value: unknown): AnswerUsage | null {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return null;
  return readUsage((value as { usage?: unknown }).usage);
}

function readUsage(usage: unknown): AnswerUsage | null {
  if (usage === undefined || usage === null) return null;
  if (typeof usage !== 'object' || Array.isArray(usage)) return { kind: 'invalid', reason: 'usage is not an object' };
  const record = usage as Record<string, unknown>;
  const prompt = record.prompt_tokens ?? record.input_tokens;
  const completion = record.completion_tokens ?? record.output_tokens ?? 0;
  if (typeof prompt !== 'number' || typeof completion !== 'number') return { kind: 'invalid', reason: 'usage without numeric token counts' };
  if (!Number.isFinite(prompt) || !Number.isFinite(completion) || !Number.isFinite(prompt + completion))
    return { kind: 'invalid', reason: 'usage is not finite' };
  if (prompt < 0 || completion < 0) return { kind: 'invalid', reason: 'usage is negative' };
  return { kind: 'usage', prompt: Math.round(prompt), completion: Math.round(completion) };
}

/** The usage of a whole answer (see UsageScanner). */
export function usageOfAnswer(body: string): AnswerUsage {
  const scanner = new UsageScanner();
  scanner.push(body);
  return scanner.end();
}

/** Reads an answer's usage from its text, pushed in pieces of any size. */
export class UsageScanner {
  private mode: 'start' | 'json' | 'events' = 'start';
  private found: AnswerUsage = NONE;
  // events: the line being read (null once it is too long), whether it has been dropped.
  private line = '';
  private lineDropped = false;
  // json: where the scan is in the object.
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** At depth 1, whether the next string is a member name. */
  private expectKey = false;
  /** The member name being read at depth 1 (its raw text, bounded), and the last one read. */
  private key: string | null = null;
  private lastKey = '';
  /** The raw text of the `usage` member's value while it is read. */
  private capture: string | null = null;
  private captureTooLong = false;
  /** The top-level object closed; anything but white space after it breaks the answer. */
  private closed = false;
  private broken = false;

  push(text: string): void {
    if (text.length === 0 || this.broken) return;
    if (this.mode === 'start') {
      const start = text.search(/\S/);
      if (start < 0) return;
      this.mode = text[start] === '{' ? 'json' : 'events';
      text = text.slice(start);
    }
    if (this.mode === 'events') this.pushEvents(text);
    else this.pushJson(text);
  }

  end(): AnswerUsage {
    if (this.mode === 'events') {
      this.endLine();
      return this.found;
    }
    if (this.mode === 'json') return this.closed && !this.broken ? this.found : NONE;
    return NONE;
  }

  // --- server-sent events ---

  private pushEvents(text: string): void {
    let from = 0;
    for (;;) {
      const newline = text.indexOf('\n', from);
      const part = text.slice(from, newline < 0 ? text.length : newline);
      if (!this.lineDropped) {
        if (this.line.length + part.length > MAX_EVENT_CHARS) {
          this.lineDropped = true;
          this.line = (this.line + part.slice(0, 5)).slice(0, 5);
        } else {
          this.line += part;
        }
      }
      if (newline < 0) return;
      this.endLine();
      from = newline + 1;
    }
  }

  private endLine(): void {
    const line = this.line;
    const dropped = this.lineDropped;
    this.line = '';
    this.lineDropped = false;
    if (!line.startsWith('data:')) return;
    if (dropped) {
      // It may have been the usage event: unless a later one carries usage, the usage cannot be known.
      this.found = { kind: 'invalid', reason: `an event of more than ${MAX_EVENT_CHARS} characters` };
      return;
    }
    const data = line.slice(5).trim();
    // Only an event that names usage can carry it (a cheap test before parsing each chunk).
    if (data === '' || data === '[DONE]' || !data.includes('"usage"')) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(data);
    } catch {
      return; // a malformed event carries no usage
    }
    this.found = usageIn(parsed) ?? this.found;
  }

  // --- a JSON answer ---

  private pushJson(text: string): void {
    const length = text.length;
    let i = 0;
    while (i < length && !this.broken) {
      if (this.inString) {
        i = this.scanString(text, i);
        continue;
      }
      const c = text[i]!;
      if (this.closed) {
        if (!/\s/.test(c)) this.broken = true;
        i++;
        continue;
      }
      if (this.capture !== null) this.addCapture(c);
      switch (c) {
        case '"':
          this.inString = true;
          if (this.depth === 1 && this.expectKey && this.capture === null) this.key = '';
          break;
        case '{':
        case '[':
          this.depth++;
          if (this.depth === 1) this.expectKey = true;
          break;
        case '}':
        case ']':
          this.depth--;
          if (this.depth === 1 && this.capture !== null) this.endCapture({ withCloser: true });
          else if (this.depth === 0) {
            if (this.capture !== null) this.endCapture({ withCloser: false });
            this.closed = true;
          } else if (this.depth < 0) this.broken = true;
          break;
        case ',':
          if (this.depth === 1) {
            if (this.capture !== null) this.endCapture({ withCloser: false });
            this.expectKey = true;
          }
          break;
        case ':':
          if (this.depth === 1 && this.capture === null && memberName(this.lastKey) === 'usage') {
            this.capture = '';
            this.captureTooLong = false;
          }
          break;
      }
      i++;
    }
  }

  /** Reads a string from `i` up to its closing quote (or the end of `text`); returns where to go on. */
  private scanString(text: string, i: number): number {
    const length = text.length;
    while (i < length) {
      if (this.escaped) {
        this.escaped = false;
        this.addStringText(text[i]!);
        i++;
        continue;
      }
      // Runs without a quote or backslash go in one step.
      let next = i;
      while (next < length) {
        const code = text.charCodeAt(next);
        if (code === 0x22 || code === 0x5c) break;
        next++;
      }
      if (next > i) this.addStringText(text.slice(i, next));
      if (next >= length) return length;
      if (text[next] === '\\') {
        this.escaped = true;
        this.addStringText('\\');
        i = next + 1;
        continue;
      }
      // the closing quote
      this.inString = false;
      if (this.capture !== null) this.addCapture('"');
      if (this.key !== null) {
        this.lastKey = this.key;
        this.key = null;
        this.expectKey = false;
      }
      return next + 1;
    }
    return i;
  }

  private addStringText(text: string): void {
    if (this.key !== null && this.key.length < 64) this.key += text.slice(0, 64);
    if (this.capture !== null) this.addCapture(text);
  }

  private addCapture(text: string): void {
    if (this.captureTooLong) return;
    if (this.capture!.length + text.length > MAX_USAGE_CHARS) {
      this.captureTooLong = true;
      return;
    }
    this.capture += text;
  }

  /** The `usage` member's value is read: `withCloser`: its last character captured closes it (an object's `}`). */
  private endCapture({ withCloser }: { withCloser: boolean }): void {
    const raw = this.capture!;
    this.capture = null;
    if (this.captureTooLong) {
      this.found = { kind: 'invalid', reason: `usage of more than ${MAX_USAGE_CHARS} characters` };
      return;
    }
    // The delimiter that ended the member (`,` or the object's `}`) was captured last unless it closed the value.
    const text = withCloser ? raw : raw.slice(0, -1);
    try {
      this.found = readUsage(JSON.parse(text)) ?? NONE;
    } catch {
      this.found = { kind: 'invalid', reason: 'usage is not JSON' };
    }
  }
}

/** A member name as read raw (escapes and all), decoded. */
function memberName(raw: string): string {
  if (!raw.includes('\\')) return raw;
  try {
    return JSON.parse(`"${raw}"`) as string;
  } catch {
    return raw;
  }
}
