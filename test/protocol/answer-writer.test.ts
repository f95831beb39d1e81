// The runner's hand-laid HTTPReqCall answer (plugins/protocol/answer-writer.ts):
// read back by the verifying decoder and by the generated FlatBuffers
// accessors alone, it says what the Builder's encoding says, for every shape
// an answer takes, and its layout keeps FlatBuffers' alignment.
import { describe, expect, it } from 'vitest';
import * as flatbuffers from 'flatbuffers';
import * as codec from '../../plugins/protocol/index.js';
import { writeHttpReqCallAnswerFrame } from '../../plugins/protocol/answer-writer.js';
import { Resp } from '../../plugins/protocol/generated/a6/httpreq-call/resp.js';
import { Rewrite } from '../../plugins/protocol/generated/a6/httpreq-call/rewrite.js';
import { Action } from '../../plugins/protocol/generated/a6/httpreq-call/action.js';
import type { HttpReqCallResponse, TextEntry } from '../../plugins/protocol/index.js';

function readBack(msg: HttpReqCallResponse): HttpReqCallResponse {
  const frame = writeHttpReqCallAnswerFrame(msg);
  expect(frame[0]).toBe(codec.RpcType.HTTPReqCall);
  expect(frame.readUIntBE(1, 3)).toBe(frame.length - 4);
  return codec.decodeHttpReqCallResponse(frame.subarray(4));
}

const entry = (name: string, value: string | null): TextEntry => ({ name, value });

const shapes: HttpReqCallResponse[] = [
  { id: 0, action: null },
  { id: 4_294_967_295, action: null },
  {
    id: 7,
    action: { type: 'stop', status: 403, headers: [entry('content-type', 'application/problem+json')], body: new TextEncoder().encode('{"status":403}') },
  },
  { id: 8, action: { type: 'stop', status: 200, headers: [], body: null } },
  { id: 9, action: { type: 'stop', status: 65535, headers: [entry('a', ''), entry('b', null)], body: new Uint8Array(0) } },
  {
    id: 10,
    action: {
      type: 'rewrite',
      path: null,
      headers: [entry('x-gatehouse-sub', 'dev'), entry('x-gatehouse-role', 'project_user'), entry('x-gatehouse-project', 'demo'), entry('x-del', null)],
      args: [],
      respHeaders: [],
      body: null,
    },
  },
  {
    id: 11,
    action: {
      type: 'rewrite',
      path: '/v1/chat/completions',
      headers: [],
      args: [entry('q', 'a b'), entry('flag', null)],
      respHeaders: [entry('x-r', '1')],
      body: new Uint8Array([0, 1, 2, 255]),
    },
  },
  { id: 12, action: { type: 'rewrite', path: '', headers: [], args: [], respHeaders: [], body: new Uint8Array(0) } },
];

describe('the runner answer writer', () => {
  it('every shape reads back as written, and as the Builder encodes it', () => {
    for (const msg of shapes) {
      expect(readBack(msg)).toEqual(msg);
      expect(readBack(msg)).toEqual(codec.decodeHttpReqCallResponse(codec.encodeHttpReqCallResponse(msg)));
    }
  });

  it('strings keep every character: ASCII, accented, astral, lone surrogates as U+FFFD, and long ones', () => {
    const values = ['plain', 'caf\u00e9', '\u{1f510} key', 'a\ud800b', 'x'.repeat(70_000), `${'z'.repeat(4095)}\u00e9`, '\u00e9\u00e9\u00e9'];
    const msg: HttpReqCallResponse = {
      id: 1,
      action: { type: 'rewrite', path: '/p\u00e4th', headers: values.map((v, i) => entry(`x-h${i}`, v)), args: [], respHeaders: [], body: null },
    };
    const builder = codec.decodeHttpReqCallResponse(codec.encodeHttpReqCallResponse(msg));
    expect(readBack(msg)).toEqual(builder);
    expect((readBack(msg).action as { headers: TextEntry[] }).headers[3]!.value).toBe('a\ufffdb');
  });

  it('many answers in a row, large and small, never mix (the scratch buffer is reused and shrunk)', () => {
    const random = (n: number) => Array.from({ length: n }, (_, i) => String.fromCharCode(32 + ((i * 7919) % 95))).join('');
    for (let i = 0; i < 300; i++) {
      const big = i % 50 === 0;
      const msg: HttpReqCallResponse = {
        id: i,
        action:
          i % 3 === 0
            ? { type: 'stop', status: 400 + (i % 100), headers: [entry('h', random(i))], body: new Uint8Array(big ? 200_000 : i).fill(i & 255) }
            : {
                type: 'rewrite',
                path: i % 2 ? `/p/${i}` : null,
                headers: [entry(`n${i}`, random(big ? 100_000 : i))],
                args: [entry('a', null)],
                respHeaders: [],
                body: null,
              },
      };
      expect(readBack(msg)).toEqual(msg);
    }
  });

  it('the generated accessors alone (no verifier) read it as the Builder wrote it', () => {
    const msg = shapes[5]!;
    const payload = writeHttpReqCallAnswerFrame(msg).subarray(4);
    const resp = Resp.getRootAsResp(new flatbuffers.ByteBuffer(new Uint8Array(payload)));
    expect(resp.id()).toBe(10);
    expect(resp.actionType()).toBe(Action.Rewrite);
    const rewrite: Rewrite = resp.action(new Rewrite());
    expect(rewrite.path()).toBeNull();
    expect(rewrite.headersLength()).toBe(4);
    expect(rewrite.headers(0)!.name()).toBe('x-gatehouse-sub');
    expect(rewrite.headers(3)!.value()).toBeNull();
    expect(rewrite.argsLength()).toBe(0);
    expect(rewrite.bodyArray()).toBeNull();
  });

  it('lays tables, vectors and strings on 4-byte boundaries, every reference pointing forward', () => {
    for (const msg of shapes) {
      const payload = writeHttpReqCallAnswerFrame(msg).subarray(4);
      const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
      const root = view.getUint32(0, true);
      expect(root % 4).toBe(0);
      const vtable = root - view.getInt32(root, true);
      expect(vtable % 2).toBe(0);
      expect(vtable).toBeLessThan(root);
      if (msg.action) {
        const actionAt = 8 + root + view.getUint32(root + 8, true);
        expect(actionAt % 4).toBe(0);
        expect(actionAt).toBeGreaterThan(root);
      }
    }
    // Every entry table and every string of one answer, past strings of odd lengths.
    const msg: HttpReqCallResponse = {
      id: 3,
      action: {
        type: 'rewrite',
        path: '/odd',
        headers: [entry('a', 'bcd'), entry('ef', null), entry('ghi', 'j'), entry('k', 'lmnop')],
        args: [],
        respHeaders: [],
        body: null,
      },
    };
    const bb = new flatbuffers.ByteBuffer(new Uint8Array(writeHttpReqCallAnswerFrame(msg).subarray(4)));
    const rewrite: Rewrite = Resp.getRootAsResp(bb).action(new Rewrite());
    const stringAt = (table: number, slot: number) => {
      const field = table + bb.__offset(table, 4 + slot * 2);
      return field + bb.readUint32(field);
    };
    for (let i = 0; i < rewrite.headersLength(); i++) {
      const at = rewrite.headers(i)!.bb_pos;
      expect(at % 4).toBe(0);
      expect(stringAt(at, 0) % 4).toBe(0);
      if (msg.action!.type === 'rewrite' && msg.action!.headers[i]!.value !== null) expect(stringAt(at, 1) % 4).toBe(0);
    }
  });

  it('an answer beyond the protocol limit is refused, and the next one is whole', () => {
    const huge: HttpReqCallResponse = { id: 1, action: { type: 'stop', status: 500, headers: [], body: new Uint8Array(codec.MAX_PAYLOAD_SIZE) } };
    expect(() => writeHttpReqCallAnswerFrame(huge)).toThrow(codec.FrameTooLargeError);
    expect(readBack(shapes[2]!)).toEqual(shapes[2]);
  });
});
