// The access policy's input (accessInput, index.ts) as a JSON Schema
// (input.schema.json beside it): the build compiles access.rego against it
// (scripts/build-policies.mjs, `opa check --schema`), and a test validates
// what accessInput builds against it.
import { fileURLToPath } from 'node:url';
import schema from './input.schema.json' with { type: 'json' };

/** The schema of the access policy's input: the file opa reads, and its document. */
export function accessInputSchema(): { path: string; document: Readonly<Record<string, unknown>> } {
  return { path: fileURLToPath(new URL('./input.schema.json', import.meta.url)), document: schema };
}
