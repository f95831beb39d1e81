#!/usr/bin/env node
// Compiles the Rego policies that ship with Gatehouse to wasm, after tsc:
//   policy/access/access.rego -> dist/policy/access/access.wasm
// It uses the same compiler code (dist/cms/rego-compiler.js) and the same
// real opa (OPA_PATH, default .local/bin/opa) as the CMS uses for every PUT.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { RegoCompiler, RegoCompileError } = await import(join(root, 'dist/cms/rego-compiler.js'));

const policies = [{ source: 'policy/access/access.rego', output: 'dist/policy/access/access.wasm' }];

const compiler = new RegoCompiler({ opaPath: process.env.OPA_PATH || join(root, '.local/bin/opa') });
for (const policy of policies) {
  try {
    const compiled = await compiler.compile(await readFile(join(root, policy.source), 'utf8'));
    await mkdir(dirname(join(root, policy.output)), { recursive: true });
    await writeFile(join(root, policy.output), compiled.wasm);
    process.stderr.write(`[build-policies] ${policy.source} -> ${policy.output} (entrypoint ${compiled.entrypoint})\n`);
  } catch (error) {
    const detail = error instanceof RegoCompileError ? error.message : String(error?.stack ?? error);
    process.stderr.write(`[build-policies] ${policy.source} failed:\n${detail}\n`);
    process.exit(1);
  }
}
