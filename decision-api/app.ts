// The decision API: OPA's Data API on Gatehouse's engine and watch, so the
// RAG application (or APISIX's built-in `opa` plugin) can ask authorization
// questions directly.
//
//   POST /v1/data/<policy>/<path...>   {"input": {...}}  ->  {"result": ...}
//   GET  /v1/data/<policy>/<path...>                     ->  {"result": ...}
//
// <policy> is the Gatehouse policy name (a project, or `platform`); the rest
// is a path into that policy's document, like OPA's: `/v1/data/team-a/project/authz/allow`
// reads rule `allow` of package `project.authz` of team-a's policy. As in OPA,
// `result` is absent when the document is undefined. Callers present a JWT,
// verified with the same rules as everywhere else, and may ask only about
// policies the CMS access policy lets them read. A call without its own
// Authorization header, as APISIX's built-in `opa` plugin makes it, is
// judged by the client token inside its input instead; when that input has
// the plugin's shape (`"type": "http"`), a client without a valid token or
// without access to the policy gets its refusal as a decision the plugin
// understands: 200 with {"result": {"allow": false, "status_code": 401 or
// 403, "headers": {...}, "reason": <problem document>}}, so APISIX answers
// the client 401 or 403 (the plugin turns any other answer into 503).
//
// Credentials never reach a policy: the headers and query parameters
// http/credentials names, in any case, are taken out of the input.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { AuthenticationError, type Identity, type IdentityVerifier } from '../identity/index.js';
import { isValidPolicyName } from '../policy/store/names.js';
import type { PolicyWatcher } from '../policy/watcher/watcher.js';
import { HttpProblem, PROBLEM_CONTENT_TYPE, sendProblem } from '../http/problem.js';
import { isCredentialHeader, isCredentialQueryParameter, maskCredentialQuery } from '../http/credentials.js';
import type { AccessPolicy } from '../policy/access/index.js';
import { accessInput } from '../policy/access/index.js';
import { maskInput, type DecisionLog } from '../policy/decision-log/index.js';
import type { CandidateShadow } from '../policy/candidate/index.js';
import { isDeepStrictEqual } from 'node:util';
import { SerialisedInput } from '../policy/engine/serialised-input.js';

export interface DecisionApiOptions {
  watcher: PolicyWatcher;
  verifier: IdentityVerifier;
  access: AccessPolicy;
  log: Logger;
  registry: Registry;
  bodyLimitBytes?: number;
  onDecision?: (policy: string, outcome: 'defined' | 'undefined' | 'error', seconds: number) => void;
  /** Decision log events (policy/decision-log), when a sink is configured. */
  decisionLog?: { log: DecisionLog | null; gateway: string };
  /** Where policies' candidates are shadowed and canaried (policy/candidate); absent: live versions alone decide. */
  candidates?: CandidateShadow;
}

function walk(document: unknown, path: string[]): unknown {
  let node = document;
  for (const segment of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = Array.isArray(node) ? node[Number(segment)] : (node as Record<string, unknown>)[segment];
    if (node === undefined) return undefined;
  }
  return node;
}

/** The document at `path` within a policy whose package sits at `packagePath`. */
export function documentAt(packagePath: string[], packageDocument: unknown, path: string[]): unknown {
  const common = Math.min(packagePath.length, path.length);
  for (let i = 0; i < common; i++) if (packagePath[i] !== path[i]) return undefined;
  if (path.length >= packagePath.length) return walk(packageDocument, path.slice(packagePath.length));
  // Asking above the package: nest the package document under the remaining segments.
  let nested: unknown = packageDocument;
  for (const segment of [...packagePath.slice(path.length)].reverse()) nested = { [segment]: nested };
  return nested;
}

/**
 * The client's Authorization header inside an APISIX `opa` plugin input, if
 * any, whatever the case of its name. Two different values are refused: which
 * one the upstream would act on is not ours to guess.
 */
function forwardedAuthorization(input: unknown): string | undefined {
  const headers = (input as { request?: { headers?: unknown } } | null | undefined)?.request?.headers;
  if (!headers || typeof headers !== 'object') return undefined;
  const values = new Set<unknown>();
  for (const [name, value] of Object.entries(headers)) {
    if (name.toLowerCase() === 'authorization') for (const one of Array.isArray(value) ? value : [value]) values.add(one);
  }
  if (values.size > 1) throw new AuthenticationError('malformed_token', 'the request carries more than one Authorization header');
  const [value] = values;
  return typeof value === 'string' ? value : undefined;
}

/** Whether the input is the document APISIX's built-in `opa` plugin sends. */
function isPluginInput(input: unknown): boolean {
  return input !== null && typeof input === 'object' && (input as { type?: unknown }).type === 'http';
}

/** A map (headers, query) without the entries whose names are credentials. */
function withoutCredentials(map: unknown, isCredential: (name: string) => boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (map && typeof map === 'object' && !Array.isArray(map)) {
    for (const [name, value] of Object.entries(map)) if (!isCredential(name)) out[name] = value;
  }
  return out;
}

/**
 * APISIX's input, made into the gateway's: credentials removed (they are not
 * policy data: credential headers and query parameters, whatever the case of
 * their names, and credential values in a query string written into the
 * path), the verified identity added as `user` and `project`.
 */
function withIdentity(input: Record<string, unknown>, identity: Identity): Record<string, unknown> {
  const given = input.request;
  const request: Record<string, unknown> = given && typeof given === 'object' && !Array.isArray(given) ? { ...given } : {};
  request.headers = withoutCredentials(request.headers, (name) => isCredentialHeader(name));
  if (request.query !== undefined) {
    request.query =
      typeof request.query === 'string' ? maskCredentialQuery(`?${request.query}`).slice(1) : withoutCredentials(request.query, isCredentialQueryParameter);
  }
  for (const field of ['path', 'uri']) {
    const value = request[field];
    if (typeof value === 'string') request[field] = maskCredentialQuery(value);
  }
  return {
    ...input,
    request,
    user: { ...identity.claims, sub: identity.sub, role: identity.role, project: identity.project },
    project: identity.project,
  };
}

/** The refusal of an end user (no valid token: 401; no access to the policy: 403) as an APISIX `opa` plugin decision; null for any other error. */
function clientRefusal(err: unknown): { allow: false; status_code: number; headers: Record<string, string>; reason: Record<string, unknown> } | null {
  let problem: HttpProblem;
  if (err instanceof AuthenticationError && !err.isServerSide) problem = authenticationProblem(err);
  else if (err instanceof HttpProblem && (err.status === 401 || err.status === 403)) problem = err;
  else return null;
  return { allow: false, status_code: problem.status, headers: { ...problem.headers, 'Content-Type': PROBLEM_CONTENT_TYPE }, reason: problem.toJSON() };
}

function authenticationProblem(error: AuthenticationError): HttpProblem {
  return new HttpProblem({
    status: 401,
    detail: error.publicReason,
    headers: { 'WWW-Authenticate': error.failure === 'missing_token' ? 'Bearer realm="gatehouse"' : `Bearer realm="gatehouse", error="invalid_token"` },
  });
}

export async function buildDecisionApp(options: DecisionApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    // Per-request lines would double every decision's cost; errors are still logged.
    loggerInstance: options.log.child({ component: 'decision-api' }, { level: 'warn' }) as FastifyBaseLogger,
    bodyLimit: options.bodyLimitBytes ?? 1024 * 1024,
    return503OnClosing: true,
  });

  app.setErrorHandler((error: Error & { statusCode?: number }, request, reply) => {
    if (error instanceof HttpProblem) return sendProblem(reply, error);
    if (error instanceof AuthenticationError) {
      if (error.isServerSide) return sendProblem(reply, new HttpProblem({ status: 503, detail: 'token verification is unavailable' }));
      return sendProblem(reply, authenticationProblem(error));
    }
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    if (status === 500) request.log.error({ err: error }, 'decision request failed');
    return sendProblem(reply, new HttpProblem({ status, detail: status === 500 ? 'internal error' : error.message }));
  });
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, new HttpProblem({ status: 404, detail: `no route for ${request.method} ${request.url.split('?', 1)[0]}` })),
  );

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const status = options.watcher.status;
    const ready = status.source !== 'none';
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'not ready', policies: status };
  });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', options.registry.contentType);
    return options.registry.metrics();
  });

  const decide = async (request: { headers: { authorization?: string }; params: unknown; body?: unknown }, reply: import('fastify').FastifyReply) => {
    let input: unknown;
    if (request.body !== undefined) {
      if (request.body === null || typeof request.body !== 'object' || Array.isArray(request.body)) {
        throw new HttpProblem({ status: 400, detail: 'the body must be a JSON object like {"input": ...}' });
      }
      input = (request.body as { input?: unknown }).input;
    }
    // APISIX's built-in `opa` plugin sends no Authorization header of its own,
    // but its input carries the client's request headers: the end user's
    // token is then verified from there, with the same rules. The plugin
    // turns any answer but 200 into 503: its client's refusal (401, 403) is
    // answered as a decision instead.
    const fromPlugin = request.headers.authorization === undefined && isPluginInput(input);
    const refuse = (err: unknown) => {
      const refusal = fromPlugin ? clientRefusal(err) : null;
      if (!refusal) throw err;
      reply.header('cache-control', 'no-store');
      return { result: refusal };
    };
    let identity: Identity;
    try {
      identity = await options.verifier.verifyAuthorizationHeader(request.headers.authorization ?? forwardedAuthorization(input));
    } catch (err) {
      return refuse(err);
    }
    // Whichever token it came from, `user` and `project` are the verified
    // identity's, never what the caller wrote into the input.
    if (input !== null && typeof input === 'object' && !Array.isArray(input)) input = withIdentity(input as Record<string, unknown>, identity);

    const path = String((request.params as { '*': string })['*'] ?? '')
      .split('/')
      .filter((s) => s !== '');
    const [policyName, ...rest] = path;
    if (!policyName || !isValidPolicyName(policyName)) {
      throw new HttpProblem({ status: 400, detail: 'the path must start with a policy name: /v1/data/<policy>/<path>' });
    }
    if (!options.access.decide(accessInput('GET', ['policies', policyName], identity)).allow) {
      return refuse(new HttpProblem({ status: 403, detail: 'you may not query this policy' }));
    }
    const set = options.watcher.current;
    if (!set.isLoaded) throw new HttpProblem({ status: 503, detail: 'policies are not loaded yet', headers: { 'Retry-After': '1' } });
    const live = set.get(policyName);
    if (!live) throw new HttpProblem({ status: 404, detail: `no policy named ${policyName}` });
    // Its candidate, as on the runner: enforced for the canary's callers, shadowed for the others'.
    const { policy, shadowed: candidate } = options.candidates?.route(live, set, identity.sub) ?? { policy: live, shadowed: null };

    const started = process.hrtime.bigint();
    const logDecision = (result: 'allow' | 'deny' | 'error', status: number) =>
      options.decisionLog?.log?.emit({
        time: new Date().toISOString(),
        gateway: options.decisionLog.gateway,
        route: `/v1/data/${path.join('/')}`,
        policies: [{ name: policy.name, version: policy.meta.version, revision: policy.modRevision, result }],
        result,
        status,
        latencyUs: Math.round(Number(process.hrtime.bigint() - started) / 1000),
        input,
      });
    let document: unknown;
    try {
      // Serialised once, and so a candidate of the answer the decision memo may hold (policy/engine/decision-memo.ts).
      document = await policy.evaluate(identity.project ?? '', new SerialisedInput(input));
    } catch (err) {
      options.onDecision?.(policyName, 'error', Number(process.hrtime.bigint() - started) / 1e9);
      logDecision('error', 500);
      throw new HttpProblem({ status: 500, detail: `policy evaluation failed: ${String(err)}` });
    }
    const result = document === undefined ? undefined : documentAt(policy.meta.entrypoint.split('/'), document, rest);
    if (candidate) {
      // The Data API answers a document: the candidate agrees when it would answer the same one.
      options.candidates?.shadow({
        live,
        candidate,
        tenant: identity.project ?? '',
        input,
        liveResult: result,
        select: (document) => (document === undefined ? undefined : documentAt(candidate.meta.entrypoint.split('/'), document, rest)),
        agree: (a, b) => isDeepStrictEqual(a, b),
        sampleInput: () => maskInput(input, []),
      });
    }
    options.onDecision?.(policyName, result === undefined ? 'undefined' : 'defined', Number(process.hrtime.bigint() - started) / 1e9);
    // The Data API answers a document, not allow or deny: "allow" here means a
    // defined result, "deny" an undefined one.
    logDecision(result === undefined ? 'deny' : 'allow', 200);
    reply.header('cache-control', 'no-store');
    return result === undefined ? {} : { result };
  };

  app.post('/v1/data/*', decide);
  app.get('/v1/data/*', decide);
  return app;
}
