// Where an LLM call's response comes back to be settled: APISIX's
// http-logger, on the budgeted route, posts each response (its status, body
// and nginx's $request_id, which names the call's reservation) to a port of
// the runner's own on loopback (RUNNER_SETTLE_PORT, default 9092; in a
// cluster the primary's, which passes each entry to its workers: the one
// holding the call settles it):
//
//   http-logger: {"uri": "http://127.0.0.1:9092/budget/usage", "batch_max_size": 100,
//                 "inactive_timeout": 1, "include_resp_body": true,
//                 "log_format": {"reservation": "$request_id",
//                                "status": "$status", "body": "$resp_body"}}
//
// An entry settles only the call its id names, once; ids are random and
// never leave the gateway (nginx and the runner), so a forged post changes
// nothing.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { RESERVATION_ID } from '../../budget/gateway.js';
import { HttpProblem, sendProblem } from '../../http/problem.js';

export interface SettleEntry {
  reservation: string;
  status: number;
  body: string;
}

export const SETTLE_PATH = '/budget/usage';
/** Bodies of LLM answers, as the logger posts them whole. */
const SETTLE_BODY_LIMIT = 32 * 1024 * 1024;

/** The entries of one post (an object, or an array when the logger batches); null when malformed. */
export function settleEntries(payload: unknown): SettleEntry[] | null {
  const items = Array.isArray(payload) ? payload : [payload];
  const entries: SettleEntry[] = [];
  for (const item of items) {
    if (!item || typeof item !== 'object') return null;
    const record = item as Record<string, unknown>;
    const reservation = record.reservation;
    // Calls stopped before a reservation are logged too: their ids name nothing to settle.
    if (typeof reservation !== 'string' || !RESERVATION_ID.test(reservation)) continue;
    const status = Number(record.status);
    if (!Number.isInteger(status)) return null;
    entries.push({ reservation, status, body: typeof record.body === 'string' ? record.body : '' });
  }
  return entries;
}

/** Serves the settle path on loopback; null (logged) when the port cannot be had: calls then keep their reservations. */
export async function startSettleServer(port: number, settle: (entries: SettleEntry[]) => void, log: Logger): Promise<FastifyInstance | null> {
  const app = Fastify({ loggerInstance: log.child({ component: 'budget-settle' }, { level: 'warn' }) as FastifyBaseLogger });
  // Bad posts (not JSON, too large, another media type) answer problem+json like every Gatehouse port.
  app.setErrorHandler((error: Error & { statusCode?: number }, _request, reply) => {
    const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500;
    return sendProblem(reply, new HttpProblem({ status, detail: status === 500 ? 'internal error' : error.message }));
  });
  app.post(SETTLE_PATH, { bodyLimit: SETTLE_BODY_LIMIT }, async (request, reply) => {
    const entries = settleEntries(request.body);
    if (!entries) return sendProblem(reply, new HttpProblem({ status: 400, detail: 'expected http-logger entries with reservation, status and body' }));
    settle(entries);
    reply.code(204);
    return null;
  });
  try {
    // Loopback only: the entries come from this node's APISIX.
    await app.listen({ host: '127.0.0.1', port });
  } catch (err) {
    log.error({ err: (err as Error).message, port }, 'LLM usage settle port unavailable: budgeted calls keep their reservations');
    return null;
  }
  log.info({ address: app.server.address() }, 'LLM usage settling listening');
  return app;
}
