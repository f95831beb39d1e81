// What the APISIX stand-in knows about one client request while the
// ext-plugin phases run: the counterpart of nginx's variables (`ctx.var`)
// and of the request APISIX will proxy. Rewrites change it; the proxy step
// reads it.
import { randomBytes } from 'node:crypto';
import { encodeQuery, parseQuery, type ArgTable } from './uri.js';

/** A header line; names are lower-cased, as `ngx.req.get_headers()` gives them. */
export interface HeaderLine {
  name: string;
  value: string;
}

/** A response header list with nginx's set (replace every line of a name) and add (append). */
export class ResponseHeaders {
  readonly lines: HeaderLine[] = [];

  set(name: string, value: string | null): void {
    const lower = name.toLowerCase();
    for (let i = this.lines.length - 1; i >= 0; i--) if (this.lines[i]!.name === lower) this.lines.splice(i, 1);
    if (value !== null) this.lines.push({ name: lower, value });
  }

  add(name: string, value: string | null): void {
    if (value === null) return;
    this.lines.push({ name: name.toLowerCase(), value });
  }

  get(name: string): string[] {
    const lower = name.toLowerCase();
    return this.lines.filter((l) => l.name === lower).map((l) => l.value);
  }
}

export interface RequestStateInit {
  method: string;
  /** The raw request target (`$request_uri`). */
  requestUri: string;
  /** nginx's `$uri`. */
  uri: string;
  /** The raw query string without `?`, or null when the target had no `?`. */
  query: string | null;
  headers: HeaderLine[];
  body: Buffer;
  remoteAddr: string;
  remotePort: number;
  serverAddr: string;
  serverPort: number;
  scheme: 'http' | 'https';
  routeId: string;
  startedAt: number;
}

export class RequestState {
  readonly method: string;
  readonly requestUri: string;
  readonly uri: string;
  readonly remoteAddr: string;
  readonly remotePort: number;
  readonly serverAddr: string;
  readonly serverPort: number;
  readonly scheme: 'http' | 'https';
  /** Set once the route is matched. */
  routeId: string;
  readonly startedAt: number;
  /** nginx's `$args`: null when the request had no query at all. */
  query: string | null;
  /** nginx's `$upstream_uri`: empty until a plugin sets it (already encoded, may carry `?args`). */
  upstreamUri = '';
  /** nginx's `$upstream_host`: starts as the client's Host header. */
  upstreamHost: string;
  headers: HeaderLine[];
  body: Buffer;
  /** nginx's `$request_id`: 16 random bytes in hex, one value for the whole request. */
  readonly requestId = randomBytes(16).toString('hex');
  /** Headers a Rewrite asked to add to the client's response. */
  readonly responseHeaderAdditions = new ResponseHeaders();
  /**
   * Values already read through `ctx.var`, which APISIX caches for the rest
   * of the request (apisix/core/ctx.lua; all but args and is_args): a header
   * variable the runner asked for keeps that value in a later log entry,
   * even after a Rewrite changed the header.
   */
  private readonly variableCache = new Map<string, string>();
  private cachedArgs: ArgTable | null = null;

  constructor(init: RequestStateInit) {
    this.method = init.method;
    this.requestUri = init.requestUri;
    this.uri = init.uri;
    this.query = init.query;
    this.headers = init.headers.map((h) => ({ name: h.name.toLowerCase(), value: h.value }));
    this.body = init.body;
    this.remoteAddr = init.remoteAddr;
    this.remotePort = init.remotePort;
    this.serverAddr = init.serverAddr;
    this.serverPort = init.serverPort;
    this.scheme = init.scheme;
    this.routeId = init.routeId;
    this.startedAt = init.startedAt;
    this.upstreamHost = this.header('host') ?? '';
  }

  header(name: string): string | null {
    const lower = name.toLowerCase();
    return this.headers.find((h) => h.name === lower)?.value ?? null;
  }

  /** `core.request.set_header`: replaces every line of the name; null deletes. */
  setHeader(name: string, value: string | null): void {
    const lower = name.toLowerCase();
    this.headers = this.headers.filter((h) => h.name !== lower);
    if (value !== null) this.headers.push({ name: lower, value });
  }

  /** `core.request.get_uri_args(ctx)`: parsed once and cached until the args are set. */
  get args(): ArgTable {
    this.cachedArgs ??= parseQuery(this.query ?? '');
    return this.cachedArgs;
  }

  /** `core.request.set_uri_args(ctx, args)`: `$args` becomes the encoded table (or the given string). */
  setArgs(args: ArgTable | string): void {
    this.query = typeof args === 'string' ? args : encodeQuery(args);
    this.cachedArgs = null;
  }

  /** nginx's `$host`: the Host header without port, lower-cased (server address when absent). */
  get host(): string {
    const raw = this.header('host');
    if (!raw) return this.serverAddr;
    const withoutPort = raw.startsWith('[') ? raw.slice(0, raw.indexOf(']') + 1) : raw.replace(/:\d*$/, '');
    return withoutPort.toLowerCase();
  }

  /** `ctx.var[name]`: the cached value when there is one, else the current one, cached unless null. */
  cachedVariable(name: string, compute: (name: string) => string | null = (n) => this.variable(n)): string | null {
    const cached = this.variableCache.get(name);
    if (cached !== undefined) return cached;
    const value = compute(name);
    if (value !== null && name !== 'args' && name !== 'is_args') this.variableCache.set(name, value);
    return value;
  }

  /**
   * The value of an nginx/APISIX variable now, as `ctx.var[name]` would
   * compute it; null when unset (an ExtraInfo answer then has no result).
   */
  variable(name: string): string | null {
    switch (name) {
      case 'remote_addr':
        return this.remoteAddr;
      case 'remote_port':
        return String(this.remotePort);
      case 'server_addr':
        return this.serverAddr;
      case 'server_port':
        return String(this.serverPort);
      case 'route_id':
        return this.routeId;
      case 'request_method':
      case 'method':
        return this.method;
      case 'request_uri':
        return this.requestUri;
      case 'uri':
        return this.uri;
      case 'host':
        return this.host;
      case 'scheme':
        return this.scheme;
      case 'request_time':
        // nginx: seconds with millisecond resolution.
        return ((Date.now() - this.startedAt) / 1000).toFixed(3);
      case 'args':
      case 'query_string':
        return this.query;
      case 'is_args':
        return this.query === null ? '' : '?';
      case 'upstream_uri':
        return this.upstreamUri;
      case 'upstream_host':
        return this.upstreamHost;
      case 'server_protocol':
        return 'HTTP/1.1';
      case 'content_type':
        return this.header('content-type');
      case 'content_length':
        return this.header('content-length');
      case 'request_length':
        return null;
      case 'request_id':
        return this.requestId;
    }
    if (name.startsWith('http_')) return this.header(name.slice(5).replace(/_/g, '-'));
    if (name.startsWith('arg_')) {
      const values = this.args.get(name.slice(4));
      const first = values?.[0];
      return first === undefined ? null : first === true ? '' : first;
    }
    if (name.startsWith('cookie_')) {
      const wanted = name.slice(7);
      for (const header of this.headers) {
        if (header.name !== 'cookie') continue;
        for (const pair of header.value.split(';')) {
          const eq = pair.indexOf('=');
          if (eq !== -1 && pair.slice(0, eq).trim() === wanted) return pair.slice(eq + 1).trim();
        }
      }
      return null;
    }
    return null;
  }
}
