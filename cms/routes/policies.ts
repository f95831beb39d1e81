/**
 * The policy API (the seed's section 4), registered by app.ts, whose
 * onRequest hook has checked identity (401) and the access policy (403).
 * Here: the name, the body and the query (400), then PolicyWriter
 * (policy-writer.ts) for every write: preconditions (412), compile (400),
 * tests (422), the load check (400, 422), one etcd transaction (503 when
 * etcd does not answer: nothing written).
 *
 *   GET    /policies                               the policies the caller may read, in pages; ?prefix= of their names
 *   PUT    /policies/{name}                        create (201) or replace (200); Prefer: wait=N
 *   GET    /policies/{name}                        the policy object, ETag "<version>"
 *   DELETE /policies/{name}                        204; history keeps it
 *   POST   /policies/{name}/check                  everything a PUT checks, nothing written; `replay`: decision inputs, live vs draft
 *   POST   /policies/{name}/rollback               {"version": n} written again as the next version
 *   GET    /policies/{name}/history                retained versions, newest first
 *   GET    /policies/{name}/history/{version}      one retained version
 *   GET    /policies/{name}/status                 which gateways enforce the current version
 */
import type { Etcd3 } from 'etcd3';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { HttpProblem, ProblemType, sendProblem } from '../../http/problem.js';
import { accessInput, type AccessPolicy } from '../../policy/access/index.js';
import {
  candidateName,
  candidateOf,
  isStoredPolicyName,
  isValidPolicyName,
  PolicyNotFoundError,
  PolicyTooLargeError,
  type PolicyMetadata,
  type PolicyStore,
  type StoredPolicy,
} from '../../policy/store/index.js';
import { currentFleetStatus, fleetHeaders, preferredWait } from '../fleet.js';
import { parsePolicyBody, type PolicyBody } from '../policy-body.js';
import { MAX_REPLAY_BYTES, parseReplay, ReplayProblemType, ReplayStoppedError, type ReplayInputs } from '../replay.js';
import { PolicyDoesNotLoadError, PolicyEvaluationBoundError, type PolicyAuthor, type PolicyWriter, type WrittenPolicy } from '../policy-writer.js';
import { CompilerBusyError, CompilerUnavailableError, PolicyTestsFailedError, PolicyTestsStoppedError, RegoCompileError } from '../rego-compiler.js';
import { ALL_METHODS, encodePageToken, etag, listQuery, methodNotAllowed, notModified, verifiedIdentity, versionOf, writeConditions } from '../request.js';

export interface PolicyRoutesOptions {
  store: PolicyStore;
  writer: PolicyWriter;
  /** The access policy, which also decides which names a list shows. */
  access: AccessPolicy;
  /** Where the gateways report the revision they enforce. */
  etcd: Etcd3;
}

/** Names one GET /policies reads at most while filtering what the caller may see. */
const MAX_NAMES_SCANNED_PER_LIST = 5_000;

export function policyName(request: FastifyRequest): string {
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

export function summary(meta: PolicyMetadata) {
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

/** The policy object of a PUT or a check (415 unless it came as JSON). */
function policyBodyOf(request: FastifyRequest): PolicyBody {
  if (typeof request.body !== 'string') {
    throw new HttpProblem({ status: 415, detail: 'the body must be a policy object sent as application/json' });
  }
  return parsePolicyBody(request.body);
}

/**
 * The body of a check: the policy object, and optionally `replay`, decision
 * inputs to evaluate with the live version and the draft (../replay.ts).
 * The route takes MAX_REPLAY_BYTES (and room for their JSON) beyond the body
 * limit; the policy object itself stays within the limit, as on a PUT.
 */
function checkBodyOf(request: FastifyRequest, bodyLimit: number): { policy: PolicyBody; replay: ReplayInputs | null } {
  if (typeof request.body !== 'string') {
    throw new HttpProblem({ status: 415, detail: 'the body must be a policy object sent as application/json' });
  }
  const { also, ...policy } = parsePolicyBody(request.body, ['replay']);
  const replay = also.replay === undefined ? null : parseReplay(also.replay);
  if (Buffer.byteLength(request.body) - (replay?.bytes ?? 0) > bodyLimit) {
    throw new HttpProblem({
      status: 413,
      type: ProblemType.policyTooLarge,
      title: 'Policy too large',
      detail: `the policy object is larger than the body limit (CMS_BODY_LIMIT_BYTES, ${bodyLimit} bytes), as on a PUT`,
    });
  }
  return { policy, replay };
}

/** A body of {"version": <a positive integer>}, nothing else (a rollback's, a promote's); `meant` says what n is. */
export function versionBody(text: string, title: string, meant: string): number {
  const refuse = () => new HttpProblem({ status: 400, type: ProblemType.invalidBody, title, detail: `the body must be {"version": <n>}, n ${meant}` });
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw refuse();
  }
  const version = (body as { version?: unknown } | null)?.version;
  const valid = typeof body === 'object' && body !== null && !Array.isArray(body) && Object.keys(body).every((k) => k === 'version');
  if (!valid || !Number.isSafeInteger(version) || (version as number) < 1) throw refuse();
  return version as number;
}

function notFound(what: string): HttpProblem {
  return new HttpProblem({ status: 404, type: ProblemType.policyNotFound, title: 'Policy not found', detail: `no policy ${what}` });
}

/** The write path's own failures as problems (the ones every store shares, and anything else, go on to app.ts's handler). */
export function policyProblem(error: unknown, request: FastifyRequest): HttpProblem | null {
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
  if (error instanceof PolicyEvaluationBoundError) {
    return new HttpProblem({
      status: 422,
      type: ProblemType.policyEvaluationBound,
      title: 'Policy evaluation exceeds its bounds',
      detail: error.message,
      extensions: { bound: error.bound },
    });
  }
  if (error instanceof ReplayStoppedError) {
    return new HttpProblem({
      status: 422,
      type: ReplayProblemType.replayStopped,
      title: 'Replay stopped',
      detail: error.message,
      extensions: { bound: 'time', limitMs: error.limitMs, evaluated: error.evaluated, total: error.total },
    });
  }
  if (error instanceof PolicyDoesNotLoadError) {
    return new HttpProblem({ status: 400, type: ProblemType.policyDoesNotLoad, title: 'Policy does not load', detail: error.message });
  }
  if (error instanceof PolicyNotFoundError) return notFound((request.params as { name?: string }).name ?? '');
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
  return null;
}

/** A write's answer, as a PUT gives it: the version written (said before waiting), then how far the gateways got. */
export async function sendWrittenVersion(
  reply: FastifyReply,
  location: string,
  written: WrittenPolicy,
  wait: number | null,
  writer: Pick<PolicyWriter, 'waitForGateways'>,
): Promise<FastifyReply> {
  reply
    .header('ETag', etag(written.meta.version))
    .header('Last-Modified', new Date(written.meta.updatedAt).toUTCString())
    .header('Server-Timing', `compile;dur=${written.compileMs.toFixed(1)}, etcd;dur=${written.etcdMs.toFixed(1)}`);
  if (written.created) reply.header('Location', location);
  if (wait !== null) reply.headers(fleetHeaders(await writer.waitForGateways(written.revision, wait), wait));
  return reply
    .code(written.created ? 201 : 200)
    .type('application/json')
    .send(summary(written.meta));
}

/** Answers the policy write path's failures (policyProblem) in `app`'s routes; anything else goes on to app.ts's handler. */
export function answerPolicyProblems(app: FastifyInstance): void {
  app.setErrorHandler((error, request, reply) => {
    const problem = policyProblem(error, request);
    if (!problem) throw error;
    if (problem.status >= 500) request.log.error({ err: error }, 'request failed');
    return sendProblem(reply, problem);
  });
}

/** Who writes, for the writer's audit line: the verified identity and the request's logger. */
export function policyAuthor(request: FastifyRequest): PolicyAuthor {
  return { sub: verifiedIdentity(request).sub, log: request.log };
}

export const policyRoutes: FastifyPluginAsync<PolicyRoutesOptions> = async (app, { store, writer, access, etcd }) => {
  answerPolicyProblems(app);

  const sendWritten = (reply: FastifyReply, name: string, written: WrittenPolicy, wait: number | null) =>
    sendWrittenVersion(reply, `/policies/${name}`, written, wait, writer);

  app.get('/policies', async (request, reply) => {
    const identity = verifiedIdentity(request);
    // A page may end on a candidate's entry of the index (names.ts), which the list never shows.
    const { limit, after, prefix } = listQuery(request.query, 'GET /policies', isStoredPolicyName, { prefix: true });
    // The same policy decides which names a caller may see: those it could GET.
    // Pages are read until this one is full of what the caller may see; a
    // caller who may see few names gets a continuation after a bounded read.
    const visible: PolicyMetadata[] = [];
    let cursor = after;
    let scanned = 0;
    let next: string | null = null;
    for (;;) {
      const page = await store.listPage({ limit, ...(cursor === undefined ? {} : { after: cursor }), ...(prefix === undefined ? {} : { prefix }) });
      let full = false;
      for (const meta of page.policies) {
        if (visible.length === limit) {
          full = true;
          break;
        }
        if (candidateOf(meta.name) === null && access.decide(accessInput('GET', ['policies', meta.name], identity)).allow) visible.push(meta);
        cursor = meta.name;
        scanned++;
      }
      if (!full && page.next === null) break;
      if (full || visible.length === limit || scanned >= MAX_NAMES_SCANNED_PER_LIST) {
        next = cursor ?? null;
        break;
      }
    }
    return reply.type('application/json').send({ policies: visible.map(summary), ...(next === null ? {} : { next_page_token: encodePageToken(next) }) });
  });
  methodNotAllowed(app, '/policies', ['GET']);

  app.get('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const policy = await store.get(name);
    if (!policy) throw notFound(name);
    return sendPolicy(request, reply, policy);
  });

  app.put('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const body = policyBodyOf(request);
    const conditions = writeConditions(request);
    const wait = preferredWait(request.headers.prefer);
    return sendWritten(reply, name, await writer.write(name, body, conditions, policyAuthor(request)), wait);
  });

  // Everything a PUT checks (compile, load, tests), nothing written; with `replay`, the decision
  // inputs whose result the draft changes from the live version's (../replay.ts).
  const bodyLimit = app.initialConfig.bodyLimit ?? 1024 * 1024;
  app.post('/policies/:name/check', { bodyLimit: bodyLimit + MAX_REPLAY_BYTES + 64 * 1024 }, async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const body = checkBodyOf(request, bodyLimit);
    const compiled = await writer.check(name, body.policy, body.replay ?? undefined);
    return reply.type('application/json').send({
      ok: true,
      entrypoint: compiled.entrypoint,
      syntaxVersion: compiled.syntaxVersion,
      opaVersion: compiled.opaVersion,
      tests: { passed: compiled.tests?.passed ?? 0 },
      ...(compiled.replay ? { replay: compiled.replay } : {}),
    });
  });
  methodNotAllowed(app, '/policies/:name/check', ['POST']);

  // A version from the history written again as the next version: a write
  // like any other (If-Match, Prefer: wait, compiled again by today's opa, audited as a rollback).
  app.post('/policies/:name/rollback', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    if (typeof request.body !== 'string') {
      throw new HttpProblem({ status: 415, detail: 'the body must be {"version": <n>} sent as application/json' });
    }
    const version = versionBody(request.body, 'Invalid rollback', 'a version in the history');
    const conditions = writeConditions(request);
    const wait = preferredWait(request.headers.prefer);
    const written = await writer.rollback(name, version, conditions, policyAuthor(request));
    if (!written) throw notFound(`${name} version ${version} in the retained history`);
    return sendWritten(reply, name, written, wait);
  });
  methodNotAllowed(app, '/policies/:name/rollback', ['POST']);

  app.delete('/policies/:name', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const wait = preferredWait(request.headers.prefer);
    const deleted = await writer.delete(name, writeConditions(request), policyAuthor(request));
    if (wait !== null && deleted.revision !== null) reply.headers(fleetHeaders(await writer.waitForGateways(deleted.revision, wait), wait));
    return reply.code(204).send();
  });
  methodNotAllowed(app, '/policies/:name', ['GET', 'PUT', 'DELETE']);

  app.get('/policies/:name/history', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const versions = await store.history(name);
    if (versions.length === 0) throw notFound(name);
    return reply.type('application/json').send({ name, retention: store.historyRetention, versions: versions.map(summary) });
  });
  methodNotAllowed(app, '/policies/:name/history', ['GET']);

  app.get('/policies/:name/history/:version', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const version = versionOf(request);
    const policy = await store.historyVersion(name, version);
    if (!policy) throw notFound(`${name} version ${version}`);
    return sendPolicy(request, reply, policy);
  });
  methodNotAllowed(app, '/policies/:name/history/:version', ['GET']);

  app.get('/policies/:name/status', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const current = await store.currentRevision(name);
    if (!current) throw notFound(name);
    const [status, candidate] = await Promise.all([currentFleetStatus(etcd, current.revision, name), store.currentRevision(candidateName(name))]);
    // A candidate beside it: which share of callers it decides for (GET .../candidate has the gateways' report).
    const rollout = candidate?.meta.rollout;
    const beside =
      candidate && rollout
        ? { candidate: { version: candidate.meta.version, sample_percent: rollout.samplePercent, enforce_percent: rollout.enforcePercent } }
        : {};
    return reply.type('application/json').send({ name, version: current.meta.version, ...status, ...beside });
  });
  methodNotAllowed(app, '/policies/:name/status', ['GET']);

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
        detail:
          'policy paths are /policies/{name}, /policies/{name}/history, /policies/{name}/history/{version}, /policies/{name}/status, /policies/{name}/check, /policies/{name}/rollback, /policies/{name}/candidate and /policies/{name}/candidate/promote',
      });
    },
  });
};
