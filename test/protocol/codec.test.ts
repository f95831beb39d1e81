import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import * as codec from '../../plugins/protocol/codec.js';
import { FrameDecoder, encodeFrame, MAX_PAYLOAD_SIZE, RpcType, FrameTooLargeError } from '../../plugins/protocol/frame.js';
import type { HttpReqCallRequest } from '../../plugins/protocol/messages.js';
import * as flatbuffers from 'flatbuffers';
import { Req as FbReqCallReq } from '../../plugins/protocol/generated/a6/httpreq-call/req.js';
import { TextEntry as FbTextEntry } from '../../plugins/protocol/generated/a6/text-entry.js';
import { decodedBudget } from '../../plugins/protocol/verify.js';

/** An HTTPReqCall whose `count` header entries all point at one entry with a `valueBytes`-byte value. */
function aliasedHeaders(count: number, valueBytes: number): Uint8Array {
  const builder = new flatbuffers.Builder(1024);
  const name = builder.createString('x-padding');
  const value = builder.createString('v'.repeat(valueBytes));
  FbTextEntry.startTextEntry(builder);
  FbTextEntry.addName(builder, name);
  FbTextEntry.addValue(builder, value);
  const entry = FbTextEntry.endTextEntry(builder);
  const headers = FbReqCallReq.createHeadersVector(builder, new Array(count).fill(entry));
  const path = builder.createString('/');
  FbReqCallReq.startReq(builder);
  FbReqCallReq.addPath(builder, path);
  FbReqCallReq.addHeaders(builder, headers);
  builder.finish(FbReqCallReq.endReq(builder));
  return builder.asUint8Array();
}

const sampleReq: HttpReqCallRequest = {
  id: (3 << 22) + 7,
  srcIp: new Uint8Array([127, 0, 0, 1]),
  method: 'PATCH',
  path: '/a/b/d e',
  args: [
    { name: 'x', value: '1' },
    { name: 'x', value: '2' },
    { name: 'debug', value: null },
  ],
  headers: [
    { name: 'host', value: 'upstream.local' },
    { name: 'accept', value: 'a' },
    { name: 'accept', value: 'b' },
  ],
  confToken: 0xfffffffe,
};

describe('codec round trips', () => {
  it('HTTPReqCall request keeps multi-valued args, flags and headers', () => {
    const back = codec.decodeHttpReqCallRequest(codec.encodeHttpReqCallRequest(sampleReq));
    expect(back).toEqual(sampleReq);
  });

  it('IPv6 source addresses keep all 16 bytes', () => {
    const ip = new Uint8Array(16).fill(0);
    ip[15] = 1;
    const back = codec.decodeHttpReqCallRequest(codec.encodeHttpReqCallRequest({ ...sampleReq, srcIp: ip }));
    expect(Array.from(back.srcIp)).toEqual(Array.from(ip));
  });

  it('HTTPReqCall responses: none, stop, rewrite', () => {
    for (const action of [
      null,
      { type: 'stop' as const, status: 403, headers: [{ name: 'x', value: 'y' }], body: new TextEncoder().encode('no') },
      {
        type: 'rewrite' as const,
        path: '/new',
        headers: [
          { name: 'x-del', value: null },
          { name: 'host', value: 'h' },
        ],
        args: [{ name: 'a', value: null }],
        respHeaders: [{ name: 'x-r', value: '1' }],
        body: new Uint8Array([1, 2, 3]),
      },
    ]) {
      const msg = { id: 42, action };
      expect(codec.decodeHttpReqCallResponse(codec.encodeHttpReqCallResponse(msg))).toEqual(msg);
    }
  });

  it('answer strings keep every character: ASCII, non-ASCII, and longer than the ASCII scratch buffer', () => {
    const values = ['plain', 'caf\u00e9', '\u{1f510} key', 'x'.repeat(4096), 'y'.repeat(5000), `${'z'.repeat(4095)}\u00e9`, ''];
    const headers = values.map((value, i) => ({ name: `x-h${i}-\u00fc`.slice(0, i % 2 ? 5 : 8), value }));
    const msg = { id: 1, action: { type: 'rewrite' as const, path: '/p\u00e4th', headers, args: [], respHeaders: [], body: null } };
    expect(codec.decodeHttpReqCallResponse(codec.encodeHttpReqCallResponse(msg))).toEqual(msg);
    const frame = codec.encodeHttpReqCallResponseFrame(msg);
    expect(codec.decodeHttpReqCallResponse(frame.subarray(4))).toEqual(msg);
  });

  it('PrepareConf, ExtraInfo, HTTPRespCall and Err', () => {
    const prep = {
      conf: [
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"a":1}' },
      ],
      key: 'route#1',
    };
    expect(codec.decodePrepareConfRequest(codec.encodePrepareConfRequest(prep))).toEqual(prep);
    expect(codec.decodePrepareConfResponse(codec.encodePrepareConfResponse({ confToken: 9 }))).toEqual({ confToken: 9 });
    for (const info of [{ type: 'var' as const, name: 'remote_addr' }, { type: 'reqBody' as const }, { type: 'respBody' as const }]) {
      expect(codec.decodeExtraInfoRequest(codec.encodeExtraInfoRequest(info))).toEqual(info);
    }
    expect(codec.decodeExtraInfoResponse(codec.encodeExtraInfoResponse({ result: null }))).toEqual({ result: null });
    expect(codec.decodeExtraInfoResponse(codec.encodeExtraInfoResponse({ result: new Uint8Array([0, 255]) }))).toEqual({
      result: new Uint8Array([0, 255]),
    });
    const rc = {
      id: 5,
      status: 502,
      headers: [
        { name: 'set-cookie', value: 'a' },
        { name: 'set-cookie', value: 'b' },
      ],
      confToken: 77,
    };
    expect(codec.decodeHttpRespCallRequest(codec.encodeHttpRespCallRequest(rc))).toEqual(rc);
    const rr = { id: 5, status: 0, headers: [], body: null };
    expect(codec.decodeHttpRespCallResponse(codec.encodeHttpRespCallResponse(rr))).toEqual(rr);
    for (const code of ['BAD_REQUEST', 'SERVICE_UNAVAILABLE', 'CONF_TOKEN_NOT_FOUND'] as const) {
      expect(codec.decodeErrorResponse(codec.encodeErrorResponse({ code }))).toEqual({ code });
    }
  });
});

describe('malformed payloads', () => {
  it('truncated buffers are rejected, never half-read', () => {
    const good = codec.encodeHttpReqCallRequest(sampleReq);
    for (let cut = 0; cut < good.length; cut++) {
      let decoded: HttpReqCallRequest | undefined;
      try {
        decoded = codec.decodeHttpReqCallRequest(good.subarray(0, cut));
      } catch (err) {
        expect((err as Error).name).toBe('MalformedPayloadError');
        continue;
      }
      // A prefix can only decode if everything it references lies inside it.
      expect(decoded).toBeDefined();
    }
  });

  it('entries sharing one string cannot decode into more than the budget: refused as malformed, quickly', () => {
    // 20,000 headers, one 12 KB value: an 80 KB frame that would decode into 240 MB.
    const forged = aliasedHeaders(20_000, 12 * 1024);
    expect(forged.byteLength).toBeLessThan(100 * 1024);
    const started = performance.now();
    expect(() => codec.decodeHttpReqCallRequest(forged)).toThrow(/would decode into more than/);
    expect(performance.now() - started).toBeLessThan(1_000);
    // Sharing within the budget still decodes (a few repeated entries are not an attack).
    const small = codec.decodeHttpReqCallRequest(aliasedHeaders(3, 100));
    expect(small.headers).toHaveLength(3);
    expect(decodedBudget(forged.byteLength)).toBeLessThan(20_000 * 12 * 1024);
  });

  it('a legitimate frame near the size limit, all one body or many distinct headers, decodes', () => {
    const headers = Array.from({ length: 5_000 }, (_, i) => ({ name: `x-h${i}`, value: 'v'.repeat(200) }));
    const back = codec.decodeHttpReqCallRequest(codec.encodeHttpReqCallRequest({ ...sampleReq, headers }));
    expect(back.headers).toHaveLength(5_000);
  });

  it('random and bit-flipped buffers either decode or throw MalformedPayloadError', () => {
    const good = codec.encodeHttpReqCallRequest(sampleReq);
    for (let i = 0; i < 3000; i++) {
      const buf = i % 2 === 0 ? Buffer.from(good) : randomBytes(8 + (i % 200));
      if (i % 2 === 0) buf[i % buf.length] = buf[i % buf.length]! ^ (1 << (i % 8));
      try {
        codec.decodeHttpReqCallRequest(buf);
      } catch (err) {
        expect((err as Error).name).toBe('MalformedPayloadError');
      }
    }
  });

  it('a forged vector length is caught before any element is read', () => {
    const good = Buffer.from(codec.encodeHttpReqCallRequest(sampleReq));
    // Find the headers vector length (3) and claim 2^31 entries instead.
    const forged = Buffer.from(good);
    let patched = false;
    for (let at = 0; at + 4 <= forged.length; at += 4) {
      if (forged.readUInt32LE(at) === 3) {
        forged.writeUInt32LE(0x7fffffff, at);
        patched = true;
        break;
      }
    }
    expect(patched).toBe(true);
    expect(() => codec.decodeHttpReqCallRequest(forged)).toThrow(/out of bounds/);
  });
});

describe('an HTTPReqCall as the runner receives it', () => {
  const readAll = (call: HttpReqCallRequest) => ({
    id: call.id,
    srcIp: call.srcIp,
    method: call.method,
    path: call.path,
    args: call.args,
    headers: call.headers,
    confToken: call.confToken,
  });

  it('reads as the eager decoder does, each field decoded once', () => {
    const payload = codec.encodeHttpReqCallRequest(sampleReq);
    const call = codec.receiveHttpReqCallRequest(payload);
    expect(readAll(call)).toEqual(sampleReq);
    expect(readAll(call)).toEqual(codec.decodeHttpReqCallRequest(payload));
    expect(call.headers).toBe(call.headers);
    expect(call.args).toBe(call.args);
  });

  it("decodes header and arg bytes as flatbuffers' own reader does: UTF-8, bad sequences replaced, a leading byte-order mark dropped", () => {
    const samples = [
      [0x61, 0x62],
      [0xc3, 0xa9],
      [0xff, 0x61],
      [0xe2, 0x82],
      [0xed, 0xa0, 0x80],
      [0xf0, 0x9f, 0x98],
      [0xef, 0xbb, 0xbf, 0x61],
      [0xef, 0xbb, 0xbf],
      [0xef, 0xbb],
      [],
    ].map((bytes) => new Uint8Array(bytes));
    const builder = new flatbuffers.Builder(1024);
    const entries = (kind: string) =>
      samples.map((bytes, i) => {
        const name = builder.createString(new Uint8Array([...new TextEncoder().encode(`${kind}${i}`), ...bytes]));
        const value = builder.createString(bytes);
        FbTextEntry.startTextEntry(builder);
        FbTextEntry.addName(builder, name);
        FbTextEntry.addValue(builder, value);
        return FbTextEntry.endTextEntry(builder);
      });
    const headers = FbReqCallReq.createHeadersVector(builder, entries('h'));
    const args = FbReqCallReq.createArgsVector(builder, entries('a'));
    const path = builder.createString('/');
    FbReqCallReq.startReq(builder);
    FbReqCallReq.addPath(builder, path);
    FbReqCallReq.addHeaders(builder, headers);
    FbReqCallReq.addArgs(builder, args);
    builder.finish(FbReqCallReq.endReq(builder));
    const payload = builder.asUint8Array();

    // The reference: the generated accessors, which decode with a TextDecoder.
    const req = FbReqCallReq.getRootAsReq(new flatbuffers.ByteBuffer(payload));
    const reference = (count: number, at: (i: number) => FbTextEntry | null) =>
      Array.from({ length: count }, (_, i) => ({ name: at(i)!.name(), value: at(i)!.value() }));
    for (const bytes of [payload, Buffer.from(payload)]) {
      const call = codec.receiveHttpReqCallRequest(bytes);
      expect(call.headers).toEqual(reference(req.headersLength(), (i) => req.headers(i)));
      expect(call.args).toEqual(reference(req.argsLength(), (i) => req.args(i)));
    }
    expect(codec.receiveHttpReqCallRequest(payload).headers.map((h) => h.value)).toContain('a');
  });

  it('is verified whole on arrival: a broken frame is refused before any field is read', () => {
    const good = codec.encodeHttpReqCallRequest(sampleReq);
    let refused = 0;
    for (let cut = 0; cut < good.length; cut++) {
      let call: HttpReqCallRequest;
      try {
        call = codec.receiveHttpReqCallRequest(good.subarray(0, cut));
      } catch (err) {
        expect((err as Error).name).toBe('MalformedPayloadError');
        refused++;
        continue;
      }
      // What was accepted reads without throwing, headers and args included.
      expect(() => readAll(call)).not.toThrow();
    }
    expect(refused).toBeGreaterThan(0);
    expect(() => codec.receiveHttpReqCallRequest(aliasedHeaders(20_000, 12 * 1024))).toThrow(/would decode into more than/);
  });

  it('owns its source address: a later change to the frame does not reach it once read', () => {
    const payload = Buffer.from(codec.encodeHttpReqCallRequest(sampleReq));
    const call = codec.receiveHttpReqCallRequest(payload);
    const ip = call.srcIp;
    payload.fill(0);
    expect(Array.from(ip)).toEqual([127, 0, 0, 1]);
  });
});

describe('framing', () => {
  it('reassembles frames split and joined arbitrarily', () => {
    const a = encodeFrame(RpcType.PrepareConf, new Uint8Array([1, 2, 3]));
    const b = encodeFrame(RpcType.HTTPReqCall, new Uint8Array(70000).fill(7));
    const all = Buffer.concat([a, b, a]);
    const decoder = new FrameDecoder();
    const frames = [];
    for (let i = 0; i < all.length; i += 1000) frames.push(...decoder.push(all.subarray(i, i + 1000)));
    expect(frames.map((f) => [f.type, f.payload.length])).toEqual([
      [1, 3],
      [2, 70000],
      [1, 3],
    ]);
    expect(decoder.pendingBytes).toBe(0);
  });

  it('writes a 24-bit big-endian length and refuses oversize payloads', () => {
    const f = encodeFrame(RpcType.ExtraInfo, new Uint8Array(0x010203));
    expect([...f.subarray(0, 4)]).toEqual([3, 1, 2, 3]);
    expect(() => encodeFrame(RpcType.ExtraInfo, new Uint8Array(MAX_PAYLOAD_SIZE + 1))).toThrow(FrameTooLargeError);
  });
});
