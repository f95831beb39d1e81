/**
 * The PUT body: exactly `{"rego": <non-empty string>, "data": <object>}`.
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
}

function invalid(detail: string): HttpProblem {
  return new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid policy object', detail });
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function parsePolicyBody(text: string): PolicyBody {
  let body: unknown;
  try {
    body = parse(text);
  } catch (error) {
    throw new HttpProblem({
      status: 400,
      type: ProblemType.invalidBody,
      title: 'Malformed JSON',
      detail: error instanceof Error ? error.message : 'the body is not valid JSON',
    });
  }
  if (!isPlainObject(body)) throw invalid('the body must be a JSON object {"rego": string, "data": object}');
  const unexpected = Object.keys(body).filter((key) => key !== 'rego' && key !== 'data');
  if (unexpected.length > 0) throw invalid(`unexpected member(s): ${unexpected.join(', ')}`);
  if (typeof body.rego !== 'string' || body.rego.trim().length === 0) {
    throw invalid('"rego" must be a non-empty string');
  }
  if (!isPlainObject(body.data)) throw invalid('"data" must be a JSON object');
  const dataText = stringify(body.data);
  if (dataText === undefined) throw invalid('"data" cannot be serialised');
  return { rego: body.rego, dataText };
}
