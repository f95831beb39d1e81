// Sending the (possibly rewritten) request to the route's upstream with
// undici, the way nginx's proxy module (or, for ext-plugin-post-resp,
// lua-resty-http) would. The answer's body is handed over as it arrives, so
// that it can go on to the client chunk by chunk, as nginx passes it on.
import { readFileSync } from 'node:fs';
import { Agent, errors as undiciErrors, request } from 'undici';
import type { Dispatcher } from 'undici';
import type { HeaderLine, RequestState } from './request-state.js';
import type { Upstream, UpstreamNode } from './routes.js';
import { uriSafeEncode } from './uri.js';

/** Hop-by-hop request headers nginx does not pass on (plus those it recomputes). */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'content-length',
  'expect',
]);

/** Upstream response headers nginx drops (proxy_hide_header defaults and hop-by-hop). */
const HIDDEN_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'date',
  'server',
  'x-pad',
  'x-accel-expires',
  'x-accel-redirect',
  'x-accel-limit-rate',
  'x-accel-buffering',
  'x-accel-charset',
]);

export interface UpstreamResult {
  status: number;
  headers: HeaderLine[];
  body: Buffer;
}

/** An upstream answer whose status and headers have arrived; its body is read as it comes. */
export interface OpenedUpstream {
  status: number;
  headers: HeaderLine[];
  /** The body's chunks as they arrive; a failure or timeout is thrown as an UpstreamError. */
  chunks(): AsyncGenerator<Buffer>;
  /** The whole body; above `limit` bytes an UpstreamError (502). */
  readAll(limit: number): Promise<Buffer>;
  /** Drops the rest of the body (closing the connection when unread bytes remain). */
  discard(): void;
}

/** Why the upstream could not answer: nginx answers 502 for a failure, 504 for a timeout. */
export class UpstreamError extends Error {
  constructor(
    message: string,
    readonly status: 502 | 504,
  ) {
    super(message);
    this.name = 'UpstreamError';
  }
}

export class UpstreamProxy {
  private readonly agents = new Map<number, Agent>();
  private readonly roundRobin = new WeakMap<Upstream, number>();
  private trusted: Buffer | undefined;

  /** `tls`: verify https upstreams' certificates (as nginx with proxy_ssl_verify on), against this bundle or the system's roots. */
  constructor(private readonly tls: { verify: boolean; trustedCertificate: string | null } = { verify: false, trustedCertificate: null }) {}

  /** Weighted round robin over the nodes with a weight above 0. */
  pickNode(upstream: Upstream): UpstreamNode {
    const expanded = upstream.nodes.flatMap((node) => new Array<UpstreamNode>(node.weight).fill(node));
    const pool = expanded.length > 0 ? expanded : upstream.nodes;
    const next = this.roundRobin.get(upstream) ?? 0;
    this.roundRobin.set(upstream, next + 1);
    return pool[next % pool.length]!;
  }

  /** The `$upstream_uri` nginx uses: a plugin's, or the encoded `$uri` plus `$is_args$args`. */
  static upstreamTarget(state: RequestState): string {
    if (state.upstreamUri !== '') return state.upstreamUri;
    const path = uriSafeEncode(state.uri);
    return state.query === null ? path : `${path}?${state.query}`;
  }

  /**
   * `viaLuaClient`: ext-plugin-post-resp fetches the upstream with
   * lua-resty-http instead of nginx's proxy: it sends the request headers as
   * `core.request.headers()` gives them (all of them, Host as the request
   * has it), with none of nginx's X-Forwarded-* or pass_host handling.
   */
  async forward(upstream: Upstream, state: RequestState, bodyLimitBytes: number, viaLuaClient = false): Promise<UpstreamResult> {
    const opened = await this.open(upstream, state, viaLuaClient);
    const body = await opened.readAll(bodyLimitBytes);
    return { status: opened.status, headers: opened.headers, body };
  }

  /**
   * Sends the request and resolves once the upstream's status and headers
   * are in (see forward for `viaLuaClient`); `signal` drops the request (nginx
   * closes the upstream connection when the client leaves).
   */
  async open(upstream: Upstream, state: RequestState, viaLuaClient = false, signal?: AbortSignal): Promise<OpenedUpstream> {
    const node = this.pickNode(upstream);
    const hostPart = node.host.includes(':') ? `[${node.host}]` : node.host;
    const origin = `${upstream.scheme}://${hostPart}:${node.port}`;
    const target = UpstreamProxy.upstreamTarget(state);

    const headers: [string, string][] = [];
    for (const line of state.headers) {
      if (HOP_BY_HOP.has(line.name)) continue;
      if (!viaLuaClient && (line.name === 'host' || line.name.startsWith('x-forwarded-') || line.name === 'x-real-ip')) continue;
      headers.push([line.name, line.value]);
    }
    if (!viaLuaClient) {
      headers.push(['host', this.upstreamHostHeader(upstream, state, node)]);
      headers.push(['x-real-ip', state.remoteAddr]);
      const forwardedFor = state.header('x-forwarded-for');
      headers.push(['x-forwarded-for', forwardedFor ? `${forwardedFor}, ${state.remoteAddr}` : state.remoteAddr]);
      headers.push(['x-forwarded-proto', state.scheme]);
      headers.push(['x-forwarded-host', state.host]);
      headers.push(['x-forwarded-port', String(state.serverPort)]);
    }

    const withBody = state.body.length > 0 || ['POST', 'PUT', 'PATCH'].includes(state.method);
    let response: Dispatcher.ResponseData;
    try {
      response = await request(`${origin}${target}`, {
        method: state.method as Dispatcher.HttpMethod,
        headers: headers.flat(),
        body: withBody ? state.body : null,
        dispatcher: this.agent(upstream.timeout.connect),
        headersTimeout: upstream.timeout.read * 1000,
        bodyTimeout: upstream.timeout.read * 1000,
        ...(signal ? { signal } : {}),
      });
    } catch (err) {
      throw mapUpstreamError(err);
    }

    const out: HeaderLine[] = [];
    for (const [name, value] of Object.entries(response.headers)) {
      if (value === undefined) continue;
      for (const v of Array.isArray(value) ? value : [value]) out.push({ name: name.toLowerCase(), value: v });
    }
    const body = response.body;
    async function* chunks(): AsyncGenerator<Buffer> {
      try {
        for await (const chunk of body) yield chunk as Buffer;
      } catch (err) {
        throw mapUpstreamError(err);
      }
    }
    return {
      status: response.statusCode,
      headers: out,
      chunks,
      async readAll(limit: number): Promise<Buffer> {
        const parts: Buffer[] = [];
        let size = 0;
        for await (const chunk of chunks()) {
          size += chunk.length;
          if (size > limit) {
            body.destroy();
            throw new UpstreamError(`upstream response body larger than ${limit} bytes`, 502);
          }
          parts.push(chunk);
        }
        return Buffer.concat(parts);
      },
      discard: () => {
        body.destroy();
      },
    };
  }

  /** Upstream response headers the client gets after nginx's proxy module. */
  static passedResponseHeaders(headers: readonly HeaderLine[]): HeaderLine[] {
    return headers.filter((h) => !HIDDEN_RESPONSE_HEADERS.has(h.name));
  }

  async close(): Promise<void> {
    const agents = [...this.agents.values()];
    this.agents.clear();
    await Promise.all(agents.map((agent) => agent.close()));
  }

  /** APISIX's pass_host: pass keeps `$upstream_host`; node uses the node's address; rewrite uses upstream_host. */
  private upstreamHostHeader(upstream: Upstream, state: RequestState, node: UpstreamNode): string {
    if (upstream.passHost === 'rewrite') return upstream.upstreamHost!;
    if (upstream.passHost === 'node') {
      const defaultPort = upstream.scheme === 'https' ? 443 : 80;
      const host = node.host.includes(':') ? `[${node.host}]` : node.host;
      return node.port === defaultPort ? host : `${host}:${node.port}`;
    }
    return state.upstreamHost;
  }

  private agent(connectTimeoutSeconds: number): Agent {
    let agent = this.agents.get(connectTimeoutSeconds);
    if (!agent) {
      // nginx verifies upstream certificates only with proxy_ssl_verify on (config.yaml turns it on).
      if (this.tls.verify && this.tls.trustedCertificate && !this.trusted) this.trusted = readFileSync(this.tls.trustedCertificate);
      agent = new Agent({
        connect: {
          timeout: connectTimeoutSeconds * 1000,
          rejectUnauthorized: this.tls.verify,
          ...(this.tls.verify && this.trusted ? { ca: this.trusted } : {}),
        },
      });
      this.agents.set(connectTimeoutSeconds, agent);
    }
    return agent;
  }
}

function mapUpstreamError(err: unknown): UpstreamError {
  const e = err as Error & { code?: string };
  const timeout =
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError ||
    e.code === 'ETIMEDOUT';
  return new UpstreamError(`upstream request failed: ${e.code ?? ''} ${e.message}`.trim(), timeout ? 504 : 502);
}
