// `opa`: authorizes each request against compiled policies held in memory
// (one wasm instance per policy, so a project's rules and data never see
// another's), kept current by the policy watcher. The route conf chooses
// which policies decide; every one of them must allow.
//
//   {"policies": ["platform", "caller-project"], "with_body": true}
//
//   "platform"        the platform policy; when none exists it does not restrict
//   "caller-project"  the policy named by the verified `project` claim; none -> deny
//   "project:<name>"  a fixed project's policy; none -> deny
//   "cms-access"      the CMS permission table shipped with Gatehouse
//
// "with_budget": true adds the caller project's LLM budget for this call to
// the input (`input.budget`, see input.ts), and lets a decision name the
// model the call must use (`{"allow": true, "model": "..."}`; the first
// policy in the list that names one wins), which `llm-budget` then charges
// and sends upstream.
//
// A policy with a candidate (policy/candidate, written through the CMS's
// /policies/{name}/candidate): the candidate's `enforce_percent` of callers,
// by a stable hash of their subject, are decided by the candidate; every
// other decision is made by the live version and `sample_percent` of them
// are evaluated again by the candidate after the answer, compared, never
// enforced.
//
// Decision logs (policy/decision-log), when the runner has a sink
// (DECISION_LOG): "decision_log": true (the default), false, or
// {"sample": 0.1, "mask": ["/body/card_number"]} (JSON pointers into the
// input; credential headers and query parameters, http/credentials, never
// enter the input and are always masked).
import type { CallContext, Plugin } from '../api/plugin.js';
import { ConfError } from '../api/plugin.js';
import type { GatewayRequest, StopResponse } from '../api/http.js';
import { maskInput, shouldLog, type DecisionEvent, type DecisionLog, type DecisionLogConf, type DecisionPolicy } from '../../policy/decision-log/index.js';
import { jsonConfParser } from '../api/json-conf.js';
import { isValidPolicyName, PLATFORM_POLICY_NAME } from '../../policy/store/names.js';
import type { CandidateShadow } from '../../policy/candidate/index.js';
import { PolicyUnloadableError, type PolicySet, type LoadedPolicy } from '../../policy/watcher/policy-set.js';
import { PolicyEngineError } from '../../policy/engine/index.js';
import { WasmUnavailableError } from '../../policy/engine/cache.js';
import { SerialisedInput } from '../../policy/engine/serialised-input.js';
import { decidedModelSlot, identitySlot, llmCall } from '../api/slots.js';
import type { Identity } from '../../identity/index.js';
import { buildPolicyInput, fillRequestMaps, readsRequestMaps, type InputOptions, type PolicyInput, type VerifiedUser } from './input.js';
import { readDecision, type Decision } from './decision.js';
import { BUDGETS_LOAD_WAIT_MS, type BudgetView, type GatewayBudgets } from '../../budget/gateway.js';
import { LlmCallError } from '../../budget/call.js';

export type PolicyChoice = { kind: 'platform' } | { kind: 'caller-project' } | { kind: 'project'; name: string } | { kind: 'cms-access' };

/** A choice as a prepared conf holds it: "cms-access" with the policy it names. */
export type PreparedChoice = Exclude<PolicyChoice, { kind: 'cms-access' }> | { kind: 'cms-access'; policy: CmsAccessPolicy };

export interface OpaConf {
  policies: PreparedChoice[];
  withBody: boolean;
  withVars: boolean;
  maxBodyBytes: number;
  allowTruncated: boolean;
  /** The budgets a decision shows its policies (with_budget); null without with_budget. */
  budgets: GatewayBudgets | null;
  decisionLog: DecisionLogConf;
}

interface RawOpaConf {
  policies: string[];
  with_body: boolean;
  with_vars: boolean;
  max_body_bytes: number;
  allow_truncated: boolean;
  with_budget: boolean;
  decision_log: boolean | { sample?: number; mask?: string[] };
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    policies: {
      type: 'array',
      minItems: 1,
      items: { type: 'string', pattern: '^(platform|caller-project|cms-access|project:.+)$' },
      default: ['platform', 'caller-project'],
    },
    with_body: { type: 'boolean', default: false },
    with_vars: { type: 'boolean', default: false },
    max_body_bytes: { type: 'integer', minimum: 0, maximum: 16_777_215, default: 1_048_576 },
    // A request part of which the policy cannot see (a body over max_body_bytes) is denied unless this is set.
    allow_truncated: { type: 'boolean', default: false },
    with_budget: { type: 'boolean', default: false },
    decision_log: {
      default: true,
      oneOf: [
        { type: 'boolean' },
        {
          type: 'object',
          additionalProperties: false,
          properties: {
            sample: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
            mask: { type: 'array', maxItems: 64, items: { type: 'string', pattern: '^(/[^/]+)+$' } },
          },
        },
      ],
    },
  },
};

/** How long a decision waits for a process's first policy set before it is refused with 503. */
export const POLICIES_LOAD_WAIT_MS = 3_000;

/** The CMS permission table shipped with Gatehouse, compiled. */
export type CmsAccessPolicy = (input: { method: string; path: string[]; user?: { sub: string; role: string | null; project: string | null } }) => {
  allow: boolean;
  reason: string;
  statusCode: number | undefined;
};

/** Where policies come from: the watcher's current set, and the shipped CMS access policy. */
export interface PolicySource {
  current(): PolicySet;
  /** Whether a set is loaded, waiting up to `timeoutMs` for the first one (absent: no waiting). */
  whenLoaded?(timeoutMs: number): Promise<boolean>;
  /** Null when it is not built: routes naming "cms-access" then fail at PrepareConf. */
  cmsAccess: CmsAccessPolicy | null;
}

/** Where decision events go: the runner's log (null: none configured) and this gateway's id. */
export interface DecisionLogSink {
  log: DecisionLog | null;
  gateway: string;
}

export interface DecisionRecorder {
  record(kind: PolicyChoice['kind'], outcome: 'allow' | 'deny' | 'error' | 'unavailable', seconds: number): void;
}

export function parseChoice(raw: string): PolicyChoice {
  if (raw === 'platform' || raw === 'caller-project' || raw === 'cms-access') return { kind: raw };
  const name = raw.slice('project:'.length);
  if (!isValidPolicyName(name) || name === PLATFORM_POLICY_NAME) {
    throw new ConfError(`opa: "${raw}" does not name a project (lowercase DNS label, not "platform")`);
  }
  return { kind: 'project', name };
}

function userOf(identity: Identity | null): VerifiedUser | null {
  if (!identity) return null;
  return { ...identity.claims, sub: identity.sub, role: identity.role, project: identity.project };
}

/** Path segments as the CMS access policy reads them: "/policies/a/history" -> ["policies","a","history"]. */
export function pathSegments(path: string): string[] {
  const segments = path.split('/');
  if (segments[0] === '') segments.shift();
  return segments;
}

function deny(response: StopResponse, decision: Decision): void {
  const reason = decision.reason;
  const extra: Record<string, unknown> = {};
  if (reason !== undefined && typeof reason !== 'string') extra.reason = reason;
  response.problem(decision.status, typeof reason === 'string' ? reason : 'denied by policy', extra);
  for (const [name, value] of Object.entries(decision.headers)) {
    if (name !== 'content-type') response.headers.set(name, value);
  }
}

function decisionLogConf(raw: RawOpaConf['decision_log']): DecisionLogConf {
  if (typeof raw === 'boolean') return { enabled: raw, sample: 1, mask: [] };
  return { enabled: true, sample: raw.sample ?? 1, mask: raw.mask ?? [] };
}

export interface OpaPluginDeps {
  policies: PolicySource;
  decisions: DecisionRecorder;
  /** Absent: no decision log. */
  decisionLog?: DecisionLogSink;
  /** LLM budgets; null or absent without etcd: routes asking with_budget then fail at PrepareConf. */
  budgets?: GatewayBudgets | null;
  /** Where candidates are shadowed and canaried; absent: candidates are ignored, live versions decide. */
  candidates?: CandidateShadow;
}

/** Whether two decision documents would be enforced alike (allow, status and model, as readDecision reads them). */
function enforcedAlike(live: unknown, candidate: unknown): boolean {
  const a = readDecision(live);
  const b = readDecision(candidate);
  return a.allow === b.allow && a.status === b.status && a.model === b.model;
}

export function createOpaPlugin(deps: OpaPluginDeps): Plugin<OpaConf> {
  const { policies: source, decisions: recorder, decisionLog = { log: null, gateway: '' }, budgets = null, candidates = null } = deps;
  const parse = jsonConfParser<RawOpaConf>('opa', schema);
  return {
    name: 'opa',
    parseConf(raw) {
      const conf = parse(raw);
      const choices = conf.policies.map(parseChoice);
      if (conf.with_budget && !budgets) throw new ConfError('opa: with_budget needs budgets (ETCD_ENDPOINTS)');
      const cmsAccess = source.cmsAccess;
      const policies = choices.map((choice): PreparedChoice => {
        if (choice.kind !== 'cms-access') return choice;
        if (!cmsAccess) throw new ConfError('opa: the CMS access policy is not available (build it with npm run build)');
        return { kind: 'cms-access', policy: cmsAccess };
      });
      return {
        policies,
        withBody: conf.with_body,
        withVars: conf.with_vars,
        maxBodyBytes: conf.max_body_bytes,
        allowTruncated: conf.allow_truncated,
        budgets: conf.with_budget ? budgets : null,
        decisionLog: decisionLogConf(conf.decision_log),
      };
    },

    requestFilter(conf, request, response, ctx) {
      const logged = decisionLog.log !== null && shouldLog(conf.decisionLog);
      // The trail feeds the decision log and the span (runner traces); without either, none is kept.
      if (!logged && !ctx.trace) return decide(conf, request, response, ctx, null);
      return decideWithTrail(conf, request, response, ctx, logged);
    },
  };

  /** decide, keeping what it went through for the decision log (when `logged`) and the request's span. */
  async function decideWithTrail(conf: OpaConf, request: GatewayRequest, response: StopResponse, ctx: CallContext, logged: boolean): Promise<void> {
    const started = process.hrtime.bigint();
    const trail: DecisionTrail = { input: null, policies: [], outcome: null };
    try {
      await decide(conf, request, response, ctx, trail);
    } finally {
      const status = response.stopped ? response.status || 200 : 200;
      const result = trail.outcome ?? (response.stopped ? (status >= 500 ? 'error' : 'deny') : 'allow');
      // The policies' names, versions and results: never the input.
      ctx.trace?.attributes({
        'gatehouse.policy.names': trail.policies.map((p) => p.name),
        'gatehouse.policy.versions': trail.policies.map((p) => p.version),
        'gatehouse.policy.results': trail.policies.map((p) => p.result),
        'gatehouse.decision.result': result,
      });
      if (logged)
        decisionLog.log?.emit({
          time: new Date().toISOString(),
          gateway: decisionLog.gateway,
          route: ctx.route ?? null,
          policies: trail.policies,
          result,
          status,
          latencyUs: Math.round(Number(process.hrtime.bigint() - started) / 1000),
          input: trail.input,
          mask: conf.decisionLog.mask,
        });
    }
  }

  async function decide(conf: OpaConf, request: GatewayRequest, response: StopResponse, ctx: CallContext, trail: DecisionTrail | null): Promise<void> {
    const identity = identitySlot.get(ctx);
    // Headers and query are built when a policy that reads them is about to decide (or a candidate is
    // shadowed); a decision with a trail (logged or traced) keeps its whole input from the start.
    const deferMaps = trail === null;
    const inputOptions: InputOptions = {
      withBody: conf.withBody,
      withVars: conf.withVars,
      maxBodyBytes: conf.maxBodyBytes,
      credentialHeaders: ctx.credentialHeaders,
      deferRequestMaps: deferMaps,
    };
    const built = buildPolicyInput(request, { user: userOf(identity), project: identity?.project ?? null }, inputOptions);
    // Built at once unless it asks APISIX for something (vars, body): not waited on then.
    const input: PolicyInput = built instanceof Promise ? await built : built;
    if (conf.budgets) {
      // Without the budgets read, a policy would see "no budget" where there is one.
      if (!(await conf.budgets.whenLoaded(BUDGETS_LOAD_WAIT_MS))) {
        if (trail) trail.outcome = 'unavailable';
        response.problem(503, 'budgets are not loaded yet');
        response.headers.set('retry-after', '1');
        return;
      }
      input.budget = await budgetView(conf.budgets, ctx, request, identity?.project ?? null);
    }
    if (trail) trail.input = input;
    if (input.truncated && !conf.allowTruncated) {
      // The upstream would get what the policy never saw.
      response.problem(413, `the request body is larger than the ${conf.maxBodyBytes} bytes this route's policies may read`);
      return;
    }
    // One set for the whole decision: every policy comes from the same etcd transaction.
    // A process just started waits briefly for its first one.
    if (!source.current().isLoaded) await source.whenLoaded?.(POLICIES_LOAD_WAIT_MS);
    const set = source.current();
    // Serialised once, when the first policy needs it, for every policy of the list.
    const serialised = new SerialisedInput(input);
    for (const choice of conf.policies) {
      // performance.now(): a double, where hrtime.bigint() allocates two BigInts per policy.
      const started = performance.now();
      const seconds = () => (performance.now() - started) / 1e3;

      if (choice.kind === 'cms-access') {
        const decision = choice.policy({
          method: request.method,
          path: pathSegments(request.path),
          ...(identity ? { user: { sub: identity.sub, role: identity.role, project: identity.project } } : {}),
        });
        recorder.record(choice.kind, decision.allow ? 'allow' : 'deny', seconds());
        trail?.policies.push({ name: 'cms-access', version: 0, revision: 0, result: decision.allow ? 'allow' : 'deny' });
        if (!decision.allow) {
          deny(response, { allow: false, status: decision.statusCode ?? 403, reason: decision.reason, headers: {} });
          if (decision.statusCode === 401) response.headers.set('www-authenticate', 'Bearer realm="gatehouse"');
          return;
        }
        continue;
      }

      if (!set.isLoaded) {
        recorder.record(choice.kind, 'unavailable', seconds());
        if (trail) trail.outcome = 'unavailable';
        response.problem(503, 'policies are not loaded yet');
        response.headers.set('retry-after', '1');
        return;
      }

      let policy: LoadedPolicy | undefined;
      if (choice.kind === 'platform') {
        policy = set.get(PLATFORM_POLICY_NAME);
        if (!policy) continue; // no platform policy: nothing to restrict
      } else {
        const name = choice.kind === 'project' ? choice.name : identity?.project;
        if (!name || name === PLATFORM_POLICY_NAME) {
          recorder.record(choice.kind, 'deny', seconds());
          response.problem(403, identity ? 'the caller has no project' : 'no verified identity');
          return;
        }
        policy = set.get(name);
        if (!policy) {
          recorder.record(choice.kind, 'deny', seconds());
          trail?.policies.push({ name, version: 0, revision: 0, result: 'absent' });
          response.problem(403, 'no policy is defined for this project');
          return;
        }
      }

      // Its candidate, if it has one: enforced for the canary's callers, shadowed for the others'.
      const live = policy;
      const route = candidates?.route(live, set, identity?.sub ?? null) ?? { policy: live, shadowed: null };
      policy = route.policy;
      if (deferMaps && (route.shadowed !== null || readsRequestMaps(policy))) fillRequestMaps(input, request, inputOptions);

      let decision: Decision;
      const tenant = identity?.project ?? '';
      try {
        // The engine is built on first use (a cold project); evaluation is
        // bounded in time and memory, per tenant (the caller's project).
        const document = await policy.evaluate(tenant, serialised);
        decision = readDecision(document);
        if (route.shadowed) {
          candidates?.shadow({
            live,
            candidate: route.shadowed,
            tenant,
            input: serialised,
            liveResult: document,
            agree: enforcedAlike,
            sampleInput: () => maskInput(input, conf.decisionLog.mask),
          });
        }
      } catch (err) {
        recorder.record(choice.kind, 'error', seconds());
        trail?.policies.push({ name: policy.name, version: policy.meta.version, revision: policy.modRevision, result: 'error' });
        // A policy that exists but cannot be loaded denies (the platform policy: every request).
        if (err instanceof WasmUnavailableError) {
          // Its module is neither on disk nor readable from etcd right now: fail closed, the next decision tries again.
          ctx.log.error({ policy: policy.name, err: String(err), requestId: request.id }, 'policy module cannot be read for now; denying');
          response.problem(503, 'a policy this request needs cannot be read right now');
          return;
        }
        const unloadable = err instanceof PolicyUnloadableError || err instanceof PolicyEngineError;
        ctx.log.error(
          { policy: policy.name, err: String(err), requestId: request.id },
          unloadable ? 'policy cannot be loaded; denying' : 'policy evaluation failed; denying',
        );
        response.problem(500, unloadable ? 'a policy this request needs cannot be loaded' : 'policy evaluation failed');
        return;
      }
      recorder.record(choice.kind, decision.allow ? 'allow' : 'deny', seconds());
      trail?.policies.push({ name: policy.name, version: policy.meta.version, revision: policy.modRevision, result: decision.allow ? 'allow' : 'deny' });
      if (!decision.allow) {
        ctx.log.debug({ policy: policy.name, version: policy.meta.version, requestId: request.id }, 'denied by policy');
        deny(response, decision);
        return;
      }
      // The first policy of the list that names a model decides it.
      if (conf.budgets && decision.model && !decidedModelSlot.has(ctx)) decidedModelSlot.set(ctx, decision.model);
    }
  }

  /** The budget a policy sees for this call: null without a project, a budget or a readable call. */
  async function budgetView(budgets: GatewayBudgets, ctx: CallContext, request: GatewayRequest, project: string | null): Promise<BudgetView | null> {
    const budget = project ? budgets.budget(project) : null;
    if (!project || !budget) return null;
    const call = await llmCall(ctx, request);
    if (call instanceof LlmCallError) return null;
    return budgets.view(project, budget, call, call.model, call.maxTokens ?? budget.default_max_tokens ?? null);
  }
}

/** What a decision went through, for its log event. */
interface DecisionTrail {
  input: PolicyInput | null;
  policies: DecisionPolicy[];
  outcome: DecisionEvent['result'] | null;
}
