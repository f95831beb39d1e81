// Runs a prepared chain for one HTTPReqCall or HTTPRespCall and turns what
// the plugins did into the protocol's answer. Every answer is well formed:
// a Stop always carries a body, and a plugin that throws fails the call
// closed with a 500 rather than letting the request through.
import { STATUS_CODES } from 'node:http';
import type { Logger } from 'pino';
import type { HttpReqCallRequest, HttpReqCallResponse, HttpRespCallRequest, HttpRespCallResponse, StopAction, TextEntry } from '../protocol/index.js';
import { GatewayRequest, StopResponse, UpstreamResponse, problemDocument, toBytes, type ExtraInfoSource } from '../api/http.js';
import type { CallContext } from '../api/plugin.js';
import type { PreparedPlugin } from './conf-store.js';
import { formatIp } from './ip.js';
import { failed, type RequestTrace, type RunnerTraces } from './tracing.js';

/** A failure of the connection itself, not of a plugin: it ends the call. */
export class ConnectionFault extends Error {}

/** The peer went away mid-call: there is no one left to answer. */
export class CallAbortedError extends ConnectionFault {
  override name = 'CallAbortedError';
}

/** A frame that breaks the protocol: answered with BAD_REQUEST, then the connection closes. */
export class ProtocolViolation extends ConnectionFault {
  override name = 'ProtocolViolation';
}

export function problemStop(status: number, detail: string): StopAction {
  return {
    type: 'stop',
    status,
    headers: [{ name: 'content-type', value: 'application/problem+json' }],
    body: toBytes(JSON.stringify(problemDocument(status, detail))),
  };
}

function stopAction(response: StopResponse): StopAction {
  const status = response.status || 200;
  const headers = response.headers.all() as TextEntry[];
  let body = response.body;
  if (body === null || body.length === 0) {
    // An empty Stop body reaches clients as nginx's default error page.
    if (status >= 400) {
      body = toBytes(JSON.stringify(problemDocument(status)));
      if (!response.headers.has('content-type')) headers.push({ name: 'content-type', value: 'application/problem+json' });
    } else {
      body = toBytes(STATUS_CODES[status] ?? String(status));
    }
  }
  return { type: 'stop', status, headers, body };
}

/** Each prepared chain's credential headers (Plugin.credentialHeaders), worked out on its first call. */
const chainCredentialHeaders = new WeakMap<PreparedPlugin[], ReadonlySet<string>>();

function credentialHeadersOf(chain: PreparedPlugin[]): ReadonlySet<string> {
  let names = chainCredentialHeaders.get(chain);
  if (!names) {
    names = new Set(chain.flatMap(({ plugin, conf }) => plugin.credentialHeaders?.(conf) ?? []).map((name) => name.toLowerCase()));
    chainCredentialHeaders.set(chain, names);
  }
  return names;
}

/**
 * Runs `chain` for one request. With `traces` (OTEL_* set), the request has
 * a span, each plugin a child span, and the upstream is sent its traceparent;
 * without, nothing of it is made.
 */
export async function runRequestChain(
  chain: PreparedPlugin[],
  call: HttpReqCallRequest,
  extra: ExtraInfoSource,
  log: Logger,
  traces: RunnerTraces | null = null,
): Promise<HttpReqCallResponse> {
  const request = new GatewayRequest(
    {
      id: call.id,
      method: call.method,
      path: call.path,
      srcIp: () => formatIp(call.srcIp),
      // The call decodes its headers and args when a plugin first reads them.
      headers: () => call.headers,
      args: () => call.args,
    },
    extra,
  );
  const response = new StopResponse();
  const route = chain[0]?.route ?? null;
  if (traces) {
    const requestTrace = traces.startRequest({ method: call.method, path: request.path, header: (name) => request.headers.get(name) ?? undefined }, route);
    return tracedRequestChain(chain, call, request, response, log, requestTrace);
  }
  const ctx: CallContext = { state: new Map(), log, route, credentialHeaders: credentialHeadersOf(chain) };

  for (const { plugin, conf } of chain) {
    try {
      // A plugin that finished at once (no promise) is not waited on: no turn of the microtask queue per plugin.
      const pending = plugin.requestFilter(conf, request, response, ctx);
      if (pending) await pending;
    } catch (err) {
      if (err instanceof ConnectionFault) throw err;
      log.error({ err, plugin: plugin.name, requestId: call.id }, 'plugin failed; denying the request');
      return { id: call.id, action: problemStop(500, `plugin ${plugin.name} failed`) };
    }
    if (response.stopped) return { id: call.id, action: stopAction(response) };
  }
  return rewriteOf(call.id, request);
}

/** runRequestChain with spans: the request's, each plugin's, and traceparent for the upstream. */
async function tracedRequestChain(
  chain: PreparedPlugin[],
  call: HttpReqCallRequest,
  request: GatewayRequest,
  response: StopResponse,
  log: Logger,
  requestTrace: RequestTrace,
): Promise<HttpReqCallResponse> {
  const { span } = requestTrace;
  const ctx: CallContext = { state: new Map(), log, route: chain[0]?.route ?? null, credentialHeaders: credentialHeadersOf(chain), trace: requestTrace };
  try {
    for (const { plugin, conf } of chain) {
      const pluginSpan = requestTrace.startPlugin(plugin.name);
      try {
        await plugin.requestFilter(conf, request, response, ctx);
      } catch (err) {
        failed(pluginSpan, 'plugin failed');
        pluginSpan.end();
        if (err instanceof ConnectionFault) {
          failed(span, 'connection failed');
          throw err;
        }
        log.error({ err, plugin: plugin.name, requestId: call.id }, 'plugin failed; denying the request');
        failed(span, `plugin ${plugin.name} failed`);
        span.setAttributes({ 'gatehouse.outcome': 'stop', 'http.response.status_code': 500 });
        return { id: call.id, action: problemStop(500, `plugin ${plugin.name} failed`) };
      }
      if (response.stopped) {
        const action = stopAction(response);
        pluginSpan.setAttribute('http.response.status_code', action.status);
        pluginSpan.end();
        span.setAttributes({ 'gatehouse.outcome': 'stop', 'gatehouse.stopped_by': plugin.name, 'http.response.status_code': action.status });
        return { id: call.id, action };
      }
      pluginSpan.end();
    }
    for (const [name, value] of Object.entries(requestTrace.upstreamHeaders())) request.headers.set(name, value);
    span.setAttribute('gatehouse.outcome', 'pass');
    return rewriteOf(call.id, request);
  } finally {
    span.end();
  }
}

function rewriteOf(id: number, request: GatewayRequest): HttpReqCallResponse {
  if (!request.isChanged) return { id, action: null };
  const { path, body, headers, args, responseHeaders } = request.rewritten;
  return {
    id,
    action: {
      type: 'rewrite',
      path,
      headers,
      // APISIX (before apache/apisix#13080) drops the client's query when a
      // Rewrite changes the path and sends no args: send them all then.
      args: path === null ? args : [...request.args.all(), ...args.filter((entry) => entry.value === null)],
      // Only additions make sense on the client response.
      respHeaders: responseHeaders.filter((e) => e.value !== null),
      body,
    },
  };
}

/**
 * Upstream headers the answer to HTTPRespCall leaves out. APISIX builds the
 * client's response itself from the answer: headers that framed the
 * upstream's message (a content-length for a body a plugin replaced, say)
 * would be wrong in it, and nginx sets these itself, as its proxy would.
 */
const NOT_PASSED_ON = new Set([
  'content-length',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
  'date',
  'server',
]);

export async function runResponseChain(chain: PreparedPlugin[], call: HttpRespCallRequest, extra: ExtraInfoSource, log: Logger): Promise<HttpRespCallResponse> {
  const response = new UpstreamResponse(call.id, call.status, call.headers, extra);
  const ctx: CallContext = { state: new Map(), log };
  for (const { plugin, conf } of chain) {
    if (!plugin.responseFilter) continue;
    try {
      await plugin.responseFilter(conf, response, ctx);
    } catch (err) {
      if (err instanceof ConnectionFault) throw err;
      log.error({ err, plugin: plugin.name, requestId: call.id }, 'response plugin failed; replacing the response');
      const problem = problemStop(500, `plugin ${plugin.name} failed`);
      return { id: call.id, status: 500, headers: problem.headers, body: problem.body };
    }
  }
  const changes = response.changes;
  return {
    id: call.id,
    status: changes.status ?? 0,
    // Always the full set, changed or not: headers sent back replace all of
    // the upstream's, and with none APISIX keeps the upstream's minus its
    // exclusion list, which drops content-type, location and www-authenticate.
    headers: response.headers.all().filter((entry) => !NOT_PASSED_ON.has(entry.name)),
    body: changes.body,
  };
}
