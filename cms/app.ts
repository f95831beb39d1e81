/**
 * The policy CMS as a fastify app: `buildCmsApp(options)` gives a ready
 * instance that tests and the start script run in-process and `cms/main.ts`
 * serves.
 *
 * Order of checks on every /policies request (and /budgets, /usage: see
 * routes/budgets.ts), so that answers never leak more than the caller may know:
 *   1. identity (401 with WWW-Authenticate)          onRequest hook
 *   2. the access policy (403)                        onRequest hook
 *   3. body size (413), media type (415)              fastify, before the handler
 *   4. name (400), body (400), preconditions (412), Rego compile (400),
 *      tests (422), the load check under the gateways' bounds (400, 422)
 *   5. one etcd transaction (503 when etcd does not answer: nothing written)
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { pino, type Logger } from 'pino';
import {
  AuthenticationError,
  createIdentityVerifier,
  type IdentityConfig,
} from '../identity/index.js';
import {
  isValidPolicyName,
  PolicyNotFoundError,
  PolicyStore,
  PolicyTooLargeError,
  type PolicyMetadata,
  type StoredPolicy,
  type WriteConditions,
} from '../policy/store/index.js';
import { createEtcdClient, type EtcdTlsFiles } from '../etcd/index.js';
import { accessInput, loadAccessPolicy } from '../policy/access/index.js';
import { createHash } from 'node:crypto';
import { DEFAULT_POLICY_MEMORY_MAX_BYTES, EvaluationBudgetError } from '../policy/engine/index.js';
import { DEFAULT_EVAL_TIMEOUT_MS, EvaluationMemoryError, EvaluationPool, EvaluationTimeoutError } from '../policy/engine/pool.js';
import { DEFAULT_BODY_LIMIT_BYTES, DEFAULT_CHECK_WORKERS, DEFAULT_COMPILE_TIMEOUT_MS, DEFAULT_OPA_MEMORY_MAX_MB, DEFAULT_TEST_CONCURRENCY, defaultAccessPolicyWasmPath } from './config.js';
import { createCmsMetrics } from './metrics.js';
import { parsePolicyBody, renderTests, type PolicyBody } from './policy-body.js';
import { HttpProblem, ProblemType, sendProblem } from '../http/problem.js';
import {
  CompilerBusyError,
  CompilerUnavailableError,
  PolicyTestsFailedError,
  PolicyTestsStoppedError,
  RegoCompileError,
  RegoCompiler,
  policySubmission,
} from './rego-compiler.js';
import { currentFleetStatus, fleetHeaders, preferredWait, waitForFleet } from './fleet.js';
import {
  ALL_METHODS,
  encodePageToken,
  etag,
  listQuery,
  methodNotAllowed as methodNotAllowedOn,
  notModified,
  storeProblem,
  verifiedIdentity,
  writeConditions,
  wwwAuthenticate,
} from './request.js';
import { budgetRoutes } from './routes/budgets.js';
import { consoleRoutes } from './routes/console.js';
import { gatewayRoutes } from './routes/gateways.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { openApiRoutes } from './routes/openapi.js';
import { BudgetStore } from '../budget/store.js';

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
  historyRetention?: number;
  compileConcurrency?: number;
  compileQueue?: number;
  etcdMaxRequestBytes?: number;
  accessPolicyWasmPath?: string;
  /** pino logger for requests and audit lines; default: info level to stderr. */
  logger?: Logger;
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

function policyName(request: FastifyRequest): string {
  const { name } = request.params as { name: string };
  if (!isValidPolicyName(name)) {
    throw new HttpProblem({
      status: 400,
      type: ProblemType.invalidPolicyName,
      title: 'Invalid policy name',
      detail: 'policy names are lowercase DNS labels (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$); "platform" is the platform policy',
    });
  }
  return name;
}

function summary(meta: PolicyMetadata) {
  return {
    name: meta.name,
    version: meta.version,
    sha256: meta.sha256,
    author: meta.author,
    updatedAt: meta.updatedAt,
    entrypoint: meta.entrypoint,
    syntaxVersion: meta.syntaxVersion,
    opaVersion: meta.opaVersion,
  };
}

function sendPolicy(request: FastifyRequest, reply: FastifyReply, policy: StoredPolicy): FastifyReply {
  const tag = etag(policy.meta.version);
  reply.header('ETag', tag).header('Last-Modified', new Date(policy.meta.updatedAt).toUTCString());
  if (notModified(request, tag)) return reply.code(304).send();
  return reply.code(200).type('application/json').send(policy.body);
}

export async function buildCmsApp(options: CmsAppOptions): Promise<FastifyInstance> {
  const logger = options.logger ?? pino({ level: 'info' }, pino.destination(2));
  const verifier = createIdentityVerifier(options.identity);
  const access = await loadAccessPolicy(options.accessPolicyWasmPath ?? defaultAccessPolicyWasmPath());
  const compiler = new RegoCompiler({
    opaPath: options.opaPath,
    timeoutMs: options.compileTimeoutMs ?? DEFAULT_COMPILE_TIMEOUT_MS,
    ...(options.compileConcurrency ? { concurrency: options.compileConcurrency } : {}),
    ...(options.compileQueue ? { maxQueued: options.compileQueue } : {}),
    memoryMaxBytes: options.opaMemoryMaxBytes ?? DEFAULT_OPA_MEMORY_MAX_MB * 1024 * 1024,
    testConcurrency: options.testConcurrency ?? DEFAULT_TEST_CONCURRENCY,
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
  const store = new PolicyStore(etcd, {
    historyRetention: options.historyRetention,
    ...(options.etcdMaxRequestBytes ? { maxRequestBytes: options.etcdMaxRequestBytes } : {}),
  });
  const budgets = new BudgetStore(etcd, { historyRetention: options.historyRetention });
  const metrics = createCmsMetrics();
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
  app.decorateRequest('identity', null);
  app.decorate('cmsRoutes', [] as RegisteredRoute[]);
  app.addHook('onRoute', (route) => {
    if ((route.config as { undocumented?: boolean } | undefined)?.undocumented) return;
    for (const method of [route.method].flat()) app.cmsRoutes.push({ method, url: route.url });
  });
  app.addHook('onClose', async () => {
    etcd.close();
    await checks.close();
  });

  // The body is kept as text: parsePolicyBody needs the exact digits.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => done(null, body));

  app.setErrorHandler((error, request, reply) => {
    const problem = toProblem(error, request);
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

  function audit(request: FastifyRequest, operation: string, meta: PolicyMetadata, extra: Record<string, unknown> = {}) {
    request.log.info(
      {
        audit: {
          operation,
          policy: meta.name,
          version: meta.version,
          sha256: meta.sha256,
          wasmSha256: meta.wasmSha256,
          by: request.identity?.sub,
          ...extra,
        },
      },
      `audit: ${operation} ${meta.name} v${meta.version}`,
    );
  }

  const methodNotAllowed = (url: string, implemented: string[]) => methodNotAllowedOn(app, url, implemented);

  app.get('/policies', async (request, reply) => {
    const identity = verifiedIdentity(request);
    const { limit, after } = listQuery(request.query, 'GET /policies', isValidPolicyName);
    // The same policy decides which names a caller may see: those it could GET.
    // Pages are read until this one is full of what the caller may see; a
    // caller who may see few names gets a continuation after a bounded read.
    const visible: PolicyMetadata[] = [];
    let cursor = after;
    let scanned = 0;
    let next: string | null = null;
    for (;;) {
      const page = await store.listPage({ limit, ...(cursor === undefined ? {} : { after: cursor }) });
      let full = false;
      for (const meta of page.policies) {
        if (visible.length === limit) {
          full = true;
          break;
        }
        if (access.decide(accessInput('GET', ['policies', meta.name], identity)).allow) visible.push(meta);
        cursor = meta.name;
        scanned++;
      }
      if (!full && page.next === null) break;
      if (full || visible.length === limit || scanned >= MAX_NAMES_SCANNED_PER_LIST) {
        next = cursor ?? null;
        break;
      }
    }
    return reply
      .type('application/json')
      .send({ policies: visible.map(summary), ...(next === null ? {} : { next_page_token: encodePageToken(next) }) });
  });
  methodNotAllowed('/policies', ['GET']);

  app.get('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const policy = await store.get(name);
    if (!policy) throw notFound(name);
    return sendPolicy(request, reply, policy);
  });

  /**
   * Compiles, checks and writes one version, then answers as a PUT does: a
   * PUT's body or, for a rollback, a version from the history.
   */
  async function writeVersion(
    request: FastifyRequest,
    reply: FastifyReply,
    write: {
      name: string;
      rego: string;
      dataText: string;
      tests: Record<string, string> | null;
      conditions: WriteConditions;
      wait: number | null;
      operation?: string;
      auditExtra?: Record<string, unknown>;
    },
  ) {
    const { name, conditions } = write;
    // An early, cheap check so a stale ETag does not cost a compile; put re-checks atomically.
    if (conditions.ifVersion !== undefined || conditions.ifAbsent) await store.checkWriteConditions(name, conditions);

    let compiled;
    try {
      compiled = await compiler.compile(write.rego, write.dataText, write.tests);
      metrics.compileDuration.observe({ outcome: 'ok' }, compiled.durationMs / 1000);
    } catch (error) {
      metrics.policyWrites.inc({ operation: 'put', outcome: error instanceof PolicyTestsFailedError ? 'tests_failed' : error instanceof PolicyTestsStoppedError ? 'tests_stopped' : 'compile_error' });
      throw error;
    }
    await checkLoads(checks, name, compiled.wasm, write.dataText, compiled.entrypoint);
    const identity = verifiedIdentity(request);
    const testsText = write.tests === null ? null : renderTests(write.tests);
    const result = await store.put(name, { ...policySubmission(write.rego, write.dataText, compiled, identity.sub), testsText }, conditions);
    metrics.etcdWriteDuration.observe({ operation: 'put' }, result.etcdMs / 1000);
    metrics.policyWrites.inc({ operation: 'put', outcome: result.created ? 'created' : 'replaced' });
    audit(request, write.operation ?? (result.created ? 'create' : 'replace'), result.meta, {
      syntaxVersion: compiled.syntaxVersion,
      ...(compiled.tests ? { testsPassed: compiled.tests.passed } : {}),
      ...write.auditExtra,
    });
    reply
      .header('ETag', etag(result.meta.version))
      .header('Last-Modified', new Date(result.meta.updatedAt).toUTCString())
      .header('Server-Timing', `compile;dur=${compiled.durationMs.toFixed(1)}, etcd;dur=${result.etcdMs.toFixed(1)}`);
    if (result.created) reply.header('Location', `/policies/${name}`);
    if (write.wait !== null) reply.headers(fleetHeaders(await waitForFleet(etcd, result.revision, write.wait), write.wait));
    return reply.code(result.created ? 201 : 200).type('application/json').send(summary(result.meta));
  }

  app.put('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const body = policyBodyOf(request);
    const conditions = writeConditions(request);
    const wait = preferredWait(request.headers.prefer);
    return writeVersion(request, reply, { name, rego: body.rego, dataText: body.dataText, tests: body.tests, conditions, wait });
  });

  // Everything a PUT checks (compile, load, tests), nothing written.
  app.post('/policies/:name/check', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const body = policyBodyOf(request);
    const compiled = await compiler.compile(body.rego, body.dataText, body.tests);
    await checkLoads(checks, name, compiled.wasm, body.dataText, compiled.entrypoint);
    return reply.type('application/json').send({
      ok: true,
      entrypoint: compiled.entrypoint,
      syntaxVersion: compiled.syntaxVersion,
      opaVersion: compiled.opaVersion,
      tests: { passed: compiled.tests?.passed ?? 0 },
    });
  });
  methodNotAllowed('/policies/:name/check', ['POST']);

  // A version from the history written again as the next version: history
  // stays linear, and the rollback is a write like any other (If-Match,
  // Prefer: wait, compiled again by today's opa, audited as a rollback).
  app.post('/policies/:name/rollback', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    if (typeof request.body !== 'string') {
      throw new HttpProblem({ status: 415, detail: 'the body must be {"version": <n>} sent as application/json' });
    }
    const version = rollbackVersion(request.body);
    const conditions = writeConditions(request);
    const wait = preferredWait(request.headers.prefer);
    const old = await store.historyVersion(name, version);
    if (!old) throw notFound(`${name} version ${version} in the retained history`);
    const tests = old.testsText === null ? null : (JSON.parse(old.testsText) as Record<string, string>);
    return writeVersion(request, reply, { name, rego: old.rego, dataText: old.dataText, tests, conditions, wait, operation: 'rollback', auditExtra: { from: version } });
  });
  methodNotAllowed('/policies/:name/rollback', ['POST']);

  app.delete('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const wait = preferredWait(request.headers.prefer);
    const started = performance.now();
    const deleted = await store.delete(name, writeConditions(request));
    metrics.etcdWriteDuration.observe({ operation: 'delete' }, (performance.now() - started) / 1000);
    metrics.policyWrites.inc({ operation: 'delete', outcome: 'deleted' });
    audit(request, 'delete', deleted.meta);
    if (wait !== null && deleted.revision !== null) reply.headers(fleetHeaders(await waitForFleet(etcd, deleted.revision, wait), wait));
    return reply.code(204).send();
  });
  methodNotAllowed('/policies/:name', ['GET', 'PUT', 'DELETE']);

  app.get('/policies/:name/history', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const versions = await store.history(name);
    if (versions.length === 0) throw notFound(name);
    return reply.type('application/json').send({ name, retention: store.historyRetention, versions: versions.map(summary) });
  });
  methodNotAllowed('/policies/:name/history', ['GET']);

  app.get('/policies/:name/history/:version', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const { version } = request.params as { version: string };
    if (!/^[1-9]\d{0,11}$/.test(version)) {
      throw new HttpProblem({ status: 400, type: ProblemType.invalidPath, title: 'Invalid version', detail: 'versions are positive integers' });
    }
    const policy = await store.historyVersion(name, Number(version));
    if (!policy) throw notFound(`${name} version ${version}`);
    return sendPolicy(request, reply, policy);
  });
  methodNotAllowed('/policies/:name/history/:version', ['GET']);

  app.get('/policies/:name/status', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const current = await store.currentRevision(name);
    if (!current) throw notFound(name);
    const status = await currentFleetStatus(etcd, current.revision);
    return reply.type('application/json').send({ name, version: current.meta.version, ...status });
  });
  methodNotAllowed('/policies/:name/status', ['GET']);

  await app.register(gatewayRoutes, { etcd });
  await app.register(budgetRoutes, { store: budgets, metrics });

  // Anything else under /policies/ (extra segments, dot segments, empty names): a bad policy path.
  app.route({
    method: ALL_METHODS,
    url: '/policies/*',
    config: { undocumented: true },
    handler: async () => {
      throw new HttpProblem({
        status: 400,
        type: ProblemType.invalidPath,
        title: 'Invalid policy path',
        detail: 'policy paths are /policies/{name}, /policies/{name}/history, /policies/{name}/history/{version}, /policies/{name}/status, /policies/{name}/check and /policies/{name}/rollback',
      });
    },
  });

  await app.register(consoleRoutes, options.consoleDemoTokens ? { demoTokens: options.consoleDemoTokens } : {});
  await app.register(healthRoutes, { store });
  await app.register(metricsRoutes, { metrics });
  await app.register(openApiRoutes);

  await app.ready();
  return app;
}

/**
 * What `opa build` accepts, the gateway's engine may still refuse (data with
 * a lone surrogate such as "\ud800" parses in Go, not in the wasm's JSON
 * parser; a module may fail at evaluation). The policy is loaded with its
 * data in the engine every gateway uses, and evaluated once on an empty
 * input, before anything is written: a refusal is the author's 400, never a
 * version the gateways cannot enforce. It runs in the evaluation pool, under
 * the gateways' bounds: an evaluation that burns their fuel, or runs past
 * their deadline or memory ceiling, is the author's 422, and the CMS answers
 * other requests meanwhile.
 */
async function checkLoads(checks: EvaluationPool, name: string, wasm: Uint8Array, dataText: string, entrypoint: string): Promise<void> {
  const sha256 = (bytes: Uint8Array | string) => createHash('sha256').update(bytes).digest('hex');
  const source = { wasmSha256: sha256(wasm), wasm: new Uint8Array(wasm), dataSha256: sha256(dataText), dataText };
  try {
    await checks.evaluate(name, { source, entrypoint }, {});
  } catch (error) {
    if (error instanceof EvaluationTimeoutError || error instanceof EvaluationMemoryError || error instanceof EvaluationBudgetError) {
      const bound = error instanceof EvaluationTimeoutError ? 'time' : error instanceof EvaluationMemoryError ? 'memory' : 'fuel';
      throw new HttpProblem({
        status: 422,
        type: ProblemType.policyEvaluationBound,
        title: 'Policy evaluation exceeds its bounds',
        detail: `evaluated once on an empty input, the compiled policy exceeded the gateways' ${bound} bound (${error.message}); gateways would deny every request it decides; nothing was written`,
        extensions: { bound },
      });
    }
    const reason = error instanceof Error ? (error.cause instanceof Error ? `${error.message}: ${error.cause.message}` : error.message) : String(error);
    throw new HttpProblem({
      status: 400,
      type: ProblemType.policyDoesNotLoad,
      title: 'Policy does not load',
      detail: `the compiled policy does not load or evaluate in the gateway's engine: ${reason}`,
    });
  }
}

/** Names one GET /policies reads at most while filtering what the caller may see. */
const MAX_NAMES_SCANNED_PER_LIST = 5_000;

/** The policy object of a PUT or a check (415 unless it came as JSON). */
function policyBodyOf(request: FastifyRequest): PolicyBody {
  if (typeof request.body !== 'string') {
    throw new HttpProblem({ status: 415, detail: 'the body must be a policy object sent as application/json' });
  }
  return parsePolicyBody(request.body);
}

/** The body of a rollback: {"version": <a positive integer>}, nothing else. */
function rollbackVersion(text: string): number {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid JSON', detail: 'the body must be {"version": <n>}' });
  }
  const version = (body as { version?: unknown } | null)?.version;
  if (typeof body !== 'object' || body === null || Array.isArray(body) || Object.keys(body).some((k) => k !== 'version') || !Number.isSafeInteger(version) || (version as number) < 1) {
    throw new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid rollback', detail: 'the body must be {"version": <n>}, n a version in the history' });
  }
  return version as number;
}

function notFound(what: string): HttpProblem {
  return new HttpProblem({ status: 404, type: ProblemType.policyNotFound, title: 'Policy not found', detail: `no policy ${what}` });
}

/** Every error becomes a problem; unknown ones are a 500 without details. */
function toProblem(error: unknown, request: FastifyRequest): HttpProblem {
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
  if (error instanceof RegoCompileError) {
    return new HttpProblem({
      status: 400,
      type: ProblemType.regoCompile,
      title: 'Rego does not compile',
      detail: error.diagnostics.map((d) => d.message).join('; '),
      extensions: { errors: error.diagnostics },
    });
  }
  if (error instanceof PolicyTestsFailedError) {
    return new HttpProblem({
      status: 422,
      type: ProblemType.policyTestsFailed,
      title: 'Policy tests failed',
      detail: error.message,
      extensions: { failures: error.failures, passed: error.passed },
    });
  }
  if (error instanceof PolicyTestsStoppedError) {
    return new HttpProblem({
      status: 422,
      type: ProblemType.policyTestsStopped,
      title: 'Policy tests stopped',
      detail: error.message,
      extensions: { bound: error.resource },
    });
  }
  if (error instanceof PolicyNotFoundError) return notFound((request.params as { name?: string }).name ?? '');
  const shared = storeProblem(error);
  if (shared) return shared;
  if (error instanceof PolicyTooLargeError) {
    return new HttpProblem({ status: 413, type: ProblemType.policyTooLarge, title: 'Policy too large', detail: error.message });
  }
  if (error instanceof CompilerBusyError) {
    return new HttpProblem({
      status: 503,
      type: ProblemType.compilerBusy,
      title: 'Compiler busy',
      detail: error.message,
      headers: { 'Retry-After': '1' },
    });
  }
  if (error instanceof CompilerUnavailableError) {
    return new HttpProblem({ status: 503, type: ProblemType.compilerUnavailable, title: 'Compiler unavailable', detail: 'opa could not compile the policy' });
  }
  // fastify's own errors (body too large, unsupported media type, ...) carry a status.
  const status = (error as { statusCode?: unknown }).statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    return new HttpProblem({ status, detail: (error as Error).message });
  }
  return new HttpProblem({ status: 500, detail: 'internal error' });
}
