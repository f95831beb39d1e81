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
import { FUEL_GLOBAL } from './meter.js';
import { meterWasm } from './metering.js';

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
  /** The fuel the last evaluation burned (meter.ts): loop iterations and calls, about the work it did. */
  readonly fuelUsed: number;
}

export class PolicyEngineError extends Error {
  override readonly name = 'PolicyEngineError';
}

/** The evaluation burned its fuel (POLICY_EVAL_FUEL) and was stopped: the decision fails closed. */
export class EvaluationBudgetError extends Error {
  override readonly name = 'EvaluationBudgetError';
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
 * Rego share the module, each with its own data). Every evaluation must be
 * bounded by its fuel, so the module must be metered (meter.ts): the CMS
 * stores modules metered already (its compiler meters what opa builds), and
 * those compile as they are; a module that is not (written by a CMS with
 * POLICY_EVAL_FUEL=off, or before modules were metered on the write path) is
 * rewritten here first, in the metering worker (metering.ts), off the
 * request thread. V8 validates and compiles wasm off the main thread too, so
 * other decisions go on meanwhile. `metered: false` (POLICY_EVAL_FUEL=off)
 * compiles the bytes as they are, metered or not.
 */
export async function compilePolicyModule(wasm: Uint8Array, options: { metered?: boolean } = {}): Promise<WebAssembly.Module> {
  try {
    // A plain copy (a Node Buffer may be a view into a shared pool, and both
    // Buffer#slice and a species-aware Uint8Array#slice can land in that pool
    // again; constructing a plain Uint8Array copies exactly its bytes).
    const module = await WebAssembly.compile(new Uint8Array(wasm).buffer);
    if (options.metered === false || isMeteredModule(module)) return module;
    return await WebAssembly.compile(await meterWasm(wasm));
  } catch (cause) {
    throw new PolicyEngineError('not a loadable OPA wasm policy', { cause });
  }
}

/** Whether a compiled module carries the fuel meter.ts adds (its fuel global exported). */
export function isMeteredModule(module: WebAssembly.Module): boolean {
  return WebAssembly.Module.exports(module).some((entry) => entry.name === FUEL_GLOBAL && entry.kind === 'global');
}

/** The default of POLICY_MEMORY_MAX_MB, bytes (see policyMemoryMaxBytes). */
export const DEFAULT_POLICY_MEMORY_MAX_BYTES = 64 * 1024 * 1024;

/** The default of POLICY_EVAL_FUEL: about 100 ms of the busiest evaluation loop on a 2-core 2.x GHz machine (see evaluationFuel). */
export const DEFAULT_EVAL_FUEL = 10_000_000;
const MAX_EVAL_FUEL = 0x7fffffff;

/**
 * The fuel of one evaluation, from POLICY_EVAL_FUEL (default
 * DEFAULT_EVAL_FUEL): how many loop iterations and function calls an
 * evaluation may make before it is stopped and its decision denied. It is a
 * count, not a time: the same policy and input burn the same fuel on any
 * machine and under any load, so a decision never depends on how busy the
 * gateway is. The CMS, the runner and the decision API must agree on it.
 * `off` (null): modules are not metered, for measuring what metering costs;
 * then only memory (and the pool's deadline) bound an evaluation.
 */
export function evaluationFuel(env: NodeJS.ProcessEnv): number | null {
  const raw = env.POLICY_EVAL_FUEL?.trim();
  if (raw === 'off') return null;
  const fuel = raw ? Number(raw) : DEFAULT_EVAL_FUEL;
  if (!Number.isInteger(fuel) || fuel < 1000 || fuel > MAX_EVAL_FUEL)
    throw new Error(`POLICY_EVAL_FUEL must be a whole number from 1000 to ${MAX_EVAL_FUEL}, or off`);
  return fuel;
}

/**
 * The most linear memory one policy instance may use (its data document and
 * each evaluation's heap), from POLICY_MEMORY_MAX_MB (default 64). An
 * evaluation that needs more fails (the decision is denied) instead of
 * holding hundreds of MiB; data that does not fit cannot be loaded, so the
 * CMS refuses it. The CMS, the runner and the decision API must agree on it.
 */
export function policyMemoryMaxBytes(env: NodeJS.ProcessEnv): number {
  const raw = env.POLICY_MEMORY_MAX_MB?.trim();
  const mib = raw ? Number(raw) : DEFAULT_POLICY_MEMORY_MAX_BYTES / (1024 * 1024);
  if (!Number.isFinite(mib) || mib < 1 || mib > 4096) throw new Error('POLICY_MEMORY_MAX_MB must be a number of MiB from 1 to 4096');
  return Math.floor(mib * 1024 * 1024);
}

const WASM_PAGE_BYTES = 64 * 1024;

export async function loadPolicyEngine(
  wasm: Uint8Array | WebAssembly.Module,
  options: { data?: PolicyData; maxMemoryBytes?: number; fuel?: number } = {},
): Promise<PolicyEngine> {
  let policy: LoadedPolicy;
  const maximum = Math.max(5, Math.floor((options.maxMemoryBytes ?? DEFAULT_POLICY_MEMORY_MAX_BYTES) / WASM_PAGE_BYTES));
  try {
    policy = await loadPolicy(wasm instanceof WebAssembly.Module ? wasm : await compilePolicyModule(wasm), { initial: Math.min(5, maximum), maximum });
  } catch (cause) {
    if (cause instanceof PolicyEngineError) throw cause;
    throw new PolicyEngineError('not a loadable OPA wasm policy', { cause });
  }
  const entrypoints = Object.keys((policy.entrypoints ?? {}) as Record<string, number>);
  const { mem: memory, wasmInstance } = policy as unknown as { mem: WebAssembly.Memory; wasmInstance: WebAssembly.Instance };
  // Absent only from a module compiled without compilePolicyModule: then nothing bounds its evaluations but memory.
  const fuel = wasmInstance.exports[FUEL_GLOBAL] as WebAssembly.Global | undefined;
  const budget = options.fuel ?? DEFAULT_EVAL_FUEL;
  /** Loading data is not an evaluation: it is bounded by the data's size, not by the fuel. */
  const unmetered = () => {
    if (fuel) fuel.value = MAX_EVAL_FUEL;
  };
  unmetered();
  if (options.data !== undefined) policy.setData(toWasmData(options.data));
  let fuelUsed = 0;

  return {
    entrypoints,
    get memoryBytes() {
      return memory.buffer.byteLength;
    },
    get fuelUsed() {
      return fuelUsed;
    },
    setData(data) {
      unmetered();
      policy.setData(toWasmData(data));
    },
    evaluate(input, entrypoint) {
      if (entrypoint === undefined && entrypoints.length !== 1) {
        throw new PolicyEngineError(`name the entrypoint to evaluate (have ${entrypoints.join(', ')})`);
      }
      if (entrypoint !== undefined && !entrypoints.includes(entrypoint)) {
        throw new PolicyEngineError(`unknown entrypoint "${entrypoint}" (have ${entrypoints.join(', ')})`);
      }
      if (fuel) fuel.value = budget;
      let resultSet: Array<{ result: unknown }> | undefined;
      try {
        resultSet = policy.evaluate(input, entrypoint) as Array<{ result: unknown }> | undefined;
      } catch (error) {
        if (fuel && (fuel.value as number) < 0) {
          fuelUsed = budget;
          throw new EvaluationBudgetError(`policy evaluation burned its fuel (${budget}) and was stopped`, { cause: error });
        }
        throw error;
      } finally {
        if (fuel && (fuel.value as number) >= 0) fuelUsed = budget - (fuel.value as number);
      }
      return resultSet?.[0]?.result;
    },
  };
}
