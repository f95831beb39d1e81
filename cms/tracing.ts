// The CMS's traces (on only with OTEL_*: runtime/tracing.ts): a span per
// HTTP request, continuing the client's traceparent, and child spans for the
// steps of a write (compile, tests, load check, the etcd write) made with
// inSpan() wherever they run. The request's span is carried to them by an
// AsyncLocalStorage entered in the first onRequest hook; without traces no
// hook is added and inSpan() runs its function alone.
//
// What goes into a span: the method, the path (never the query), the route,
// the status, the policy's name. Never a header's value (traceparent aside),
// a token or a body.
import { AsyncLocalStorage } from 'node:async_hooks';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { incomingContext, type Tracing } from '../runtime/tracing.js';

interface Current {
  tracer: Tracer;
  context: Context;
}

const current = new AsyncLocalStorage<Current>();

/** Runs `fn` in a child span of the request's, when the request has one. */
export async function inSpan<T>(name: string, fn: () => Promise<T>, attributes?: Attributes): Promise<T> {
  const parent = current.getStore();
  if (!parent) return fn();
  const span = parent.tracer.startSpan(name, attributes ? { attributes } : {}, parent.context);
  try {
    return await current.run({ tracer: parent.tracer, context: trace.setSpan(parent.context, span) }, fn);
  } catch (error) {
    // A fixed message: an error's own may quote what it handled.
    span.setStatus({ code: SpanStatusCode.ERROR, message: `${name} failed` });
    throw error;
  } finally {
    span.end();
  }
}

/** Adds the request spans to `app` (call it before any other onRequest hook), and flushes them when it closes. */
export function registerTracing(app: FastifyInstance, tracing: Tracing): void {
  const { tracer } = tracing;
  const spans = new WeakMap<FastifyRequest, Span>();
  app.addHook('onRequest', (request, _reply, done) => {
    const header = (name: string) => {
      const value = request.headers[name];
      return Array.isArray(value) ? value[0] : value;
    };
    const parent = incomingContext(header);
    const span = tracer.startSpan(
      request.method,
      { kind: SpanKind.SERVER, attributes: { 'http.request.method': request.method, 'url.path': request.url.split('?', 1)[0]! } },
      parent,
    );
    spans.set(request, span);
    // What follows (the other hooks, the handler) runs with the request's span as the current parent.
    current.run({ tracer, context: trace.setSpan(parent, span) }, done);
  });
  const end = (request: FastifyRequest, status: number | null) => {
    const span = spans.get(request);
    if (!span) return;
    spans.delete(request);
    const route = request.routeOptions.url;
    if (route) {
      span.updateName(`${request.method} ${route}`);
      span.setAttribute('http.route', route);
    }
    if (status === null) span.setStatus({ code: SpanStatusCode.ERROR, message: 'request aborted' });
    else {
      span.setAttribute('http.response.status_code', status);
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  };
  app.addHook('onResponse', (request, reply, done) => {
    end(request, reply.statusCode);
    done();
  });
  app.addHook('onRequestAbort', (request, done) => {
    end(request, null);
    done();
  });
  app.addHook('onClose', async () => {
    await tracing.shutdown();
  });
}
