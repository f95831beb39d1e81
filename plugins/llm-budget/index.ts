// `llm-budget`: holds an LLM call to its project's token budget, shared by
// every gateway through etcd (budget/). Runs after `jwt` (the project) and
// `opa` (which may name another model), before the credential is injected:
//
//   {"missing_budget": "deny", "path_prefix": "/llm", "endpoints": ["/v1/chat/completions"]}
//
// `endpoints` is the route's allow-list of LLM endpoints (budget/call.ts
// LLM_ENDPOINTS, each priced the way the upstream bills it; default: chat
// completions only), named by their path on the upstream. The plugin runs
// before the route's prefix is taken off (path-rewrite comes later in the
// chain), so it serves exactly `path_prefix` + an endpoint, POST only:
// another path is 404, another method 405, before anything else.
//
// Before the call: read model, the completion limit, how many completions
// and an upper bound of the prompt from the body; a call without a limit
// gets the budget's default_max_tokens (sent upstream, so the bound holds)
// or is refused; a body the plugin cannot price is 400 naming the member at
// fault (`errors: [{pointer, message}]`); a streamed call is made to end
// with a usage chunk; then its worst case is
// reserved in every limit it is charged against, or it is refused with 429,
// Retry-After and the budget named. The reservation is named by nginx's
// $request_id. After the call: APISIX's http-logger posts the response with
// that id back (runner/budget-settle.ts) and the call is settled to the
// usage the LLM reported.
import { unavailablePlugin, type Plugin } from '../api/plugin.js';
import { jsonConfParser } from '../api/json-conf.js';
import { decidedModelSlot, identitySlot, llmCall } from '../api/slots.js';
import { BUDGETS_LOAD_WAIT_MS, GatewayBudgets, RESERVATION_ID } from '../../budget/gateway.js';
import { LLM_ENDPOINTS, LlmCallError, type LlmEndpoint } from '../../budget/call.js';

export interface LlmBudgetConf {
  missing_budget: 'deny' | 'allow';
  path_prefix: string;
  endpoints: LlmEndpoint[];
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    // A project without a budget: refused (the default, fail closed), or let through unmetered.
    missing_budget: { type: 'string', enum: ['deny', 'allow'], default: 'deny' },
    // What precedes an endpoint's path in the path this plugin sees: the route prefix a later path-rewrite strips.
    path_prefix: { type: 'string', pattern: '^(/[^/]+)*$', default: '' },
    // Only endpoints the budget prices; anything else is refused, never passed through unpriced.
    endpoints: { type: 'array', items: { type: 'string', enum: [...LLM_ENDPOINTS] }, minItems: 1, uniqueItems: true, default: ['/v1/chat/completions'] },
  },
};

/** gen_ai.operation.name of each endpoint (OpenTelemetry's GenAI semantic conventions). */
const GEN_AI_OPERATIONS: Record<LlmEndpoint, string> = {
  '/v1/chat/completions': 'chat',
  '/v1/completions': 'text_completion',
  '/v1/embeddings': 'embeddings',
  '/v1/responses': 'chat',
};

/** `budgets` is null without etcd: routes naming `llm-budget` then fail at PrepareConf. */
export function createLlmBudgetPlugin(budgets: GatewayBudgets | null, configError = 'ETCD_ENDPOINTS is not set'): Plugin<LlmBudgetConf> {
  if (!budgets) return unavailablePlugin('llm-budget', `budgets are not available (${configError})`);
  return meteringPlugin(budgets);
}

function meteringPlugin(budgets: GatewayBudgets): Plugin<LlmBudgetConf> {
  return {
    name: 'llm-budget',
    parseConf: jsonConfParser<LlmBudgetConf>('llm-budget', schema),

    async requestFilter(conf, request, response, ctx) {
      const endpoint = conf.endpoints.find((e) => request.path === `${conf.path_prefix}${e}`);
      if (!endpoint) {
        response.problem(404, `this route serves no LLM endpoint at ${request.path}`, {
          path: request.path,
          endpoints: conf.endpoints.map((e) => `${conf.path_prefix}${e}`),
        });
        return;
      }
      if (request.method !== 'POST') {
        response.problem(405, `${request.path} takes POST only`, { path: request.path });
        response.headers.set('allow', 'POST');
        return;
      }
      const project = identitySlot.get(ctx)?.project ?? null;
      if (!project) {
        response.problem(403, 'the caller has no project');
        return;
      }
      if (!(await budgets.whenLoaded(BUDGETS_LOAD_WAIT_MS))) {
        response.problem(503, 'budgets are not loaded yet');
        response.headers.set('retry-after', '1');
        return;
      }
      const budget = budgets.budget(project);
      if (!budget) {
        if (conf.missing_budget === 'allow') return;
        response.problem(403, 'no LLM budget is defined for this project', { project });
        return;
      }
      const call = await llmCall(ctx, request, endpoint);
      if (call instanceof LlmCallError) {
        response.problem(400, call.message, { errors: [{ pointer: call.pointer, message: call.message }] });
        return;
      }
      // The answer is read back for its usage (budget-settle): ask for it uncompressed.
      request.headers.delete('accept-encoding');
      const body = { ...call.body };
      let rewritten = false;
      const model = decidedModelSlot.get(ctx) ?? call.model;
      if (model !== call.model) {
        body.model = model;
        rewritten = true;
      }
      // An embedding generates nothing: its prompt is its cost.
      let maxTokens = call.maxTokens ?? 0;
      if (call.maxTokens === null && call.maxTokensField !== null) {
        if (budget.default_max_tokens === undefined) {
          response.problem(400, `this project's budget requires ${call.maxTokensField} on every call`, {
            project,
            errors: [{ pointer: `/${call.maxTokensField}`, message: 'required' }],
          });
          return;
        }
        maxTokens = budget.default_max_tokens;
        body[call.maxTokensField] = maxTokens;
        rewritten = true;
      }
      if (call.stream && call.usageNeedsOption && !call.includeUsage) {
        // The usage chunk is what the call is settled to.
        body.stream_options = { ...((body.stream_options as object | undefined) ?? {}), include_usage: true };
        rewritten = true;
      }
      const cost = GatewayBudgets.cost(call, maxTokens);
      const never = GatewayBudgets.tooLarge(budget, model, cost);
      if (never) {
        budgets.refusedTooLarge(project);
        response.problem(
          400,
          `this call may cost ${cost} tokens, more than the ${never.tokens} a ${never.per} of this budget allows; lower the completion limit, the number of completions or the prompt`,
          {
            budget: { project, scope: never.scope, per: never.per, tokens: never.tokens },
            cost,
          },
        );
        return;
      }
      const requestId = await request.variable('request_id');
      if (!requestId || !RESERVATION_ID.test(requestId)) {
        // Without it the call could never be settled: refuse rather than guess.
        response.problem(500, 'the gateway gave no request id to settle this call by');
        return;
      }
      const result = await budgets.reserve(requestId, project, budget, model, cost);
      if (!result.ok) {
        if (result.reason === 'unavailable') {
          response.problem(503, 'the budget ledger is unavailable and this gateway holds no tokens for the call');
          response.headers.set('retry-after', String(result.retryAfterSeconds));
          return;
        }
        response.problem(
          429,
          `the ${result.limit.per} token budget ${result.limit.scope === '*' ? 'of the project' : `for model ${result.limit.scope}`} is spent`,
          {
            budget: { project, scope: result.limit.scope, per: result.limit.per, tokens: result.limit.tokens, remaining: result.remaining },
            cost,
          },
        );
        response.headers.set('retry-after', String(result.retryAfterSeconds));
        return;
      }
      // The settle span (after the answer) joins this request's trace by the reservation id.
      ctx.trace?.settlesLater(requestId, {
        'gen_ai.operation.name': GEN_AI_OPERATIONS[endpoint],
        'gen_ai.request.model': model ?? 'unknown',
        'gatehouse.project': project,
        'gatehouse.budget.reserved': cost,
      });
      if (rewritten) {
        // APISIX sets the body after the headers, with its own Content-Length.
        request.setBody(JSON.stringify(body));
      }
    },
  };
}
