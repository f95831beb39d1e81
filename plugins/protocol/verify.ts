// Bounds checking for FlatBuffers payloads before the generated accessors read
// them. The FlatBuffers JavaScript runtime has no verifier: a forged offset or
// vector length would make it read garbage or loop over billions of entries.
// Every table, vector and string our schema can hold is checked to lie inside
// the buffer. In-bounds is not enough: FlatBuffers lets many offsets point at
// one table or string, so a small frame could decode into hundreds of
// megabytes (20,000 header entries, all the same 12 KB string). What decoding
// would produce is therefore counted too, strings and tables alike, and a
// payload that would decode into more than twice its own size (plus a little
// room) is refused as malformed: decoding work and memory stay bounded by the
// payload size.

export class MalformedPayloadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MalformedPayloadError';
  }
}

export type FieldSpec =
  | { kind: 'scalar'; size: 1 | 2 | 4 }
  | { kind: 'string' }
  | { kind: 'bytes' }
  | { kind: 'tables'; table: TableSpec }
  /** A union occupies two slots: its type byte, then the member table. */
  | { kind: 'union'; members: Record<number, TableSpec> };

export interface TableSpec {
  name: string;
  fields: FieldSpec[];
}

const SCALAR_U8: FieldSpec = { kind: 'scalar', size: 1 };
const SCALAR_U16: FieldSpec = { kind: 'scalar', size: 2 };
const SCALAR_U32: FieldSpec = { kind: 'scalar', size: 4 };
const STRING: FieldSpec = { kind: 'string' };
const BYTES: FieldSpec = { kind: 'bytes' };

const TextEntry: TableSpec = { name: 'TextEntry', fields: [STRING, STRING] };
const textEntries: FieldSpec = { kind: 'tables', table: TextEntry };
const Empty = (name: string): TableSpec => ({ name, fields: [] });

export const Schema = {
  ErrResp: { name: 'Err.Resp', fields: [SCALAR_U8] },
  PrepareConfReq: { name: 'PrepareConf.Req', fields: [textEntries, STRING] },
  PrepareConfResp: { name: 'PrepareConf.Resp', fields: [SCALAR_U32] },
  HTTPReqCallReq: {
    name: 'HTTPReqCall.Req',
    fields: [SCALAR_U32, BYTES, SCALAR_U8, STRING, textEntries, textEntries, SCALAR_U32],
  },
  HTTPReqCallResp: {
    name: 'HTTPReqCall.Resp',
    fields: [
      SCALAR_U32,
      {
        kind: 'union',
        members: {
          1: { name: 'HTTPReqCall.Stop', fields: [SCALAR_U16, textEntries, BYTES] },
          2: {
            name: 'HTTPReqCall.Rewrite',
            fields: [STRING, textEntries, textEntries, textEntries, BYTES],
          },
        },
      },
    ],
  },
  ExtraInfoReq: {
    name: 'ExtraInfo.Req',
    fields: [
      {
        kind: 'union',
        members: {
          1: { name: 'ExtraInfo.Var', fields: [STRING] },
          2: Empty('ExtraInfo.ReqBody'),
          3: Empty('ExtraInfo.RespBody'),
        },
      },
    ],
  },
  ExtraInfoResp: { name: 'ExtraInfo.Resp', fields: [BYTES] },
  HTTPRespCallReq: { name: 'HTTPRespCall.Req', fields: [SCALAR_U32, SCALAR_U16, textEntries, SCALAR_U32] },
  HTTPRespCallResp: {
    name: 'HTTPRespCall.Resp',
    fields: [SCALAR_U32, SCALAR_U16, textEntries, BYTES],
  },
} satisfies Record<string, TableSpec>;

/** What a decoded table costs beyond its strings: the object and its slots. */
const DECODED_TABLE_BYTES = 32;
/** Room for small payloads, whose fixed overheads are a larger share. */
const DECODED_SLACK_BYTES = 64 * 1024;

/** The most a payload of `length` bytes may decode into. */
export function decodedBudget(length: number): number {
  return 2 * length + DECODED_SLACK_BYTES;
}

/** Throws MalformedPayloadError unless `buf` is a well-formed buffer of `root`. */
export function verifyPayload(buf: Uint8Array, root: TableSpec): void {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const len = buf.byteLength;
  const fail = (what: string): never => {
    throw new MalformedPayloadError(`malformed ${root.name} payload: ${what}`);
  };
  const budget = decodedBudget(len);
  let decoded = 0;
  const produce = (bytes: number) => {
    decoded += bytes;
    if (decoded > budget) fail(`it would decode into more than ${budget} bytes (entries sharing data)`);
  };
  const need = (pos: number, size: number, what: string) => {
    if (pos < 0 || size < 0 || pos + size > len) fail(`${what} out of bounds`);
  };
  const deref = (pos: number, what: string): number => {
    need(pos, 4, what);
    const target = pos + view.getUint32(pos, true);
    if (target >= len) fail(`${what} points outside the buffer`);
    return target;
  };
  const vector = (pos: number, elemSize: number, what: string): { start: number; count: number } => {
    const at = deref(pos, what);
    need(at, 4, `${what} length`);
    const count = view.getUint32(at, true);
    need(at + 4, count * elemSize, `${what} elements`);
    return { start: at + 4, count };
  };

  const table = (pos: number, spec: TableSpec): void => {
    produce(DECODED_TABLE_BYTES);
    need(pos, 4, `${spec.name} table`);
    const vtable = pos - view.getInt32(pos, true);
    need(vtable, 4, `${spec.name} vtable`);
    const vtableSize = view.getUint16(vtable, true);
    const inlineSize = view.getUint16(vtable + 2, true);
    if (vtableSize < 4 || vtableSize % 2 !== 0) fail(`${spec.name} vtable size ${vtableSize}`);
    need(vtable, vtableSize, `${spec.name} vtable`);
    need(pos, inlineSize, `${spec.name} inline data`);
    const fieldOffset = (slot: number): number =>
      4 + slot * 2 < vtableSize ? view.getUint16(vtable + 4 + slot * 2, true) : 0;
    const fieldAt = (slot: number, size: number, what: string): number | null => {
      const off = fieldOffset(slot);
      if (off === 0) return null;
      if (off + size > inlineSize) fail(`${spec.name}.${what} outside its table`);
      return pos + off;
    };

    let slot = 0;
    for (const field of spec.fields) {
      const what = `field ${slot}`;
      switch (field.kind) {
        case 'scalar':
          fieldAt(slot, field.size, what);
          slot += 1;
          break;
        case 'string': {
          const at = fieldAt(slot, 4, what);
          if (at !== null) {
            const { start, count } = vector(at, 1, `${spec.name}.${what}`);
            need(start + count, 1, `${spec.name}.${what} terminator`);
            produce(count);
          }
          slot += 1;
          break;
        }
        case 'bytes': {
          const at = fieldAt(slot, 4, what);
          if (at !== null) produce(vector(at, 1, `${spec.name}.${what}`).count);
          slot += 1;
          break;
        }
        case 'tables': {
          const at = fieldAt(slot, 4, what);
          if (at !== null) {
            const { start, count } = vector(at, 4, `${spec.name}.${what}`);
            for (let i = 0; i < count; i++) table(deref(start + i * 4, `${spec.name}.${what}[${i}]`), field.table);
          }
          slot += 1;
          break;
        }
        case 'union': {
          const typeAt = fieldAt(slot, 1, `${what} type`);
          const type = typeAt === null ? 0 : view.getUint8(typeAt);
          const valueAt = fieldAt(slot + 1, 4, `${what} value`);
          if (type !== 0) {
            const member = field.members[type];
            if (!member) fail(`${spec.name} union type ${type} is unknown`);
            if (valueAt === null) fail(`${spec.name} union of type ${type} has no value`);
            table(deref(valueAt!, `${spec.name} union value`), member!);
          }
          slot += 2;
          break;
        }
      }
    }
  };

  if (len < 8) fail(`${len} bytes is too short for a FlatBuffers table`);
  table(deref(0, 'root offset'), root);
}
