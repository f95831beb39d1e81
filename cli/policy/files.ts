// Policies as files: <dir>/<name>/policy.rego, data.json and *_test.rego,
// plus .gatehouse.json, the version the last pull or push saw live, so that
// a push sends If-Match. What changed is found by comparing with the live
// version itself. Names come from the CMS and the command line: each is
// checked with the CMS's own rules (policy names, test file names) and every
// path is checked to stay inside the directory before anything is read or
// written there.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { parse, stringify } from 'lossless-json';
import { parsePolicyBody } from '../../cms/policy-body.js';
import { isValidPolicyName } from '../../policy/store/names.js';
import { HttpProblem } from '../../http/problem.js';

export interface PolicyFiles {
  rego: string;
  /** data.json as JSON text, numbers exact. */
  dataText: string;
  tests: Record<string, string>;
}

export interface PulledState {
  /** The version (ETag) the files were pulled at or last pushed as. */
  version: number;
}

export const STATE_FILE = '.gatehouse.json';

/** A policy name, file name or object that cannot be used as files: from the CMS, or given on the command line. */
export class UnsafePolicyError extends Error {
  override readonly name = 'UnsafePolicyError';
}

/** The policy's folder, or the file in it: only for a valid policy name, and only inside `dir`. */
export function policyPath(dir: string, name: string, file?: string): string {
  if (!isValidPolicyName(name)) {
    throw new UnsafePolicyError(`${JSON.stringify(name)} is not a policy name (lowercase letters, digits and "-", at most 63): refused`);
  }
  const root = resolve(dir);
  const path = resolve(root, name, ...(file === undefined ? [] : [file]));
  const inside = relative(root, path);
  if (inside === '' || inside.startsWith('..') || isAbsolute(inside) || (file !== undefined && relative(join(root, name), path) !== file)) {
    throw new UnsafePolicyError(`${JSON.stringify(file === undefined ? name : `${name}/${file}`)} would be outside ${root}: refused`);
  }
  return path;
}

/** The policy object as the CMS takes it, from the files. */
export function policyObject(files: PolicyFiles): string {
  const tests = Object.keys(files.tests).length > 0 ? `,"tests":${JSON.stringify(sortedTests(files.tests))}` : '';
  return `{"rego":${JSON.stringify(files.rego)},"data":${compact(files.dataText)}${tests}}`;
}

/**
 * A policy object's parts, from the CMS's JSON text (numbers kept exact),
 * checked with the rules the CMS applies to what it is sent: a test file name
 * that is not `<letters, digits, _ - .>_test.rego` (a path, say) is refused.
 */
export function filesOf(objectText: string, name = 'policy'): PolicyFiles {
  let body;
  try {
    body = parsePolicyBody(objectText);
  } catch (error) {
    if (!(error instanceof HttpProblem)) throw error;
    throw new UnsafePolicyError(`the CMS sent ${name} in a form it never accepts (${error.detail ?? error.title}): refused, nothing written`);
  }
  return { rego: body.rego, dataText: body.dataText, tests: body.tests ?? {} };
}

function compact(dataText: string): string {
  return stringify(parse(dataText)) ?? '{}';
}

function sortedTests(tests: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.keys(tests)
      .sort()
      .map((name) => [name, tests[name]!]),
  );
}

/** data.json as a person edits it: indented, numbers exact. */
export function prettyData(dataText: string): string {
  return `${stringify(parse(dataText), undefined, 2) ?? '{}'}\n`;
}

export function localNames(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => isValidPolicyName(name) && statSync(join(dir, name)).isDirectory() && existsSync(join(dir, name, 'policy.rego')))
    .sort();
}

export function readPolicyDir(dir: string, name: string): PolicyFiles {
  return readPolicyFolder(policyPath(dir, name));
}

/** A policy's files from the folder `base`: `regoFile` (default policy.rego), data.json and *_test.rego beside it. */
export function readPolicyFolder(base: string, regoFile = 'policy.rego'): PolicyFiles {
  const rego = readFileSync(join(base, regoFile), 'utf8');
  const dataPath = join(base, 'data.json');
  const dataText = existsSync(dataPath) ? readFileSync(dataPath, 'utf8') : '{}';
  try {
    parse(dataText);
  } catch (error) {
    throw new Error(`${dataPath} is not valid JSON: ${(error as Error).message}`);
  }
  const tests: Record<string, string> = {};
  for (const file of readdirSync(base)
    .filter((f) => f.endsWith('_test.rego'))
    .sort())
    tests[file] = readFileSync(join(base, file), 'utf8');
  return { rego, dataText, tests };
}

/** Every path a write of these files would touch, checked before the first write. */
export function checkWritable(dir: string, name: string, files: PolicyFiles): void {
  for (const file of ['policy.rego', 'data.json', STATE_FILE, ...Object.keys(files.tests)]) policyPath(dir, name, file);
}

export function writePolicyDir(dir: string, name: string, files: PolicyFiles, state: PulledState): void {
  checkWritable(dir, name, files);
  const base = policyPath(dir, name);
  mkdirSync(base, { recursive: true });
  writeFileSync(join(base, 'policy.rego'), files.rego);
  writeFileSync(join(base, 'data.json'), prettyData(files.dataText));
  // The tests are the live ones: none left over from an earlier pull.
  for (const file of readdirSync(base).filter((f) => f.endsWith('_test.rego'))) if (!Object.hasOwn(files.tests, file)) rmSync(join(base, file));
  for (const [file, module] of Object.entries(files.tests)) writeFileSync(policyPath(dir, name, file), module);
  writeState(dir, name, state);
}

export function readState(dir: string, name: string): PulledState | null {
  const path = policyPath(dir, name, STATE_FILE);
  if (!existsSync(path)) return null;
  const state = JSON.parse(readFileSync(path, 'utf8')) as PulledState;
  return Number.isSafeInteger(state.version) ? { version: state.version } : null;
}

export function writeState(dir: string, name: string, state: PulledState): void {
  writeFileSync(policyPath(dir, name, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
}

/** Same policy, whatever the formatting of data.json: compared as the CMS would store it. */
export function sameContent(a: PolicyFiles, b: PolicyFiles): boolean {
  return policyObject(a) === policyObject(b);
}
