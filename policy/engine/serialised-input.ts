// A policy input serialised once for all the policies of one decision. The
// wasm reads its input as JSON text; a route with a platform and a project
// policy would otherwise stringify and encode the same document twice. An
// evaluation hands `bytes` to the engine (an ArrayBuffer is read as JSON
// as it is); JSON.stringify sees the document itself (toJSON), so code that
// serialises its input anyway gets the same text as from the plain document.
//
// A policy is shown only the parts of the input it reads (InputProjection):
// the wasm parses its whole input on every evaluation, and the document a
// gateway builds (every header, the verified claims, the connection) is
// several times what a typical policy reads.
import { setOwnKey } from '../../http/own-keys.js';

const encoder = new TextEncoder();

export class SerialisedInput {
  private json: ArrayBuffer | null = null;
  private serialised: string | null = null;
  /** This document's projections, by InputProjection.key: two policies that read the same parts share one. */
  private projections: Map<string, SerialisedInput> | null = null;

  constructor(readonly value: unknown) {}

  /** The document as JSON text, made on first use (a remembered decision's key: decision-memo.ts). */
  get text(): string {
    return (this.serialised ??= JSON.stringify(this.value) ?? '');
  }

  /** The document as JSON bytes, in a buffer of exactly their size, made on first use. */
  get bytes(): ArrayBuffer {
    if (!this.json) {
      const bytes = encoder.encode(this.text);
      this.json =
        bytes.byteLength === bytes.buffer.byteLength
          ? (bytes.buffer as ArrayBuffer)
          : (bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer);
    }
    return this.json;
  }

  /** The parts of this document `projection` keeps, serialised once per projection. */
  projected(projection: InputProjection): SerialisedInput {
    this.projections ??= new Map();
    let projected = this.projections.get(projection.key);
    if (!projected) {
      projected = new SerialisedInput(projection.apply(this.value));
      this.projections.set(projection.key, projected);
    }
    return projected;
  }

  toJSON(): unknown {
    return this.value;
  }
}

/** What the engine evaluates for `input`: its bytes when it was serialised already. */
export function engineInput(input: unknown): unknown {
  return input instanceof SerialisedInput ? input.bytes : input;
}

/** A path into the input document, by object keys: ["request", "path"] is input.request.path. */
export type InputRef = readonly string[];

/** How many refs, and how deep, a policy's metadata may list (the compiler lists none past these: the whole input then). */
export const MAX_INPUT_REFS = 1_024;
export const MAX_INPUT_REF_DEPTH = 64;

type RefTree = Map<string, RefTree | 'whole'>;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The parts of an input document a policy reads, as the CMS's compiler
 * listed them (`opa deps`: every reference to `input` the policy can make,
 * cut where it stops being constant, so a reference through a variable key
 * keeps the whole object it indexes). Keeping only those parts cannot change
 * a decision: what a policy does not reference it cannot see. At each
 * listed path the value is kept whole, whatever it is; an object on the way
 * keeps only the keys some path names; anything else on the way (an array,
 * a string, null) is kept whole.
 */
export class InputProjection {
  /** Identifies the projection (the sorted refs): equal keys project alike. */
  readonly key: string;
  private readonly tree: RefTree;

  private constructor(refs: readonly InputRef[]) {
    const sorted = [...refs].sort((a, b) => a.length - b.length);
    this.tree = new Map();
    for (const ref of sorted) {
      let node = this.tree;
      for (let i = 0; i < ref.length; i++) {
        const segment = ref[i]!;
        const last = i === ref.length - 1;
        const next = node.get(segment);
        if (next === 'whole') break; // a shorter ref keeps it all already
        if (last) node.set(segment, 'whole');
        else if (next) node = next;
        else {
          const child: RefTree = new Map();
          node.set(segment, child);
          node = child;
        }
      }
    }
    this.key = JSON.stringify([...refs].map((ref) => [...ref]).sort());
  }

  /**
   * The projection `refs` describe; null when it keeps the whole input
   * (`refs` undefined: a policy written before its refs were listed, or one
   * whose refs could not be; or a ref to `input` itself). Throws on refs
   * that are not a list of lists of strings, or larger than any policy's.
   */
  static of(refs: unknown): InputProjection | null {
    if (refs === undefined) return null;
    if (!Array.isArray(refs) || refs.length > MAX_INPUT_REFS) throw new TypeError('inputRefs is not a list of at most 1024 refs');
    for (const ref of refs) {
      if (!Array.isArray(ref) || ref.length > MAX_INPUT_REF_DEPTH || !ref.every((segment) => typeof segment === 'string')) {
        throw new TypeError('an input ref is not a list of at most 64 strings');
      }
    }
    if (refs.some((ref: InputRef) => ref.length === 0)) return null;
    return new InputProjection(refs as InputRef[]);
  }

  /** Whether this projection keeps anything at or under `path` (a prefix of some ref, or a ref that `path` extends). */
  reads(path: InputRef): boolean {
    let node: RefTree = this.tree;
    for (const segment of path) {
      const next = node.get(segment);
      if (next === undefined) return false;
      if (next === 'whole') return true;
      node = next;
    }
    return true;
  }

  /** The parts of `input` the refs name (a new document; `input` is not changed). */
  apply(input: unknown): unknown {
    return project(input, this.tree);
  }
}

function project(value: unknown, tree: RefTree): unknown {
  if (!isPlainObject(value)) return value;
  // A plain object (JSON.stringify's fast path; one without a prototype is not on it).
  const out: Record<string, unknown> = {};
  for (const [key, sub] of tree) {
    if (!Object.hasOwn(value, key)) continue;
    const child = value[key];
    const kept = sub === 'whole' ? child : project(child, sub);
    // A JSON body may have a key "__proto__": it stays a key.
    setOwnKey(out, key, kept);
  }
  return out;
}

/** What a policy with `projection` is shown of `input`: its projection, serialised once per decision when `input` is a SerialisedInput. */
export function inputFor(input: unknown, projection: InputProjection | null): unknown {
  if (projection === null) return input;
  return input instanceof SerialisedInput ? input.projected(projection) : projection.apply(input);
}
