#!/usr/bin/env node
// Compiles the Rego policies that ship with Gatehouse to wasm, after tsc:
//   policy/access/access.rego -> dist/policy/access/access.wasm
// It uses the same compiler code (dist/cms/rego-compiler.js) and the same
// real opa (OPA_PATH, default .local/bin/opa) as the CMS uses for every PUT,
// type-checked against the access policy's own input schema
// (policy/access/input.schema.json, `opa check --schema`) with its tests,
// which run too.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { RegoCompiler, RegoCompileError, PolicyTestsFailedError } = await import(join(root, 'dist/cms/rego-compiler.js'));
const { accessInputSchema } = await import(join(root, 'dist/policy/access/input-schema.js'));

const policies = [
  {
    source: 'policy/access/access.rego',
    tests: ['policy/access/access_test.rego'],
    inputSchemaPath: accessInputSchema().path,
    output: 'dist/policy/access/access.wasm',
  },
];

for (const policy of policies) {
  const compiler = new RegoCompiler({ opaPath: process.env.OPA_PATH || join(root, '.local/bin/opa'), inputSchemaPath: policy.inputSchemaPath });
  try {
    const tests = {};
    for (const test of policy.tests) tests[basename(test)] = await readFile(join(root, test), 'utf8');
    const compiled = await compiler.compile(await readFile(join(root, policy.source), 'utf8'), '{}', tests);
    await mkdir(dirname(join(root, policy.output)), { recursive: true });
    await writeFile(join(root, policy.output), compiled.wasm);
    process.stderr.write(`[build-policies] ${policy.source} -> ${policy.output} (entrypoint ${compiled.entrypoint}, ${compiled.tests.passed} tests passed)\n`);
  } catch (error) {
    const detail = error instanceof RegoCompileError || error instanceof PolicyTestsFailedError ? error.message : String(error?.stack ?? error);
    process.stderr.write(`[build-policies] ${policy.source} failed:\n${detail}\n`);
    process.exit(1);
  }
}
