/**
 * RFC 9457 problem details: every error the CMS answers is
 * `application/problem+json` with type, title, status and detail.
 */
import { STATUS_CODES } from 'node:http';
import type { FastifyReply } from 'fastify';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** Problem types of Gatehouse; plain HTTP errors use "about:blank" as RFC 9457 suggests. */
export const ProblemType = {
  unauthenticated: 'urn:gatehouse:problem:unauthenticated',
  forbidden: 'urn:gatehouse:problem:forbidden',
  invalidPolicyName: 'urn:gatehouse:problem:invalid-policy-name',
  invalidPath: 'urn:gatehouse:problem:invalid-path',
  invalidBody: 'urn:gatehouse:problem:invalid-policy-body',
  regoCompile: 'urn:gatehouse:problem:rego-compile-error',
  policyNotFound: 'urn:gatehouse:problem:policy-not-found',
  preconditionFailed: 'urn:gatehouse:problem:precondition-failed',
  writeConflict: 'urn:gatehouse:problem:write-conflict',
  storeUnavailable: 'urn:gatehouse:problem:store-unavailable',
  storeRefused: 'urn:gatehouse:problem:store-refused',
  compilerUnavailable: 'urn:gatehouse:problem:compiler-unavailable',
  signingUnavailable: 'urn:gatehouse:problem:signing-unavailable',
  compilerBusy: 'urn:gatehouse:problem:compiler-busy',
  policyTooLarge: 'urn:gatehouse:problem:policy-too-large',
  policyDoesNotLoad: 'urn:gatehouse:problem:policy-does-not-load',
  policyTestsFailed: 'urn:gatehouse:problem:policy-tests-failed',
  policyTestsStopped: 'urn:gatehouse:problem:policy-tests-stopped',
  policyEvaluationBound: 'urn:gatehouse:problem:policy-evaluation-bound',
} as const;

export interface ProblemInit {
  status: number;
  type?: string;
  title?: string;
  detail?: string;
  /** Extension members, e.g. `errors` for compile diagnostics. */
  extensions?: Record<string, unknown>;
  headers?: Record<string, string>;
}

export class HttpProblem extends Error {
  override readonly name = 'HttpProblem';
  readonly status: number;
  readonly type: string;
  readonly title: string;
  readonly detail: string | undefined;
  readonly extensions: Record<string, unknown>;
  readonly headers: Record<string, string>;

  constructor(init: ProblemInit) {
    super(init.detail ?? init.title ?? STATUS_CODES[init.status] ?? 'error');
    this.status = init.status;
    this.type = init.type ?? 'about:blank';
    this.title = init.title ?? STATUS_CODES[init.status] ?? 'Error';
    this.detail = init.detail;
    this.extensions = init.extensions ?? {};
    this.headers = init.headers ?? {};
  }

  toJSON(): Record<string, unknown> {
    return {
      ...this.extensions,
      type: this.type,
      title: this.title,
      status: this.status,
      ...(this.detail === undefined ? {} : { detail: this.detail }),
    };
  }
}

export function sendProblem(reply: FastifyReply, problem: HttpProblem, instance?: string): FastifyReply {
  for (const [name, value] of Object.entries(problem.headers)) reply.header(name, value);
  const body = { ...problem.toJSON(), ...(instance ? { instance } : {}) };
  return reply.code(problem.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body));
}
