// Drives the runner over its socket exactly as APISIX's client code does:
// frames through the project's protocol module, one call per connection at
// a time, ExtraInfo questions answered on the same connection.
import { connect } from 'node:net';
import {
  FrameConnection,
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
  type ErrorCode,
  type ExtraInfoRequest,
  type Frame,
  type HttpReqCallRequest,
  type HttpReqCallResponse,
  type HttpRespCallRequest,
  type HttpRespCallResponse,
  type StopAction,
} from '../../plugins/protocol/index.js';

export class RunnerError extends Error {
  constructor(readonly code: ErrorCode) {
    super(`runner answered ${code}`);
  }
}

/** APISIX's answer to an ExtraInfo question; a promise plays a slow APISIX. */
export type ExtraInfoAnswerer = (info: ExtraInfoRequest) => Uint8Array | null | Promise<Uint8Array | null>;

export async function openConnection(socketPath: string): Promise<FrameConnection> {
  const socket = connect(socketPath);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return new FrameConnection(socket);
}

/** Awaits the answer to a call, answering ExtraInfo questions on the way. */
async function awaitAnswer(conn: FrameConnection, expected: number, answerExtra: ExtraInfoAnswerer, seen: ExtraInfoRequest[]): Promise<Frame> {
  for (;;) {
    const frame = await conn.next();
    if (frame.type === RpcType.ExtraInfo) {
      const info = decodeExtraInfoRequest(frame.payload);
      seen.push(info);
      await conn.send(RpcType.ExtraInfo, encodeExtraInfoResponse({ result: await answerExtra(info) }));
      continue;
    }
    if (frame.type === RpcType.Error) throw new RunnerError(decodeErrorResponse(frame.payload).code);
    if (frame.type !== expected) throw new Error(`unexpected frame type ${frame.type}`);
    return frame;
  }
}

export class ApisixClient {
  constructor(readonly conn: FrameConnection) {}

  static async open(socketPath: string): Promise<ApisixClient> {
    return new ApisixClient(await openConnection(socketPath));
  }

  async prepare(conf: { name: string; value: string }[], key: string | null = null): Promise<number> {
    await this.conn.send(RpcType.PrepareConf, encodePrepareConfRequest({ conf, key }));
    const frame = await awaitAnswer(this.conn, RpcType.PrepareConf, () => null, []);
    return decodePrepareConfResponse(frame.payload).confToken;
  }

  async call(request: HttpReqCallRequest, answerExtra: ExtraInfoAnswerer = () => null): Promise<HttpReqCallResponse & { extraInfo: ExtraInfoRequest[] }> {
    const seen: ExtraInfoRequest[] = [];
    await this.conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request));
    const frame = await awaitAnswer(this.conn, RpcType.HTTPReqCall, answerExtra, seen);
    return { ...decodeHttpReqCallResponse(frame.payload), extraInfo: seen };
  }

  async respCall(request: HttpRespCallRequest, answerExtra: ExtraInfoAnswerer = () => null): Promise<HttpRespCallResponse & { extraInfo: ExtraInfoRequest[] }> {
    const seen: ExtraInfoRequest[] = [];
    await this.conn.send(RpcType.HTTPRespCall, encodeHttpRespCallRequest(request));
    const frame = await awaitAnswer(this.conn, RpcType.HTTPRespCall, answerExtra, seen);
    return { ...decodeHttpRespCallResponse(frame.payload), extraInfo: seen };
  }

  close(): void {
    this.conn.destroy();
  }
}

export function request(overrides: Partial<HttpReqCallRequest> & { confToken: number }): HttpReqCallRequest {
  return {
    id: 0,
    srcIp: new Uint8Array([127, 0, 0, 1]),
    method: 'GET',
    path: '/',
    args: [],
    headers: [{ name: 'host', value: '127.0.0.1:8080' }],
    ...overrides,
  };
}

/**
 * One request through a fresh connection, as APISIX makes it: `conf` prepared,
 * then a GET with `bearer` (when given) as its Authorization header and
 * `args` as its query. The runner's stop status, or 'pass' when it lets the
 * request through.
 */
export async function chainStatus(
  socketPath: string,
  conf: { name: string; value: string }[],
  options: { bearer?: string; args?: { name: string; value: string }[] } = {},
): Promise<number | 'pass'> {
  const client = await ApisixClient.open(socketPath);
  try {
    const confToken = await client.prepare(conf);
    const headers = options.bearer === undefined ? [] : [{ name: 'authorization', value: `Bearer ${options.bearer}` }];
    const answer = await client.call(request({ confToken, method: 'GET', headers, args: options.args ?? [] }));
    return answer.action?.type === 'stop' ? (answer.action as StopAction).status : 'pass';
  } finally {
    client.close();
  }
}

export const text = (bytes: Uint8Array | null) => (bytes === null ? null : Buffer.from(bytes).toString('utf8'));
