/**
 * A policy's candidate (policy/candidate): a version checked as a write is,
 * stored beside the live one, that gateways shadow (evaluate after each
 * decision, never enforcing it) or canary (enforce for a stable share of
 * callers), and what they saw of it. Registered by app.ts beside the policy
 * routes, whose failures it answers the same way; app.ts's onRequest hook has
 * checked identity (401) and the access policy (403: platform admins write,
 * the project's users read).
 *
 *   PUT    /policies/{name}/candidate           the policy object, `sample_percent` (100), `enforce_percent` (0);
 *                                               If-Match on the candidate; 201 or 200; Prefer: wait=N
 *   GET    /policies/{name}/candidate           the candidate, its rollout and the gateways' report;
 *                                               ?subject=<sub>: which version that caller is decided by
 *   POST   /policies/{name}/candidate/promote   the candidate written as the next version, the candidate
 *                                               removed, in one transaction; If-Match on the live version;
 *                                               {"version": n} pins the candidate's; Prefer: wait=N
 *   DELETE /policies/{name}/candidate           204; If-Match on the candidate; Prefer: wait=N
 */
import type { Etcd3 } from 'etcd3';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { isLosslessNumber } from 'lossless-json';
import { HttpProblem, ProblemType, sendProblem } from '../../http/problem.js';
import { candidateName, PolicyNotFoundError, type PolicyStore } from '../../policy/store/index.js';
import { onCandidate, readCandidateReports, type ShadowReport, type ShadowSample } from '../../policy/candidate/index.js';
import { fleetHeaders, preferredWait } from '../fleet.js';
import { parsePolicyBody } from '../policy-body.js';
import type { PolicyWriter } from '../policy-writer.js';
import { etag, methodNotAllowed, notModified, verifiedIdentity, writeConditions } from '../request.js';
import { answerPolicyProblems, policyAuthor, policyName, sendWrittenVersion, summary, versionBody } from './policies.js';

export interface CandidateRoutesOptions {
  store: PolicyStore;
  writer: PolicyWriter;
  /** Where the gateways report what they saw of candidates. */
  etcd: Etcd3;
}

/** Divergent samples a GET shows at most, newest first, from every gateway together. */
export const MAX_REPORTED_SAMPLES = 20;

function invalid(detail: string): HttpProblem {
  return new HttpProblem({ status: 400, type: ProblemType.invalidBody, title: 'Invalid candidate', detail });
}

/** A percentage member of the body: a number from 0 to 100 (`fallback` when absent). */
function percent(value: unknown, member: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = isLosslessNumber(value) ? Number(value.value) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > 100) throw invalid(`"${member}" must be a number from 0 to 100`);
  return n;
}

function bodyText(request: FastifyRequest, what: string): string {
  if (typeof request.body !== 'string') throw new HttpProblem({ status: 415, detail: `the body must be ${what} sent as application/json` });
  return request.body;
}

/** The body of a promote: nothing, or {"version": n} naming the candidate version meant. */
function promotedVersion(request: FastifyRequest): number | null {
  if (request.body === undefined || request.body === '') return null;
  return versionBody(bodyText(request, '{"version": <n>} or nothing'), 'Invalid candidate', 'the candidate version to promote (or send no body)');
}

/** Every gateway's report on one candidate version, added up, with the newest divergent samples. */
function aggregate(reports: ShadowReport[]) {
  const total = { evaluated: 0, diverged: 0, errors: 0, dropped: 0, enforced: { live: 0, candidate: 0 } };
  const samples: ShadowSample[] = [];
  for (const report of reports) {
    total.evaluated += report.evaluated;
    total.diverged += report.diverged;
    total.errors += report.errors;
    total.dropped += report.dropped;
    total.enforced.live += report.enforced.live;
    total.enforced.candidate += report.enforced.candidate;
    samples.push(...report.samples);
  }
  samples.sort((a, b) => b.time.localeCompare(a.time));
  return {
    ...total,
    gateways: reports.map(({ samples: _samples, policy: _policy, ...counts }) => counts),
    samples: samples.slice(0, MAX_REPORTED_SAMPLES),
  };
}

export const candidateRoutes: FastifyPluginAsync<CandidateRoutesOptions> = async (app, { store, writer, etcd }) => {
  answerPolicyProblems(app);
  const noCandidate = (name: string) =>
    new HttpProblem({ status: 404, type: ProblemType.policyNotFound, title: 'No candidate', detail: `policy ${name} has no candidate` });
  /** The writer's PolicyNotFoundError, for promote and discard, means no candidate (not no policy). */
  const orNoCandidate = (name: string) => (error: unknown) => {
    throw error instanceof PolicyNotFoundError ? noCandidate(name) : error;
  };

  app.put('/policies/:name/candidate', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const { also, ...policy } = parsePolicyBody(bodyText(request, 'a policy object'), ['sample_percent', 'enforce_percent']);
    const rollout = { samplePercent: percent(also.sample_percent, 'sample_percent', 100), enforcePercent: percent(also.enforce_percent, 'enforce_percent', 0) };
    const wait = preferredWait(request.headers.prefer);
    const written = await writer.writeCandidate(name, policy, rollout, writeConditions(request), policyAuthor(request));
    return sendWrittenVersion(reply, `/policies/${name}/candidate`, written, wait, writer);
  });

  app.get('/policies/:name/candidate', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const { subject } = request.query as { subject?: unknown };
    if (subject !== undefined && (typeof subject !== 'string' || subject.length === 0 || subject.length > 1024)) {
      throw new HttpProblem({ status: 400, title: 'Invalid query', detail: '"subject" must be one non-empty subject' });
    }
    const [candidate, live] = await Promise.all([store.get(candidateName(name)), store.currentRevision(name)]);
    if (!candidate) throw noCandidate(name);
    const tag = etag(candidate.meta.version);
    reply.header('ETag', tag).header('Last-Modified', new Date(candidate.meta.updatedAt).toUTCString());
    if (notModified(request, tag)) return reply.code(304).send();
    const rollout = candidate.meta.rollout ?? { samplePercent: 0, enforcePercent: 0 };
    const answer = {
      ...summary(candidate.meta),
      name,
      live_version: live?.meta.version ?? null,
      sample_percent: rollout.samplePercent,
      enforce_percent: rollout.enforcePercent,
      ...(typeof subject === 'string'
        ? { subject: { sub: subject, decided_by: onCandidate(name, subject, rollout.enforcePercent) ? 'candidate' : 'live' } }
        : {}),
      report: aggregate(await readCandidateReports(etcd, name, candidate.meta.version)),
    };
    // The policy object is spliced in as stored, so the data's numbers keep their digits.
    const text = JSON.stringify(answer);
    return reply
      .code(200)
      .type('application/json')
      .send(`${text.slice(0, -1)},"policy":${candidate.body}}`);
  });

  app.post('/policies/:name/candidate/promote', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const version = promotedVersion(request);
    const wait = preferredWait(request.headers.prefer);
    const written = await writer.promote(name, version, writeConditions(request), policyAuthor(request)).catch(orNoCandidate(name));
    return sendWrittenVersion(reply, `/policies/${name}`, written, wait, writer);
  });

  app.delete('/policies/:name/candidate', async (request, reply) => {
    verifiedIdentity(request);
    const name = policyName(request);
    const wait = preferredWait(request.headers.prefer);
    const deleted = await writer.discardCandidate(name, writeConditions(request), policyAuthor(request)).catch(orNoCandidate(name));
    if (wait !== null && deleted.revision !== null) reply.headers(fleetHeaders(await writer.waitForGateways(deleted.revision, wait), wait));
    return reply.code(204).send();
  });

  methodNotAllowed(app, '/policies/:name/candidate', ['GET', 'PUT', 'DELETE']);
  methodNotAllowed(app, '/policies/:name/candidate/promote', ['POST']);
};
