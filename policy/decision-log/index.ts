// Decision logs: one JSON line per decision the gateway (the `opa` plugin)
// or the decision API makes. Logging never holds a decision up: an event is
// put in a bounded buffer (an array push on the decision's path); writing,
// masking and serialising happen later, off that path, as fast as the sink
// takes them. A sink that cannot keep up (a full disk, a stalled pipe)
// fills the buffer, and further events are dropped and counted
// (gatehouse_decision_log_events_total{outcome="dropped"}), never silently.
//
//   DECISION_LOG=stdout | file:/var/log/gatehouse/decisions.log   (unset: off)
//   DECISION_LOG_BUFFER=10000                                     events held at most
import { createWriteStream } from 'node:fs';
import type { Writable } from 'node:stream';
import { isCredentialHeader, isCredentialQueryParameter, maskCredentialQuery, MASKED } from '../../http/credentials.js';

export interface DecisionPolicy {
  name: string;
  version: number;
  /** The etcd revision of that version. */
  revision: number;
  result: 'allow' | 'deny' | 'error' | 'absent';
}

export interface DecisionEvent {
  /** ISO 8601, when the decision was made. */
  time: string;
  /** The gateway that made it (policy/fleet's id). */
  gateway: string;
  /** The APISIX route (from PrepareConf's key), or the decision API's path. */
  route: string | null;
  /** The policies that decided, in order, each with the version it used. */
  policies: DecisionPolicy[];
  result: 'allow' | 'deny' | 'error' | 'unavailable';
  /** The HTTP status the decision led to (200 when the request went on). */
  status: number;
  latencyUs: number;
  /** The policy input; masked (see maskInput) when written, never before. */
  input: unknown;
  /** JSON pointers into the input to mask, beyond the ones always masked. */
  mask?: readonly string[];
}

export interface DecisionLogStats {
  written: number;
  dropped: number;
  buffered: number;
}

export class DecisionLog {
  private readonly buffer: DecisionEvent[] = [];
  private writing = false;
  private waitingForDrain = false;
  private stats_ = { written: 0, dropped: 0 };
  private closed = false;

  constructor(
    private readonly sink: Writable,
    private readonly options: { maxBuffered?: number; onWritten?: (n: number) => void; onDropped?: (n: number) => void } = {},
  ) {
    sink.on('error', () => {
      // A broken sink: what is buffered now and later is dropped (and counted).
      this.closed = true;
      this.drop(this.buffer.splice(0).length);
    });
  }

  /** Queues an event; never blocks, never throws. */
  emit(event: DecisionEvent): void {
    if (this.closed || this.buffer.length >= (this.options.maxBuffered ?? 10_000)) {
      this.drop(1);
      return;
    }
    this.buffer.push(event);
    if (!this.writing && !this.waitingForDrain) {
      this.writing = true;
      setImmediate(() => this.pump());
    }
  }

  get stats(): DecisionLogStats {
    return { ...this.stats_, buffered: this.buffer.length };
  }

  /** Writes what is buffered (for at most `timeoutMs`), then closes a file sink. */
  async close(timeoutMs = 1_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length > 0 && !this.closed && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    this.closed = true;
    if (this.sink !== process.stdout && this.sink !== process.stderr) this.sink.end();
  }

  private pump(): void {
    this.writing = false;
    // In slices, so a long backlog does not hold the event loop (decisions) up either.
    let lines = '';
    let count = 0;
    while (this.buffer.length > 0 && count < 256) {
      const event = this.buffer.shift()!;
      try {
        lines += `${serialize(event)}\n`;
        count++;
      } catch {
        this.drop(1); // an input that cannot be serialised
      }
    }
    if (count > 0) {
      const more = this.sink.write(lines);
      this.stats_.written += count;
      this.options.onWritten?.(count);
      if (!more) {
        this.waitingForDrain = true;
        this.sink.once('drain', () => {
          this.waitingForDrain = false;
          this.schedule();
        });
        return;
      }
    }
    this.schedule();
  }

  private schedule(): void {
    if (this.buffer.length > 0 && !this.writing && !this.waitingForDrain && !this.closed) {
      this.writing = true;
      setImmediate(() => this.pump());
    }
  }

  private drop(n: number): void {
    if (n === 0) return;
    this.stats_.dropped += n;
    this.options.onDropped?.(n);
  }
}

function serialize(event: DecisionEvent): string {
  const { input, mask, ...rest } = event;
  return JSON.stringify({ ...rest, input: maskInput(input, mask ?? []) });
}

/**
 * A copy of the input with credentials and the given JSON pointers masked:
 * always the request's credential headers and credential query parameters
 * (http/credentials, whatever the case of their names), in `query` and in a
 * query string written into `path` or `uri` (the verified identity is in
 * `user`; the token itself is never logged), and anything else a route names.
 */
export function maskInput(input: unknown, pointers: readonly string[]): unknown {
  const copy = structuredClone(input) as Record<string, unknown> | null;
  if (!copy || typeof copy !== 'object') return copy;
  const request = copy.request as Record<string, unknown> | undefined;
  if (request && typeof request === 'object') {
    const { headers, query } = request;
    if (headers && typeof headers === 'object') {
      for (const name of Object.keys(headers)) if (isCredentialHeader(name)) (headers as Record<string, unknown>)[name] = MASKED;
    }
    if (query && typeof query === 'object') {
      for (const name of Object.keys(query)) if (isCredentialQueryParameter(name)) (query as Record<string, unknown>)[name] = MASKED;
    }
    for (const field of ['path', 'uri']) {
      const value = request[field];
      if (typeof value === 'string') request[field] = maskCredentialQuery(value);
    }
  }
  for (const pointer of pointers) maskPointer(copy, pointer);
  return copy;
}

function maskPointer(root: Record<string, unknown>, pointer: string): void {
  const parts = pointer
    .split('/')
    .slice(1)
    .map((p) => p.replaceAll('~1', '/').replaceAll('~0', '~'));
  let node: unknown = root;
  for (let i = 0; i < parts.length - 1; i++) {
    if (!node || typeof node !== 'object') return;
    node = (node as Record<string, unknown>)[parts[i]!];
  }
  const last = parts[parts.length - 1];
  if (last !== undefined && node && typeof node === 'object' && last in node) (node as Record<string, unknown>)[last] = MASKED;
}

/** Where decision log events go, and how many may wait for the sink (DECISION_LOG, DECISION_LOG_BUFFER). */
export interface DecisionLogSettings {
  /** stdout, or a file events are appended to. */
  target: { kind: 'stdout' } | { kind: 'file'; path: string };
  maxBuffered: number;
}

/** The decision log `env` asks for (DECISION_LOG: stdout, file:<path> or off; DECISION_LOG_BUFFER, default 10000); null when unset or off. */
export function decisionLogSettings(env: NodeJS.ProcessEnv): DecisionLogSettings | null {
  const target = env.DECISION_LOG?.trim() ?? '';
  if (target === '' || target === 'off') return null;
  const maxBuffered = env.DECISION_LOG_BUFFER ? Number(env.DECISION_LOG_BUFFER) : 10_000;
  if (!Number.isInteger(maxBuffered) || maxBuffered < 1 || maxBuffered > 10_000_000) throw new Error('DECISION_LOG_BUFFER must be a whole number of events');
  if (target === 'stdout') return { target: { kind: 'stdout' }, maxBuffered };
  if (target.startsWith('file:') && target.length > 5) return { target: { kind: 'file', path: target.slice(5) }, maxBuffered };
  throw new Error(`DECISION_LOG must be stdout, file:<path> or off, not ${JSON.stringify(target)}`);
}

/** The decision log `settings` describe, its sink open. */
export function openDecisionLog(settings: DecisionLogSettings, hooks: { onWritten?: (n: number) => void; onDropped?: (n: number) => void } = {}): DecisionLog {
  const sink: Writable = settings.target.kind === 'stdout' ? process.stdout : createWriteStream(settings.target.path, { flags: 'a', mode: 0o600 });
  return new DecisionLog(sink, { maxBuffered: settings.maxBuffered, ...hooks });
}

/** Per-route choice, from the opa plugin's conf: off, on, or sampled, with extra masks. */
export interface DecisionLogConf {
  enabled: boolean;
  /** The share of decisions logged, (0, 1]. */
  sample: number;
  mask: string[];
}

export function shouldLog(conf: DecisionLogConf, random: () => number = Math.random): boolean {
  return conf.enabled && (conf.sample >= 1 || random() < conf.sample);
}
