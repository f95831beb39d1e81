// The ext-plugin runner: accepts APISIX's connections on a Unix socket and
// serves the calls each one carries, one after another. Connections are
// served concurrently: APISIX holds one idle while it prepares a conf on
// another, so serving one connection at a time would deadlock.
import { chmodSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import {
  ConnectionClosedError,
  FrameConnection,
  MalformedPayloadError,
  RpcType,
  decodeExtraInfoResponse,
  receiveHttpReqCallRequest,
  decodeHttpRespCallRequest,
  decodePrepareConfRequest,
  encodeErrorResponse,
  encodeExtraInfoRequest,
  encodeHttpReqCallResponseFrame,
  FrameTooLargeError,
  MAX_PAYLOAD_SIZE,
  encodeHttpRespCallResponse,
  encodePrepareConfResponse,
  type ErrorCode,
  type ExtraInfoRequest,
  type Frame,
} from '../protocol/index.js';
import { ConfError } from '../api/plugin.js';
import type { ExtraInfoSource } from '../api/http.js';
import { ConfStore, routeOfKey, type PreparedPlugin } from './conf-store.js';
import type { PluginRegistry } from './registry.js';
import { removeStaleSocket, socketPathOf } from './socket-file.js';
import { CallAbortedError, ProtocolViolation, problemStop, runRequestChain, runResponseChain } from './chain.js';
import type { RunnerTraces } from './tracing.js';

export interface RunnerOptions {
  /** APISIX_LISTEN_ADDRESS: `unix:/path.sock` or a bare path. */
  listenAddress: string;
  /** APISIX_CONF_EXPIRE_TIME in seconds. */
  confExpireSeconds: number;
  registry: PluginRegistry;
  log: Logger;
  /** A frame begun but not finished, or an ExtraInfo answer not given, within this time closes the connection. */
  stallTimeoutMs?: number;
  /** Upper bound on finishing in-flight calls at shutdown (APISIX SIGKILLs 1 s after SIGTERM). */
  shutdownGraceMs?: number;
  maxConfEntries?: number;
  /**
   * Where conf tokens come from. Alone, the runner numbers its own chains;
   * as one worker of several (cluster.ts) it asks the primary, which hands
   * the chain to every worker before the token is answered, so a token
   * prepared on one connection is valid on all of them.
   */
  issueToken?: (entries: ConfEntry[], key: string | null) => Promise<number>;
  /** Own the socket file: remove a stale one before listening and ours at stop (default true; a cluster's primary does both). */
  removeStaleSocket?: boolean;
  /** Spans for each request (OTEL_*); null or absent: none. */
  traces?: RunnerTraces | null;
}

export interface ConfEntry {
  name: string;
  value: string;
}

export class ConfRefused extends Error {
  constructor(
    /** What the log says: 'unknown plugin', 'invalid conf', 'empty plugin list'. */
    readonly kind: string,
    readonly plugin: string | null,
    reason: string,
  ) {
    super(reason);
  }
}

interface ConnectionState {
  /** A call is being served. */
  busy: boolean;
  conn: FrameConnection;
  /** The runner has asked APISIX for ExtraInfo and waits for the answer. */
  awaitingExtraInfo: boolean;
  /** socket.bytesRead at the last stall sweep, and since when the connection has been stalled without a byte (null: not stalled). */
  bytesSeen: number;
  stalledSince: number | null;
}

export class Runner {
  readonly socketPath: string;
  readonly confs: ConfStore;
  private readonly server: Server;
  private readonly connections = new Map<Socket, ConnectionState>();
  private stallSweep: NodeJS.Timeout | null = null;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private stopping: Promise<void> | null = null;
  private readonly log: Logger;

  constructor(private readonly options: RunnerOptions) {
    this.socketPath = socketPathOf(options.listenAddress);
    this.log = options.log;
    this.confs = new ConfStore({
      expireSeconds: options.confExpireSeconds,
      ...(options.maxConfEntries ? { maxEntries: options.maxConfEntries } : {}),
    });
    this.server = createServer((socket) => {
      // serve() handles its own errors; anything left (an answer that cannot
      // be written) ends this connection only, never the process.
      this.serve(socket).catch((err: unknown) => {
        this.log.warn({ err }, 'connection failed');
        socket.destroy();
      });
    });
    this.server.maxConnections = 65_536;
  }

  async listen(): Promise<void> {
    if (this.options.removeStaleSocket !== false) removeStaleSocket(this.socketPath);
    // Created 0766 from the start (see below), not after a window in which
    // nginx's workers would be refused.
    const umask = process.umask(0o011);
    try {
      await new Promise<void>((resolve, reject) => {
        this.server.once('error', reject);
        // A deep backlog: on a Unix socket a full one refuses connects (EAGAIN)
        // instead of queueing them, and every nginx worker connects at once at startup.
        this.server.listen({ path: this.socketPath, backlog: 4096 }, () => {
          this.server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(umask);
    }
    chmodSync(this.socketPath, 0o766);
    const stallMs = this.options.stallTimeoutMs ?? 60_000;
    this.stallSweep = setInterval(() => this.closeStalled(stallMs), Math.min(1000, Math.max(10, stallMs / 4)));
    this.stallSweep.unref();
    this.log.info({ socket: this.socketPath, plugins: this.options.registry.names }, 'runner listening');
  }

  get activeConnections(): number {
    return this.connections.size;
  }

  /** Stops accepting, lets calls in flight finish (bounded), removes the socket. */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.log.info({ inFlight: this.inFlight }, 'runner stopping');
    if (this.stallSweep) clearInterval(this.stallSweep);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const [socket, state] of this.connections) if (!state.busy) socket.destroy();
    const grace = this.options.shutdownGraceMs ?? 800;
    await Promise.race([this.whenIdle(), new Promise((r) => setTimeout(r, grace).unref())]);
    for (const socket of this.connections.keys()) socket.destroy();
    await closed;
    if (this.options.removeStaleSocket !== false) removeStaleSocket(this.socketPath);
    this.log.info('runner stopped');
  }

  /**
   * Closes connections stalled mid-frame or on an unanswered ExtraInfo for
   * stallMs without a byte: a peer that will not finish. Idle pooled
   * connections are fine (APISIX keeps them 180 s). One sweep for all
   * connections rather than a socket timeout each, which Node re-arms on
   * every read and write (about 4% of the runner's busy time through APISIX).
   * A stall is closed between stallMs and 1.5 x stallMs after its last byte.
   */
  private closeStalled(stallMs: number, now = Date.now()): void {
    for (const [socket, state] of this.connections) {
      const read = socket.bytesRead;
      const stalled = state.conn.partialBytes > 0 || state.awaitingExtraInfo;
      if (!stalled || read !== state.bytesSeen) {
        state.bytesSeen = read;
        state.stalledSince = stalled ? now : null;
      } else if (state.stalledSince === null) {
        state.stalledSince = now;
      } else if (now - state.stalledSince >= stallMs) {
        this.log.warn({ awaitingExtraInfo: state.awaitingExtraInfo }, 'closing a connection stalled mid-frame');
        socket.destroy();
      }
    }
  }

  private whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async serve(socket: Socket): Promise<void> {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    const conn = new FrameConnection(socket);
    const state: ConnectionState = { busy: false, conn, awaitingExtraInfo: false, bytesSeen: 0, stalledSince: null };
    this.connections.set(socket, state);
    socket.once('close', () => this.connections.delete(socket));

    const extra: ExtraInfoSource & { ask(info: ExtraInfoRequest): Promise<Uint8Array | null> } = {
      async ask(info) {
        await conn.send(RpcType.ExtraInfo, encodeExtraInfoRequest(info)).catch(() => {
          throw new CallAbortedError('connection closed while asking for extra info');
        });
        state.awaitingExtraInfo = true;
        let frame: Frame;
        try {
          frame = await conn.next();
        } catch {
          throw new CallAbortedError('connection closed while waiting for extra info');
        } finally {
          state.awaitingExtraInfo = false;
        }
        if (frame.type !== RpcType.ExtraInfo) {
          throw new ProtocolViolation(`expected an ExtraInfo answer, got RPC type ${frame.type}`);
        }
        try {
          return decodeExtraInfoResponse(frame.payload).result;
        } catch (err) {
          throw new ProtocolViolation(`malformed ExtraInfo answer: ${(err as Error).message}`);
        }
      },
      async variable(name) {
        const result = await this.ask({ type: 'var', name });
        return result === null ? null : Buffer.from(result).toString('utf8');
      },
      async requestBody() {
        return (await this.ask({ type: 'reqBody' })) ?? new Uint8Array(0);
      },
      async responseBody() {
        return (await this.ask({ type: 'respBody' })) ?? new Uint8Array(0);
      },
    };

    for (;;) {
      let frame: Frame;
      try {
        frame = await conn.next();
      } catch {
        return; // the peer closed the connection
      }
      state.busy = true;
      this.inFlight++;
      try {
        await this.handle(conn, frame, extra);
      } catch (err) {
        if (err instanceof CallAbortedError || err instanceof ConnectionClosedError) {
          this.log.debug({ err }, 'peer went away mid-call');
          socket.destroy();
          return;
        }
        const violation = err instanceof ProtocolViolation || err instanceof MalformedPayloadError;
        this.log.warn({ err, rpcType: frame.type }, violation ? 'bad frame; closing connection' : 'call failed');
        await this.sendError(conn, 'BAD_REQUEST');
        socket.end();
        return;
      } finally {
        state.busy = false;
        this.inFlight--;
        if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
      }
      if (this.stopping) {
        socket.end();
        return;
      }
    }
  }

  private async handle(conn: FrameConnection, frame: Frame, extra: ExtraInfoSource): Promise<void> {
    switch (frame.type) {
      case RpcType.PrepareConf:
        return this.prepareConf(conn, frame.payload);
      case RpcType.HTTPReqCall: {
        const call = receiveHttpReqCallRequest(frame.payload);
        const chain = this.confs.get(call.confToken);
        if (!chain) return this.sendError(conn, 'CONF_TOKEN_NOT_FOUND');
        let answer: Buffer;
        try {
          answer = encodeHttpReqCallResponseFrame(await runRequestChain(chain, call, extra, this.log, this.options.traces ?? null));
        } catch (err) {
          if (!(err instanceof FrameTooLargeError)) throw err;
          this.log.error({ requestId: call.id, size: err.size }, 'answer exceeds the frame limit; denying');
          answer = encodeHttpReqCallResponseFrame({ id: call.id, action: problemStop(500, 'plugin answer too large') });
        }
        // Not awaited: a failed write closes the connection, and the next read says so.
        conn.write(answer);
        return;
      }
      case RpcType.HTTPRespCall: {
        const call = decodeHttpRespCallRequest(frame.payload);
        const chain = this.confs.get(call.confToken);
        if (!chain) return this.sendError(conn, 'CONF_TOKEN_NOT_FOUND');
        let answer = encodeHttpRespCallResponse(await runResponseChain(chain, call, extra, this.log));
        if (answer.length > MAX_PAYLOAD_SIZE) {
          this.log.error({ requestId: call.id, size: answer.length }, 'response answer exceeds the frame limit');
          const problem = problemStop(500, 'plugin answer too large');
          answer = encodeHttpRespCallResponse({ id: call.id, status: 500, headers: problem.headers, body: problem.body });
        }
        await conn.send(RpcType.HTTPRespCall, answer);
        return;
      }
      case RpcType.ExtraInfo:
        throw new ProtocolViolation('ExtraInfo answer without a question');
      default:
        throw new ProtocolViolation(`unknown RPC type ${frame.type}`);
    }
  }

  /** Validates a plugin list into a chain; throws ConfRefused with the reason. */
  prepareChain(entries: readonly ConfEntry[], key: string | null = null): { chain: PreparedPlugin[]; rawBytes: number } {
    const chain: PreparedPlugin[] = [];
    const route = routeOfKey(key);
    let rawBytes = 0;
    for (const entry of entries) {
      const plugin = this.options.registry.get(entry.name);
      if (!plugin) throw new ConfRefused('unknown plugin', entry.name, `unknown plugin ${JSON.stringify(entry.name)}`);
      try {
        chain.push({ plugin, conf: plugin.parseConf(entry.value), route });
      } catch (err) {
        throw new ConfRefused('invalid conf', entry.name, err instanceof ConfError ? err.message : String(err));
      }
      rawBytes += entry.name.length + entry.value.length;
    }
    if (chain.length === 0) throw new ConfRefused('empty plugin list', null, 'no plugins');
    return { chain, rawBytes };
  }

  /** Stores a chain another worker prepared, under the token the primary issued for it. */
  adoptConf(token: number, entries: readonly ConfEntry[], key: string | null = null): void {
    const { chain, rawBytes } = this.prepareChain(entries, key);
    this.confs.put(token, chain, rawBytes);
  }

  private async prepareConf(conn: FrameConnection, payload: Buffer): Promise<void> {
    const request = decodePrepareConfRequest(payload);
    let prepared: { chain: PreparedPlugin[]; rawBytes: number };
    try {
      prepared = this.prepareChain(request.conf, request.key);
    } catch (err) {
      if (!(err instanceof ConfRefused)) throw err;
      this.log.error({ ...(err.plugin === null ? {} : { plugin: err.plugin }), key: request.key, reason: err.message }, `PrepareConf refused: ${err.kind}`);
      return this.sendError(conn, 'BAD_REQUEST');
    }
    const { chain, rawBytes } = prepared;
    let confToken: number;
    if (this.options.issueToken) {
      confToken = await this.options.issueToken(request.conf, request.key);
      this.confs.put(confToken, chain, rawBytes);
    } else {
      confToken = this.confs.add(chain, rawBytes);
    }
    this.log.debug({ confToken, plugins: request.conf.map((c) => c.name), key: request.key }, 'conf prepared');
    await conn.send(RpcType.PrepareConf, encodePrepareConfResponse({ confToken }));
  }

  private async sendError(conn: FrameConnection, code: ErrorCode): Promise<void> {
    await conn.send(RpcType.Error, encodeErrorResponse({ code })).catch(() => undefined);
  }
}
