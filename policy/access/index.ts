/**
 * Enforcement of the access policy (policy/access/access.rego), compiled
 * to wasm at build time and evaluated with the same engine the gateway uses.
 * Anything but a well-formed "allow: true" is a refusal.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { packageRoot } from '../../runtime/paths.js';
import type { Identity } from '../../identity/index.js';
import { loadPolicyEngine } from '../engine/index.js';

export const ACCESS_POLICY_ENTRYPOINT = 'gatehouse/cms/access';

/** Where `npm run build` puts the compiled access policy: <package>/dist/policy/access/access.wasm. */
export function defaultAccessPolicyWasmPath(): string {
  return join(packageRoot(), 'dist', 'policy', 'access', 'access.wasm');
}

export interface AccessInput {
  method: string;
  path: string[];
  user?: { sub: string; role: string | null; project: string | null };
}

export interface AccessDecision {
  allow: boolean;
  reason: string;
  statusCode: number | undefined;
}

export interface AccessPolicy {
  decide(input: AccessInput): AccessDecision;
}

export function accessInput(method: string, path: string[], identity: Identity | undefined): AccessInput {
  const input: AccessInput = { method: method.toUpperCase(), path };
  if (identity) input.user = { sub: identity.sub, role: identity.role, project: identity.project };
  return input;
}

export async function loadAccessPolicy(wasmPath: string): Promise<AccessPolicy> {
  let wasm: Buffer;
  try {
    wasm = await readFile(wasmPath);
  } catch (cause) {
    throw new Error(`cannot read the compiled access policy at ${wasmPath} (run npm run build)`, { cause });
  }
  const engine = await loadPolicyEngine(wasm, { data: {} });
  if (!engine.entrypoints.includes(ACCESS_POLICY_ENTRYPOINT)) {
    throw new Error(`${wasmPath} has no entrypoint ${ACCESS_POLICY_ENTRYPOINT}`);
  }
  return {
    decide(input) {
      const result = engine.evaluate(input, ACCESS_POLICY_ENTRYPOINT) as { allow?: unknown; reason?: unknown; status_code?: unknown } | undefined;
      return {
        allow: result?.allow === true,
        reason: typeof result?.reason === 'string' ? result.reason : 'refused by the access policy',
        statusCode: typeof result?.status_code === 'number' ? result.status_code : undefined,
      };
    },
  };
}
