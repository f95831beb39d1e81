// APISIX STAND-IN — not APISIX. A small local HTTP server that plays
// APISIX's part for Gatehouse's development and tests, because APISIX itself
// cannot be installed here. It reproduces what APISIX 3.x does around the
// ext-plugin runner (see ../../../shared/reference/apisix-ext-plugin.md and
// tools/apisix-standin/README.md): routes from a standalone apisix.yaml, the
// runner started from config.yaml's ext-plugin.cmd, conf tokens, ExtraInfo,
// Stop/Rewrite/HTTPRespCall application, 503/500 on runner failures, and
// proxying to the upstream with the answer streamed back. Of APISIX's own
// plugins it implements http-logger (http-logger.ts), and no other.
import { existsSync, mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { applyRewrite, nginxErrorPage, respCallAnswerHead, stopToClientResponse, type ClientResponse } from './answers.js';
import { ExtPluginClient, GatewayInternalError } from './ext-plugin-client.js';
import { loadGatewayConfig, resolveRunnerCmd, runnerEnvironment, type GatewayConfig } from './gateway-config.js';
import { RequestState, ResponseHeaders, type HeaderLine } from './request-state.js';
import { customLogEntry, HttpLoggers } from './http-logger.js';
import { loadRoutesFile, matchRoute, type ExtPluginConf, type Route } from './routes.js';
import { RunnerSupervisor } from './runner-process.js';
import { UpstreamError, UpstreamProxy, type OpenedUpstream } from './upstream-proxy.js';
import { normalizeRequestPath, splitRequestTarget } from './uri.js';
import { findRepoRoot } from '../repo-root.js';

/** The Server header: says plainly that this is not a real APISIX. */
export const STANDIN_SERVER_HEADER = 'APISIX/3 (Gatehouse stand-in)';
/** Request bodies (and upstream bodies a post-resp runner reads) are buffered: above this, 413 (502 for an upstream body). */
export const DEFAULT_BODY_LIMIT_BYTES = 8 * 1024 * 1024;
/** nginx's default_type with APISIX's charset. */
const DEFAULT_CONTENT_TYPE = 'text/plain; charset=utf-8';

export interface StandinOptions {
  /** Repository root: relative paths in ext-plugin.cmd are resolved against it. Default: found from this file. */
  repoRoot?: string;
  /** APISIX's config.yaml. Default `<root>/apisix-conf/config.yaml` (optional file). */
  configPath?: string;
  /** The standalone routes file. Default `<root>/apisix-conf/apisix.yaml`. */
  routesPath?: string;
  /** Proxy port; 0 (default) picks a free one. */
  port?: number;
  host?: string;
  /** Overrides config.yaml's ext-plugin.cmd. */
  runnerCmd?: string[];
  /** Like ext-plugin.path_for_test: connect to a runner already listening there instead of spawning one. */
  runnerSocketPath?: string;
  /** APISIX_CONF_EXPIRE_TIME handed to the runner and used for the token cache (default 3600). */
  confExpireSeconds?: number;
  /** The environment nginx would filter for the runner (default process.env). */
  parentEnv?: NodeJS.ProcessEnv;
  /** Runner socket timeouts: connect 1 s and read 60 s as in APISIX; lower them in tests. */
  connectTimeoutMs?: number;
  readTimeoutMs?: number;
  prepareLockTimeoutMs?: number;
  respawnDelayMs?: number;
  killDelayMs?: number;
  bodyLimitBytes?: number;
  workerId?: number;
  /** Re-read the routes file this often, as standalone mode does every second; null disables. */
  reloadIntervalMs?: number | null;
  /** Model APISIX with apache/apisix#13080 (path-only Rewrite keeps the query). Default false. */
  keepQueryOnPathRewrite?: boolean;
  /** Wait until the spawned runner's socket accepts connections before resolving (default 15 s; 0 to skip; not done for an external runner unless set). */
  waitForRunnerMs?: number;
  logger?: Logger;
}

export interface StandinHandle {
  /** `http://host:port` of the stand-in. */
  url: string;
  port: number;
  /** The runner's socket path (no `unix:`). */
  socketPath: string;
  stop(): Promise<void>;
  /** The spawned runner's pid; null between an exit and the respawn, or when connecting to an external runner. */
  runnerPid(): number | null;
  /** How many times the runner was started. */
  runnerSpawns(): number;
  /** Recent lines the runner wrote (stdout and stderr merged). */
  runnerOutput(): string[];
  /** Resolves when the runner's socket accepts a connection. */
  waitForRunner(timeoutMs?: number): Promise<void>;
  /** Resolves at the spawned runner's next exit. */
  waitForRunnerExit(): Promise<void>;
  routes(): readonly Route[];
  /** Re-reads the routes file now; throws (keeping the old routes) when it is invalid. */
  reloadRoutes(): void;
  flushTokens(): void;
  /** PrepareConf / HTTPReqCall / HTTPRespCall counts and token flushes. */
  stats(): { prepareConf: number; httpReqCall: number; httpRespCall: number; tokenFlushes: number; cachedTokens: number; idleConnections: number };
}

export async function startStandin(options: StandinOptions = {}): Promise<StandinHandle> {
  const log = options.logger ?? pino({ name: 'apisix-standin', level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
  const root = options.repoRoot ?? findRepoRoot();
  const configPath = options.configPath ?? join(root, 'apisix-conf', 'config.yaml');
  const routesPath = options.routesPath ?? join(root, 'apisix-conf', 'apisix.yaml');
  const gatewayConfig: GatewayConfig = existsSync(configPath)
    ? loadGatewayConfig(configPath)
    : { nodeListen: null, runnerCmd: null, pathForTest: null, envs: [], upstreamTls: { verify: false, trustedCertificate: null }, plugins: null };
  const confExpireSeconds = options.confExpireSeconds ?? 3600;
  const bodyLimitBytes = options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const keepQueryOnPathRewrite = options.keepQueryOnPathRewrite ?? false;

  // Routes: loaded once now (errors are fatal), then re-read like standalone mode.
  let confVersion = 1;
  // `${{NAME}}` in apisix.yaml is resolved from what nginx lets its workers see.
  const routeOptions = { enabledPlugins: gatewayConfig.plugins, env: runnerEnvironment(gatewayConfig.envs, options.parentEnv ?? process.env, {}) };
  let routes = loadRoutesFile(routesPath, confVersion, routeOptions);
  let routesStamp = fileStamp(routesPath);
  let lastRoutesText = readFileSync(routesPath, 'utf8');
  const reloadRoutes = () => {
    const stamp = fileStamp(routesPath);
    const next = loadRoutesFile(routesPath, confVersion + 1, routeOptions);
    confVersion++;
    routes = next;
    routesStamp = stamp;
    log.info({ routes: routes.length, confVersion }, 'routes reloaded');
  };
  let reloadTimer: NodeJS.Timeout | null = null;
  const reloadIntervalMs = options.reloadIntervalMs === undefined ? 1000 : options.reloadIntervalMs;
  if (reloadIntervalMs !== null) {
    reloadTimer = setInterval(() => {
      const stamp = fileStamp(routesPath);
      if (stamp === routesStamp) return;
      try {
        // The file content changed: every route gets a new conf version, hence new tokens.
        const text = readFileSync(routesPath, 'utf8');
        if (text === lastRoutesText) {
          routesStamp = stamp;
          return;
        }
        reloadRoutes();
        lastRoutesText = text;
      } catch (err) {
        routesStamp = stamp;
        log.error({ err: (err as Error).message }, 'routes file not reloaded; keeping the previous routes');
      }
    }, reloadIntervalMs);
    reloadTimer.unref();
  }

  // The runner: connect to one started by hand (path_for_test), or spawn it as APISIX does.
  const externalSocket = options.runnerSocketPath ?? gatewayConfig.pathForTest;
  let socketDir: string | null = null;
  let socketPath: string;
  if (externalSocket) {
    socketPath = externalSocket;
  } else {
    // A private directory: only this user can reach the socket.
    socketDir = mkdtempSync(join(tmpdir(), 'apisix-standin-'));
    socketPath = join(socketDir, 'runner.sock');
  }

  const client = new ExtPluginClient({
    socketPath,
    log: log.child({ part: 'ext-plugin' }),
    confExpireSeconds,
    connectTimeoutMs: options.connectTimeoutMs,
    readTimeoutMs: options.readTimeoutMs,
    prepareLockTimeoutMs: options.prepareLockTimeoutMs,
    workerId: options.workerId,
  });

  let supervisor: RunnerSupervisor | null = null;
  if (!externalSocket) {
    const argv = resolveRunnerCmd(
      options.runnerCmd ?? gatewayConfig.runnerCmd ?? ['node', 'dist/plugins/runner/main.js'],
      root,
    );
    supervisor = new RunnerSupervisor({
      argv,
      cwd: root,
      env: runnerEnvironment(gatewayConfig.envs, options.parentEnv ?? process.env, {
        APISIX_LISTEN_ADDRESS: `unix:${socketPath}`,
        APISIX_CONF_EXPIRE_TIME: String(confExpireSeconds),
      }),
      log: log.child({ part: 'runner' }),
      respawnDelayMs: options.respawnDelayMs,
      killDelayMs: options.killDelayMs,
      onExit: () => client.flushTokens(),
    });
    supervisor.start();
  }

  const upstreamProxy = new UpstreamProxy(gatewayConfig.upstreamTls);
  const loggers = new HttpLoggers(log.child({ part: 'http-logger' }));
  const context: HandlerContext = {
    log,
    client,
    upstreamProxy,
    loggers,
    bodyLimitBytes,
    keepQueryOnPathRewrite,
    routes: () => routes,
  };
  const server = createServer({ keepAlive: true }, (req, res) => {
    handleRequest(context, req, res).catch((err) => {
      log.error({ err }, 'request failed inside the stand-in');
      if (!res.headersSent) send(res, req.method === 'HEAD', { status: 500, headers: new ResponseHeaders(), body: null });
      else res.destroy();
    });
  });

  const stopEverything = async () => {
    if (reloadTimer) clearInterval(reloadTimer);
    server.closeAllConnections();
    await new Promise<void>((done) => server.close(() => done()));
    client.close();
    loggers.stop();
    await supervisor?.stop();
    await upstreamProxy.close();
    if (socketDir) rmSync(socketDir, { recursive: true, force: true });
  };

  try {
    await new Promise<void>((resolveListen, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolveListen());
    });
  } catch (err) {
    await supervisor?.stop();
    if (socketDir) rmSync(socketDir, { recursive: true, force: true });
    throw err;
  }
  const address = server.address() as AddressInfo;
  const hostForUrl = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  log.info({ port: address.port, routes: routes.length, socketPath }, 'APISIX stand-in listening');

  const handle: StandinHandle = {
    url: `http://${hostForUrl}:${address.port}`,
    port: address.port,
    socketPath,
    stop: stopEverything,
    runnerPid: () => supervisor?.pid ?? null,
    runnerSpawns: () => supervisor?.spawns ?? 0,
    runnerOutput: () => supervisor?.recentOutput() ?? [],
    waitForRunner: (timeoutMs = 15_000) => waitForSocket(socketPath, timeoutMs),
    waitForRunnerExit: () => supervisor?.waitForExit() ?? Promise.resolve(),
    routes: () => routes,
    reloadRoutes: () => {
      reloadRoutes();
      lastRoutesText = readFileSync(routesPath, 'utf8');
    },
    flushTokens: () => client.flushTokens(),
    stats: () => ({ ...client.stats, cachedTokens: client.cachedTokens, idleConnections: client.idleConnections }),
  };

  // Probing opens a connection of its own: only done for a runner the stand-in spawned.
  const waitMs = options.waitForRunnerMs ?? (supervisor ? 15_000 : 0);
  if (waitMs > 0) {
    try {
      await handle.waitForRunner(waitMs);
    } catch (err) {
      const output = handle.runnerOutput().slice(-20).join('\n');
      await stopEverything();
      throw new Error(`${(err as Error).message}${output ? `\nrunner output:\n${output}` : ''}`);
    }
  }
  return handle;
}

function fileStamp(path: string): string {
  try {
    const st = statSync(path);
    return `${st.mtimeMs}:${st.size}`;
  } catch {
    return 'missing';
  }
}

/** Polls until something accepts connections on the socket. */
export async function waitForSocket(socketPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((done) => {
      const socket = connect(socketPath);
      socket.once('connect', () => {
        socket.destroy();
        done(true);
      });
      socket.once('error', () => done(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`the plugin runner did not listen on ${socketPath} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface HandlerContext {
  log: Logger;
  client: ExtPluginClient;
  upstreamProxy: UpstreamProxy;
  loggers: HttpLoggers;
  bodyLimitBytes: number;
  keepQueryOnPathRewrite: boolean;
  routes: () => readonly Route[];
}

const emptyResponse = (status: number): ClientResponse => ({ status, headers: new ResponseHeaders(), body: null });

class BodyTooLargeError extends Error {}

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) return Promise.reject(new BodyTooLargeError());
  return new Promise((resolveBody, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        reject(new BodyTooLargeError());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolveBody(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function handleRequest(ctx: HandlerContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const startedAt = Date.now();
  const isHead = req.method === 'HEAD';
  const method = req.method ?? 'GET';
  const requestUri = req.url ?? '/';
  const { path: rawPath, query } = splitRequestTarget(requestUri);
  const uri = normalizeRequestPath(rawPath);
  const out = new ClientOutput(res, isHead);

  const headers: HeaderLine[] = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    headers.push({ name: req.rawHeaders[i]!.toLowerCase(), value: req.rawHeaders[i + 1]! });
  }
  // nginx refuses a request with two Host headers.
  if (uri === null || headers.filter((h) => h.name === 'host').length > 1) {
    out.send(emptyResponse(400));
    return;
  }

  let body: Buffer;
  try {
    body = await readBody(req, ctx.bodyLimitBytes);
  } catch (err) {
    if (err instanceof BodyTooLargeError) {
      res.setHeader('connection', 'close');
      out.send(emptyResponse(413));
      return;
    }
    throw err;
  }

  const local = req.socket;
  const state = new RequestState({
    method,
    requestUri,
    uri,
    query,
    headers,
    body,
    remoteAddr: normalizeAddress(local.remoteAddress ?? ''),
    remotePort: local.remotePort ?? 0,
    serverAddr: normalizeAddress(local.localAddress ?? ''),
    serverPort: local.localPort ?? 0,
    scheme: 'http',
    routeId: '',
    startedAt,
  });

  const route = matchRoute(ctx.routes(), { method, host: state.host, path: uri });
  if (!route) {
    const notFound = new ResponseHeaders();
    notFound.set('content-type', DEFAULT_CONTENT_TYPE);
    out.send({ status: 404, headers: notFound, body: Buffer.from('{"error_msg":"404 Route Not Found"}\n') });
    return;
  }
  state.routeId = route.id;
  const log = ctx.log.child({ route: route.id, method, uri });
  if (route.httpLogger) {
    // APISIX's log phase: after the response, whatever answered it (upstream, runner or error).
    const conf = route.httpLogger;
    if (conf.includeRespBody) out.collectBody();
    res.once('close', () => ctx.loggers.push(conf, customLogEntry(conf.logFormat, (name) => logVariable(state, out, name), route.id)));
  }

  try {
    for (const phase of ['ext-plugin-pre-req', 'ext-plugin-post-req'] as const) {
      const conf = route.plugins[phase];
      if (!conf) continue;
      const outcome = await ctx.client.httpReqCall(phase, conf, state, route.confVersion);
      if (outcome.kind === 'failed') {
        out.send(emptyResponse(503));
        return;
      }
      if (outcome.kind === 'degraded') continue;
      const action = outcome.value.response.action;
      if (action?.type === 'stop') {
        const stop = stopToClientResponse(action);
        // Headers from an earlier phase's resp_headers are already on ngx.header.
        out.send({ ...stop, headers: overlay(state.responseHeaderAdditions, stop.headers) });
        return;
      }
      if (action?.type === 'rewrite') {
        applyRewrite(state, action, outcome.value.argsSent, { keepQueryOnPathRewrite: ctx.keepQueryOnPathRewrite });
      }
    }

    const postResp = route.plugins['ext-plugin-post-resp'];
    if (postResp) {
      await postRespPhase(ctx, postResp, route, state, out, log);
      return;
    }

    let upstream: OpenedUpstream;
    // nginx's $upstream_status: "-" until the upstream's status line is in (a client gone before it leaves it so).
    out.upstreamStatus = '-';
    // A client gone before the upstream's answer closes the upstream request, as nginx does.
    const gone = new AbortController();
    const onClose = () => gone.abort();
    res.once('close', onClose);
    try {
      upstream = await ctx.upstreamProxy.open(route.upstream, state, false, gone.signal);
    } catch (err) {
      if (gone.signal.aborted) return;
      if (!(err instanceof UpstreamError)) throw err;
      log.error({ err: err.message }, 'upstream failed');
      out.upstreamStatus = String(err.status);
      out.send(emptyResponse(err.status));
      return;
    } finally {
      res.off('close', onClose);
    }
    out.upstreamStatus = String(upstream.status);
    const responseHeaders = new ResponseHeaders();
    for (const line of UpstreamProxy.passedResponseHeaders(upstream.headers)) responseHeaders.add(line.name, line.value);
    // Lua set these on ngx.header before proxying; nginx adds the upstream's next to them.
    for (const line of state.responseHeaderAdditions.lines) responseHeaders.add(line.name, line.value);
    // nginx passes the body on as it arrives, with the upstream's content-length if it sent one.
    await out.stream({ status: upstream.status, headers: responseHeaders }, upstream, { keepContentLength: true, log });
  } catch (err) {
    if (err instanceof GatewayInternalError) {
      log.error({ err: err.message }, 'ext-plugin call failed with a runtime error');
      out.send(emptyResponse(500));
      return;
    }
    throw err;
  }
}

/**
 * ext-plugin-post-resp as APISIX 3.9.1 runs it: the upstream is requested
 * with lua-resty-http and HTTPRespCall sent as soon as its status and
 * headers are in. The body is read whole only if the runner asks for it
 * (RespBody); a body the runner returns replaces it; otherwise the
 * upstream's body is streamed to the client chunk by chunk after the call.
 */
async function postRespPhase(ctx: HandlerContext, conf: ExtPluginConf, route: Route, state: RequestState, out: ClientOutput, log: Logger): Promise<void> {
  let upstream: OpenedUpstream;
  try {
    upstream = await ctx.upstreamProxy.open(route.upstream, state, true);
  } catch (err) {
    if (!(err instanceof UpstreamError)) throw err;
    log.error({ err: err.message }, 'failed to request the upstream');
    out.send(emptyResponse(502));
    return;
  }
  // What the runner's RespBody request read, if it asked.
  const read: { body: Buffer | null; failed: boolean } = { body: null, failed: false };
  const readBody = async (): Promise<Buffer | null> => {
    try {
      read.body = await upstream.readAll(ctx.bodyLimitBytes);
    } catch (err) {
      if (!(err instanceof UpstreamError)) throw err;
      log.error({ err: err.message }, 'failed to read the upstream response body');
      read.failed = true;
    }
    return read.body;
  };
  let outcome;
  try {
    outcome = await ctx.client.httpRespCall(conf, state, route.confVersion, { status: upstream.status, headers: upstream.headers, readBody });
  } catch (err) {
    upstream.discard();
    throw err;
  }
  let head: ClientResponse;
  if (outcome.kind === 'answered') {
    const answer = respCallAnswerHead(upstream, outcome.value);
    head = { ...answer, headers: overlay(state.responseHeaderAdditions, answer.headers) };
    if (answer.body) {
      upstream.discard();
      out.send(head);
      return;
    }
  } else {
    // APISIX then sends the upstream body itself, with status 503 on failure (the
    // upstream status when degraded) and none of the upstream's headers.
    head = { status: outcome.kind === 'failed' ? 503 : upstream.status, headers: state.responseHeaderAdditions, body: null };
  }
  if (read.failed) {
    // send_response reads the body again, fails, and answers 502 while nothing is sent yet.
    out.send(emptyResponse(502));
    return;
  }
  const held = read.body;
  const source: BodySource = held !== null ? { chunks: () => singleChunk(held), discard: () => undefined } : upstream;
  // The Lua code prints the body with ngx.print: nginx's default type when no content-type is set.
  if (head.headers.get('content-type').length === 0) head.headers.set('content-type', DEFAULT_CONTENT_TYPE);
  await out.stream({ status: head.status, headers: head.headers }, source, { keepContentLength: false, log });
}

async function* singleChunk(body: Buffer): AsyncGenerator<Buffer> {
  if (body.length > 0) yield body;
}

/** Variables of a log entry: the request's (as `ctx.var` cached them) and those of the response sent. */
function logVariable(state: RequestState, out: ClientOutput, name: string): string | null {
  return state.cachedVariable(name, (n) => {
    switch (n) {
      case 'status':
        // nginx's 499: the client closed the connection before the response began.
        return String(out.res.headersSent ? out.status : 499);
      case 'upstream_status':
        // None when no upstream was contacted (a runner's Stop, an error before proxying, or
        // ext-plugin-post-resp, which fetches the upstream with lua-resty-http, not nginx's proxy).
        return out.upstreamStatus;
      case 'resp_body':
        // ctx.resp_body is set only by a logger collecting the body, and only at its end.
        return out.collectedBody() ?? '';
      case 'body_bytes_sent':
        return String(out.bodyBytesSent);
      case 'msec':
        return (Date.now() / 1000).toFixed(3);
      case 'time_iso8601':
        return nginxTime(new Date(), 'iso8601');
      case 'time_local':
        return nginxTime(new Date(), 'local');
      case 'service_id':
        return null;
    }
    return state.variable(n);
  });
}

/** nginx's $time_iso8601 (2026-01-02T03:04:05+00:00) and $time_local (02/Jan/2026:03:04:05 +0000), in local time. */
function nginxTime(date: Date, kind: 'iso8601' | 'local'): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? '+' : '-';
  const hh = pad(Math.floor(Math.abs(offset) / 60));
  const mm = pad(Math.abs(offset) % 60);
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  if (kind === 'iso8601') return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${time}${sign}${hh}:${mm}`;
  const month = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][date.getMonth()]!;
  return `${pad(date.getDate())}/${month}/${date.getFullYear()}:${time} ${sign}${hh}${mm}`;
}

interface BodySource {
  chunks(): AsyncIterable<Buffer>;
  discard(): void;
}

/**
 * What goes to the client, and what the log phase needs to know of it: the
 * status, the body bytes sent and, when a logger asks for it, a copy of the
 * body taken as it passes (log-util's collect_body: nothing is held back).
 */
class ClientOutput {
  status = 0;
  bodyBytesSent = 0;
  /** nginx's $upstream_status, once the request went to the upstream through nginx's proxy. */
  upstreamStatus: string | null = null;
  private copy: Buffer[] | null = null;

  constructor(
    readonly res: ServerResponse,
    readonly isHead: boolean,
  ) {}

  collectBody(): void {
    this.copy ??= [];
  }

  /** The body as sent, once all of it was; null when not collected or the response did not complete. */
  collectedBody(): string | null {
    if (this.copy === null || !this.res.writableFinished) return null;
    return Buffer.concat(this.copy).toString('utf8');
  }

  /** A whole response (see send). */
  send(response: ClientResponse, opts: { keepContentLength?: boolean } = {}): void {
    this.status = response.status;
    const body = send(this.res, this.isHead, response, opts);
    if (body && !this.isHead) this.record(body);
  }

  /**
   * A response whose body is written chunk by chunk as the source yields it.
   * A source that fails midway cuts the connection, as nginx does once the
   * headers are out; a client that goes away stops the source.
   */
  async stream(head: { status: number; headers: ResponseHeaders }, source: BodySource, opts: { keepContentLength: boolean; log: Logger }): Promise<void> {
    const { res } = this;
    this.status = head.status;
    writeHead(res, head.status, head.headers, { keepContentLength: opts.keepContentLength || this.isHead });
    const bodyless = this.isHead || head.status === 204 || head.status === 304 || head.status < 200;
    if (bodyless) {
      source.discard();
      res.end();
      return;
    }
    // Headers go out now, as nginx sends them once the upstream's are in.
    res.flushHeaders();
    // A client that goes away stops the upstream at once, not at its next chunk.
    const onClose = () => {
      if (!res.writableFinished) source.discard();
    };
    res.once('close', onClose);
    try {
      for await (const chunk of source.chunks()) {
        if (res.destroyed) break;
        this.record(chunk);
        if (!res.write(chunk)) await waitForDrain(res);
      }
    } catch (err) {
      if (res.destroyed) return;
      if (!(err instanceof UpstreamError)) throw err;
      opts.log.error({ err: err.message }, 'upstream body failed midway; closing the client connection');
      res.destroy();
      return;
    } finally {
      res.off('close', onClose);
      if (res.destroyed) source.discard();
    }
    if (!res.destroyed) res.end();
  }

  private record(chunk: Buffer): void {
    this.bodyBytesSent += chunk.length;
    this.copy?.push(chunk);
  }
}

function waitForDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

/** core.response.set_header for each name in `top`, over what `base` already holds. */
function overlay(base: ResponseHeaders, top: ResponseHeaders): ResponseHeaders {
  const out = new ResponseHeaders();
  for (const line of base.lines) out.add(line.name, line.value);
  const seen = new Set<string>();
  for (const line of top.lines) {
    if (seen.has(line.name)) out.add(line.name, line.value);
    else out.set(line.name, line.value);
    seen.add(line.name);
  }
  return out;
}

function normalizeAddress(address: string): string {
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** Writes a response the way nginx finishes one: its error page when nothing wrote a body for a status >= 300. Returns the body sent. */
function send(res: ServerResponse, isHead: boolean, response: ClientResponse, opts: { keepContentLength?: boolean } = {}): Buffer | null {
  let body = response.body;
  const headers = new ResponseHeaders();
  for (const line of response.headers.lines) headers.add(line.name, line.value);
  if (body === null && response.status >= 300) {
    body = nginxErrorPage(response.status);
    if (body) headers.set('content-type', 'text/html; charset=utf-8');
  }
  if (body && body.length > 0 && headers.get('content-type').length === 0) headers.set('content-type', DEFAULT_CONTENT_TYPE);
  writeHead(res, response.status, headers, opts);
  const bodyless = response.status === 204 || response.status === 304 || response.status < 200;
  if (!bodyless && (!opts.keepContentLength || !res.hasHeader('content-length'))) {
    res.setHeader('content-length', String(body?.length ?? 0));
  }
  res.end(isHead ? undefined : body ?? undefined);
  return body;
}

/** Status and headers as nginx sends them: its own Server, no Date or framing headers from elsewhere. */
function writeHead(res: ServerResponse, status: number, headers: ResponseHeaders, opts: { keepContentLength?: boolean }): void {
  const grouped = new Map<string, string[]>();
  for (const line of headers.lines) {
    if (line.name === 'content-length' && !opts.keepContentLength) continue;
    if (line.name === 'server' || line.name === 'date' || line.name === 'connection' || line.name === 'transfer-encoding') continue;
    const list = grouped.get(line.name);
    if (list) list.push(line.value);
    else grouped.set(line.name, [line.value]);
  }
  res.statusCode = status;
  res.setHeader('server', STANDIN_SERVER_HEADER);
  for (const [name, values] of grouped) res.setHeader(name, values.length === 1 ? values[0]! : values);
}
