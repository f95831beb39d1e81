/**
 * POST /policies/{name}/evaluate: one input evaluated with the live version
 * of a policy, or with a draft (`rego`, `data`) compiled as a check compiles
 * it (type check, opa build; not its tests), in the gateways' engine under
 * their bounds (PolicyWriter.evaluate: the CMS's check pool). Nothing is
 * written. The console's playground asks it.
 *
 *   body    {"input": <any JSON>, "rego"?: string, "data"?: object, "entrypoint"?: "allow"}
 *   answer  {"result": <document, absent when undefined>, "version": <live version | null>, "evaluation_ms": n}
 *
 * Who: app.ts's onRequest hook has asked the access policy about
 * POST /policies/{name}/evaluate (platform admins; a project user for their
 * own project's policy, never the platform policy). A draft is more: it runs
 * Rego the caller wrote. The access policy sees only the method and the
 * path, so here, once the body says it is a draft, the same policy is asked
 * about the path ["policies", name, "evaluate", "draft"], which it grants
 * platform admins only (no route serves that path: it is the name of the
 * permission, and the permission table stays in access.rego).
 *
 * Bounds: the input up to the body limit, the policy object up to it too
 * (413); compiling a draft queues with the other compiles (503 when the
 * compiler's queue is full); each evaluation has the gateways' deadline,
 * fuel and memory ceiling (422); evaluations hold at most all but one of the
 * pool's workers, and at most MAX_EVALUATIONS_WAITING requests wait or run
 * at once (503 beyond).
 */
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { isLosslessNumber, parse, stringify } from 'lossless-json';
import { HttpProblem, ProblemType, sendProblem } from '../../http/problem.js';
import { accessInput, type AccessPolicy } from '../../policy/access/index.js';
import { parseJsonBody, parsePolicyBody, type PolicyBody } from '../policy-body.js';
import type { PolicyWriter } from '../policy-writer.js';
import { methodNotAllowed, verifiedIdentity } from '../request.js';
import { answerPolicyProblems, policyName } from './policies.js';

export interface EvaluateRoutesOptions {
  writer: PolicyWriter;
  access: AccessPolicy;
}

/** Evaluation requests the CMS holds at once (compiling, waiting for the pool, evaluating); past it 503. */
export const MAX_EVALUATIONS_WAITING = 16;
/** Segments an entrypoint may have below the package. */
const MAX_ENTRYPOINT_SEGMENTS = 16;
const ENTRYPOINT_SEGMENT = /^[A-Za-z_][A-Za-z0-9_]*$/;

export const EvaluateProblemType = {
  evaluationBusy: 'urn:gatehouse:problem:evaluation-busy',
} as const;

interface EvaluateBody {
  input: unknown;
  /** The draft; null: the live version. */
  draft: Pick<PolicyBody, 'rego' | 'dataText'> | null;
  /** Path below the package document; empty: the whole document. */
  entrypoint: string[];
}

function invalid(detail: string): HttpProblem {
  return new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid evaluation', detail });
}

function tooLarge(what: string, bodyLimit: number): HttpProblem {
  return new HttpProblem({
    status: 413,
    type: ProblemType.policyTooLarge,
    title: 'Evaluation too large',
    detail: `the ${what} is larger than the body limit (CMS_BODY_LIMIT_BYTES, ${bodyLimit} bytes)`,
  });
}

function parseEntrypoint(value: unknown): string[] {
  if (value === undefined) return [];
  const segments = typeof value === 'string' ? value.split(/[./]/) : [];
  if (segments.length === 0 || segments.length > MAX_ENTRYPOINT_SEGMENTS || !segments.every((s) => ENTRYPOINT_SEGMENT.test(s))) {
    throw invalid(`"entrypoint" must be a path under the package of at most ${MAX_ENTRYPOINT_SEGMENTS} rule names, e.g. "allow" or "decision/reason"`);
  }
  return segments;
}

/**
 * The body: `input` (required), and a draft when `rego` is present (its
 * `data` defaulting to {}), validated as a check's policy object is (tests
 * are not taken: they are not run). Input and policy object each fit the body limit.
 */
function evaluateBodyOf(request: FastifyRequest, bodyLimit: number): EvaluateBody {
  if (typeof request.body !== 'string') {
    throw new HttpProblem({ status: 415, detail: 'the body must be {"input": ...} sent as application/json' });
  }
  const body = parseJsonBody(request.body);
  if (typeof body !== 'object' || body === null || Array.isArray(body) || isLosslessNumber(body)) {
    throw invalid('the body must be a JSON object {"input": <any JSON>}, optionally with "rego", "data" and "entrypoint"');
  }
  const members = body as Record<string, unknown>;
  const unexpected = Object.keys(members).filter((key) => !['input', 'rego', 'data', 'entrypoint'].includes(key));
  if (unexpected.length > 0) throw invalid(`unexpected member(s): ${unexpected.join(', ')}; an evaluation takes input, rego, data and entrypoint`);
  if (!Object.hasOwn(members, 'input')) throw invalid('"input" is required: the input document to evaluate, any JSON value');
  if (members.data !== undefined && members.rego === undefined) throw invalid('"data" goes with "rego" (a draft); the live version has its own');
  const inputText = stringify(members.input) ?? 'null';
  if (Buffer.byteLength(inputText) > bodyLimit) throw tooLarge('input', bodyLimit);
  let draft: EvaluateBody['draft'] = null;
  if (members.rego !== undefined) {
    // Validated exactly as a check's policy object (numbers in data keep their digits).
    const { rego, dataText } = parsePolicyBody(stringify({ rego: members.rego, data: members.data ?? {} }) ?? '');
    if (Buffer.byteLength(rego) + Buffer.byteLength(dataText) > bodyLimit) throw tooLarge('policy object', bodyLimit);
    draft = { rego, dataText };
  }
  // As the gateway has its input: plain JSON values, numbers as JavaScript reads them.
  return { input: JSON.parse(inputText), draft, entrypoint: parseEntrypoint(members.entrypoint) };
}

/** The document at `path` below `document`; undefined when any step is missing. */
function select(document: unknown, path: readonly string[]): unknown {
  let at = document;
  for (const segment of path) {
    if (typeof at !== 'object' || at === null || Array.isArray(at) || !Object.hasOwn(at, segment)) return undefined;
    at = (at as Record<string, unknown>)[segment];
  }
  return at;
}

export const evaluateRoutes: FastifyPluginAsync<EvaluateRoutesOptions> = async (app, { writer, access }) => {
  answerPolicyProblems(app);

  const bodyLimit = app.initialConfig.bodyLimit ?? 1024 * 1024;
  let held = 0;

  // Room for an input and a policy object, each up to the body limit.
  app.post('/policies/:name/evaluate', { bodyLimit: 2 * bodyLimit + 64 * 1024 }, async (request, reply) => {
    const identity = verifiedIdentity(request);
    const name = policyName(request);
    const body = evaluateBodyOf(request, bodyLimit);
    if (body.draft) {
      const decision = access.decide(accessInput('POST', ['policies', name, 'evaluate', 'draft'], identity));
      if (!decision.allow) throw new HttpProblem({ status: 403, type: ProblemType.forbidden, title: 'Forbidden', detail: decision.reason });
    }
    if (held >= MAX_EVALUATIONS_WAITING) {
      throw new HttpProblem({
        status: 503,
        type: EvaluateProblemType.evaluationBusy,
        title: 'Evaluations busy',
        detail: `${held} evaluations are in progress; try again shortly`,
        headers: { 'Retry-After': '1' },
      });
    }
    held++;
    try {
      const evaluated = await writer.evaluate(name, body.draft, body.input);
      const result = select(evaluated.document, body.entrypoint);
      return reply.type('application/json').send({
        ...(result === undefined ? {} : { result }),
        version: evaluated.version,
        evaluation_ms: Math.round(evaluated.evaluationMs * 1000) / 1000,
      });
    } finally {
      held--;
    }
  });
  methodNotAllowed(app, '/policies/:name/evaluate', ['POST']);
};
