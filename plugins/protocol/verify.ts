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
  const inBounds = (pos: number, size: number) => pos >= 0 && size >= 0 && pos + size <= len;

  // Every frame is checked, and a check that passes builds no text: a place
  // is named (table, field slot, vector index) only in a failure's message.
  const ROOT = -1;
  const UNION_VALUE = -2;
  const fieldName = (spec: TableSpec, slot: number) => `${spec.name}.field ${slot}`;
  const placeName = (spec: TableSpec, slot: number, index: number): string => {
    if (slot === ROOT) return 'root offset';
    if (slot === UNION_VALUE) return `${spec.name} union value`;
    return index < 0 ? fieldName(spec, slot) : `${fieldName(spec, slot)}[${index}]`;
  };
  const deref = (pos: number, spec: TableSpec, slot: number, index = -1): number => {
    if (!inBounds(pos, 4)) fail(`${placeName(spec, slot, index)} out of bounds`);
    const target = pos + view.getUint32(pos, true);
    if (target >= len) fail(`${placeName(spec, slot, index)} points outside the buffer`);
    return target;
  };
  /** The length of the vector `vector` last checked (its first element is what it returns). */
  let vectorLength = 0;
  const vector = (pos: number, elemSize: number, spec: TableSpec, slot: number): number => {
    const at = deref(pos, spec, slot);
    if (!inBounds(at, 4)) fail(`${fieldName(spec, slot)} length out of bounds`);
    vectorLength = view.getUint32(at, true);
    if (!inBounds(at + 4, vectorLength * elemSize)) fail(`${fieldName(spec, slot)} elements out of bounds`);
    return at + 4;
  };
  /** Where the field in `slot` of the table at `pos` is, or -1 when it is absent. */
  const fieldAt = (
    pos: number,
    vtable: number,
    vtableSize: number,
    inlineSize: number,
    spec: TableSpec,
    slot: number,
    size: number,
    named = slot,
    suffix = '',
  ): number => {
    const off = 4 + slot * 2 < vtableSize ? view.getUint16(vtable + 4 + slot * 2, true) : 0;
    if (off === 0) return -1;
    if (off + size > inlineSize) fail(`${fieldName(spec, named)}${suffix} outside its table`);
    return pos + off;
  };

  const table = (pos: number, spec: TableSpec): void => {
    produce(DECODED_TABLE_BYTES);
    if (!inBounds(pos, 4)) fail(`${spec.name} table out of bounds`);
    const vtable = pos - view.getInt32(pos, true);
    if (!inBounds(vtable, 4)) fail(`${spec.name} vtable out of bounds`);
    const vtableSize = view.getUint16(vtable, true);
    const inlineSize = view.getUint16(vtable + 2, true);
    if (vtableSize < 4 || vtableSize % 2 !== 0) fail(`${spec.name} vtable size ${vtableSize}`);
    if (!inBounds(vtable, vtableSize)) fail(`${spec.name} vtable out of bounds`);
    if (!inBounds(pos, inlineSize)) fail(`${spec.name} inline data out of bounds`);

    let slot = 0;
    for (const field of spec.fields) {
      switch (field.kind) {
        case 'scalar':
          fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot, field.size);
          slot += 1;
          break;
        case 'string': {
          const at = fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot, 4);
          if (at >= 0) {
            const start = vector(at, 1, spec, slot);
            if (!inBounds(start + vectorLength, 1)) fail(`${fieldName(spec, slot)} terminator out of bounds`);
            produce(vectorLength);
          }
          slot += 1;
          break;
        }
        case 'bytes': {
          const at = fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot, 4);
          if (at >= 0) {
            vector(at, 1, spec, slot);
            produce(vectorLength);
          }
          slot += 1;
          break;
        }
        case 'tables': {
          const at = fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot, 4);
          if (at >= 0) {
            const start = vector(at, 4, spec, slot);
            const count = vectorLength;
            for (let i = 0; i < count; i++) table(deref(start + i * 4, spec, slot, i), field.table);
          }
          slot += 1;
          break;
        }
        case 'union': {
          const typeAt = fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot, 1, slot, ' type');
          const type = typeAt < 0 ? 0 : view.getUint8(typeAt);
          const valueAt = fieldAt(pos, vtable, vtableSize, inlineSize, spec, slot + 1, 4, slot, ' value');
          if (type !== 0) {
            const member = field.members[type];
            if (!member) fail(`${spec.name} union type ${type} is unknown`);
            if (valueAt < 0) fail(`${spec.name} union of type ${type} has no value`);
            table(deref(valueAt, spec, UNION_VALUE), member!);
          }
          slot += 2;
          break;
        }
      }
    }
  };

  if (len < 8) fail(`${len} bytes is too short for a FlatBuffers table`);
  table(deref(0, root, ROOT), root);
}
