// Policies as files: <dir>/<name>/policy.rego, data.json and *_test.rego,
// plus .gatehouse.json, the version the last pull or push saw live, so that
// a push sends If-Match. What changed is found by comparing with the live
// version itself.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'lossless-json';

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
const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** The policy object as the CMS takes it, from the files. */
export function policyObject(files: PolicyFiles): string {
  const tests = Object.keys(files.tests).length > 0 ? `,"tests":${JSON.stringify(sortedTests(files.tests))}` : '';
  return `{"rego":${JSON.stringify(files.rego)},"data":${compact(files.dataText)}${tests}}`;
}

/** A policy object's parts, from the CMS's JSON text (numbers kept exact). */
export function filesOf(objectText: string): PolicyFiles {
  const object = parse(objectText) as { rego: string; data: unknown; tests?: Record<string, string> };
  return { rego: object.rego, dataText: stringify(object.data) ?? '{}', tests: object.tests ?? {} };
}

function compact(dataText: string): string {
  return stringify(parse(dataText)) ?? '{}';
}

function sortedTests(tests: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.keys(tests).sort().map((name) => [name, tests[name]!]));
}

/** data.json as a person edits it: indented, numbers exact. */
export function prettyData(dataText: string): string {
  return `${stringify(parse(dataText), undefined, 2) ?? '{}'}\n`;
}

export function localNames(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((name) => NAME.test(name) && statSync(join(dir, name)).isDirectory() && existsSync(join(dir, name, 'policy.rego')))
    .sort();
}

export function readPolicyDir(dir: string, name: string): PolicyFiles {
  const base = join(dir, name);
  const rego = readFileSync(join(base, 'policy.rego'), 'utf8');
  const dataPath = join(base, 'data.json');
  const dataText = existsSync(dataPath) ? readFileSync(dataPath, 'utf8') : '{}';
  try {
    parse(dataText);
  } catch (error) {
    throw new Error(`${dataPath} is not valid JSON: ${(error as Error).message}`);
  }
  const tests: Record<string, string> = {};
  for (const file of readdirSync(base).filter((f) => f.endsWith('_test.rego')).sort()) tests[file] = readFileSync(join(base, file), 'utf8');
  return { rego, dataText, tests };
}

export function writePolicyDir(dir: string, name: string, files: PolicyFiles, state: PulledState): void {
  const base = join(dir, name);
  mkdirSync(base, { recursive: true });
  writeFileSync(join(base, 'policy.rego'), files.rego);
  writeFileSync(join(base, 'data.json'), prettyData(files.dataText));
  // The tests are the live ones: none left over from an earlier pull.
  for (const file of readdirSync(base).filter((f) => f.endsWith('_test.rego'))) if (!(file in files.tests)) rmSync(join(base, file));
  for (const [file, module] of Object.entries(files.tests)) writeFileSync(join(base, file), module);
  writeState(dir, name, state);
}

export function readState(dir: string, name: string): PulledState | null {
  const path = join(dir, name, STATE_FILE);
  if (!existsSync(path)) return null;
  const state = JSON.parse(readFileSync(path, 'utf8')) as PulledState;
  return Number.isSafeInteger(state.version) ? { version: state.version } : null;
}

export function writeState(dir: string, name: string, state: PulledState): void {
  writeFileSync(join(dir, name, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`);
}

/** Same policy, whatever the formatting of data.json: compared as the CMS would store it. */
export function sameContent(a: PolicyFiles, b: PolicyFiles): boolean {
  return policyObject(a) === policyObject(b);
}
