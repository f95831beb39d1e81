/**
 * What every `opa` run on Rego from outside is confined to: the builtins the
 * gateway's wasm engine can run (@open-policy-agent/opa-wasm's
 * capabilities.json, so no http.send, no opa.runtime, no net.lookup_ip_addr)
 * plus the syntax features, and an environment that holds nothing but PATH
 * and HOME. The CMS's compile and test gate (rego-compiler.ts) and
 * `gatehouse policy test` (cli/policy) both run opa this way, so a test
 * that passes locally passes the gate, and neither can reach the network or
 * read a token from the environment.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** The capabilities.json shipped by @open-policy-agent/opa-wasm. */
export function wasmSdkCapabilitiesPath(): string {
  // The package exports only ".", so locate its folder from its main file (src/index.cjs).
  const main = createRequire(import.meta.url).resolve('@open-policy-agent/opa-wasm');
  return join(dirname(dirname(main)), 'capabilities.json');
}

/**
 * The SDK's capabilities list builtins and wasm ABI versions but no language
 * features, and without the `rego_v1` feature opa refuses to parse v1 Rego
 * at all. We keep the SDK's builtins (what it can run) and add the syntax
 * features, which need no runtime support.
 */
export async function writeCompileCapabilities(path: string): Promise<void> {
  const sdk = JSON.parse(await readFile(wasmSdkCapabilitiesPath(), 'utf8')) as Record<string, unknown>;
  const capabilities = {
    ...sdk,
    features: ['rego_v1', 'keywords_in_refs'],
    future_keywords: ['contains', 'every', 'if', 'in'],
  };
  await writeFile(path, JSON.stringify(capabilities));
}

/** opa's whole environment: PATH to run, HOME in a private folder; no token, key or proxy setting of the caller. */
export function opaSandboxEnv(path: string | undefined, home: string): Record<string, string> {
  return { PATH: path ?? '', HOME: home };
}
