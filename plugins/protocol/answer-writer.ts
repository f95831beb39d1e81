// The runner's answer to an HTTPReqCall, laid out by hand straight into its
// frame: it is written once per request, where the runner's CPU counts most.
// flatbuffers' Builder writes back to front through a general-purpose API (a
// vtable search per table, a call per field, then a copy into the frame);
// this writes the three shapes an answer takes (nothing, a Stop, a Rewrite)
// front to back in one pass: a Rewrite of three headers in about 0.55 µs
// against the Builder's 1.4, no action in 0.11 against 0.26 (BENCHMARKS.md).
//
// The layout is plain FlatBuffers, as any reader (APISIX's Lua, Go, ours)
// reads it: the root offset first, then every table with its own vtable just
// before it, every reference pointing forward to what follows; tables,
// vectors and strings start 4-byte aligned (relative to the payload), strings
// end with a NUL. Fields the Builder leaves out (a null path, value or body,
// the action of an answer without one) are left out alike.
// test/protocol/answer-writer.test.ts reads what it writes back, and against
// the Builder's output, for every shape.
import { FrameTooLargeError, HEADER_SIZE, MAX_PAYLOAD_SIZE, RpcType } from './frame.js';
import type { HttpReqCallResponse, TextEntry } from './messages.js';

/** The union's member types, as the schema numbers them (A6.HTTPReqCall.Action). */
const ACTION_STOP = 1;
const ACTION_REWRITE = 2;

/** Kept between answers; an answer that needed more than this is not kept after it. */
const KEPT_SCRATCH_BYTES = 64 * 1024;
let scratch: Buffer = Buffer.alloc(KEPT_SCRATCH_BYTES);
// Scalars through a DataView: the JIT turns its little-endian stores into
// single moves, where Buffer's write methods check their arguments first.
let view: DataView = new DataView(scratch.buffer, scratch.byteOffset, scratch.byteLength);
// A plain view of the same bytes: its subarray is cheap, a Buffer's constructs another Buffer.
let bytesOf: Uint8Array = new Uint8Array(scratch.buffer, scratch.byteOffset, scratch.byteLength);
let pos = 0;

function useScratch(buffer: Buffer): void {
  scratch = buffer;
  view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  bytesOf = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/** After an answer that grew the scratch buffer: back to the size kept, so one huge answer holds no memory after it. */
function releaseGrownScratch(): void {
  if (scratch.length > KEPT_SCRATCH_BYTES) useScratch(Buffer.alloc(KEPT_SCRATCH_BYTES));
}

function reserve(bytes: number): void {
  if (pos + bytes <= scratch.length) return;
  const grown = Buffer.alloc(Math.max(scratch.length * 2, pos + bytes));
  grown.set(bytesOf.subarray(0, pos));
  useScratch(grown);
}

/** Zeroes [from, to): a few bytes each time, cheaper in a loop than through a native call. */
function zero(from: number, to: number): void {
  for (let i = from; i < to; i++) scratch[i] = 0;
}

/** Pads with zeros to a multiple of 4 from the payload's start. */
function align4(): void {
  const payloadPos = pos - HEADER_SIZE;
  const pad = (4 - (payloadPos & 3)) & 3;
  reserve(pad);
  zero(pos, pos + pad);
  pos += pad;
}

/** Sets the offset field at `field` to point at `target` (forward: target > field). */
function point(field: number, target: number): void {
  view.setUint32(field, target - field, true);
}

/**
 * Writes a vtable then its table's inline part of `inlineSize` bytes
 * (zeroed; the soffset set), 4-aligned; `offsets[i]` is field slot i's place
 * in the table, 0 when absent. Returns the table's position. Each shape with
 * absent fields has its own constant list below: marking them per call
 * measured slower (a bit mask: 0.78 against 0.67 µs a Rewrite).
 */
function table(offsets: readonly number[], inlineSize: number): number {
  align4();
  const vtableSize = 4 + offsets.length * 2;
  const padded = (vtableSize + 3) & ~3;
  reserve(padded + inlineSize);
  const vtable = pos;
  view.setUint16(vtable, vtableSize, true);
  view.setUint16(vtable + 2, inlineSize, true);
  for (let i = 0; i < offsets.length; i++) view.setUint16(vtable + 4 + i * 2, offsets[i]!, true);
  const at = vtable + padded;
  zero(vtable + vtableSize, at + inlineSize);
  view.setInt32(at, at - vtable, true);
  pos = at + inlineSize;
  return at;
}

/** Writes `s` as a FlatBuffers string (length, UTF-8 bytes, NUL) and points `field` at it. */
function string(field: number, s: string): void {
  align4();
  const length = s.length;
  // At most three bytes a UTF-16 unit, the length and the NUL.
  reserve(4 + length * 3 + 1);
  const start = pos + 4;
  let i = 0;
  // Header names and values are nearly always ASCII: their bytes are their character codes.
  for (; i < length; i++) {
    const code = s.charCodeAt(i);
    if (code > 0x7f) break;
    scratch[start + i] = code;
  }
  const bytes = i === length ? length : i + scratch.write(s.slice(i), start + i, 'utf8');
  view.setUint32(pos, bytes, true);
  scratch[start + bytes] = 0;
  point(field, pos);
  pos = start + bytes + 1;
}

/** Writes `bytes` as a vector of ubyte and points `field` at it. */
function byteVector(field: number, bytes: Uint8Array): void {
  align4();
  reserve(4 + bytes.length);
  view.setUint32(pos, bytes.length, true);
  scratch.set(bytes, pos + 4);
  point(field, pos);
  pos += 4 + bytes.length;
}

/** TextEntry's field slots: name at 4, value at 8 (0: no value). */
const ENTRY_WITH_VALUE = [4, 8];
const ENTRY_WITHOUT_VALUE = [4, 0];

/** Writes a vector of TextEntry tables and points `field` at it. */
function entries(field: number, list: readonly TextEntry[]): void {
  align4();
  const count = list.length;
  reserve(4 + count * 4);
  const vector = pos;
  view.setUint32(vector, count, true);
  pos += 4 + count * 4;
  point(field, vector);
  for (let i = 0; i < count; i++) {
    const entry = list[i]!;
    const at = table(entry.value === null ? ENTRY_WITHOUT_VALUE : ENTRY_WITH_VALUE, 12);
    point(vector + 4 + i * 4, at);
    string(at + 4, entry.name);
    if (entry.value !== null) string(at + 8, entry.value);
  }
}

/** HTTPReqCall.Resp's slots: id at 4, the action's type at 12, the action at 8. */
const RESP_WITH_ACTION = [4, 12, 8];
const RESP_WITHOUT_ACTION = [4];
/** Rewrite's slots: path, headers, args, resp_headers, body. */
const REWRITE_SLOTS = [4, 8, 12, 16, 20];
const REWRITE_NO_PATH_SLOTS = [0, 8, 12, 16, 20];
const REWRITE_NO_BODY_SLOTS = [4, 8, 12, 16, 0];
const REWRITE_NEITHER_SLOTS = [0, 8, 12, 16, 0];
/** Stop's slots: status (u16) at 12, headers at 4, body at 8. */
const STOP_SLOTS = [12, 4, 8];
const STOP_NO_BODY_SLOTS = [12, 4, 0];

/**
 * The whole frame (header and payload) of the answer `msg`, in a new buffer.
 * Throws FrameTooLargeError when its payload exceeds the protocol's limit.
 */
export function writeHttpReqCallAnswerFrame(msg: HttpReqCallResponse): Buffer {
  pos = HEADER_SIZE;
  reserve(4);
  const root = pos;
  pos += 4;
  const { action } = msg;
  const resp = table(action === null ? RESP_WITHOUT_ACTION : RESP_WITH_ACTION, action === null ? 8 : 16);
  point(root, resp);
  view.setUint32(resp + 4, msg.id >>> 0, true);
  if (action?.type === 'stop') {
    scratch[resp + 12] = ACTION_STOP;
    const stop = table(action.body === null ? STOP_NO_BODY_SLOTS : STOP_SLOTS, 16);
    point(resp + 8, stop);
    view.setUint16(stop + 12, action.status, true);
    entries(stop + 4, action.headers);
    if (action.body !== null) byteVector(stop + 8, action.body);
  } else if (action?.type === 'rewrite') {
    scratch[resp + 12] = ACTION_REWRITE;
    const slots =
      action.path === null
        ? action.body === null
          ? REWRITE_NEITHER_SLOTS
          : REWRITE_NO_PATH_SLOTS
        : action.body === null
          ? REWRITE_NO_BODY_SLOTS
          : REWRITE_SLOTS;
    const rewrite = table(slots, 24);
    point(resp + 8, rewrite);
    if (action.path !== null) string(rewrite + 4, action.path);
    entries(rewrite + 8, action.headers);
    entries(rewrite + 12, action.args);
    entries(rewrite + 16, action.respHeaders);
    if (action.body !== null) byteVector(rewrite + 20, action.body);
  }
  const payloadLength = pos - HEADER_SIZE;
  if (payloadLength > MAX_PAYLOAD_SIZE) {
    releaseGrownScratch();
    throw new FrameTooLargeError(payloadLength);
  }
  scratch[0] = RpcType.HTTPReqCall;
  scratch[1] = payloadLength >>> 16;
  scratch[2] = (payloadLength >>> 8) & 0xff;
  scratch[3] = payloadLength & 0xff;
  const frame = Buffer.allocUnsafe(pos);
  frame.set(bytesOf.subarray(0, pos));
  releaseGrownScratch();
  return frame;
}
