// Where an LLM call's response comes back to be settled: APISIX's
// http-logger, on the budgeted route, posts each response (its status, the
// upstream's status, its body and nginx's $request_id, which names the
// call's reservation) to a port of the runner's own on loopback
// (RUNNER_SETTLE_PORT, default 9092; in a cluster the primary's, which
// passes each entry to its workers: the one holding the call settles it):
//
//   http-logger: {"uri": "http://127.0.0.1:9092/budget/usage", "batch_max_size": 100,
//                 "inactive_timeout": 1, "include_resp_body": true,
//                 "log_format": {"reservation": "$request_id", "status": "$status",
//                                "upstream_status": "$upstream_status", "body": "$resp_body"}}
//
// APISIX 3.9.1's http-logger cannot bound what it posts: each entry carries
// the whole answer (a long stream runs to megabytes), and a batch gathers up
// to batch_max_size answers of every project. So a post is read as it comes
// and never held: each entry is kept as the few things settling needs (the
// id, both statuses, and the usage, read from the body as it streams past by
// budget/answer-usage.ts), whatever the size of its body or of the post.
// There is no cap on a post: a large answer costs time, not memory, and
// cannot void the others. Entries read whole are settled even when what
// follows them is broken (answered 400).
//
// An entry settles only the call its id names, once; ids are random and
// never leave the gateway (nginx and the runner), so a forged post changes
// nothing.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { RESERVATION_ID } from '../../budget/gateway.js';
import { UsageScanner, type AnswerUsage } from '../../budget/answer-usage.js';
import { HttpProblem, sendProblem } from '../../http/problem.js';

export interface SettleEntry {
  reservation: string;
  /** The status the client was sent. */
  status: number;
  /** nginx's $upstream_status; null when the entry has none (no upstream was contacted). */
  upstreamStatus: string | null;
  usage: AnswerUsage;
}

export const SETTLE_PATH = '/budget/usage';

/** The longest value kept of an entry's other fields (ids, statuses); longer is malformed. */
const MAX_FIELD_CHARS = 1024;
/** Entries handed on together while a post is read. */
const SETTLE_GROUP = 1000;

export class SettleFormatError extends Error {
  override readonly name = 'SettleFormatError';
}

type State =
  | 'top' // before a post's first value
  | 'topNext' // after a top-level entry: another (concat_method new_line) or the end
  | 'arrayFirst' // after '[': an entry or ']'
  | 'arrayItem' // after ',' in the array: an entry
  | 'arrayNext' // after an entry in the array: ',' or ']'
  | 'done' // after ']': white space only
  | 'objectFirst' // after '{': a name or '}'
  | 'objectName' // after ',' in an entry: a name
  | 'colon'
  | 'value'
  | 'objectNext' // after a value: ',' or '}'
  | 'string'
  | 'scalar'
  | 'nested';

interface Fields {
  /** Each field's value as written (strings decoded), null when too long or not a string or number. */
  values: Map<string, string | null>;
  body: UsageScanner | null;
}

const WHITE_SPACE = /\s/;

/**
 * http-logger entries read from a post as it arrives, in pieces of any size:
 * one object, a JSON array of them, or objects one after another
 * (concat_method new_line). Each entry is reduced to a SettleEntry as soon
 * as it is read; an entry without a reservation id (a call stopped before it
 * reserved) is skipped. Malformed input throws SettleFormatError.
 */
export class SettleBatchReader {
  /** Entries read and not yet taken. */
  readonly entries: SettleEntry[] = [];
  private state: State = 'top';
  private inArray = false;
  private fields: Fields = { values: new Map(), body: null };
  private name = '';
  // the string being read: what it is for, its text so far (bounded), escapes in progress
  private target: 'name' | 'field' | 'body' | 'ignore' = 'ignore';
  private text: string | null = '';
  private escape: string | null = null;
  private scalar = '';
  private nesting = { depth: 0, inString: false, escaped: false };

  push(chunk: string): void {
    const length = chunk.length;
    let i = 0;
    while (i < length) {
      if (this.state === 'string') {
        i = this.readString(chunk, i);
        continue;
      }
      if (this.state === 'nested') {
        i = this.skipNested(chunk, i);
        continue;
      }
      const c = chunk[i]!;
      if (this.state === 'scalar') {
        if (c === ',' || c === '}' || c === ']' || WHITE_SPACE.test(c)) {
          this.endScalar();
          continue; // the delimiter is read in the state that follows
        }
        if (this.scalar.length > 64) throw new SettleFormatError('a number or literal too long');
        this.scalar += c;
        i++;
        continue;
      }
      i++;
      if (WHITE_SPACE.test(c)) continue;
      this.structural(c);
    }
  }

  /** The post is over: throws if it ended inside a value. */
  end(): void {
    if (this.state === 'scalar') this.endScalar();
    if (this.state === 'top') throw new SettleFormatError('an empty post');
    if (this.state !== 'topNext' && this.state !== 'done') throw new SettleFormatError('the post ends inside an entry');
  }

  private structural(c: string): void {
    switch (this.state) {
      case 'top':
        if (c === '[') {
          this.inArray = true;
          this.state = 'arrayFirst';
          return;
        }
        return this.startEntry(c);
      case 'topNext':
      case 'arrayItem':
        return this.startEntry(c);
      case 'arrayFirst':
        if (c === ']') {
          this.state = 'done';
          return;
        }
        return this.startEntry(c);
      case 'arrayNext':
        if (c === ',') this.state = 'arrayItem';
        else if (c === ']') this.state = 'done';
        else throw new SettleFormatError(`expected , or ] between entries, not ${c}`);
        return;
      case 'done':
        throw new SettleFormatError('something after the entries');
      case 'objectFirst':
        if (c === '}') return this.endEntry();
        return this.startName(c);
      case 'objectName':
        return this.startName(c);
      case 'colon':
        if (c !== ':') throw new SettleFormatError(`expected : after a field name, not ${c}`);
        this.state = 'value';
        return;
      case 'value':
        return this.startValue(c);
      case 'objectNext':
        if (c === ',') this.state = 'objectName';
        else if (c === '}') this.endEntry();
        else throw new SettleFormatError(`expected , or } in an entry, not ${c}`);
        return;
      default:
        throw new SettleFormatError('unexpected input');
    }
  }

  private startEntry(c: string): void {
    if (c !== '{') throw new SettleFormatError('each entry must be an object');
    this.fields = { values: new Map(), body: null };
    this.state = 'objectFirst';
  }

  private startName(c: string): void {
    if (c !== '"') throw new SettleFormatError('expected a field name');
    this.startString('name');
  }

  private startValue(c: string): void {
    if (c === '"') {
      if (this.name === 'body') {
        this.fields.body = new UsageScanner();
        this.startString('body');
      } else {
        this.startString(this.name === 'reservation' || this.name === 'status' || this.name === 'upstream_status' ? 'field' : 'ignore');
      }
      return;
    }
    if (c === '{' || c === '[') {
      // Not a value settling reads (a logger's own fields may be anything): skipped.
      this.nesting = { depth: 1, inString: false, escaped: false };
      this.fields.values.set(this.name, null);
      this.state = 'nested';
      return;
    }
    if (c === ',' || c === '}' || c === ']' || c === ':') throw new SettleFormatError('a field without a value');
    this.scalar = c;
    this.state = 'scalar';
  }

  private endScalar(): void {
    const raw = this.scalar;
    this.scalar = '';
    if (raw !== 'true' && raw !== 'false' && raw !== 'null' && !Number.isFinite(Number(raw))) throw new SettleFormatError(`not a JSON value: ${raw}`);
    if (this.name === 'body') this.fields.body = null;
    this.fields.values.set(this.name, raw === 'null' ? null : raw);
    this.state = 'objectNext';
  }

  private startString(target: SettleBatchReader['target']): void {
    this.target = target;
    this.text = target === 'body' || target === 'ignore' ? null : '';
    this.escape = null;
    this.state = 'string';
  }

  /** Reads a string from `i` to its closing quote or the end of `chunk`; returns where to go on. */
  private readString(chunk: string, i: number): number {
    const length = chunk.length;
    while (i < length) {
      if (this.escape !== null) {
        const c = chunk[i++]!;
        if (this.escape === '') {
          if (c === 'u') {
            this.escape = 'u';
            continue;
          }
          const simple = ESCAPES[c];
          if (simple === undefined) throw new SettleFormatError(`a bad escape \\${c}`);
          this.escape = null;
          this.addText(simple);
          continue;
        }
        this.escape += c;
        if (this.escape.length === 5) {
          const hex = this.escape.slice(1);
          if (!/^[0-9a-fA-F]{4}$/.test(hex)) throw new SettleFormatError(`a bad escape \\u${hex}`);
          this.escape = null;
          this.addText(String.fromCharCode(parseInt(hex, 16)));
        }
        continue;
      }
      // Runs without a quote or backslash go in one step.
      let next = i;
      while (next < length) {
        const code = chunk.charCodeAt(next);
        if (code === 0x22 || code === 0x5c) break;
        next++;
      }
      if (next > i) this.addText(chunk.slice(i, next));
      if (next >= length) return length;
      if (chunk[next] === '\\') {
        this.escape = '';
        i = next + 1;
        continue;
      }
      this.endString();
      return next + 1;
    }
    return i;
  }

  private addText(text: string): void {
    if (this.target === 'body') this.fields.body!.push(text);
    else if (this.text !== null) this.text = this.text.length + text.length > MAX_FIELD_CHARS ? null : this.text + text;
  }

  private endString(): void {
    switch (this.target) {
      case 'name':
        this.name = this.text ?? '';
        this.state = 'colon';
        return;
      case 'field':
        this.fields.values.set(this.name, this.text);
        break;
      case 'ignore':
        this.fields.values.set(this.name, null);
        break;
      case 'body':
        break;
    }
    this.state = 'objectNext';
  }

  /** Skips a nested object or array value up to where it closes. */
  private skipNested(chunk: string, i: number): number {
    const n = this.nesting;
    while (i < chunk.length) {
      const c = chunk[i++]!;
      if (n.inString) {
        if (n.escaped) n.escaped = false;
        else if (c === '\\') n.escaped = true;
        else if (c === '"') n.inString = false;
      } else if (c === '"') n.inString = true;
      else if (c === '{' || c === '[') n.depth++;
      else if (c === '}' || c === ']') {
        if (--n.depth === 0) {
          this.state = 'objectNext';
          return i;
        }
      }
    }
    return i;
  }

  private endEntry(): void {
    this.state = this.inArray ? 'arrayNext' : 'topNext';
    const { values, body } = this.fields;
    const reservation = values.get('reservation');
    // Calls stopped before a reservation are logged too: their ids name nothing to settle.
    if (typeof reservation !== 'string' || !RESERVATION_ID.test(reservation)) return;
    const status = Number(values.get('status') ?? Number.NaN);
    if (!Number.isInteger(status)) throw new SettleFormatError('an entry without an integer status');
    const upstream = values.get('upstream_status');
    this.entries.push({ reservation, status, upstreamStatus: upstream ? upstream : null, usage: body ? body.end() : { kind: 'none' } });
  }
}

const ESCAPES: Record<string, string> = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/** Serves the settle path on loopback; null (logged) when the port cannot be had: calls then keep their reservations. */
export async function startSettleServer(port: number, settle: (entries: SettleEntry[]) => void, log: Logger): Promise<FastifyInstance | null> {
  const app = Fastify({ loggerInstance: log.child({ component: 'budget-settle' }, { level: 'warn' }) as FastifyBaseLogger });
  // Bad posts (not JSON, another media type) answer problem+json like every Gatehouse port.
  app.setErrorHandler((error: Error & { statusCode?: number }, _request, reply) => {
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    return sendProblem(reply, new HttpProblem({ status, detail: status === 500 ? 'internal error' : error.message }));
  });
  // The post is read as it comes (SettleBatchReader), not parsed whole: JSON, or text/plain for concat_method new_line.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(['application/json', 'text/plain'], (_request, payload, done) => done(null, payload));
  app.post(SETTLE_PATH, async (request, reply) => {
    const reader = new SettleBatchReader();
    const decoder = new TextDecoder('utf-8');
    let failure: string | null = null;
    try {
      for await (const chunk of request.body as AsyncIterable<Buffer>) {
        reader.push(decoder.decode(chunk, { stream: true }));
        if (reader.entries.length >= SETTLE_GROUP) settle(reader.entries.splice(0));
      }
      reader.push(decoder.decode());
      reader.end();
    } catch (err) {
      if (!(err instanceof SettleFormatError)) throw err;
      failure = err.message;
    }
    // What was read whole is settled, even when what follows it is broken.
    if (reader.entries.length > 0) settle(reader.entries.splice(0));
    if (failure !== null) {
      // The rest of the post is not read: the connection closes once the answer is out.
      reply.header('connection', 'close');
      return sendProblem(
        reply,
        new HttpProblem({ status: 400, detail: `expected http-logger entries with reservation, status, upstream_status and body: ${failure}` }),
      );
    }
    reply.code(204);
    return null;
  });
  try {
    // Loopback only: the entries come from this node's APISIX.
    await app.listen({ host: '127.0.0.1', port });
  } catch (err) {
    log.error({ err: (err as Error).message, port }, 'LLM usage settle port unavailable: budgeted calls keep their reservations');
    return null;
  }
  log.info({ address: app.server.address() }, 'LLM usage settling listening');
  return app;
}
