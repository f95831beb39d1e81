// The APISIX side of the ext-plugin protocol, as APISIX's
// `apisix/plugins/ext-plugin/init.lua` does it: a keep-alive pool of
// connections to the runner's socket, one call per connection at a time;
// conf tokens cached per route, phase and conf version; PrepareConf on a
// SECOND connection while the call's own connection is already open, under
// one global lock; CONF_TOKEN_NOT_FOUND flushes the cache and retries (3
// attempts in all); ExtraInfo answered mid-call; 503 on runner failure
// unless allow_degradation; an unparsable answer is a 500 that
// allow_degradation does not catch.
import { createConnection, isIPv4, isIPv6 } from 'node:net';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import {
  ConnectionClosedError,
  FrameConnection,
  FrameTooLargeError,
  HTTP_METHODS,
  RpcType,
  decodeErrorResponse,
  decodeExtraInfoRequest,
  decodeHttpReqCallResponse,
  decodeHttpRespCallResponse,
  decodePrepareConfResponse,
  encodeExtraInfoResponse,
  encodeHttpReqCallRequest,
  encodeHttpRespCallRequest,
  encodePrepareConfRequest,
  type Frame,
  type HttpMethod,
  type HttpReqCallResponse,
  type HttpRespCallResponse,
  type TextEntry,
} from '../../plugins/protocol/index.js';
import type { ExtPluginConf, ExtPluginPhase } from './routes.js';
import type { HeaderLine, RequestState } from './request-state.js';
import type { ArgValue } from './uri.js';

/** A failure APISIX answers with 503 (or skips with allow_degradation). */
export class RunnerCallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RunnerCallError';
  }
}

/** The runner does not know the token: flush, re-prepare, retry. */
export class TokenNotFoundError extends RunnerCallError {
  constructor() {
    super('conf token not found');
    this.name = 'TokenNotFoundError';
  }
}

/**
 * A failure that is a Lua runtime error in APISIX (an answer it cannot
 * parse, a method outside the protocol's enum): the client gets 500 and
 * allow_degradation does not apply.
 */
export class GatewayInternalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GatewayInternalError';
  }
}

export interface ExtPluginClientOptions {
  /** The runner's socket path (no `unix:`). */
  socketPath: string;
  log: Logger;
  /** APISIX_CONF_EXPIRE_TIME: how long a token is cached. */
  confExpireSeconds: number;
  connectTimeoutMs?: number;
  readTimeoutMs?: number;
  /** resty.lock's default wait for the global PrepareConf lock. */
  prepareLockTimeoutMs?: number;
  maxIdleConnections?: number;
  idleTimeoutMs?: number;
  /** nginx worker id: the high bits of every call id. */
  workerId?: number;
}

/** What the stand-in tells the phase code after a call. */
export type CallOutcome<T> = { kind: 'answered'; value: T } | { kind: 'failed' } | { kind: 'degraded' };


interface IdleEntry {
  conn: FrameConnection;
  timer: NodeJS.Timeout;
  onData: () => void;
}

/** Keep-alive pool: up to 32 idle connections, each closed after 180 s idle (cosocket setkeepalive). */
class RunnerConnectionPool {
  private idle: IdleEntry[] = [];
  private closed = false;

  constructor(
    private readonly socketPath: string,
    private readonly connectTimeoutMs: number,
    private readonly maxIdle: number,
    private readonly idleTimeoutMs: number,
  ) {}

  get idleCount(): number {
    return this.idle.length;
  }

  async acquire(): Promise<FrameConnection> {
    while (this.idle.length > 0) {
      const entry = this.idle.pop()!;
      this.detach(entry);
      if (!entry.conn.closed && !entry.conn.socket.destroyed) return entry.conn;
    }
    return this.connect();
  }

  release(conn: FrameConnection): void {
    if (this.closed || conn.closed || conn.socket.destroyed) {
      conn.destroy();
      return;
    }
    if (this.idle.length >= this.maxIdle) {
      // The pool is full: nginx closes the least recently used connection.
      const oldest = this.idle.shift()!;
      this.detach(oldest);
      oldest.conn.destroy();
    }
    const entry: IdleEntry = {
      conn,
      timer: setTimeout(() => this.drop(entry), this.idleTimeoutMs),
      // Anything the runner sends on an idle connection (or its close) ends it, as nginx does.
      onData: () => this.drop(entry),
    };
    entry.timer.unref();
    conn.socket.on('data', entry.onData);
    conn.socket.once('close', entry.onData);
    this.idle.push(entry);
  }

  closeAll(): void {
    this.closed = true;
    for (const entry of this.idle.splice(0)) {
      this.detach(entry);
      entry.conn.destroy();
    }
  }

  private drop(entry: IdleEntry): void {
    const i = this.idle.indexOf(entry);
    if (i !== -1) this.idle.splice(i, 1);
    this.detach(entry);
    entry.conn.destroy();
  }

  private detach(entry: IdleEntry): void {
    clearTimeout(entry.timer);
    entry.conn.socket.off('data', entry.onData);
    entry.conn.socket.off('close', entry.onData);
  }

  private connect(): Promise<FrameConnection> {
    return new Promise((resolve, reject) => {
      const socket = createConnection(this.socketPath);
      const conn = new FrameConnection(socket);
      const fail = (reason: string) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new RunnerCallError(`failed to connect to the unix socket unix:${this.socketPath}: ${reason}`));
      };
      const timer = setTimeout(() => fail('timeout'), this.connectTimeoutMs);
      socket.once('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(conn);
      });
    });
  }
}

/** The one lock every PrepareConf runs under (resty.lock "prepare_conf", 5 s wait). */
class PrepareConfLock {
  private held = false;
  private waiters: (() => void)[] = [];

  acquire(timeoutMs: number): Promise<() => void> {
    const release = () => {
      const next = this.waiters.shift();
      if (next) next();
      else this.held = false;
    };
    if (!this.held) {
      this.held = true;
      return Promise.resolve(release);
    }
    return new Promise((resolve, reject) => {
      const waiter = () => {
        clearTimeout(timer);
        resolve(release);
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i !== -1) this.waiters.splice(i, 1);
        reject(new RunnerCallError('failed to acquire the lock: timeout'));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }
}

/** The client address as the 4 or 16 bytes of `$binary_remote_addr`. */
export function binaryAddress(address: string): Uint8Array {
  const v4 = address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
  if (isIPv4(v4)) return new Uint8Array(v4.split('.').map(Number));
  if (!isIPv6(address)) return new Uint8Array(0);
  const [head, tail] = address.includes('::') ? address.split('::') : [address, undefined];
  const parse = (part: string | undefined) => (part ? part.split(':') : []);
  let headGroups = parse(head);
  let tailGroups = parse(tail);
  // An embedded IPv4 tail (::ffff:1.2.3.4 style) counts as two groups.
  const expand = (groups: string[]) =>
    groups.flatMap((g) => {
      if (!g.includes('.')) return [g];
      const [a, b, c, d] = g.split('.').map(Number);
      return [((a! << 8) | b!).toString(16), ((c! << 8) | d!).toString(16)];
    });
  headGroups = expand(headGroups);
  tailGroups = expand(tailGroups);
  const missing = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...new Array<string>(missing).fill('0'), ...tailGroups];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = parseInt(g, 16);
    bytes[i * 2] = n >> 8;
    bytes[i * 2 + 1] = n & 0xff;
  });
  return bytes;
}

/**
 * The HTTPReqCall header list: every header line, grouped by name; `host` is
 * the upstream host. APISIX 3.9 reads them with `ngx.req.get_headers(0)`
 * (apisix/core/request.lua): no limit, unlike the function's default of 100.
 */
export function headersForRunner(lines: readonly HeaderLine[], upstreamHost: string): TextEntry[] {
  const grouped = new Map<string, string[]>();
  for (const line of lines) {
    const list = grouped.get(line.name);
    if (list) list.push(line.value);
    else grouped.set(line.name, [line.value]);
  }
  const out: TextEntry[] = [];
  for (const [name, values] of grouped) {
    for (const value of values) out.push({ name, value: name === 'host' ? upstreamHost : value });
  }
  return out;
}

export function argsForRunner(args: Map<string, ArgValue[]>): TextEntry[] {
  const out: TextEntry[] = [];
  for (const [name, values] of args) for (const value of values) out.push({ name, value: value === true ? null : value });
  return out;
}

export interface ReqCallAnswer {
  response: HttpReqCallResponse;
  /** The args table HTTPReqCall was built from: a Rewrite's args apply to it. */
  argsSent: Map<string, ArgValue[]>;
}

export interface RespCallInput {
  status: number;
  headers: HeaderLine[];
  /**
   * Reads the upstream body whole, as APISIX does only when the runner asks
   * for RespBody (otherwise it streams the body to the client after the
   * call); null when it cannot be read.
   */
  readBody: () => Promise<Buffer | null>;
}

export class ExtPluginClient {
  private readonly pool: RunnerConnectionPool;
  private readonly tokens: LRUCache<string, number>;
  private readonly prepareLock = new PrepareConfLock();
  private readonly readTimeoutMs: number;
  private readonly prepareLockTimeoutMs: number;
  private readonly workerId: number;
  private idCounter = 0;
  /** Counters for tests and logs. */
  readonly stats = { prepareConf: 0, httpReqCall: 0, httpRespCall: 0, tokenFlushes: 0 };

  constructor(private readonly options: ExtPluginClientOptions) {
    this.pool = new RunnerConnectionPool(
      options.socketPath,
      options.connectTimeoutMs ?? 1000,
      options.maxIdleConnections ?? 32,
      options.idleTimeoutMs ?? 180_000,
    );
    this.tokens = new LRUCache<string, number>({ max: 4096, ttl: options.confExpireSeconds * 1000 });
    this.readTimeoutMs = options.readTimeoutMs ?? 60_000;
    this.prepareLockTimeoutMs = options.prepareLockTimeoutMs ?? 5000;
    this.workerId = options.workerId ?? 0;
  }

  get idleConnections(): number {
    return this.pool.idleCount;
  }

  get cachedTokens(): number {
    return this.tokens.size;
  }

  /** APISIX flushes its token cache when the runner exits and on CONF_TOKEN_NOT_FOUND. */
  flushTokens(): void {
    this.stats.tokenFlushes++;
    this.tokens.clear();
  }

  close(): void {
    this.pool.closeAll();
  }

  /** `worker_id << 22` plus a counter that wraps at 2^22; the first id is 0. */
  private nextId(): number {
    const id = this.workerId * 2 ** 22 + this.idCounter;
    this.idCounter = (this.idCounter + 1) % 2 ** 22;
    return id >>> 0;
  }

  /** ext-plugin-pre-req / ext-plugin-post-req: one HTTPReqCall, with APISIX's retries. */
  httpReqCall(phase: ExtPluginPhase, conf: ExtPluginConf, state: RequestState, confVersion: number): Promise<CallOutcome<ReqCallAnswer>> {
    return this.communicate(phase, conf, state, confVersion, (conn, token) => this.reqCall(conn, token, state));
  }

  /** ext-plugin-post-resp: one HTTPRespCall about the upstream's answer. */
  httpRespCall(
    conf: ExtPluginConf,
    state: RequestState,
    confVersion: number,
    upstream: RespCallInput,
  ): Promise<CallOutcome<HttpRespCallResponse>> {
    const body = { read: false };
    return this.communicate('ext-plugin-post-resp', conf, state, confVersion, (conn, token) =>
      this.respCall(conn, token, state, upstream, body),
    );
  }

  private async communicate<T>(
    phase: ExtPluginPhase,
    conf: ExtPluginConf,
    state: RequestState,
    confVersion: number,
    handler: (conn: FrameConnection, token: number) => Promise<T>,
  ): Promise<CallOutcome<T>> {
    const { log } = this.options;
    const tokenKey = `route#${state.routeId}#${phase}#${confVersion}`;
    let lastError: RunnerCallError | null = null;
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        const value = await this.rpcCall(tokenKey, conf, handler);
        return { kind: 'answered', value };
      } catch (err) {
        if (!(err instanceof RunnerCallError)) throw err;
        lastError = err;
        if (!(err instanceof TokenNotFoundError)) break;
        log.warn({ phase, route: state.routeId, attempt }, 'conf token not found: refresh cache and try again');
        this.flushTokens();
      }
    }
    log.error({ phase, route: state.routeId, err: lastError?.message }, 'plugin runner call failed');
    if (conf.allow_degradation) {
      log.warn({ phase, route: state.routeId }, 'plugin runner is wrong, allow degradation');
      return { kind: 'degraded' };
    }
    return { kind: 'failed' };
  }

  /** One attempt: open the call's connection, get a token (maybe on a second connection), run the call. */
  private async rpcCall<T>(
    tokenKey: string,
    conf: ExtPluginConf,
    handler: (conn: FrameConnection, token: number) => Promise<T>,
  ): Promise<T> {
    const conn = await this.pool.acquire();
    try {
      const token = await this.token(tokenKey, conf);
      const value = await handler(conn, token);
      this.pool.release(conn);
      return value;
    } catch (err) {
      conn.destroy();
      throw err;
    }
  }

  private async token(key: string, conf: ExtPluginConf): Promise<number> {
    const cached = this.tokens.get(key);
    if (cached !== undefined) return cached;
    const release = await this.prepareLock.acquire(this.prepareLockTimeoutMs);
    try {
      const again = this.tokens.get(key);
      if (again !== undefined) return again;
      const conn = await this.pool.acquire();
      try {
        this.stats.prepareConf++;
        await this.send(conn, RpcType.PrepareConf, encodePrepareConfRequest({ conf: conf.conf, key }));
        const frame = await this.receive(conn);
        if (frame.type !== RpcType.PrepareConf) {
          throw new RunnerCallError(`failed to receive RPC_PREPARE_CONF: unexpected type ${frame.type}`);
        }
        const { confToken } = parse(() => decodePrepareConfResponse(frame.payload), 'PrepareConf');
        this.options.log.info({ key, confToken }, 'got conf token');
        this.tokens.set(key, confToken);
        this.pool.release(conn);
        return confToken;
      } catch (err) {
        conn.destroy();
        throw err;
      }
    } finally {
      release();
    }
  }

  private async reqCall(conn: FrameConnection, token: number, state: RequestState): Promise<ReqCallAnswer> {
    let path: string;
    if (state.upstreamUri === '') {
      path = state.uri;
    } else {
      // An earlier phase set the upstream URI: send it (still encoded); its query becomes the args.
      const q = state.upstreamUri.indexOf('?');
      if (q === -1) path = state.upstreamUri;
      else {
        path = state.upstreamUri.slice(0, q);
        state.setArgs(state.upstreamUri.slice(q + 1));
      }
    }
    const argsSent = new Map<string, ArgValue[]>([...state.args].map(([name, values]) => [name, [...values]]));
    const id = this.nextId();
    if (!(HTTP_METHODS as readonly string[]).includes(state.method)) {
      throw new GatewayInternalError(`method ${state.method} has no ext-plugin enum value`);
    }
    this.stats.httpReqCall++;
    await this.send(
      conn,
      RpcType.HTTPReqCall,
      encodeHttpReqCallRequest({
        id,
        srcIp: binaryAddress(state.remoteAddr),
        method: state.method as HttpMethod,
        path,
        args: argsForRunner(argsSent),
        headers: headersForRunner(state.headers, state.upstreamHost),
        confToken: token,
      }),
    );
    const frame = await this.answerExtraInfoUntilReply(conn, state, null);
    if (frame.type !== RpcType.HTTPReqCall) {
      throw new RunnerCallError(`failed to receive RPC_HTTP_REQ_CALL: unexpected type ${frame.type}`);
    }
    return { response: parse(() => decodeHttpReqCallResponse(frame.payload), 'HTTPReqCall'), argsSent };
  }

  private async respCall(
    conn: FrameConnection,
    token: number,
    state: RequestState,
    upstream: RespCallInput,
    body: { read: boolean },
  ): Promise<HttpRespCallResponse> {
    this.stats.httpRespCall++;
    await this.send(
      conn,
      RpcType.HTTPRespCall,
      encodeHttpRespCallRequest({
        id: this.nextId(),
        status: upstream.status,
        headers: upstream.headers.map((h) => ({ name: h.name, value: h.value })),
        confToken: token,
      }),
    );
    const frame = await this.answerExtraInfoUntilReply(conn, state, { upstream, body });
    if (frame.type !== RpcType.HTTPRespCall) {
      throw new RunnerCallError(`failed to receive RPC_HTTP_RESP_CALL: unexpected type ${frame.type}`);
    }
    return parse(() => decodeHttpRespCallResponse(frame.payload), 'HTTPRespCall');
  }

  /** Answers ExtraInfo requests until the runner sends anything else, which is returned. */
  private async answerExtraInfoUntilReply(
    conn: FrameConnection,
    state: RequestState,
    response: { upstream: RespCallInput; body: { read: boolean } } | null,
  ): Promise<Frame> {
    for (;;) {
      const frame = await this.receive(conn);
      if (frame.type !== RpcType.ExtraInfo) return frame;
      const request = parse(() => decodeExtraInfoRequest(frame.payload), 'ExtraInfo');
      let result: Uint8Array | null = null;
      if (request.type === 'var') {
        const value = state.cachedVariable(request.name);
        result = value === null ? null : Buffer.from(value, 'utf8');
      } else if (request.type === 'reqBody') {
        // core.request.get_body() gives nil for an empty body.
        result = state.body.length > 0 ? state.body : null;
      } else if (response && !response.body.read) {
        // The upstream body can be read once; the client still gets it afterwards.
        response.body.read = true;
        result = await response.upstream.readBody();
      }
      await this.send(conn, RpcType.ExtraInfo, encodeExtraInfoResponse({ result }));
    }
  }

  private async send(conn: FrameConnection, type: RpcType, payload: Uint8Array): Promise<void> {
    try {
      await conn.send(type, payload);
    } catch (err) {
      if (err instanceof FrameTooLargeError) throw new RunnerCallError(`the max length of data is 16777215 but got ${err.size}`);
      throw new RunnerCallError(`failed to send: ${(err as Error).message}`);
    }
  }

  /** The next frame within the read timeout; an Err frame becomes an error. */
  private async receive(conn: FrameConnection): Promise<Frame> {
    let timer: NodeJS.Timeout | undefined;
    let timedOut = false;
    let frame: Frame;
    try {
      frame = await Promise.race([
        conn.next(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            timedOut = true;
            conn.destroy();
            reject(new RunnerCallError('timeout'));
          }, this.readTimeoutMs);
        }),
      ]);
    } catch (err) {
      if (timedOut) throw new RunnerCallError('failed to receive: timeout');
      if (err instanceof ConnectionClosedError) throw new RunnerCallError('failed to receive: closed');
      throw new RunnerCallError(`failed to receive: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    if (frame.type === RpcType.Error) {
      const { code } = parse(() => decodeErrorResponse(frame.payload), 'Err');
      if (code === 'CONF_TOKEN_NOT_FOUND') throw new TokenNotFoundError();
      throw new RunnerCallError(code === 'BAD_REQUEST' ? 'bad request' : 'service unavailable');
    }
    return frame;
  }
}

/** Runs a decoder; anything it throws means APISIX's Lua decoding would have failed: a 500. */
function parse<T>(decode: () => T, what: string): T {
  try {
    return decode();
  } catch (err) {
    throw new GatewayInternalError(`unparsable ${what} answer from the plugin runner: ${(err as Error).message}`);
  }
}
