// The runner's traces (on only with OTEL_*: runtime/tracing.ts): a span per
// request through the chain, continuing the client's traceparent, a child
// span per plugin (plugins add what they decided through CallContext.trace),
// the request's traceparent passed on to the upstream, and for an LLM call a
// span when its budget is settled from the answer's usage (GenAI semantic
// conventions), joined to the request's trace by the reservation id.
//
// What goes into a span: the method, the path (never the query), the route,
// the plugins' names and their decisions, statuses, token counts. Never a
// header's value (traceparent aside), a token, a secret or a body.
import { SpanKind, SpanStatusCode, trace, type Context, type Span, type SpanContext } from '@opentelemetry/api';
import { LRUCache } from 'lru-cache';
import { incomingContext, outgoingHeaders, type Tracing } from '../../runtime/tracing.js';
import type { TraceAttributes, TraceHook } from '../api/plugin.js';
import type { SettledCall } from '../../budget/gateway.js';

interface PendingSettle {
  parent: SpanContext;
  attributes: TraceAttributes;
}

/** One request's trace: its span, and the hook handed to each plugin in turn. */
export class RequestTrace implements TraceHook {
  private current: Span | null = null;

  constructor(
    private readonly traces: RunnerTraces,
    readonly span: Span,
    private readonly context: Context,
  ) {}

  /** Starts the span of `plugin`; what it adds through the hook goes there until the next. */
  startPlugin(plugin: string): Span {
    const span = this.traces.tracing.tracer.startSpan(plugin, { kind: SpanKind.INTERNAL, attributes: { 'gatehouse.plugin': plugin } }, this.context);
    this.current = span;
    return span;
  }

  attributes(attributes: TraceAttributes): void {
    this.current?.setAttributes(attributes);
  }

  settlesLater(reservation: string, attributes: TraceAttributes): void {
    this.current?.setAttributes(attributes);
    this.traces.pending.set(reservation, { parent: this.span.spanContext(), attributes });
  }

  /** The traceparent (and tracestate) the upstream is sent: this request's span as its parent. */
  upstreamHeaders(): Record<string, string> {
    return outgoingHeaders(this.span);
  }
}

export class RunnerTraces {
  /** LLM calls awaiting their settle, by reservation id; bounded, and forgotten when they would have timed out. */
  readonly pending: LRUCache<string, PendingSettle>;

  constructor(
    readonly tracing: Tracing,
    settleTimeoutMs: number,
  ) {
    this.pending = new LRUCache({ max: 100_000, ttl: settleTimeoutMs, ttlResolution: 0 }); // no clock-caching timer per call (conf-store.ts)
  }

  /** A request's span: the child of the client's traceparent when it sent a valid one. */
  startRequest(request: { method: string; path: string; header: (name: string) => string | undefined }, route: string | null): RequestTrace {
    const parent = incomingContext(request.header);
    const span = this.tracing.tracer.startSpan(
      route ? `${request.method} ${route}` : request.method,
      {
        kind: SpanKind.SERVER,
        attributes: {
          'http.request.method': request.method,
          'url.path': request.path,
          ...(route ? { 'http.route': route, 'gatehouse.route': route } : {}),
        },
      },
      parent,
    );
    return new RequestTrace(this, span, trace.setSpan(parent, span));
  }

  /** An LLM call's settle: a span in its request's trace, with what it used and was charged. */
  settled(reservation: string, status: number, call: SettledCall): void {
    const pending = this.pending.get(reservation);
    if (!pending) return;
    this.pending.delete(reservation);
    const operation = typeof pending.attributes['gen_ai.operation.name'] === 'string' ? pending.attributes['gen_ai.operation.name'] : 'chat';
    const span = this.tracing.tracer.startSpan(
      `${operation} ${call.model}`,
      {
        kind: SpanKind.INTERNAL,
        attributes: {
          ...pending.attributes,
          'gen_ai.request.model': call.model,
          'http.response.status_code': status,
          'gatehouse.budget.reserved': call.reserved,
          'gatehouse.budget.charged': call.charged,
          'gatehouse.budget.usage_reported': call.seen,
          ...(call.seen ? { 'gen_ai.usage.input_tokens': call.prompt, 'gen_ai.usage.output_tokens': call.completion } : {}),
        },
      },
      trace.setSpanContext(
        incomingContext(() => undefined),
        pending.parent,
      ),
    );
    span.end();
  }

  shutdown(): Promise<void> {
    return this.tracing.shutdown();
  }
}

/** Marks a plugin's or a request's span failed, with a fixed message (an error's own may quote what it handled). */
export function failed(span: Span, message: string): void {
  span.setStatus({ code: SpanStatusCode.ERROR, message });
}
