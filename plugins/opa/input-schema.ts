// The policy input document as a JSON Schema (input.schema.json, beside the
// module that builds the document, input.ts): the CMS compiles every policy
// against it (`opa check --schema`), and a test validates the documents
// input.ts builds against it, so that the two cannot drift apart.
import { fileURLToPath } from 'node:url';
import schema from './input.schema.json' with { type: 'json' };

/** The schema of the policy input: the file opa reads, and its document. */
export function policyInputSchema(): { path: string; document: Readonly<Record<string, unknown>> } {
  return { path: fileURLToPath(new URL('./input.schema.json', import.meta.url)), document: schema };
}
