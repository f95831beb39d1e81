// A tiny scripted plugin runner for the stand-in's tests, written with the
// protocol module: each test says how it answers PrepareConf, HTTPReqCall
// and HTTPRespCall, and the runner records what arrived on which connection.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FrameConnection,
  RpcType,
  decodeExtraInfoResponse,
  decodeHttpReqCallRequest,
  decodeHttpRespCallRequest,
  decodePrepareConfRequest,
  encodeErrorResponse,
  encodeExtraInfoRequest,
  encodeHttpReqCallResponse,
  encodeHttpRespCallResponse,
  encodePrepareConfResponse,
  type ErrorCode,
  type ExtraInfoRequest,
  type HttpReqCallRequest,
  type HttpReqCallResponse,
  type HttpRespCallRequest,
  type HttpRespCallResponse,
  type PrepareConfRequest,
} from '../../plugins/protocol/index.js';

/** A frame to send back, or: close the connection, or never answer. */
export type Reply = { type: number; payload: Uint8Array } | 'close' | 'silent';

export interface CallContext {
  connection: number;
  /** Sends an ExtraInfo request and waits for the stand-in's answer. */
  ask(info: ExtraInfoRequest): Promise<Uint8Array | null>;
}

export interface RecordedFrame {
  connection: number;
  type: number;
  /** Connections open at the moment the frame arrived. */
  openConnections: number[];
}

export const reply = {
  token: (confToken: number): Reply => ({ type: RpcType.PrepareConf, payload: encodePrepareConfResponse({ confToken }) }),
  reqCall: (resp: HttpReqCallResponse): Reply => ({ type: RpcType.HTTPReqCall, payload: encodeHttpReqCallResponse(resp) }),
  respCall: (resp: HttpRespCallResponse): Reply => ({ type: RpcType.HTTPRespCall, payload: encodeHttpRespCallResponse(resp) }),
  error: (code: ErrorCode): Reply => ({ type: RpcType.Error, payload: encodeErrorResponse({ code }) }),
  raw: (type: number, payload: Uint8Array): Reply => ({ type, payload }),
};

export class FakeRunner {
  readonly socketPath: string;
  readonly frames: RecordedFrame[] = [];
  readonly prepared: PrepareConfRequest[] = [];
  readonly reqCalls: HttpReqCallRequest[] = [];
  readonly respCalls: HttpRespCallRequest[] = [];
  connectionsOpened = 0;
  private nextToken = 1000;
  private readonly open = new Map<number, Socket>();
  private readonly server: Server;
  private readonly dir: string;

  onPrepare: (req: PrepareConfRequest, ctx: CallContext) => Promise<Reply> | Reply = () => reply.token(this.nextToken++);
  onReqCall: (req: HttpReqCallRequest, ctx: CallContext) => Promise<Reply> | Reply = (req) => reply.reqCall({ id: req.id, action: null });
  onRespCall: (req: HttpRespCallRequest, ctx: CallContext) => Promise<Reply> | Reply = (req) =>
    reply.respCall({ id: req.id, status: 0, headers: [], body: null });

  private constructor() {
    this.dir = mkdtempSync(join(tmpdir(), 'fake-runner-'));
    this.socketPath = join(this.dir, 'runner.sock');
    this.server = createServer((socket) => {
      this.serve(socket).catch(() => socket.destroy());
    });
  }

  static async start(): Promise<FakeRunner> {
    const runner = new FakeRunner();
    await new Promise<void>((resolve) => runner.server.listen(runner.socketPath, resolve));
    return runner;
  }

  types(): number[] {
    return this.frames.map((f) => f.type);
  }

  async close(): Promise<void> {
    for (const socket of this.open.values()) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async serve(socket: Socket): Promise<void> {
    const id = ++this.connectionsOpened;
    this.open.set(id, socket);
    socket.on('close', () => this.open.delete(id));
    const conn = new FrameConnection(socket);
    const ctx: CallContext = {
      connection: id,
      ask: async (info) => {
        await conn.send(RpcType.ExtraInfo, encodeExtraInfoRequest(info));
        const frame = await conn.next();
        return decodeExtraInfoResponse(frame.payload).result;
      },
    };
    try {
      for (;;) {
        const frame = await conn.next();
        this.frames.push({ connection: id, type: frame.type, openConnections: [...this.open.keys()] });
        let answer: Reply;
        if (frame.type === RpcType.PrepareConf) {
          const req = decodePrepareConfRequest(frame.payload);
          this.prepared.push(req);
          answer = await this.onPrepare(req, ctx);
        } else if (frame.type === RpcType.HTTPReqCall) {
          const req = decodeHttpReqCallRequest(frame.payload);
          this.reqCalls.push(req);
          answer = await this.onReqCall(req, ctx);
        } else if (frame.type === RpcType.HTTPRespCall) {
          const req = decodeHttpRespCallRequest(frame.payload);
          this.respCalls.push(req);
          answer = await this.onRespCall(req, ctx);
        } else {
          answer = 'close';
        }
        if (answer === 'close') {
          socket.destroy();
          return;
        }
        if (answer === 'silent') continue;
        await conn.send(answer.type as RpcType, answer.payload);
      }
    } catch {
      socket.destroy();
    }
  }
}
