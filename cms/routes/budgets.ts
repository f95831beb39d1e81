/**
 * Per-project LLM budgets and their usage on the CMS API, registered by
 * app.ts. Identity (401) and the access policy (403) are checked by app.ts's
 * onRequest hook for /budgets and /usage as for /policies; then, here: body
 * size (413) and media type (415) by fastify, the project name, the body and
 * the query (400), the preconditions (412), and one etcd transaction per
 * write (budget/store.ts; 503 when etcd does not answer: nothing written).
 *
 *   PUT    /budgets/{project}                     create (201) or replace (200)
 *   GET    /budgets/{project}                     the budget document, ETag "<version>"
 *   DELETE /budgets/{project}                     204; history keeps the deletion
 *   GET    /budgets/{project}/remaining           each limit in its current window: consumed, held by gateways, available
 *   GET    /budgets/{project}/history             retained versions, newest first
 *   GET    /budgets/{project}/history/{version}   one retained version
 *   GET    /budgets                               projects with a budget, in pages
 *   GET    /usage/{project}?from=&to=&group=      usage per model, and per hour (or day)
 */
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { parse as parseJson } from 'lossless-json';
import type { Etcd3 } from 'etcd3';
import { allLimits, budgetProblems, type Budget } from '../../budget/definition.js';
import { readLedgerWindows } from '../../budget/ledger.js';
import { HOUR_MS, isBudgetProject, type StoredBudget } from '../../budget/keys.js';
import { usageByDay } from '../../budget/usage.js';
import { budgetSha256, BudgetNotFoundError, StoredBudgetInvalidError, type BudgetStore } from '../../budget/store.js';
import { HttpProblem, ProblemType, sendProblem } from '../../http/problem.js';
import type { CmsMetrics } from '../metrics.js';
import { ALL_METHODS, encodePageToken, etag, listQuery, methodNotAllowed, notModified, verifiedIdentity, versionOf, writeConditions } from '../request.js';

export const BudgetProblemType = {
  invalidProject: 'urn:gatehouse:problem:invalid-project-name',
  invalidBudget: 'urn:gatehouse:problem:invalid-budget',
  budgetNotFound: 'urn:gatehouse:problem:budget-not-found',
  invalidUsageQuery: 'urn:gatehouse:problem:invalid-usage-query',
  storedBudgetInvalid: 'urn:gatehouse:problem:stored-budget-invalid',
} as const;

/** The default usage range: the last day. */
export const DEFAULT_USAGE_RANGE_MS = 24 * HOUR_MS;
/** The longest usage range one request may ask for. */
export const MAX_USAGE_RANGE_DAYS = 400;
/** Times usage may be asked about: usage keys hold epoch milliseconds in 13 digits, so none before 1970 or past 2286. */
const EARLIEST_USAGE_MS = 0;
const LATEST_USAGE_MS = Date.UTC(2200, 0, 1);

export interface BudgetRoutesOptions {
  store: BudgetStore;
  metrics: CmsMetrics;
  /** Where the gateways' shared ledger is (the remaining tokens of each window). */
  etcd: Etcd3;
  now?: () => number;
}

function projectOf(request: FastifyRequest): string {
  const { project } = request.params as { project: string };
  if (!isBudgetProject(project)) {
    throw new HttpProblem({
      status: 400,
      type: BudgetProblemType.invalidProject,
      title: 'Invalid project name',
      detail: 'project names are lowercase DNS labels (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$); "platform" names the platform policy and has no budget',
    });
  }
  return project;
}

function notFound(detail: string): HttpProblem {
  return new HttpProblem({ status: 404, type: BudgetProblemType.budgetNotFound, title: 'Budget not found', detail });
}

/** What a write answers and history lists: a version without its document. */
function summary(stored: StoredBudget) {
  return {
    project: stored.project,
    version: stored.version,
    deleted: stored.budget === null,
    sha256: stored.budget === null ? null : budgetSha256(stored.budget),
    updatedAt: stored.updatedAt,
    updatedBy: stored.updatedBy,
  };
}

/**
 * The budget document of a PUT. Duplicate keys are refused (lossless-json)
 * rather than silently resolved, as for policy bodies; every problem the
 * document has is listed with its JSON pointer.
 */
function budgetOf(request: FastifyRequest): Budget {
  if (typeof request.body !== 'string') {
    throw new HttpProblem({ status: 415, detail: 'the body must be a budget document sent as application/json' });
  }
  let value: unknown;
  try {
    value = parseJson(request.body, null, (text) => Number(text));
  } catch (error) {
    throw new HttpProblem({
      status: 400,
      type: BudgetProblemType.invalidBudget,
      title: 'Malformed JSON',
      detail: error instanceof Error ? error.message : 'the body is not valid JSON',
    });
  }
  const problems = budgetProblems(value);
  if (problems.length > 0) {
    throw new HttpProblem({
      status: 400,
      type: BudgetProblemType.invalidBudget,
      title: 'Invalid budget',
      detail: problems.map((p) => `${p.pointer === '' ? 'the document' : p.pointer}: ${p.message}`).join('; '),
      extensions: { errors: problems },
    });
  }
  return value as Budget;
}

function invalidUsageQuery(detail: string): HttpProblem {
  return new HttpProblem({ status: 400, type: BudgetProblemType.invalidUsageQuery, title: 'Invalid usage query', detail });
}

const TIME_PATTERN = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?([Zz]|[+ -]\d{2}:\d{2}))?$/;

/**
 * An RFC 3339 time (2025-06-01T12:00:00Z, with an offset or fractions) or
 * a date (2025-06-01, midnight UTC), as epoch ms; null when it is neither
 * or names no real instant (February 30th, 25:00). In a query string a "+"
 * arrives as a space unless it was sent as %2B, so a space before the
 * offset is taken as "+".
 */
export function parseUsageTime(text: string): number | null {
  const match = TIME_PATTERN.exec(text);
  if (!match) return null;
  const [, y, mo, d, h = '0', mi = '0', s = '0', fraction = '', zone = 'Z'] = match;
  const year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  const hour = Number(h);
  const minute = Number(mi);
  const second = Number(s);
  if (month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 || second > 59) return null;
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  if (date.getUTCMonth() !== month - 1) return null; // the day does not exist in that month
  let offsetMinutes = 0;
  if (zone.toUpperCase() !== 'Z') {
    const offsetHours = Number(zone.slice(1, 3));
    const offsetMins = Number(zone.slice(4, 6));
    if (offsetHours > 23 || offsetMins > 59) return null;
    offsetMinutes = (zone[0] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMins);
  }
  const millis = Number(fraction.slice(0, 3).padEnd(3, '0'));
  return date.getTime() + ((hour * 60 + minute - offsetMinutes) * 60 + second) * 1000 + millis;
}

/** `from`, `to` and `group` of GET /usage/{project}, nothing else; the last day, by hour, by default. */
export function usageQuery(query: unknown, nowMs: number): { fromMs: number; toMs: number; group: 'hour' | 'day' } {
  const { from, to, group = 'hour', ...rest } = (query ?? {}) as Record<string, unknown>;
  const unknown = Object.keys(rest);
  if (unknown.length > 0) throw invalidUsageQuery(`unknown query parameter ${unknown[0]}; GET /usage/{project} takes from, to and group`);
  if (group !== 'hour' && group !== 'day') throw invalidUsageQuery('group must be hour or day');
  const time = (name: string, value: unknown): number | undefined => {
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw invalidUsageQuery(`${name} is given more than once`);
    const ms = parseUsageTime(value);
    if (ms === null) throw invalidUsageQuery(`${name} must be an RFC 3339 time such as 2025-06-01T00:00:00Z, or a date such as 2025-06-01`);
    if (ms < EARLIEST_USAGE_MS || ms >= LATEST_USAGE_MS) throw invalidUsageQuery(`${name} must be from 1970 to 2199`);
    return ms;
  };
  const toMs = time('to', to) ?? nowMs;
  const start = time('from', from) ?? toMs - DEFAULT_USAGE_RANGE_MS;
  if (!(start < toMs)) throw invalidUsageQuery('from must be before to');
  if (toMs - start > MAX_USAGE_RANGE_DAYS * 24 * HOUR_MS) throw invalidUsageQuery(`the range may span at most ${MAX_USAGE_RANGE_DAYS} days`);
  return { fromMs: Math.max(start, EARLIEST_USAGE_MS), toMs, group };
}

/** The budget store's own failures as problems (the ones every store shares, and anything else, go on to app.ts's handler). */
function budgetProblem(error: unknown): HttpProblem | null {
  if (error instanceof BudgetNotFoundError) return notFound(error.message);
  if (error instanceof StoredBudgetInvalidError) {
    return new HttpProblem({ status: 500, type: BudgetProblemType.storedBudgetInvalid, title: 'Stored budget unreadable', detail: error.message });
  }
  return null;
}

export const budgetRoutes: FastifyPluginAsync<BudgetRoutesOptions> = async (app, { store, metrics, etcd, now = Date.now }) => {
  app.setErrorHandler((error, request, reply) => {
    const problem = budgetProblem(error);
    if (!problem) throw error;
    if (problem.status >= 500) request.log.error({ err: error }, 'request failed');
    return sendProblem(reply, problem);
  });

  function audit(request: FastifyRequest, operation: string, stored: StoredBudget, extra: Record<string, unknown> = {}) {
    request.log.info(
      {
        audit: {
          operation,
          budget: stored.project,
          version: stored.version,
          sha256: stored.budget === null ? null : budgetSha256(stored.budget),
          by: request.identity?.sub,
          ...extra,
        },
      },
      `audit: ${operation} budget ${stored.project} v${stored.version}`,
    );
  }

  function sendVersion(request: FastifyRequest, reply: FastifyReply, stored: StoredBudget, body: string): FastifyReply {
    const tag = etag(stored.version);
    reply.header('ETag', tag).header('Last-Modified', new Date(stored.updatedAt).toUTCString());
    if (notModified(request, tag)) return reply.code(304).send();
    return reply.code(200).type('application/json').send(body);
  }

  app.get('/budgets', async (request, reply) => {
    verifiedIdentity(request);
    const { limit, after } = listQuery(request.query, 'GET /budgets', isBudgetProject);
    const page = await store.listPage({ limit, ...(after === undefined ? {} : { after }) });
    return reply.type('application/json').send({
      budgets: page.budgets.map((current) => summary(current.stored)),
      ...(page.next === null ? {} : { next_page_token: encodePageToken(page.next) }),
    });
  });
  methodNotAllowed(app, '/budgets', ['GET']);

  app.get('/budgets/:project', async (request, reply) => {
    verifiedIdentity(request);
    const project = projectOf(request);
    const current = await store.get(project);
    if (!current) throw notFound(`no budget for ${project}`);
    return sendVersion(request, reply, current.stored, JSON.stringify(current.stored.budget));
  });

  app.put('/budgets/:project', async (request, reply) => {
    const identity = verifiedIdentity(request);
    const project = projectOf(request);
    const budget = budgetOf(request);
    const result = await store.put(project, budget, identity.sub, writeConditions(request));
    metrics.budgetWrites.inc({ operation: 'put', outcome: result.created ? 'created' : 'replaced' });
    audit(request, result.created ? 'create' : 'replace', result.stored);
    reply.header('ETag', etag(result.stored.version)).header('Last-Modified', new Date(result.stored.updatedAt).toUTCString());
    if (result.created) reply.header('Location', `/budgets/${project}`);
    return reply
      .code(result.created ? 201 : 200)
      .type('application/json')
      .send(summary(result.stored));
  });

  app.delete('/budgets/:project', async (request, reply) => {
    const identity = verifiedIdentity(request);
    const project = projectOf(request);
    const result = await store.delete(project, identity.sub, writeConditions(request));
    metrics.budgetWrites.inc({ operation: 'delete', outcome: 'deleted' });
    audit(request, 'delete', result.stored, { deletedVersion: result.deleted.version });
    return reply.code(204).send();
  });
  methodNotAllowed(app, '/budgets/:project', ['GET', 'PUT', 'DELETE']);

  // Where each limit stands now, from the gateways' shared ledger (budget/ledger.ts): read only.
  app.get('/budgets/:project/remaining', async (request, reply) => {
    verifiedIdentity(request);
    const project = projectOf(request);
    const current = await store.get(project);
    if (!current) throw notFound(`no budget for ${project}`);
    const at = now();
    const windows = await readLedgerWindows(etcd, project, allLimits(current.stored.budget), at);
    return reply.type('application/json').send({
      project,
      version: current.stored.version,
      at: new Date(at).toISOString(),
      limits: windows.map((w) => ({
        scope: w.scope,
        per: w.per,
        limit: w.limit,
        consumed: w.consumed,
        held: w.held,
        available: w.available,
        window_start: w.windowStart,
        resets_at: w.resetsAt,
      })),
    });
  });
  methodNotAllowed(app, '/budgets/:project/remaining', ['GET']);

  app.get('/budgets/:project/history', async (request, reply) => {
    verifiedIdentity(request);
    const project = projectOf(request);
    const versions = await store.history(project);
    if (versions.length === 0) throw notFound(`no budget history for ${project}`);
    return reply.type('application/json').send({ project, retention: store.historyRetention, versions: versions.map(summary) });
  });
  methodNotAllowed(app, '/budgets/:project/history', ['GET']);

  app.get('/budgets/:project/history/:version', async (request, reply) => {
    verifiedIdentity(request);
    const project = projectOf(request);
    const version = versionOf(request);
    const stored = await store.historyVersion(project, version);
    if (!stored) throw notFound(`no version ${version} of ${project}'s budget in the retained history`);
    return sendVersion(request, reply, stored, JSON.stringify(stored));
  });
  methodNotAllowed(app, '/budgets/:project/history/:version', ['GET']);

  app.get('/usage/:project', async (request, reply) => {
    verifiedIdentity(request);
    const project = projectOf(request);
    const { fromMs, toMs, group } = usageQuery(request.query, Date.now());
    const usage = await store.usage(project, fromMs, toMs);
    return reply.type('application/json').send(group === 'day' ? usageByDay(usage) : usage);
  });
  methodNotAllowed(app, '/usage/:project', ['GET']);

  // Anything else under /budgets/ or /usage/ (extra segments, empty names): a bad path.
  for (const [url, detail] of [
    [
      '/budgets/*',
      'budget paths are /budgets, /budgets/{project}, /budgets/{project}/remaining, /budgets/{project}/history and /budgets/{project}/history/{version}',
    ],
    ['/usage/*', 'usage paths are /usage/{project}'],
  ] as const) {
    app.route({
      method: ALL_METHODS,
      url,
      config: { undocumented: true },
      handler: async () => {
        throw new HttpProblem({ status: 400, type: ProblemType.invalidPath, title: 'Invalid path', detail });
      },
    });
  }
};
