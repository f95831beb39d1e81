// Encoders and decoders for every ext-plugin message, in both directions:
// the runner decodes what APISIX sends and encodes its answers; the
// conformance tests and benchmarks do the opposite. Decoders verify
// the buffer first and throw MalformedPayloadError on anything malformed.
import * as flatbuffers from 'flatbuffers';
import { TextEntry as FbTextEntry } from './generated/a6/text-entry.js';
import { Resp as FbErrResp } from './generated/a6/err/resp.js';
import { Req as FbPrepareReq } from './generated/a6/prepare-conf/req.js';
import { Resp as FbPrepareResp } from './generated/a6/prepare-conf/resp.js';
import { Req as FbReqCallReq } from './generated/a6/httpreq-call/req.js';
import { Resp as FbReqCallResp } from './generated/a6/httpreq-call/resp.js';
import { Stop as FbStop } from './generated/a6/httpreq-call/stop.js';
import { Rewrite as FbRewrite } from './generated/a6/httpreq-call/rewrite.js';
import { Action as FbAction } from './generated/a6/httpreq-call/action.js';
import { Req as FbExtraReq } from './generated/a6/extra-info/req.js';
import { Resp as FbExtraResp } from './generated/a6/extra-info/resp.js';
import { Var as FbVar } from './generated/a6/extra-info/var.js';
import { ReqBody as FbReqBody } from './generated/a6/extra-info/req-body.js';
import { RespBody as FbRespBody } from './generated/a6/extra-info/resp-body.js';
import { Info as FbInfo } from './generated/a6/extra-info/info.js';
import { Req as FbRespCallReq } from './generated/a6/httpresp-call/req.js';
import { Resp as FbRespCallResp } from './generated/a6/httpresp-call/resp.js';
import { Schema, verifyPayload, MalformedPayloadError, type TableSpec } from './verify.js';
import { encodeFrame, RpcType } from './frame.js';
import { writeHttpReqCallAnswerFrame } from './answer-writer.js';
import {
  ERROR_CODES,
  HTTP_METHODS,
  type ErrorResponse,
  type ExtraInfoRequest,
  type ExtraInfoResponse,
  type HttpMethod,
  type HttpReqCallRequest,
  type HttpReqCallResponse,
  type HttpRespCallRequest,
  type HttpRespCallResponse,
  type PrepareConfRequest,
  type PrepareConfResponse,
  type TextEntry,
} from './messages.js';

// ---- helpers -------------------------------------------------------------

function finish(builder: flatbuffers.Builder, root: flatbuffers.Offset): Uint8Array {
  builder.finish(root);
  return builder.asUint8Array();
}

// Header names and values are nearly always ASCII: their bytes are the
// character codes, copied here, which costs a fraction of a TextEncoder call
// (the builder's own way, an allocation and a native call per string).
const asciiScratch = new Uint8Array(4096);

function createString(builder: flatbuffers.Builder, s: string): flatbuffers.Offset {
  const length = s.length;
  if (length > asciiScratch.length) return builder.createString(s);
  for (let i = 0; i < length; i++) {
    const code = s.charCodeAt(i);
    if (code > 0x7f) return builder.createString(s);
    asciiScratch[i] = code;
  }
  return builder.createString(asciiScratch.subarray(0, length));
}

function textEntries(builder: flatbuffers.Builder, entries: readonly TextEntry[]): flatbuffers.Offset {
  const offsets = entries.map((entry) => {
    const name = createString(builder, entry.name);
    const value = entry.value === null ? 0 : createString(builder, entry.value);
    FbTextEntry.startTextEntry(builder);
    FbTextEntry.addName(builder, name);
    if (value) FbTextEntry.addValue(builder, value);
    return FbTextEntry.endTextEntry(builder);
  });
  builder.startVector(4, offsets.length, 4);
  for (let i = offsets.length - 1; i >= 0; i--) builder.addOffset(offsets[i]!);
  return builder.endVector();
}

/** One accessor object, re-pointed at each entry in turn (decoding is synchronous). */
const entryReader = new FbTextEntry();

/**
 * The string in field `slot` of the table at `table`, or null when absent,
 * decoded from `bytes` (the payload `bb` reads) as flatbuffers' own reader
 * decodes it (a TextDecoder: UTF-8, bad sequences replaced, a leading
 * byte-order mark dropped), without the view and decoder call it makes per
 * string. Every decoder verifies its payload first: the offsets are in bounds.
 */
function textField(bb: flatbuffers.ByteBuffer, bytes: Buffer, table: number, slot: number): string | null {
  const field = bb.__offset(table, 4 + slot * 2);
  if (field === 0) return null;
  let at = table + field;
  at += bb.readInt32(at);
  const end = at + 4 + bb.readInt32(at);
  at += 4;
  if (end - at >= 3 && bytes[at] === 0xef && bytes[at + 1] === 0xbb && bytes[at + 2] === 0xbf) at += 3;
  return bytes.toString('utf8', at, end);
}

/** A vector of TextEntry of the payload `bytes`, its strings read with textField. */
function readEntries(bytes: Buffer, count: number, at: (i: number, obj: FbTextEntry) => FbTextEntry | null): TextEntry[] {
  const out: TextEntry[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const entry = at(i, entryReader)!;
    const bb = entry.bb!;
    out[i] = { name: textField(bb, bytes, entry.bb_pos, 0) ?? '', value: textField(bb, bytes, entry.bb_pos, 1) };
  }
  return out;
}

/** The payload as a Buffer, for textField: itself, or a view of the same bytes. */
function asBuffer(payload: Uint8Array): Buffer {
  return payload instanceof Buffer ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
}

function copyBytes(bytes: Uint8Array | null): Uint8Array | null {
  // Copy so callers never hold views into a connection's receive buffer.
  return bytes === null ? null : Uint8Array.prototype.slice.call(bytes);
}

function open(payload: Uint8Array, spec: TableSpec): flatbuffers.ByteBuffer {
  verifyPayload(payload, spec);
  // A plain Uint8Array view of a Buffer: the accessors take a subarray per
  // string, and a Buffer's subarray constructs another Buffer (several times the cost).
  return new flatbuffers.ByteBuffer(payload instanceof Buffer ? new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength) : payload);
}

export { MalformedPayloadError };

// ---- Err -----------------------------------------------------------------

export function encodeErrorResponse(msg: ErrorResponse): Uint8Array {
  const builder = new flatbuffers.Builder(16);
  FbErrResp.startResp(builder);
  // The code is written even when 0 (BAD_REQUEST): forceDefaults keeps the
  // table non-empty, which some decoders expect.
  builder.forceDefaults(true);
  FbErrResp.addCode(builder, ERROR_CODES.indexOf(msg.code));
  return finish(builder, FbErrResp.endResp(builder));
}

export function decodeErrorResponse(payload: Uint8Array): ErrorResponse {
  const resp = FbErrResp.getRootAsResp(open(payload, Schema.ErrResp));
  const code = ERROR_CODES[resp.code()];
  if (!code) throw new MalformedPayloadError(`unknown error code ${resp.code()}`);
  return { code };
}

// ---- PrepareConf -----------------------------------------------------------

export function encodePrepareConfRequest(msg: PrepareConfRequest): Uint8Array {
  const builder = new flatbuffers.Builder(256);
  const conf = textEntries(builder, msg.conf);
  const key = msg.key === null ? 0 : builder.createString(msg.key);
  FbPrepareReq.startReq(builder);
  FbPrepareReq.addConf(builder, conf);
  if (key) FbPrepareReq.addKey(builder, key);
  return finish(builder, FbPrepareReq.endReq(builder));
}

export function decodePrepareConfRequest(payload: Uint8Array): PrepareConfRequest {
  const req = FbPrepareReq.getRootAsReq(open(payload, Schema.PrepareConfReq));
  const conf = readEntries(asBuffer(payload), req.confLength(), (i, e) => req.conf(i, e)).map((e) => ({ name: e.name, value: e.value ?? '' }));
  return { conf, key: req.key() };
}

export function encodePrepareConfResponse(msg: PrepareConfResponse): Uint8Array {
  const builder = new flatbuffers.Builder(16);
  FbPrepareResp.startResp(builder);
  FbPrepareResp.addConfToken(builder, msg.confToken);
  return finish(builder, FbPrepareResp.endResp(builder));
}

export function decodePrepareConfResponse(payload: Uint8Array): PrepareConfResponse {
  const resp = FbPrepareResp.getRootAsResp(open(payload, Schema.PrepareConfResp));
  return { confToken: resp.confToken() };
}

// ---- HTTPReqCall -----------------------------------------------------------

export function encodeHttpReqCallRequest(msg: HttpReqCallRequest): Uint8Array {
  const builder = new flatbuffers.Builder(512);
  const srcIp = builder.createByteVector(msg.srcIp);
  const path = builder.createString(msg.path);
  const args = textEntries(builder, msg.args);
  const headers = textEntries(builder, msg.headers);
  FbReqCallReq.startReq(builder);
  FbReqCallReq.addId(builder, msg.id);
  FbReqCallReq.addSrcIp(builder, srcIp);
  FbReqCallReq.addMethod(builder, HTTP_METHODS.indexOf(msg.method));
  FbReqCallReq.addPath(builder, path);
  FbReqCallReq.addArgs(builder, args);
  FbReqCallReq.addHeaders(builder, headers);
  FbReqCallReq.addConfToken(builder, msg.confToken);
  return finish(builder, FbReqCallReq.endReq(builder));
}

/** An HTTPReqCall decoded whole: receiveHttpReqCallRequest, every field read at once. */
export function decodeHttpReqCallRequest(payload: Uint8Array): HttpReqCallRequest {
  const call = receiveHttpReqCallRequest(payload);
  return {
    id: call.id,
    srcIp: call.srcIp,
    method: call.method,
    path: call.path,
    args: call.args,
    headers: call.headers,
    confToken: call.confToken,
  };
}

/**
 * An HTTPReqCall as the runner reads it. The whole payload is verified on
 * arrival, so a broken frame is refused
 * before any plugin runs; its args, headers and source address are decoded
 * when first read, so a chain that reads none of them (a pass-through) pays
 * for none. It holds a view of the payload until then: the frame reader hands
 * each payload out once and never writes to it again.
 */
class ReceivedHttpReqCall implements HttpReqCallRequest {
  readonly id: number;
  readonly method: HttpMethod;
  readonly path: string;
  readonly confToken: number;
  readonly #req: FbReqCallReq;
  /** The payload, for textField. */
  readonly #bytes: Buffer;
  #srcIp: Uint8Array | null = null;
  #args: TextEntry[] | null = null;
  #headers: TextEntry[] | null = null;

  constructor(req: FbReqCallReq, method: HttpMethod, bytes: Buffer) {
    this.#req = req;
    this.#bytes = bytes;
    this.id = req.id();
    this.method = method;
    this.path = req.path() ?? '';
    this.confToken = req.confToken();
  }

  get srcIp(): Uint8Array {
    return (this.#srcIp ??= copyBytes(this.#req.srcIpArray()) ?? new Uint8Array(0));
  }

  get args(): TextEntry[] {
    const req = this.#req;
    return (this.#args ??= readEntries(this.#bytes, req.argsLength(), (i, e) => req.args(i, e)));
  }

  get headers(): TextEntry[] {
    const req = this.#req;
    return (this.#headers ??= readEntries(this.#bytes, req.headersLength(), (i, e) => req.headers(i, e)));
  }
}

/** An HTTPReqCall verified now, its args, headers and source address decoded on first read (ReceivedHttpReqCall). */
export function receiveHttpReqCallRequest(payload: Uint8Array): HttpReqCallRequest {
  const req = FbReqCallReq.getRootAsReq(open(payload, Schema.HTTPReqCallReq));
  const method = HTTP_METHODS[req.method()];
  if (!method) throw new MalformedPayloadError(`unknown method enum ${req.method()}`);
  return new ReceivedHttpReqCall(req, method, asBuffer(payload));
}

function buildHttpReqCallResponse(builder: flatbuffers.Builder, msg: HttpReqCallResponse): flatbuffers.Offset {
  let actionType = FbAction.NONE;
  let action = 0;
  const { action: a } = msg;
  if (a?.type === 'stop') {
    const headers = textEntries(builder, a.headers);
    const body = a.body === null ? 0 : builder.createByteVector(a.body);
    FbStop.startStop(builder);
    FbStop.addStatus(builder, a.status);
    FbStop.addHeaders(builder, headers);
    if (body) FbStop.addBody(builder, body);
    action = FbStop.endStop(builder);
    actionType = FbAction.Stop;
  } else if (a?.type === 'rewrite') {
    const path = a.path === null ? 0 : createString(builder, a.path);
    const headers = textEntries(builder, a.headers);
    const args = textEntries(builder, a.args);
    const respHeaders = textEntries(builder, a.respHeaders);
    const body = a.body === null ? 0 : builder.createByteVector(a.body);
    FbRewrite.startRewrite(builder);
    if (path) FbRewrite.addPath(builder, path);
    FbRewrite.addHeaders(builder, headers);
    FbRewrite.addArgs(builder, args);
    FbRewrite.addRespHeaders(builder, respHeaders);
    if (body) FbRewrite.addBody(builder, body);
    action = FbRewrite.endRewrite(builder);
    actionType = FbAction.Rewrite;
  }
  FbReqCallResp.startResp(builder);
  FbReqCallResp.addId(builder, msg.id);
  if (actionType !== FbAction.NONE) {
    FbReqCallResp.addActionType(builder, actionType);
    FbReqCallResp.addAction(builder, action);
  }
  return FbReqCallResp.endResp(builder);
}

export function encodeHttpReqCallResponse(msg: HttpReqCallResponse): Uint8Array {
  const builder = new flatbuffers.Builder(256);
  return finish(builder, buildHttpReqCallResponse(builder, msg));
}

/**
 * An HTTPReqCall answer as a whole frame, as the runner sends it: laid out by
 * hand (answer-writer.ts), where encodeHttpReqCallResponse goes through the
 * Builder. Throws FrameTooLargeError beyond the protocol's limit.
 */
export function encodeHttpReqCallResponseFrame(msg: HttpReqCallResponse): Buffer {
  return writeHttpReqCallAnswerFrame(msg);
}

export function decodeHttpReqCallResponse(payload: Uint8Array): HttpReqCallResponse {
  const resp = FbReqCallResp.getRootAsResp(open(payload, Schema.HTTPReqCallResp));
  const id = resp.id();
  switch (resp.actionType()) {
    case FbAction.Stop: {
      const stop: FbStop = resp.action(new FbStop());
      return {
        id,
        action: {
          type: 'stop',
          status: stop.status(),
          headers: readEntries(asBuffer(payload), stop.headersLength(), (i, e) => stop.headers(i, e)),
          body: copyBytes(stop.bodyArray()),
        },
      };
    }
    case FbAction.Rewrite: {
      const rw: FbRewrite = resp.action(new FbRewrite());
      const bytes = asBuffer(payload);
      return {
        id,
        action: {
          type: 'rewrite',
          path: rw.path(),
          headers: readEntries(bytes, rw.headersLength(), (i, e) => rw.headers(i, e)),
          args: readEntries(bytes, rw.argsLength(), (i, e) => rw.args(i, e)),
          respHeaders: readEntries(bytes, rw.respHeadersLength(), (i, e) => rw.respHeaders(i, e)),
          body: copyBytes(rw.bodyArray()),
        },
      };
    }
    default:
      return { id, action: null };
  }
}

// ---- ExtraInfo -------------------------------------------------------------

export function encodeExtraInfoRequest(msg: ExtraInfoRequest): Uint8Array {
  const builder = new flatbuffers.Builder(64);
  let infoType: FbInfo;
  let info: flatbuffers.Offset;
  if (msg.type === 'var') {
    const name = builder.createString(msg.name);
    FbVar.startVar(builder);
    FbVar.addName(builder, name);
    info = FbVar.endVar(builder);
    infoType = FbInfo.Var;
  } else if (msg.type === 'reqBody') {
    FbReqBody.startReqBody(builder);
    info = FbReqBody.endReqBody(builder);
    infoType = FbInfo.ReqBody;
  } else {
    FbRespBody.startRespBody(builder);
    info = FbRespBody.endRespBody(builder);
    infoType = FbInfo.RespBody;
  }
  FbExtraReq.startReq(builder);
  FbExtraReq.addInfoType(builder, infoType);
  FbExtraReq.addInfo(builder, info);
  return finish(builder, FbExtraReq.endReq(builder));
}

export function decodeExtraInfoRequest(payload: Uint8Array): ExtraInfoRequest {
  const req = FbExtraReq.getRootAsReq(open(payload, Schema.ExtraInfoReq));
  switch (req.infoType()) {
    case FbInfo.Var: {
      const v: FbVar = req.info(new FbVar());
      return { type: 'var', name: v.name() ?? '' };
    }
    case FbInfo.ReqBody:
      return { type: 'reqBody' };
    case FbInfo.RespBody:
      return { type: 'respBody' };
    default:
      throw new MalformedPayloadError('ExtraInfo.Req without info');
  }
}

export function encodeExtraInfoResponse(msg: ExtraInfoResponse): Uint8Array {
  const builder = new flatbuffers.Builder(64 + (msg.result?.length ?? 0));
  const result = msg.result === null ? 0 : builder.createByteVector(msg.result);
  FbExtraResp.startResp(builder);
  if (result) FbExtraResp.addResult(builder, result);
  return finish(builder, FbExtraResp.endResp(builder));
}

export function decodeExtraInfoResponse(payload: Uint8Array): ExtraInfoResponse {
  const resp = FbExtraResp.getRootAsResp(open(payload, Schema.ExtraInfoResp));
  return { result: copyBytes(resp.resultArray()) };
}

// ---- HTTPRespCall ----------------------------------------------------------

export function encodeHttpRespCallRequest(msg: HttpRespCallRequest): Uint8Array {
  const builder = new flatbuffers.Builder(256);
  const headers = textEntries(builder, msg.headers);
  FbRespCallReq.startReq(builder);
  FbRespCallReq.addId(builder, msg.id);
  FbRespCallReq.addStatus(builder, msg.status);
  FbRespCallReq.addHeaders(builder, headers);
  FbRespCallReq.addConfToken(builder, msg.confToken);
  return finish(builder, FbRespCallReq.endReq(builder));
}

export function decodeHttpRespCallRequest(payload: Uint8Array): HttpRespCallRequest {
  const req = FbRespCallReq.getRootAsReq(open(payload, Schema.HTTPRespCallReq));
  return {
    id: req.id(),
    status: req.status(),
    headers: readEntries(asBuffer(payload), req.headersLength(), (i, e) => req.headers(i, e)),
    confToken: req.confToken(),
  };
}

export function encodeHttpRespCallResponse(msg: HttpRespCallResponse): Uint8Array {
  const builder = new flatbuffers.Builder(256 + (msg.body?.length ?? 0));
  const headers = msg.headers.length > 0 ? textEntries(builder, msg.headers) : 0;
  const body = msg.body === null ? 0 : builder.createByteVector(msg.body);
  FbRespCallResp.startResp(builder);
  FbRespCallResp.addId(builder, msg.id);
  FbRespCallResp.addStatus(builder, msg.status);
  if (headers) FbRespCallResp.addHeaders(builder, headers);
  if (body) FbRespCallResp.addBody(builder, body);
  return finish(builder, FbRespCallResp.endResp(builder));
}

export function decodeHttpRespCallResponse(payload: Uint8Array): HttpRespCallResponse {
  const resp = FbRespCallResp.getRootAsResp(open(payload, Schema.HTTPRespCallResp));
  return {
    id: resp.id(),
    status: resp.status(),
    headers: readEntries(asBuffer(payload), resp.headersLength(), (i, e) => resp.headers(i, e)),
    body: copyBytes(resp.bodyArray()),
  };
}
