// A policy input serialised once for all the policies of one decision. The
// wasm reads its input as JSON text; a route with a platform and a project
// policy would otherwise stringify and encode the same document twice. An
// evaluation hands `bytes` to the engine (an ArrayBuffer is read as JSON
// as it is); JSON.stringify sees the document itself (toJSON), so code that
// serialises its input anyway gets the same text as from the plain document.

const encoder = new TextEncoder();

export class SerialisedInput {
  private json: ArrayBuffer | null = null;

  constructor(readonly value: unknown) {}

  /** The document as JSON bytes, in a buffer of exactly their size, made on first use. */
  get bytes(): ArrayBuffer {
    if (!this.json) {
      const bytes = encoder.encode(JSON.stringify(this.value));
      this.json =
        bytes.byteLength === bytes.buffer.byteLength
          ? (bytes.buffer as ArrayBuffer)
          : (bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    }
    return this.json;
  }

  toJSON(): unknown {
    return this.value;
  }
}

/** What the engine evaluates for `input`: its bytes when it was serialised already. */
export function engineInput(input: unknown): unknown {
  return input instanceof SerialisedInput ? input.bytes : input;
}
