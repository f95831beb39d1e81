/**
 * The PUT body: `{"rego": <non-empty string>, "data": <object>}`, and
 * optionally `"tests"`: Rego test modules (`opa test` conventions) by file
 * name, e.g. {"authz_test.rego": "package project.authz_test ..."}.
 * Parsed with lossless-json so that numbers in `data` keep their exact text
 * (JSON.parse rounds integers past 2^53; OPA does not), and duplicate keys
 * are refused rather than silently resolved.
 */
import { parse, stringify } from 'lossless-json';
import { HttpProblem, ProblemType } from '../http/problem.js';

export interface PolicyBody {
  rego: string;
  /** `data` re-serialised compactly; every number keeps its original digits. */
  dataText: string;
  /** The test modules by file name; null when the body has none. */
  tests: Record<string, string> | null;
}

export const MAX_TEST_FILES = 32;
const TEST_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}_test\.rego$/;

/** The tests as stored: a JSON object, names sorted, so equal tests are equal text. */
export function renderTests(tests: Record<string, string>): string {
  return JSON.stringify(
    Object.fromEntries(
      Object.keys(tests)
        .sort()
        .map((name) => [name, tests[name]]),
    ),
  );
}

function invalid(detail: string): HttpProblem {
  return new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid policy object', detail });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The policy object of `text`. `also` names members a request may send
 * beside it (a check's `replay`): they are returned in `also`, as parsed
 * (numbers as lossless-json keeps them); any other member is refused.
 */
export function parsePolicyBody(text: string): PolicyBody;
export function parsePolicyBody(text: string, also: readonly string[]): PolicyBody & { also: Record<string, unknown> };
export function parsePolicyBody(text: string, also: readonly string[] = []): PolicyBody & { also?: Record<string, unknown> } {
  const body = parseJsonBody(text);
  if (!isPlainObject(body)) throw invalid('the body must be a JSON object {"rego": string, "data": object}');
  const unexpected = Object.keys(body).filter((key) => key !== 'rego' && key !== 'data' && key !== 'tests' && !also.includes(key));
  if (unexpected.length > 0) throw invalid(`unexpected member(s): ${unexpected.join(', ')}`);
  if (typeof body.rego !== 'string' || body.rego.trim().length === 0) {
    throw invalid('"rego" must be a non-empty string');
  }
  if (!isPlainObject(body.data)) throw invalid('"data" must be a JSON object');
  const dataText = stringify(body.data);
  if (dataText === undefined) throw invalid('"data" cannot be serialised');
  const tests = body.tests === undefined ? null : parseTests(body.tests);
  if (also.length === 0) return { rego: body.rego, dataText, tests };
  const members = body;
  return { rego: body.rego, dataText, tests, also: Object.fromEntries(also.filter((key) => Object.hasOwn(members, key)).map((key) => [key, members[key]])) };
}

/** A JSON body parsed with lossless-json (numbers keep their digits, duplicate keys refused); 400 Malformed JSON otherwise. */
export function parseJsonBody(text: string): unknown {
  try {
    return parse(text);
  } catch (error) {
    throw new HttpProblem({
      status: 400,
      type: ProblemType.invalidBody,
      title: 'Malformed JSON',
      detail: error instanceof Error ? error.message : 'the body is not valid JSON',
    });
  }
}

function parseTests(value: unknown): Record<string, string> {
  if (!isPlainObject(value)) throw invalid('"tests" must be an object of test modules by file name, e.g. {"authz_test.rego": "package ..."}');
  const names = Object.keys(value);
  if (names.length === 0) throw invalid('"tests" has no test module; leave it out instead');
  if (names.length > MAX_TEST_FILES) throw invalid(`"tests" may hold at most ${MAX_TEST_FILES} modules`);
  const tests: Record<string, string> = {};
  for (const name of names) {
    if (!TEST_FILE_NAME.test(name)) throw invalid(`test file name ${JSON.stringify(name)} must be letters, digits, "_", "-" or "." ending in "_test.rego"`);
    const module = value[name];
    if (typeof module !== 'string' || module.trim().length === 0) throw invalid(`test module ${name} must be a non-empty string`);
    tests[name] = module;
  }
  return tests;
}
