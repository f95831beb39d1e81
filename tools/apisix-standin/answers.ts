// How APISIX applies a runner's answers, as pure functions over the
// stand-in's request state: Stop (answer the client), Rewrite (change the
// upstream request) and the HTTPRespCall answer (change the upstream's
// response). Each rule here is one the reference spells out.
import type { HttpRespCallResponse, RewriteAction, StopAction, TextEntry } from '../../plugins/protocol/index.js';
import { ResponseHeaders, type HeaderLine, type RequestState } from './request-state.js';
import { uriSafeEncode, type ArgValue } from './uri.js';

/** What the stand-in sends the client. A null body means "no body" (nginx may then send its error page). */
export interface ClientResponse {
  status: number;
  headers: ResponseHeaders;
  body: Buffer | null;
}

/**
 * Response headers APISIX ignores in a Rewrite's resp_headers, and drops from
 * the upstream's headers when an HTTPRespCall answer gives none.
 */
export const EXCLUDED_RESPONSE_HEADERS: ReadonlySet<string> = new Set([
  'connection',
  'content-length',
  'transfer-encoding',
  'location',
  'server',
  'www-authenticate',
  'content-encoding',
  'content-type',
  'content-location',
  'content-language',
]);

/** Sets the first entry of each name and appends later ones, names lower-cased. */
function applyEntries(target: ResponseHeaders, entries: readonly TextEntry[], skip?: ReadonlySet<string>): void {
  const seen = new Set<string>();
  for (const entry of entries) {
    const name = entry.name.toLowerCase();
    if (skip?.has(name)) continue;
    if (seen.has(name)) target.add(name, entry.value);
    else target.set(name, entry.value);
    seen.add(name);
  }
}

/** Stop: status 0 means 200; the first header of a name is set, later ones appended; an empty body is no body. */
export function stopToClientResponse(stop: StopAction): ClientResponse {
  const headers = new ResponseHeaders();
  applyEntries(headers, stop.headers);
  const body = stop.body && stop.body.length > 0 ? Buffer.from(stop.body) : null;
  return { status: stop.status === 0 ? 200 : stop.status, headers, body };
}

export interface RewriteOptions {
  /**
   * APISIX before apache/apisix#13080 sets `$upstream_uri` to a rewritten
   * path without the query, so a path-only Rewrite drops the client's query
   * string (apache/apisix#9997, #12240). Later versions keep it.
   */
  keepQueryOnPathRewrite: boolean;
}

/**
 * Rewrite, in APISIX's order: path (URI-encoded, becomes `$upstream_uri`),
 * headers (set; no value deletes; `host` also changes the upstream host;
 * last entry of a name wins), non-empty body, resp_headers (filtered),
 * args (first entry of a name replaces, later ones append, no value deletes).
 * `argsSent` is the args table HTTPReqCall was built from.
 */
export function applyRewrite(state: RequestState, rewrite: RewriteAction, argsSent: Map<string, ArgValue[]>, options: RewriteOptions): void {
  let encodedPath: string | null = null;
  if (rewrite.path !== null) {
    encodedPath = uriSafeEncode(rewrite.path);
    state.upstreamUri = encodedPath;
    if (options.keepQueryOnPathRewrite && state.query !== null && state.query !== '') {
      state.upstreamUri = `${encodedPath}?${state.query}`;
    }
  }

  for (const entry of rewrite.headers) {
    state.setHeader(entry.name, entry.value);
    if (entry.name.toLowerCase() === 'host') state.upstreamHost = entry.value ?? '';
  }

  if (rewrite.body && rewrite.body.length > 0) {
    // ngx.req.set_body_data: nginx recomputes Content-Length when proxying.
    state.body = Buffer.from(rewrite.body);
  }

  applyEntries(state.responseHeaderAdditions, rewrite.respHeaders, EXCLUDED_RESPONSE_HEADERS);

  if (rewrite.args.length > 0) {
    const args = new Map(argsSent);
    const changed = new Set<string>();
    for (const entry of rewrite.args) {
      if (entry.value === null) {
        args.delete(entry.name);
        continue;
      }
      if (changed.has(entry.name)) args.set(entry.name, [...(args.get(entry.name) ?? []), entry.value]);
      else args.set(entry.name, [entry.value]);
      changed.add(entry.name);
    }
    state.setArgs(args);
    if (encodedPath !== null) state.upstreamUri = `${encodedPath}?${state.query ?? ''}`;
  }
}

/** The upstream's answer as the stand-in holds it for ext-plugin-post-resp. */
export interface UpstreamAnswer {
  status: number;
  headers: HeaderLine[];
  body: Buffer;
}

/** Upstream headers minus APISIX's exclusion list (used when the runner returns no headers). */
export function filteredUpstreamHeaders(upstream: { headers: readonly HeaderLine[] }): ResponseHeaders {
  const headers = new ResponseHeaders();
  for (const line of upstream.headers) {
    if (!EXCLUDED_RESPONSE_HEADERS.has(line.name.toLowerCase())) headers.add(line.name, line.value);
  }
  return headers;
}

/**
 * HTTPRespCall answer: headers given replace all of the upstream's (no
 * exclusion list); none given keeps the upstream's minus the exclusion
 * list. A body replaces the upstream's (status 0 then keeps the upstream
 * status); status 0 with no body leaves status and body as they were.
 */
export function applyRespCallAnswer(upstream: UpstreamAnswer, answer: HttpRespCallResponse): ClientResponse {
  const head = respCallAnswerHead(upstream, answer);
  return { ...head, body: head.body ?? upstream.body };
}

/**
 * The HTTPRespCall answer applied to the upstream's status and headers
 * alone: `body` is the runner's body, or null when the upstream's body goes
 * to the client (whole if the runner read it, else streamed).
 */
export function respCallAnswerHead(upstream: Omit<UpstreamAnswer, 'body'>, answer: HttpRespCallResponse): ClientResponse {
  let headers: ResponseHeaders;
  if (answer.headers.length > 0) {
    headers = new ResponseHeaders();
    applyEntries(headers, answer.headers);
  } else {
    headers = filteredUpstreamHeaders(upstream);
  }
  const body = answer.body && answer.body.length > 0 ? Buffer.from(answer.body) : null;
  return { status: answer.status === 0 ? upstream.status : answer.status, headers, body };
}

const NGINX_STATUS_TEXT: Record<number, string> = {
  301: '301 Moved Permanently',
  302: '302 Found',
  303: '303 See Other',
  307: '307 Temporary Redirect',
  308: '308 Permanent Redirect',
  400: '400 Bad Request',
  401: '401 Authorization Required',
  402: '402 Payment Required',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Not Allowed',
  406: '406 Not Acceptable',
  408: '408 Request Time-out',
  409: '409 Conflict',
  410: '410 Gone',
  411: '411 Length Required',
  412: '412 Precondition Failed',
  413: '413 Request Entity Too Large',
  414: '414 Request-URI Too Large',
  415: '415 Unsupported Media Type',
  416: '416 Requested Range Not Satisfiable',
  421: '421 Misdirected Request',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  501: '501 Not Implemented',
  502: '502 Bad Gateway',
  503: '503 Service Temporarily Unavailable',
  504: '504 Gateway Time-out',
  505: '505 HTTP Version Not Supported',
  507: '507 Insufficient Storage',
};

/**
 * The page nginx (as APISIX ships it) sends for a status of 300 and above
 * when nothing else wrote a body; null for codes nginx has no page for
 * (418, for example), which then go out with an empty body.
 */
export function nginxErrorPage(status: number): Buffer | null {
  const text = NGINX_STATUS_TEXT[status];
  if (!text) return null;
  return Buffer.from(
    `<html>\r\n<head><title>${text}</title></head>\r\n<body>\r\n<center><h1>${text}</h1></center>\r\n` +
      `<hr><center>openresty</center>\r\n` +
      `<p><em>Powered by <a href="https://apisix.apache.org/">APISIX</a>.</em></p></body>\r\n</html>\r\n`,
  );
}
