/**
 * A small wrapper around @open-policy-agent/opa-wasm: one compiled policy
 * (the `policy.wasm` of an `opa build -t wasm` bundle), its base data, and
 * synchronous evaluation. The CMS uses it for its access policy; the gateway
 * uses it for every project and platform policy.
 *
 *   const engine = await loadPolicyEngine(wasmBytes, { data: rawDataJsonText });
 *   const decision = engine.evaluate({ method: 'GET', ... }, 'gatehouse/cms/access');
 *   // decision: the value of the entrypoint's document, or undefined when it is undefined
 *
 * Data may be given as JSON text: it is handed to the wasm as bytes, so large
 * integers keep their exact value (JSON.parse would round them).
 */
import { loadPolicy, type LoadedPolicy } from '@open-policy-agent/opa-wasm';

export type PolicyData = Record<string, unknown> | string;

export interface PolicyEngine {
  /**
   * Entrypoint names compiled into the wasm, e.g. ["project/authz"]. opa also
   * lists rules that depend on the requested entrypoint (e.g.
   * "project/authz/reason"), so pass the entrypoint you mean: for stored
   * policies it is `entrypoint` in the policy metadata.
   */
  readonly entrypoints: string[];
  /** Replaces the base `data` document. */
  setData(data: PolicyData): void;
  /**
   * Evaluates one entrypoint; it may be omitted only when the wasm has
   * exactly one. Returns the entrypoint's value, or undefined when OPA's
   * result set is empty.
   */
  evaluate(input: unknown, entrypoint?: string): unknown;
  /** The instance's linear memory now, bytes (it grows with data and evaluations, never shrinks). */
  readonly memoryBytes: number;
}

export class PolicyEngineError extends Error {
  override readonly name = 'PolicyEngineError';
}

const encoder = new TextEncoder();

function toWasmData(data: PolicyData): object | ArrayBuffer {
  if (typeof data !== 'string') return data;
  const bytes = encoder.encode(data);
  // The SDK reads an ArrayBuffer as already-serialised JSON; copy into an exact-size buffer.
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
}

/**
 * Compiles policy wasm once, to instantiate many times (projects that share
 * Rego share the module, each with its own data). V8 compiles off the main
 * thread, so other decisions go on meanwhile.
 */
export async function compilePolicyModule(wasm: Uint8Array): Promise<WebAssembly.Module> {
  try {
    // A Node Buffer may be a view into a shared pool, and both Buffer#slice and
    // a species-aware Uint8Array#slice can land in that pool again; constructing
    // a plain Uint8Array from it copies into an ArrayBuffer of exactly its bytes.
    return await WebAssembly.compile(new Uint8Array(wasm).buffer);
  } catch (cause) {
    throw new PolicyEngineError('not a loadable OPA wasm policy', { cause });
  }
}

/**
 * The most linear memory one policy instance may use (its data document and
 * each evaluation's heap), from POLICY_MEMORY_MAX_MB (default 64). An
 * evaluation that needs more fails (the decision is denied) instead of
 * holding hundreds of MiB; data that does not fit cannot be loaded, so the
 * CMS refuses it. The CMS, the runner and the decision API must agree on it.
 */
export function policyMemoryMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.POLICY_MEMORY_MAX_MB?.trim();
  const mib = raw ? Number(raw) : 64;
  if (!Number.isFinite(mib) || mib < 1 || mib > 4096) throw new Error('POLICY_MEMORY_MAX_MB must be a number of MiB from 1 to 4096');
  return Math.floor(mib * 1024 * 1024);
}

const WASM_PAGE_BYTES = 64 * 1024;

export async function loadPolicyEngine(
  wasm: Uint8Array | WebAssembly.Module,
  options: { data?: PolicyData; maxMemoryBytes?: number } = {},
): Promise<PolicyEngine> {
  let policy: LoadedPolicy;
  const maximum = Math.max(5, Math.floor((options.maxMemoryBytes ?? policyMemoryMaxBytes()) / WASM_PAGE_BYTES));
  try {
    policy = await loadPolicy(wasm instanceof WebAssembly.Module ? wasm : await compilePolicyModule(wasm), { initial: Math.min(5, maximum), maximum });
  } catch (cause) {
    if (cause instanceof PolicyEngineError) throw cause;
    throw new PolicyEngineError('not a loadable OPA wasm policy', { cause });
  }
  const entrypoints = Object.keys((policy.entrypoints ?? {}) as Record<string, number>);
  if (options.data !== undefined) policy.setData(toWasmData(options.data));

  const memory = (policy as unknown as { mem: WebAssembly.Memory }).mem;
  return {
    entrypoints,
    get memoryBytes() {
      return memory.buffer.byteLength;
    },
    setData(data) {
      policy.setData(toWasmData(data));
    },
    evaluate(input, entrypoint) {
      if (entrypoint === undefined && entrypoints.length !== 1) {
        throw new PolicyEngineError(`name the entrypoint to evaluate (have ${entrypoints.join(', ')})`);
      }
      if (entrypoint !== undefined && !entrypoints.includes(entrypoint)) {
        throw new PolicyEngineError(`unknown entrypoint "${entrypoint}" (have ${entrypoints.join(', ')})`);
      }
      const resultSet = policy.evaluate(input, entrypoint) as Array<{ result: unknown }> | undefined;
      return resultSet?.[0]?.result;
    },
  };
}
