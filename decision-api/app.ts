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
// judged by the client token inside its input instead.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { AuthenticationError, type Identity, type IdentityVerifier } from '../identity/index.js';
import { isValidPolicyName } from '../policy/store/names.js';
import type { PolicyWatcher } from '../policy/watcher/watcher.js';
import { HttpProblem, sendProblem } from '../http/problem.js';
import type { AccessPolicy } from '../policy/access/index.js';
import { accessInput } from '../policy/access/index.js';
import type { DecisionLog } from '../policy/decision-log/index.js';

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

const CREDENTIAL_HEADERS = ['authorization', 'proxy-authorization', 'cookie'];

/** The client's Authorization header inside an APISIX `opa` plugin input, if any. */
function forwardedAuthorization(input: unknown): string | undefined {
  const headers = (input as { request?: { headers?: Record<string, unknown> } } | undefined)?.request?.headers;
  const value = headers?.authorization;
  if (typeof value === 'string') return value;
  if (Array.isArray(value) && typeof value[0] === 'string') return value[0];
  return undefined;
}

/**
 * APISIX's input, made into the gateway's: credentials removed (they are not
 * policy data), the verified identity added as `user` and `project`.
 */
function withIdentity(input: Record<string, unknown>, identity: Identity): Record<string, unknown> {
  const request = input.request as { headers?: Record<string, unknown> } | undefined;
  const headers = { ...request?.headers };
  for (const name of CREDENTIAL_HEADERS) delete headers[name];
  return {
    ...input,
    request: { ...request, headers },
    user: { ...identity.claims, sub: identity.sub, role: identity.role, project: identity.project },
    project: identity.project,
  };
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
      return sendProblem(
        reply,
        new HttpProblem({
          status: 401,
          detail: error.publicReason,
          headers: { 'WWW-Authenticate': error.failure === 'missing_token' ? 'Bearer realm="gatehouse"' : `Bearer realm="gatehouse", error="invalid_token"` },
        }),
      );
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

  const decide = async (
    request: { headers: { authorization?: string }; params: unknown; body?: unknown },
    reply: import('fastify').FastifyReply,
  ) => {
    let input: unknown;
    if (request.body !== undefined) {
      if (request.body === null || typeof request.body !== 'object' || Array.isArray(request.body)) {
        throw new HttpProblem({ status: 400, detail: 'the body must be a JSON object like {"input": ...}' });
      }
      input = (request.body as { input?: unknown }).input;
    }
    // APISIX's built-in `opa` plugin sends no Authorization header of its own,
    // but its input carries the client's request headers: the end user's
    // token is then verified from there, with the same rules.
    const forwarded = request.headers.authorization === undefined ? forwardedAuthorization(input) : undefined;
    const identity = await options.verifier.verifyAuthorizationHeader(request.headers.authorization ?? forwarded);
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
      throw new HttpProblem({ status: 403, detail: 'you may not query this policy' });
    }
    const set = options.watcher.current;
    if (!set.isLoaded) throw new HttpProblem({ status: 503, detail: 'policies are not loaded yet', headers: { 'Retry-After': '1' } });
    const policy = set.get(policyName);
    if (!policy) throw new HttpProblem({ status: 404, detail: `no policy named ${policyName}` });

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
      document = await policy.evaluate(identity.project ?? '', input);
    } catch (err) {
      options.onDecision?.(policyName, 'error', Number(process.hrtime.bigint() - started) / 1e9);
      logDecision('error', 500);
      throw new HttpProblem({ status: 500, detail: `policy evaluation failed: ${String(err)}` });
    }
    const result = document === undefined ? undefined : documentAt(policy.meta.entrypoint.split('/'), document, rest);
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
