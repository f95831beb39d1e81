/**
 * The OpenAPI document, and GET /openapi.json serving it. Written by hand to
 * match the routes in cms/routes/; a test checks that every registered route
 * is in it and that it lists nothing else.
 */
import type { FastifyPluginAsync } from 'fastify';
import { MAX_REPLAY_BYTES, MAX_REPLAY_INPUTS } from '../replay.js';

/** A schema of components/schemas. */
const ref = (schema: string) => ({ $ref: `#/components/schemas/${schema}` });
/** A JSON body of this schema. */
const json = (schema: object) => ({ 'application/json': { schema } });
const problem = { $ref: '#/components/responses/Problem' };
/** A write etcd said no to (store-refused): not worth retrying. */
const storeRefused = {
  ...problem,
  description: "etcd refused the CMS's request (store-refused: the CMS's etcd user lacks a permission, or its credentials are wrong); nothing written",
};
const name = { name: 'name', in: 'path', required: true, schema: ref('PolicyName') };
const version = { name: 'version', in: 'path', required: true, schema: { type: 'integer', minimum: 1 } };
const etagHeaders = {
  ETag: { description: 'the policy version, e.g. "3"', schema: { type: 'string' } },
  'Last-Modified': { schema: { type: 'string' } },
};
/** A resource's retained versions, newest first: its key, the retention, a summary of each. */
const versionList = (key: string, summary: string) => ({
  description: 'version list',
  content: json({
    type: 'object',
    properties: { [key]: { type: 'string' }, retention: { type: 'integer' }, versions: { type: 'array', items: ref(summary) } },
  }),
});
/** The query of a paged list. */
const pageParameters = [
  { name: 'limit', in: 'query', required: false, schema: { type: 'integer', minimum: 1, maximum: 1000, default: 100 } },
  { name: 'page_token', in: 'query', required: false, schema: { type: 'string' }, description: 'next_page_token of the previous page' },
];
/** One page of a list: the items under `key`, and where the next page starts. */
const page = (description: string, key: string, item: string) => ({
  description,
  content: json({
    type: 'object',
    required: [key],
    properties: {
      [key]: { type: 'array', items: ref(item) },
      next_page_token: { type: 'string', description: 'present when another page may follow' },
    },
  }),
});
/** These statuses, each a problem+json answer. */
const problems = (...statuses: number[]) => Object.fromEntries(statuses.map((status) => [String(status), problem]));
const preferWait = {
  name: 'Prefer',
  in: 'header',
  required: false,
  schema: { type: 'string', examples: ['wait=10'] },
  description: 'wait=N (RFC 7240): answer once every live gateway enforces the write, or after N seconds (at most 60), whichever is first',
};
const fleetHeaders = {
  'Preference-Applied': { schema: { type: 'string' }, description: 'wait=N, when Prefer asked to wait' },
  'Gatehouse-Enforced-By': {
    schema: { type: 'string', examples: ['3/3'] },
    description: 'how many of the live gateways enforce the write (with Prefer: wait)',
  },
  'Gatehouse-Behind': { schema: { type: 'string' }, description: 'ids of the gateways that did not enforce it in time (with Prefer: wait)' },
};
const gatewayStatus = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    kind: { enum: ['runner', 'decision-api'] },
    host: { type: 'string' },
    datacenter: { type: ['string', 'null'] },
    revision: { type: 'integer', description: 'etcd revision of the policy set it enforces' },
    state: { type: 'string' },
    staleSeconds: { type: 'number' },
    enforces: { type: 'boolean', description: "its revision is at or past the policy version's" },
    signature: {
      enum: ['valid', 'unsigned', 'bad signature', 'not checked', 'unknown'],
      description: "what the gateway makes of the signature of the policy's version it holds (POLICY_VERIFY_KEYS_FILE); `not checked` when it has no keys",
    },
  },
};

const project = { name: 'project', in: 'path', required: true, schema: ref('ProjectName') };
const ifMatch = { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the budget must have now, or *' };
const budgetEtagHeaders = {
  ETag: { description: 'the budget version, e.g. "3"', schema: { type: 'string' } },
  'Last-Modified': { schema: { type: 'string' } },
};
const budgetSummaryResponse = (description: string) => ({
  description,
  headers: budgetEtagHeaders,
  content: json(ref('BudgetVersionSummary')),
});
const windowsSchema = {
  type: 'array',
  minItems: 1,
  maxItems: 4,
  description: 'at most one window of each kind; a call must fit in every one',
  items: {
    type: 'object',
    additionalProperties: false,
    required: ['per', 'tokens'],
    properties: {
      per: { enum: ['minute', 'hour', 'day', 'month'], description: 'a UTC calendar window' },
      tokens: { type: 'integer', minimum: 1, maximum: 1e12 },
    },
  },
};
const usageRecordProperties = {
  requests: { type: 'integer' },
  prompt_tokens: { type: 'integer' },
  completion_tokens: { type: 'integer' },
  charged_tokens: { type: 'integer', description: 'what the budget was charged: the actual usage, or the reservation when the gateway never saw the usage' },
  unsettled: { type: 'integer', description: 'calls whose usage the gateway could not see (charged their reservation)' },
};

const policyObject = {
  description: 'the policy object, exactly as PUT took it',
  headers: etagHeaders,
  content: json(ref('PolicyObject')),
};

export const openApiDocument = {
  openapi: '3.1.0',
  info: {
    title: 'Gatehouse policy CMS',
    version: '0.1.0',
    description:
      'Validates, compiles (opa build -t wasm) and stores OPA policies in etcd, and per-project LLM budgets beside them; reports LLM usage. ' +
      'Every /policies, /gateways, /budgets and /usage request needs a bearer JWT; identity (401) and permission (403) are checked before anything else. ' +
      'Every error is application/problem+json (RFC 9457).',
  },
  security: [{ bearer: [] }],
  paths: {
    '/policies': {
      get: {
        summary: 'List the policies the caller may read, a page at a time',
        description:
          'Policies come by name (byte order). A page holds at most `limit` policies; ' +
          'when more may follow, `next_page_token` is present: pass it as `page_token` for the next page. ' +
          'Each page is read at one etcd revision; a policy written between two pages may or may not appear. ' +
          'With `prefix`, only names that start with it (the read starts at the prefix and stops past it).',
        parameters: [
          ...pageParameters,
          {
            name: 'prefix',
            in: 'query',
            required: false,
            schema: { type: 'string', pattern: '^[a-z0-9][a-z0-9-]{0,62}$' },
            description: 'only policies whose name starts with it; keep it with each page_token',
          },
        ],
        responses: {
          '200': page('policy summaries', 'policies', 'PolicySummary'),
          ...problems(400, 401, 403, 503),
        },
      },
    },
    '/policies/{name}': {
      parameters: [name],
      get: {
        summary: 'Get a policy (platform admin; project user of that project; "platform": platform admin only)',
        responses: { '200': policyObject, '304': { description: 'If-None-Match matched' }, ...problems(400, 401, 403, 404, 503) },
      },
      put: {
        summary: 'Create or replace a policy (platform admin)',
        parameters: [
          { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the policy must have now, or *' },
          { name: 'If-None-Match', in: 'header', required: false, schema: { const: '*' }, description: 'only create' },
          preferWait,
        ],
        requestBody: {
          required: true,
          content: json(ref('PolicyObject')),
        },
        responses: {
          '200': { description: 'replaced', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          '201': { description: 'created', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          ...problems(400, 401, 403, 409, 412, 413, 415),
          '422': {
            ...problem,
            description:
              "the policy tests failed (policy-tests-failed; failures: name, package, file, row, message), were stopped at their memory or time bound (policy-tests-stopped), or the compiled policy evaluated on an empty input burns the gateways' fuel or exceeds their deadline or memory ceiling (policy-evaluation-bound; bound: fuel, time or memory); nothing written",
          },
          '500': storeRefused,
          '503': {
            ...problem,
            description:
              'etcd does not answer (store-unavailable), the compiler is busy (compiler-busy, Retry-After) or unavailable, or the signing key cannot sign (signing-unavailable); nothing written',
          },
        },
      },
      delete: {
        summary: 'Delete a policy (platform admin); its history is kept',
        parameters: [{ name: 'If-Match', in: 'header', required: false, schema: { type: 'string' } }, preferWait],
        responses: { '204': { description: 'deleted', headers: fleetHeaders }, ...problems(400, 401, 403, 404, 412, 503) },
      },
    },
    '/policies/{name}/history': {
      parameters: [name],
      get: {
        summary: 'Retained versions of a policy, newest first (same permission as GET)',
        responses: {
          '200': versionList('name', 'PolicySummary'),
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    '/policies/{name}/status': {
      parameters: [name],
      get: {
        summary: 'Which live gateways enforce the current version (same permission as GET)',
        responses: {
          '200': {
            description: 'the current version, its etcd revision, and every live gateway',
            content: json({
              type: 'object',
              properties: {
                name: { type: 'string' },
                version: { type: 'integer' },
                revision: { type: 'integer' },
                enforcedBy: { type: 'integer' },
                gateways: { type: 'array', items: gatewayStatus },
                candidate: {
                  type: 'object',
                  description: 'present while the policy has a candidate (GET .../candidate has what the gateways saw of it)',
                  properties: { version: { type: 'integer' }, sample_percent: { type: 'number' }, enforce_percent: { type: 'number' } },
                },
              },
            }),
          },
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    '/policies/{name}/check': {
      parameters: [name],
      post: {
        summary: 'Compile, load and test a policy object as a PUT would, writing nothing (platform admin); with `replay`, which decisions it would change',
        requestBody: {
          required: true,
          content: json({
            type: 'object',
            additionalProperties: false,
            required: ['rego', 'data'],
            description: 'a policy object (PolicyObject), and optionally decision inputs to replay',
            properties: {
              rego: { $ref: '#/components/schemas/PolicyObject/properties/rego' },
              data: { $ref: '#/components/schemas/PolicyObject/properties/data' },
              tests: { $ref: '#/components/schemas/PolicyObject/properties/tests' },
              replay: {
                type: 'array',
                maxItems: MAX_REPLAY_INPUTS,
                items: { type: 'object' },
                description: `decision inputs as decision log events hold them (\`input\`, masked), each evaluated with the live version and with this one after every other check passed; at most ${MAX_REPLAY_INPUTS} inputs and ${MAX_REPLAY_BYTES} bytes of them as compact JSON (413 replay-too-large), evaluated within the replay's time budget (422 replay-stopped); the policy object itself stays within the body limit`,
              },
            },
          }),
        },
        responses: {
          '200': {
            description: 'it would be accepted',
            content: json({
              type: 'object',
              properties: {
                ok: { const: true },
                entrypoint: { type: 'string' },
                syntaxVersion: { enum: ['v0', 'v1'] },
                opaVersion: { type: 'string' },
                tests: { type: 'object', properties: { passed: { type: 'integer' } } },
                replay: ref('ReplayReport'),
              },
            }),
          },
          '400': { ...problem, description: 'as on a PUT; or a replay of the wrong type (invalid-replay: `errors` lists its JSON pointer)' },
          ...problems(401, 403),
          '413': { ...problem, description: 'the policy object is past the body limit, or the replay past its limits (replay-too-large: `limits`)' },
          ...problems(415),
          '422': {
            ...problem,
            description:
              "the policy tests failed or were stopped, or the evaluation exceeds the gateways' bounds (as on a PUT); or the replay ran past its time budget (replay-stopped: nothing is reported as unchanged)",
          },
          '503': problem,
        },
      },
    },
    '/policies/{name}/evaluate': {
      parameters: [name],
      post: {
        summary:
          "Evaluate one input with the live version (platform admin; a project user for their own project's policy) or with a draft (`rego`: platform admin only), in the gateways' engine under their bounds; nothing written",
        requestBody: {
          required: true,
          content: json({
            type: 'object',
            additionalProperties: false,
            required: ['input'],
            properties: {
              input: { description: 'the input document, any JSON value, up to the body limit' },
              rego: {
                $ref: '#/components/schemas/PolicyObject/properties/rego',
                description:
                  'a draft to evaluate instead of the live version, compiled as a check compiles it (its tests are not run); platform admins only (403)',
              },
              data: { type: 'object', default: {}, description: "the draft's data document (only with rego)" },
              entrypoint: {
                type: 'string',
                examples: ['allow', 'decision/reason'],
                description: "a path below the policy's package: the result is that document instead of the whole package's",
              },
            },
          }),
        },
        responses: {
          '200': {
            description: 'evaluated',
            content: json({
              type: 'object',
              required: ['version', 'evaluation_ms'],
              properties: {
                result: { description: 'the document the policy decides; absent when it is undefined (no rule matched)' },
                version: { type: ['integer', 'null'], description: 'the live version evaluated; null for a draft' },
                evaluation_ms: { type: 'number', description: "time in the CMS's evaluation pool (queue, engine, evaluation)" },
              },
            }),
          },
          '400': {
            ...problem,
            description: 'malformed JSON, a body of the wrong shape, a draft that does not compile (rego-compile-error, `errors` with row and col) or load',
          },
          '403': { ...problem, description: "not the caller's project, or a draft from someone who is not a platform admin" },
          '404': { ...problem, description: 'no live version (without rego)' },
          '413': { ...problem, description: 'the input, or the draft, past the body limit' },
          ...problems(401, 415),
          '422': { ...problem, description: "the evaluation exceeds the gateways' time, memory or fuel bound (policy-evaluation-bound, `bound`)" },
          '503': { ...problem, description: 'the compiler or the evaluations are busy (Retry-After), or etcd does not answer' },
        },
      },
    },
    '/policies/{name}/rollback': {
      parameters: [name],
      post: {
        summary: 'Write a version from the history again, as the next version (platform admin)',
        parameters: [
          { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the policy must have now, or *' },
          preferWait,
        ],
        requestBody: {
          required: true,
          content: json({ type: 'object', additionalProperties: false, required: ['version'], properties: { version: { type: 'integer', minimum: 1 } } }),
        },
        responses: {
          '200': { description: 'written as the next version', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          '201': { description: 'written again after a delete', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          ...problems(400, 401, 403, 404),
          '422': { ...problem, description: 'the tests of that version fail now, or it exceeds a bound (as on a PUT)' },
          ...problems(409, 412, 415, 503),
        },
      },
    },
    '/policies/{name}/candidate': {
      parameters: [name],
      put: {
        summary:
          "Write the policy's candidate (platform admin): checked as a PUT is, stored beside the live version, shadowed by every gateway (never enforced) and enforced for `enforce_percent` of callers",
        parameters: [
          { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the candidate must have now, or *' },
          { name: 'If-None-Match', in: 'header', required: false, schema: { const: '*' }, description: 'only if there is no candidate' },
          preferWait,
        ],
        requestBody: {
          required: true,
          content: json({
            type: 'object',
            additionalProperties: false,
            required: ['rego', 'data'],
            properties: {
              rego: { $ref: '#/components/schemas/PolicyObject/properties/rego' },
              data: { $ref: '#/components/schemas/PolicyObject/properties/data' },
              tests: { $ref: '#/components/schemas/PolicyObject/properties/tests' },
              sample_percent: {
                type: 'number',
                minimum: 0,
                maximum: 100,
                default: 100,
                description: 'share of the live decisions the candidate is evaluated beside',
              },
              enforce_percent: {
                type: 'number',
                minimum: 0,
                maximum: 100,
                default: 0,
                description: 'share of callers (a stable hash of their subject) the candidate decides for',
              },
            },
          }),
        },
        responses: {
          '200': { description: 'replaced', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          '201': {
            description: 'created',
            headers: { ...etagHeaders, ...fleetHeaders, Location: { schema: { type: 'string' } } },
            content: json(ref('PolicySummary')),
          },
          '400': { ...problem, description: 'as on a PUT, or a percentage that is not a number from 0 to 100' },
          ...problems(401, 403),
          '404': { ...problem, description: 'the policy has no live version for a candidate to stand beside' },
          ...problems(409, 412, 413, 415, 422, 503),
        },
      },
      get: {
        summary: "The candidate, its rollout, and what the gateways saw of it (platform admin, or the project's users)",
        parameters: [
          { name: 'subject', in: 'query', required: false, schema: { type: 'string' }, description: 'also say which version decides for this caller' },
        ],
        responses: {
          '200': {
            description: 'the candidate',
            headers: etagHeaders,
            content: json({
              type: 'object',
              properties: {
                name: { type: 'string' },
                version: { type: 'integer' },
                live_version: { type: ['integer', 'null'] },
                sample_percent: { type: 'number' },
                enforce_percent: { type: 'number' },
                subject: { type: 'object', properties: { sub: { type: 'string' }, decided_by: { enum: ['live', 'candidate'] } } },
                policy: ref('PolicyObject'),
                report: {
                  type: 'object',
                  description:
                    "every live gateway's counts for this candidate version, added up, per gateway, and the newest divergent samples (inputs masked as decision logs mask them)",
                  properties: {
                    evaluated: { type: 'integer' },
                    diverged: { type: 'integer' },
                    errors: { type: 'integer' },
                    dropped: { type: 'integer' },
                    enforced: { type: 'object', properties: { live: { type: 'integer' }, candidate: { type: 'integer' } } },
                    gateways: { type: 'array', items: { type: 'object' } },
                    samples: {
                      type: 'array',
                      items: { type: 'object', properties: { time: { type: 'string' }, gateway: { type: 'string' }, input: {}, live: {}, candidate: {} } },
                    },
                  },
                },
              },
            }),
          },
          '304': { description: 'If-None-Match matched' },
          '404': { ...problem, description: 'the policy has no candidate' },
          ...problems(400, 401, 403, 503),
        },
      },
      delete: {
        summary: 'Discard the candidate (platform admin); its history stays',
        parameters: [
          { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the candidate must have now' },
          preferWait,
        ],
        responses: {
          '204': { description: 'discarded', headers: fleetHeaders },
          '404': { ...problem, description: 'the policy has no candidate' },
          ...problems(400, 401, 403, 409, 412, 503),
        },
      },
    },
    '/policies/{name}/candidate/promote': {
      parameters: [name],
      post: {
        summary: 'Write the candidate as the next version and remove it, in one transaction (platform admin)',
        parameters: [
          { name: 'If-Match', in: 'header', required: false, schema: { type: 'string' }, description: 'ETag the live version must have now' },
          preferWait,
        ],
        requestBody: {
          required: false,
          content: json({
            type: 'object',
            additionalProperties: false,
            properties: { version: { type: 'integer', minimum: 1, description: 'the candidate version meant' } },
          }),
        },
        responses: {
          '200': { description: 'written as the next version', headers: { ...etagHeaders, ...fleetHeaders }, content: json(ref('PolicySummary')) },
          '404': { ...problem, description: 'the policy has no candidate' },
          '412': { ...problem, description: 'the live version or the candidate is not the one named' },
          ...problems(400, 401, 403, 409, 415, 503),
        },
      },
    },
    '/gateways': {
      get: {
        summary: 'Live gateways (runner workers, decision APIs) and what each enforces (platform admin)',
        responses: {
          '200': {
            description:
              'their reports, by id; `revision`: the etcd revision of the newest policy write (null before the first), ' +
              'which a gateway whose `revision` is below it has not applied yet (it is behind)',
            content: json({
              type: 'object',
              properties: { revision: { type: ['integer', 'null'] }, gateways: { type: 'array', items: { type: 'object' } } },
            }),
          },
          ...problems(401, 403, 503),
        },
      },
    },
    '/policies/{name}/history/{version}': {
      parameters: [name, version],
      get: {
        summary: 'One retained version of a policy (same permission as GET)',
        responses: { '200': policyObject, '304': { description: 'If-None-Match matched' }, ...problems(400, 401, 403, 404, 503) },
      },
    },
    '/budgets': {
      get: {
        summary: 'Projects with a budget in force, a page at a time (platform admin)',
        description: 'By project (byte order), read at one etcd revision. When more may follow, `next_page_token` is present: pass it as `page_token`.',
        parameters: pageParameters,
        responses: {
          '200': page('the current version of each budget', 'budgets', 'BudgetVersionSummary'),
          ...problems(400, 401, 403, 503),
        },
      },
    },
    '/budgets/{project}': {
      parameters: [project],
      get: {
        summary: "A project's LLM budget (platform admin; project users of that project)",
        responses: {
          '200': { description: 'the budget document, exactly as PUT stored it', headers: budgetEtagHeaders, content: json(ref('Budget')) },
          '304': { description: 'If-None-Match matched' },
          ...problems(400, 401, 403, 404, 503),
        },
      },
      put: {
        summary: "Create or replace a project's LLM budget (platform admin)",
        description: 'The current budget and its history version are written in one etcd transaction; concurrent writers cannot both win one version.',
        parameters: [ifMatch, { name: 'If-None-Match', in: 'header', required: false, schema: { const: '*' }, description: 'only create' }],
        requestBody: { required: true, content: json(ref('Budget')) },
        responses: {
          '200': budgetSummaryResponse('replaced'),
          '201': budgetSummaryResponse('created'),
          '400': {
            ...problem,
            description:
              'an invalid project name, malformed JSON, or an invalid budget (invalid-budget: `errors` lists each problem with its JSON pointer); nothing written',
          },
          ...problems(401, 403, 409, 412, 413, 415, 503),
        },
      },
      delete: {
        summary: "Delete a project's budget (platform admin); history keeps the deletion as a version",
        parameters: [ifMatch],
        responses: { '204': { description: 'deleted' }, ...problems(400, 401, 403, 404, 409, 412, 503) },
      },
    },
    '/budgets/{project}/remaining': {
      parameters: [project],
      get: {
        summary: "Each limit of a project's budget in its current UTC window, from the gateways' shared ledger (same permission as GET)",
        responses: {
          '200': {
            description: 'the limits, project windows first',
            content: json({
              type: 'object',
              properties: {
                project: { type: 'string' },
                version: { type: 'integer', description: 'the budget version whose limits these are' },
                at: { type: 'string' },
                limits: {
                  type: 'array',
                  items: {
                    type: 'object',
                    properties: {
                      scope: { type: 'string', description: '"*" for the project, else the model' },
                      per: { enum: ['minute', 'hour', 'day', 'month'] },
                      limit: { type: 'integer' },
                      consumed: { type: 'integer', description: "charged for calls that are over (settled, or a dead gateway's block)" },
                      held: { type: 'integer', description: 'leased by live gateways; each gives back what it does not use' },
                      available: { type: 'integer', description: 'neither consumed nor held' },
                      window_start: { type: 'string' },
                      resets_at: { type: 'string' },
                    },
                  },
                },
              },
            }),
          },
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    '/budgets/{project}/history': {
      parameters: [project],
      get: {
        summary: 'Retained versions of a budget, newest first; a deletion is a version (same permission as GET)',
        responses: {
          '200': versionList('project', 'BudgetVersionSummary'),
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    '/budgets/{project}/history/{version}': {
      parameters: [project, version],
      get: {
        summary: 'One retained version of a budget (same permission as GET)',
        responses: {
          '200': { description: 'the version as stored; budget is null for a deletion', headers: budgetEtagHeaders, content: json(ref('StoredBudget')) },
          '304': { description: 'If-None-Match matched' },
          ...problems(400, 401, 403, 404, 503),
        },
      },
    },
    '/usage/{project}': {
      parameters: [project],
      get: {
        summary: "A project's LLM usage per model, and per hour or day (platform admin; project users of that project)",
        description:
          'Usage of the calls in the UTC hours that start in [from rounded down to its hour, to rounded up to its hour). ' +
          'Defaults: to = now, from = to minus 24 hours. from must be before to, and the range at most 400 days. ' +
          'A "+" in an offset must be sent as %2B (a "+" in a query string means a space; a space before the offset is taken as "+").',
        parameters: [
          {
            name: 'from',
            in: 'query',
            required: false,
            schema: { type: 'string', examples: ['2025-06-01T00:00:00Z', '2025-06-01'] },
            description: 'an RFC 3339 time, or a date (midnight UTC)',
          },
          {
            name: 'to',
            in: 'query',
            required: false,
            schema: { type: 'string', examples: ['2025-06-02T00:00:00Z'] },
            description: 'an RFC 3339 time, or a date (midnight UTC)',
          },
          {
            name: 'group',
            in: 'query',
            required: false,
            schema: { enum: ['hour', 'day'], default: 'hour' },
            description: 'hour: `hours`, per hour and model; day: `days`, per UTC day and model',
          },
        ],
        responses: {
          '200': {
            description: 'totals, per model, and per hour (or day) and model in time order',
            content: json({
              type: 'object',
              properties: {
                project: { type: 'string' },
                from: { type: 'string', format: 'date-time', description: 'the first hour counted' },
                to: { type: 'string', format: 'date-time', description: 'the end of the last hour counted' },
                total: ref('UsageRecord'),
                models: { type: 'object', additionalProperties: ref('UsageRecord') },
                hours: {
                  type: 'array',
                  description: 'with group=hour',
                  items: {
                    type: 'object',
                    properties: { hour: { type: 'string', format: 'date-time' }, model: { type: 'string' }, ...usageRecordProperties },
                  },
                },
                days: {
                  type: 'array',
                  description: 'with group=day (the first and last day may hold part of a day, when from and to are not midnight)',
                  items: {
                    type: 'object',
                    properties: { day: { type: 'string', format: 'date' }, model: { type: 'string' }, ...usageRecordProperties },
                  },
                },
              },
            }),
          },
          ...problems(400, 401, 403, 503),
        },
      },
    },
    '/healthz': { get: { summary: 'The process is up', security: [], responses: { '200': { description: 'ok' } } } },
    '/readyz': { get: { summary: 'etcd answers', security: [], responses: { '200': { description: 'ready' }, '503': problem } } },
    '/metrics': {
      get: {
        summary: 'Prometheus metrics',
        security: [],
        responses: { '200': { description: 'text exposition format', content: { 'text/plain': { schema: { type: 'string' } } } } },
      },
    },
    '/openapi.json': { get: { summary: 'This document', security: [], responses: { '200': { description: 'OpenAPI 3.1' } } } },
  },
  components: {
    securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
    schemas: {
      PolicyName: { type: 'string', pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$', description: '"platform" is the platform policy' },
      ProjectName: {
        type: 'string',
        pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$',
        not: { const: 'platform' },
        description: 'a project: a policy name other than "platform"',
      },
      Budget: {
        type: 'object',
        additionalProperties: false,
        required: ['windows'],
        description: "a project's LLM token budget (budget/definition.ts)",
        properties: {
          windows: windowsSchema,
          models: {
            type: 'object',
            maxProperties: 256,
            propertyNames: { pattern: '^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$' },
            additionalProperties: { type: 'object', additionalProperties: false, required: ['windows'], properties: { windows: windowsSchema } },
            description: 'further limits for calls to one model (charged to both)',
          },
          default_max_tokens: {
            type: 'integer',
            minimum: 1,
            maximum: 10000000,
            description: 'what a call without max_tokens is charged for at most (and sent upstream as its max_tokens); absent: such calls are refused',
          },
          block_tokens: {
            type: 'integer',
            minimum: 1,
            maximum: 1e12,
            description: 'tokens a gateway leases at a time (default: a tenth of the smallest limit)',
          },
        },
      },
      BudgetVersionSummary: {
        type: 'object',
        properties: {
          project: { type: 'string' },
          version: { type: 'integer' },
          deleted: { type: 'boolean', description: 'this version deleted the budget' },
          sha256: { type: ['string', 'null'], description: 'of the budget document as GET returns it; null for a deletion' },
          updatedAt: { type: 'string', format: 'date-time' },
          updatedBy: { type: 'string', description: 'sub of the writer' },
        },
      },
      StoredBudget: {
        type: 'object',
        properties: {
          project: { type: 'string' },
          version: { type: 'integer' },
          budget: { oneOf: [ref('Budget'), { type: 'null' }] },
          updatedAt: { type: 'string', format: 'date-time' },
          updatedBy: { type: 'string' },
        },
      },
      UsageRecord: { type: 'object', properties: usageRecordProperties },
      PolicyObject: {
        type: 'object',
        additionalProperties: false,
        required: ['rego', 'data'],
        properties: {
          rego: { type: 'string', minLength: 1, description: 'one Rego module, v1 or v0 syntax; its package is the entrypoint' },
          data: { type: 'object', description: 'the data document; numbers keep their exact value' },
          tests: {
            type: 'object',
            description:
              'optional Rego test modules (opa test conventions) by file name; run against the Rego and data before every write, stored and kept in history',
            propertyNames: { pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}_test\\.rego$' },
            additionalProperties: { type: 'string', minLength: 1 },
            maxProperties: 32,
          },
        },
      },
      ReplayReport: {
        type: 'object',
        description: 'present when the check replayed decision inputs',
        required: ['evaluated', 'liveVersion', 'changed'],
        properties: {
          evaluated: { type: 'integer', description: 'inputs evaluated with both versions' },
          liveVersion: { type: ['integer', 'null'], description: 'the live version replayed against; null: none (every document it decides is undefined)' },
          changed: {
            type: 'array',
            description:
              'the inputs whose decision document differs (deep equality), by index into `replay`, in order. An undefined document (no rule matched, no live version) is an absent member; an evaluation that failed (the gateway denies it with 500) is liveError / draftError; both failing is no change',
            items: {
              type: 'object',
              required: ['index'],
              properties: {
                index: { type: 'integer', minimum: 0 },
                live: { description: 'the document the live version decides' },
                draft: { description: 'the document the checked policy decides' },
                liveError: ref('ReplayError'),
                draftError: ref('ReplayError'),
              },
            },
          },
        },
      },
      ReplayError: {
        type: 'object',
        properties: {
          kind: { enum: ['time', 'memory', 'fuel', 'error'], description: "the gateways' bound that stopped it, or error" },
          message: { type: 'string' },
        },
      },
      PolicySummary: {
        type: 'object',
        properties: {
          name: { type: 'string' },
          version: { type: 'integer' },
          sha256: { type: 'string', description: 'of the policy object as GET returns it' },
          author: { type: 'string', description: 'sub of the writer' },
          updatedAt: { type: 'string', format: 'date-time' },
          entrypoint: { type: 'string' },
          syntaxVersion: { enum: ['v0', 'v1'] },
          opaVersion: { type: 'string' },
        },
      },
      Problem: {
        type: 'object',
        properties: {
          type: { type: 'string' },
          title: { type: 'string' },
          status: { type: 'integer' },
          detail: { type: 'string' },
          errors: {
            type: 'array',
            description: 'compile diagnostics (rego-compile-error), or the problems of a budget (invalid-budget: pointer, message)',
            items: {
              type: 'object',
              properties: {
                code: { type: 'string' },
                message: { type: 'string' },
                file: { type: 'string' },
                row: { type: 'integer' },
                col: { type: 'integer' },
                pointer: { type: 'string', description: 'JSON pointer into the submitted budget, or into a check body (invalid-replay)' },
              },
            },
          },
        },
      },
    },
    responses: {
      Problem: {
        description: 'RFC 9457 problem details',
        content: { 'application/problem+json': { schema: ref('Problem') } },
      },
    },
  },
} as const;

export const openApiRoutes: FastifyPluginAsync = async (app) => {
  app.get('/openapi.json', async (_request, reply) => reply.type('application/json').send(openApiDocument));
};
