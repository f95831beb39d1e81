/**
 * The policy CMS as a fastify app: `buildCmsApp(options)` gives a ready
 * instance that tests and the start script run in-process and `cms/main.ts`
 * serves. Here: its parts (etcd, the stores, opa, the load check's pool, the
 * policy writer) and the hooks every request passes; the routes are fastify
 * plugins, one per resource, in cms/routes/.
 *
 * Order of checks on every /policies, /gateways, /budgets and /usage
 * request, so that answers never leak more than the caller may know:
 *   1. identity (401 with WWW-Authenticate)          onRequest hook, here
 *   2. the access policy (403)                        onRequest hook, here
 *   3. body size (413), media type (415)              fastify, before the handler
 *   4. name (400), body (400), preconditions (412), Rego compile (400),
 *      tests (422), the load check under the gateways' bounds (400, 422)
 *                                                     routes/*.ts, policy-writer.ts
 *   5. one etcd transaction (503 when etcd does not answer: nothing written)
 * Errors become problem+json answers: a resource's own in its plugin's error
 * handler, the rest (identity, the stores' shared failures, fastify's) here.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { pino, type Logger } from 'pino';
import { AuthenticationError, createIdentityVerifier, type IdentityConfig } from '../identity/index.js';
import { PolicyStore } from '../policy/store/index.js';
import { createEtcdClient, type EtcdTlsFiles } from '../etcd/index.js';
import { accessInput, loadAccessPolicy, defaultAccessPolicyWasmPath } from '../policy/access/index.js';
import { DEFAULT_POLICY_MEMORY_MAX_BYTES } from '../policy/engine/index.js';
import { DEFAULT_EVAL_TIMEOUT_MS, EvaluationPool } from '../policy/engine/pool.js';
import {
  DEFAULT_BODY_LIMIT_BYTES,
  DEFAULT_CHECK_WORKERS,
  DEFAULT_COMPILE_TIMEOUT_MS,
  DEFAULT_OPA_MEMORY_MAX_MB,
  DEFAULT_TEST_CONCURRENCY,
  type PolicySigningConfig,
} from './config.js';
import { pemFileSigner, vaultTransitSigner } from '../policy/signing/index.js';
import { VaultSession } from '../plugins/vault/session.js';
import { createCmsMetrics } from './metrics.js';
import { HttpProblem, ProblemType, sendProblem } from '../http/problem.js';
import { PolicyWriter } from './policy-writer.js';
import { RegoCompiler } from './rego-compiler.js';
import { registerTracing } from './tracing.js';
import { startTracing, type TracingConfig } from '../runtime/tracing.js';
import { storeProblem, wwwAuthenticate } from './request.js';
import { BudgetStore } from '../budget/store.js';
import { budgetRoutes } from './routes/budgets.js';
import { consoleRoutes } from './routes/console.js';
import { gatewayRoutes } from './routes/gateways.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { openApiRoutes } from './routes/openapi.js';
import { candidateRoutes } from './routes/candidates.js';
import { evaluateRoutes } from './routes/evaluate.js';
import { policyRoutes } from './routes/policies.js';

export interface CmsAppOptions {
  /**
   * Identities the console offers to sign in with at one click: for the
   * local stack only (it hands out tokens to whoever asks). Never set it on a
   * CMS others can reach.
   */
  consoleDemoTokens?: { label: string; token: string }[];
  etcdEndpoints: string[];
  identity: IdentityConfig;
  opaPath: string;
  /** PATH of the compiler's processes, where prlimit is found (default: this process's PATH). */
  searchPath?: string;
  etcdCallTimeoutMs?: number;
  /** TLS to etcd (https:// endpoints). */
  etcdTls?: EtcdTlsFiles;
  /** etcd user and password, when etcd has auth on and the CMS does not authenticate by certificate. */
  etcdAuth?: { username: string; password: string };
  compileTimeoutMs?: number;
  /** The most memory each opa process may commit, bytes (default OPA_MEMORY_MAX_MB's 256 MiB). */
  opaMemoryMaxBytes?: number;
  /** Policy test runs at once (default 2). */
  testConcurrency?: number;
  /** Worker threads of the load check (default 2). */
  checkWorkers?: number;
  /** The load check's deadline and memory ceiling: the gateways' (default POLICY_EVAL_TIMEOUT_MS, POLICY_MEMORY_MAX_MB). */
  evalTimeoutMs?: number;
  policyMemoryMaxBytes?: number;
  /** The load check's fuel: the gateways' (default POLICY_EVAL_FUEL's; null: modules not metered). */
  evalFuel?: number | null;
  bodyLimitBytes?: number;
  /** A check's replay, all its evaluations together, at most (default 10 s: cms/replay.ts). */
  replayTimeoutMs?: number;
  historyRetention?: number;
  compileConcurrency?: number;
  compileQueue?: number;
  etcdMaxRequestBytes?: number;
  accessPolicyWasmPath?: string;
  /** The key every policy version is signed with (cms/config.ts); absent or null: versions are written unsigned. */
  policySigning?: PolicySigningConfig | null;
  /** pino logger for requests and audit lines; default: info level to stderr. */
  logger?: Logger;
  /** Where spans are exported (OTEL_*, cms/config.ts); absent or null: no traces. */
  tracing?: TracingConfig | null;
}

/** A route as registered, for the OpenAPI completeness check. */
export interface RegisteredRoute {
  method: string;
  url: string;
}

declare module 'fastify' {
  interface FastifyInstance {
    cmsRoutes: RegisteredRoute[];
  }
}

/** The first path segments the API answers under: identity and the access policy come first there. */
const API_ROOTS = new Set(['policies', 'gateways', 'budgets', 'usage']);

/** The path part of a request URL as decoded segments ("/policies/a%2Fb" -> ["policies", "a/b"]). */
function pathSegments(url: string): string[] {
  const path = url.split('?', 1)[0] ?? '';
  return path
    .split('/')
    .slice(1)
    .map((segment) => {
      try {
        return decodeURIComponent(segment);
      } catch {
        return segment; // stays invalid as a name: a 400 later
      }
    });
}

/**
 * The path the router matched, as segments: the route's pattern with its
 * parameters filled in (fastify has decoded them), so that identity and
 * the permission table judge exactly what the handler will act on, however
 * the client spelled it (`/%70olicies/platform` is `/policies/:name` with
 * name "platform"). A request no route matches is judged by its decoded path.
 */
function routedSegments(request: FastifyRequest): string[] {
  const pattern = request.routeOptions.url;
  if (pattern === undefined) return pathSegments(request.url);
  const params = (request.params ?? {}) as Record<string, string | undefined>;
  return pattern
    .split('/')
    .slice(1)
    .map((segment) => (segment.startsWith(':') ? (params[segment.slice(1)] ?? '') : segment));
}

export async function buildCmsApp(options: CmsAppOptions): Promise<FastifyInstance> {
  const logger = options.logger ?? pino({ level: 'info' }, pino.destination(2));
  const verifier = createIdentityVerifier(options.identity);
  const access = await loadAccessPolicy(options.accessPolicyWasmPath ?? defaultAccessPolicyWasmPath());
  const compiler = new RegoCompiler({
    opaPath: options.opaPath,
    ...(options.searchPath !== undefined ? { searchPath: options.searchPath } : {}),
    timeoutMs: options.compileTimeoutMs ?? DEFAULT_COMPILE_TIMEOUT_MS,
    ...(options.compileConcurrency ? { concurrency: options.compileConcurrency } : {}),
    ...(options.compileQueue ? { maxQueued: options.compileQueue } : {}),
    memoryMaxBytes: options.opaMemoryMaxBytes ?? DEFAULT_OPA_MEMORY_MAX_MB * 1024 * 1024,
    testConcurrency: options.testConcurrency ?? DEFAULT_TEST_CONCURRENCY,
    // Modules are stored metered, as gateways run them, unless fuel is off everywhere.
    metered: options.evalFuel !== null,
  });
  // Fail at start, not at the first PUT, when opa is missing.
  await compiler.opaVersion();
  // The load check evaluates submitted policies: in worker threads, under
  // the gateways' fuel, deadline and memory ceiling (policy/engine/pool.ts),
  // never on the thread that answers requests (its wall clock bounds what
  // fuel does not meter: the host's builtins, the data's parse).
  const checkMemoryMaxBytes = options.policyMemoryMaxBytes ?? DEFAULT_POLICY_MEMORY_MAX_BYTES;
  const checks = new EvaluationPool({
    workers: options.checkWorkers ?? DEFAULT_CHECK_WORKERS,
    timeoutMs: options.evalTimeoutMs ?? DEFAULT_EVAL_TIMEOUT_MS,
    ...(options.evalFuel !== undefined ? { fuel: options.evalFuel } : {}),
    memoryMaxBytes: checkMemoryMaxBytes,
    // Room for one instance at the ceiling per worker; a checked policy is rarely checked again.
    cacheBytes: (options.checkWorkers ?? DEFAULT_CHECK_WORKERS) * Math.max(checkMemoryMaxBytes, 4 * 1024 * 1024),
  });
  const etcd = createEtcdClient(options.etcdEndpoints, {
    callTimeoutMs: options.etcdCallTimeoutMs,
    ...(options.etcdTls ? { tls: options.etcdTls } : {}),
    ...(options.etcdAuth ? { auth: options.etcdAuth } : {}),
  });
  // Every version written is signed, rollbacks too (a new version); gateways with verify keys load nothing else.
  const signing = options.policySigning ?? null;
  const vault = signing?.kind === 'vault-transit' ? new VaultSession(signing.vault, logger.child({ component: 'vault' })) : null;
  const signer =
    signing === null ? null : signing.kind === 'file' ? pemFileSigner(signing.keyFile, signing.kid) : vaultTransitSigner(vault!, signing.mount, signing.key);
  if (signer) logger.info({ kid: signer.kid, key: signer.description }, 'policy versions are signed');
  else
    logger.warn(
      'policy versions are written UNSIGNED (no POLICY_SIGNING_KEY_FILE or POLICY_SIGNING_VAULT_KEY): gateways that verify signatures will refuse them',
    );
  const store = new PolicyStore(etcd, {
    historyRetention: options.historyRetention,
    signer,
    ...(options.etcdMaxRequestBytes ? { maxRequestBytes: options.etcdMaxRequestBytes } : {}),
  });
  const budgets = new BudgetStore(etcd, { historyRetention: options.historyRetention });
  const metrics = createCmsMetrics();
  const writer = new PolicyWriter({
    compiler,
    checks,
    store,
    etcd,
    metrics,
    ...(options.replayTimeoutMs !== undefined ? { replayTimeoutMs: options.replayTimeoutMs } : {}),
  });
  // Policies written before the index of current policies existed get their
  // entries (a no-op when it is in step); in the background, so that a CMS
  // starts while etcd is away.
  store
    .rebuildIndex()
    .then((fixed) => fixed > 0 && logger.info({ fixed }, 'index of current policies rebuilt'))
    .catch((err: unknown) => logger.warn({ err: String(err) }, 'could not check the index of current policies; it is checked at the next start'));

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    bodyLimit: options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES,
    return503OnClosing: true,
  });
  // First of the hooks: every later one and the handler run inside the request's span.
  if (options.tracing) registerTracing(app, await startTracing(options.tracing));
  app.decorateRequest('identity', null);
  app.decorate('cmsRoutes', [] as RegisteredRoute[]);
  app.addHook('onRoute', (route) => {
    if ((route.config as { undocumented?: boolean } | undefined)?.undocumented) return;
    for (const method of [route.method].flat()) app.cmsRoutes.push({ method, url: route.url });
  });
  app.addHook('onClose', async () => {
    vault?.stop();
    etcd.close();
    await checks.close();
  });

  // The body is kept as text: parsePolicyBody needs the exact digits.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((error, request, reply) => {
    const problem = toProblem(error);
    if (problem.status >= 500) request.log.error({ err: error }, 'request failed');
    return sendProblem(reply, problem);
  });
  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, new HttpProblem({ status: 404, detail: `no route for ${request.method} ${request.url.split('?', 1)[0]}` })),
  );

  app.addHook('onRequest', async (request, reply) => {
    reply.header('Cache-Control', 'no-store');
    const segments = routedSegments(request);
    if (!API_ROOTS.has(segments[0] ?? '')) return;
    reply.header('Vary', 'Authorization');
    request.identity = await verifier.verifyAuthorizationHeader(request.headers.authorization);
    const decision = access.decide(accessInput(request.method, segments, request.identity));
    if (!decision.allow) {
      throw new HttpProblem({ status: 403, type: ProblemType.forbidden, title: 'Forbidden', detail: decision.reason });
    }
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics.httpRequests.inc({ method: request.method, route, status: String(reply.statusCode) });
    metrics.httpDuration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
  });

  await app.register(policyRoutes, { store, writer, access, etcd });
  await app.register(candidateRoutes, { store, writer, etcd });
  await app.register(evaluateRoutes, { writer, access });
  await app.register(gatewayRoutes, { etcd });
  await app.register(budgetRoutes, { store: budgets, metrics, etcd });
  await app.register(consoleRoutes, options.consoleDemoTokens ? { demoTokens: options.consoleDemoTokens } : {});
  await app.register(healthRoutes, { store });
  await app.register(metricsRoutes, { metrics });
  await app.register(openApiRoutes);

  await app.ready();
  return app;
}

/**
 * Every error becomes a problem; unknown ones are a 500 without details. A
 * resource's own errors were answered by its plugin's handler (routes/*.ts).
 */
function toProblem(error: unknown): HttpProblem {
  if (error instanceof HttpProblem) return error;
  if (error instanceof AuthenticationError) {
    if (error.isServerSide) {
      return new HttpProblem({ status: 503, type: ProblemType.unauthenticated, title: 'Identity unavailable', detail: error.publicReason });
    }
    return new HttpProblem({
      status: 401,
      type: ProblemType.unauthenticated,
      title: 'Unauthorized',
      detail: error.publicReason,
      headers: { 'WWW-Authenticate': wwwAuthenticate(error) },
    });
  }
  const shared = storeProblem(error);
  if (shared) return shared;
  // fastify's own errors (body too large, unsupported media type, ...) carry a status.
  const status = (error as { statusCode?: unknown }).statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpProblem({ status, detail: (error as Error).message });
  }
  return new HttpProblem({ status: 500, detail: 'internal error' });
}
