// Framing of the ext-plugin protocol: a 4-byte header (1-byte RPC type,
// 24-bit big-endian payload length) followed by a FlatBuffers payload.

export const RpcType = {
  Error: 0,
  PrepareConf: 1,
  HTTPReqCall: 2,
  ExtraInfo: 3,
  HTTPRespCall: 4,
} as const;
export type RpcType = (typeof RpcType)[keyof typeof RpcType];

export const HEADER_SIZE = 4;
/** The largest payload a 24-bit length can carry (16 MiB - 1). */
export const MAX_PAYLOAD_SIZE = 0xffffff;

export interface Frame {
  type: number;
  payload: Buffer;
}

export class FrameTooLargeError extends Error {
  constructor(readonly size: number) {
    super(`frame payload of ${size} bytes exceeds the protocol limit of ${MAX_PAYLOAD_SIZE}`);
    this.name = 'FrameTooLargeError';
  }
}

export function isKnownRpcType(type: number): type is RpcType {
  return type >= RpcType.Error && type <= RpcType.HTTPRespCall;
}

export function encodeFrame(type: RpcType, payload: Uint8Array): Buffer {
  if (payload.length > MAX_PAYLOAD_SIZE) throw new FrameTooLargeError(payload.length);
  const frame = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  frame.writeUInt8(type, 0);
  frame.writeUIntBE(payload.length, 1, 3);
  frame.set(payload, HEADER_SIZE);
  return frame;
}

/**
 * Reassembles frames from a byte stream. Chunks may split or join frames
 * arbitrarily; `push` returns every frame completed by the chunk.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    while (this.buffered >= HEADER_SIZE) {
      const head = this.peek(HEADER_SIZE);
      const length = head.readUIntBE(1, 3);
      if (this.buffered < HEADER_SIZE + length) break;
      const bytes = this.take(HEADER_SIZE + length);
      frames.push({ type: bytes.readUInt8(0), payload: bytes.subarray(HEADER_SIZE) });
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  private peek(size: number): Buffer {
    if (this.chunks[0]!.length < size) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, size);
  }

  private take(size: number): Buffer {
    if (this.chunks[0]!.length < size) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0]!;
    const out = first.subarray(0, size);
    if (first.length === size) this.chunks.shift();
    else this.chunks[0] = first.subarray(size);
    this.buffered -= size;
    return out;
  }
}
