// The runner on every core: a primary process and RUNNER_WORKERS worker
// processes (node:cluster) serving one socket. APISIX starts one runner per
// node; one Node thread would make it the node's bottleneck.
//
// The primary serves no calls. It owns what must be one for all workers:
//   - the socket (cluster hands each accepted connection to a worker, round
//     robin; APISIX keeps its connections open, so this is rare);
//   - conf tokens. APISIX prepares a conf on one connection and uses the token
//     on others, which may belong to other workers. A worker that gets a
//     PrepareConf validates the chain and asks the primary for a token; the
//     primary sends the plugin list to every other worker and answers only
//     when all of them hold the chain, so the token is valid everywhere
//     before APISIX sees it. A respawned worker gets every live conf before
//     it accepts connections;
//   - the metrics and health port: metrics summed over the workers (gauges by
//     their own rule, e.g. the lowest revision enforced), ready when every
//     worker is;
//   - the settle port (budget-settle.ts): each LLM response posted there goes
//     to every worker, and the one holding the call settles it;
//   - the lifecycle: a worker that dies is started again (its calls in
//     flight are lost with it, nothing else); SIGTERM stops the workers
//     gracefully, then the primary.
// Each worker keeps its own policy set, engines and Vault session (see the
// README on what that costs); only worker 0 writes the policy snapshot.
import cluster, { type Worker } from 'node:cluster';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { AggregatorRegistry } from 'prom-client';
import { firstToken, nextTokenAfter } from './conf-store.js';
import type { ConfEntry } from './server.js';
import { removeStaleSocket } from './socket-file.js';
import { startSettleServer, type SettleEntry } from './budget-settle.js';

/** Whether a worker can make decisions: its policies (and LLM budgets, when it has them) loaded. */
export interface WorkerReadiness {
  ready: boolean;
  policies: unknown;
  budgets?: 'loaded' | 'not loaded';
}

/** Messages between the primary and its workers (over cluster's IPC channel). */
export type ClusterMessage =
  | { type: 'gatehouse:hello' }
  | { type: 'gatehouse:confs'; confs: { token: number; entries: ConfEntry[]; key: string | null }[] }
  | { type: 'gatehouse:issue'; id: number; entries: ConfEntry[]; key: string | null }
  | { type: 'gatehouse:issued'; id: number; token: number }
  | { type: 'gatehouse:conf'; token: number; entries: ConfEntry[]; key: string | null }
  | { type: 'gatehouse:conf-ack'; token: number }
  | { type: 'gatehouse:status'; id: number }
  | ({ type: 'gatehouse:status-reply'; id: number } & WorkerReadiness)
  | { type: 'gatehouse:settle'; entries: SettleEntry[] };

export function isClusterMessage(message: unknown): message is ClusterMessage {
  return (
    typeof message === 'object' &&
    message !== null &&
    typeof (message as { type?: unknown }).type === 'string' &&
    (message as { type: string }).type.startsWith('gatehouse:')
  );
}

export interface PrimaryOptions {
  workers: number;
  socketPath: string;
  confExpireSeconds: number;
  /** RUNNER_SETTLE_PORT; null: LLM calls are not settled here (no budgets). */
  settlePort: number | null;
  /** RUNNER_METRICS_HOST/PORT; null: no port. */
  metrics: { host: string; port: number } | null;
  /** How long a stop waits for the workers (each finishes its calls in flight within its own grace). */
  shutdownGraceMs: number;
  log: Logger;
  /** How long an issued token waits for the other workers to hold its chain. */
  broadcastTimeoutMs?: number;
}

const RESPAWN_DELAY_MS = 200;
const MAX_RESPAWN_DELAY_MS = 10_000;

export async function runPrimary(options: PrimaryOptions): Promise<void> {
  const log = options.log.child({ role: 'primary' });
  removeStaleSocket(options.socketPath);
  // The primary creates the socket when the first worker listens: created
  // 0766 at once (nginx's workers, another user, must connect), never open to
  // a connection that would be refused before a worker's chmod. It writes no other file.
  process.umask(0o011);

  const confs = new LRUCache<number, { entries: ConfEntry[]; key: string | null }>({
    max: 100_000,
    maxSize: 256 * 1024 * 1024,
    sizeCalculation: ({ entries }) =>
      Math.max(
        1,
        entries.reduce((n, e) => n + e.name.length + e.value.length, 0),
      ),
    // As a worker's own store: twice APISIX's expiry (another APISIX worker may pick a token up late).
    ttl: options.confExpireSeconds * 2 * 1000,
    updateAgeOnGet: false,
  });
  let nextToken = firstToken();

  /** Workers that said hello: they hold every conf, and get every new one. */
  const members = new Set<Worker>();
  const slots = new Map<Worker, number>();
  const pendingAcks = new Map<number, { waiting: Set<Worker>; done: () => void }>();
  const statusWaiters = new Map<number, (reply: WorkerReadiness) => void>();
  let requestIds = 0;
  let stopping = false;
  const respawnDelay = new Map<number, number>();

  const send = (worker: Worker, message: ClusterMessage) => {
    if (worker.isConnected()) worker.send(message);
  };

  const ackFrom = (worker: Worker, token: number) => {
    const pending = pendingAcks.get(token);
    if (!pending) return;
    pending.waiting.delete(worker);
    if (pending.waiting.size === 0) pending.done();
  };

  const issue = async (from: Worker, entries: ConfEntry[], key: string | null): Promise<number> => {
    const token = nextToken;
    nextToken = nextTokenAfter(nextToken);
    confs.set(token, { entries, key });
    const others = [...members].filter((w) => w !== from);
    if (others.length > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          pendingAcks.delete(token);
          log.warn({ token }, 'a worker did not confirm a conf in time; answering anyway (it will answer CONF_TOKEN_NOT_FOUND and APISIX prepares again)');
          resolve();
        }, options.broadcastTimeoutMs ?? 2_000);
        pendingAcks.set(token, {
          waiting: new Set(others),
          done: () => {
            clearTimeout(timer);
            pendingAcks.delete(token);
            resolve();
          },
        });
        for (const worker of others) send(worker, { type: 'gatehouse:conf', token, entries, key });
      });
    }
    return token;
  };

  const fork = (slot: number, respawn: boolean) => {
    const worker = cluster.fork({ RUNNER_WORKER_INDEX: String(slot), RUNNER_WORKER_RESPAWN: respawn ? '1' : '0' });
    slots.set(worker, slot);
    const startedAt = Date.now();
    worker.on('message', (message: unknown) => {
      if (!isClusterMessage(message)) return;
      switch (message.type) {
        case 'gatehouse:hello':
          members.add(worker);
          send(worker, { type: 'gatehouse:confs', confs: [...confs.entries()].map(([token, conf]) => ({ token, ...conf })) });
          return;
        case 'gatehouse:issue':
          issue(worker, message.entries, message.key).then(
            (token) => send(worker, { type: 'gatehouse:issued', id: message.id, token }),
            (err: unknown) => log.error({ err }, 'could not issue a conf token'),
          );
          return;
        case 'gatehouse:conf-ack':
          ackFrom(worker, message.token);
          return;
        case 'gatehouse:status-reply': {
          const { type: _type, id, ...readiness } = message;
          statusWaiters.get(id)?.(readiness);
          return;
        }
        default:
          return;
      }
    });
    worker.on('exit', (code, signal) => {
      members.delete(worker);
      slots.delete(worker);
      // Whatever it was to confirm, it never will.
      for (const token of [...pendingAcks.keys()]) ackFrom(worker, token);
      if (stopping) return;
      // A worker that dies at once is not restarted in a tight loop.
      const delay = Date.now() - startedAt < 5_000 ? Math.min((respawnDelay.get(slot) ?? RESPAWN_DELAY_MS) * 2, MAX_RESPAWN_DELAY_MS) : RESPAWN_DELAY_MS;
      respawnDelay.set(slot, delay);
      log.error({ worker: slot, pid: worker.process.pid, code, signal, respawnInMs: delay }, 'runner worker exited; starting it again');
      setTimeout(() => {
        if (!stopping) fork(slot, true);
      }, delay).unref();
    });
  };

  for (let slot = 0; slot < options.workers; slot++) fork(slot, false);
  log.info({ workers: options.workers, socket: options.socketPath }, 'runner primary started');

  const status = async () => {
    const workers = [...members];
    const replies = await Promise.all(
      workers.map(
        (worker) =>
          new Promise<{ worker: number } & WorkerReadiness>((resolve) => {
            const id = ++requestIds;
            const timer = setTimeout(() => {
              statusWaiters.delete(id);
              resolve({ worker: slots.get(worker) ?? -1, ready: false, policies: 'no answer' });
            }, 1_000);
            statusWaiters.set(id, (reply) => {
              clearTimeout(timer);
              statusWaiters.delete(id);
              resolve({ worker: slots.get(worker) ?? -1, ...reply });
            });
            send(worker, { type: 'gatehouse:status', id });
          }),
      ),
    );
    const ready = replies.length === options.workers && replies.every((r) => r.ready);
    return { ready, workers: replies.sort((a, b) => a.worker - b.worker) };
  };

  let settleServer: FastifyInstance | null = null;
  if (options.settlePort !== null) {
    // The worker that made a reservation holds it; the others ignore the entry.
    const settle = (entries: SettleEntry[]) => {
      for (const worker of members) send(worker, { type: 'gatehouse:settle', entries });
    };
    settleServer = await startSettleServer(options.settlePort, settle, log);
  }

  let admin: FastifyInstance | null = null;
  if (options.metrics) {
    admin = await startClusterAdmin(options.metrics, status, log).catch((err: unknown) => {
      log.error({ err: (err as Error).message, port: options.metrics?.port }, 'metrics port unavailable; serving without it');
      return null;
    });
  }

  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'stopping the runner workers');
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined);
      const exited = workers.map((w) => new Promise((r) => (w.isDead() ? r(null) : w.once('exit', r))));
      for (const worker of workers) worker.process.kill('SIGTERM');
      const deadline = setTimeout(() => {
        for (const worker of workers) if (!worker.isDead()) worker.process.kill('SIGKILL');
      }, options.shutdownGraceMs + 500);
      void Promise.all(exited).then(async () => {
        clearTimeout(deadline);
        await admin?.close();
        await settleServer?.close();
        removeStaleSocket(options.socketPath);
        resolve();
      });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

async function startClusterAdmin(
  address: { host: string; port: number },
  status: () => Promise<{ ready: boolean; workers: unknown[] }>,
  log: Logger,
): Promise<FastifyInstance> {
  const aggregator = new AggregatorRegistry();
  const app = Fastify({ loggerInstance: log.child({ component: 'admin' }, { level: 'warn' }) as FastifyBaseLogger });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', aggregator.contentType);
    return aggregator.clusterMetrics();
  });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const current = await status();
    reply.code(current.ready ? 200 : 503);
    return { status: current.ready ? 'ready' : 'not ready', workers: current.workers };
  });
  await app.listen({ host: address.host, port: address.port });
  log.info({ address: app.server.address() }, 'metrics and health listening');
  return app;
}

/** A worker's side: tokens from the primary, chains from the other workers. */
export class WorkerLink {
  private requestIds = 0;
  private readonly issued = new Map<number, { resolve: (token: number) => void; reject: (err: Error) => void }>();
  private helloDone: (() => void) | null = null;

  constructor(
    private readonly handlers: {
      adopt: (token: number, entries: ConfEntry[], key: string | null) => void;
      status: () => WorkerReadiness;
      settle?: (entries: SettleEntry[]) => void;
      log: Logger;
    },
  ) {
    process.on('message', (message: unknown) => {
      if (!isClusterMessage(message)) return;
      switch (message.type) {
        case 'gatehouse:confs':
          for (const { token, entries, key } of message.confs) this.adopt(token, entries, key);
          this.helloDone?.();
          this.helloDone = null;
          return;
        case 'gatehouse:conf':
          this.adopt(message.token, message.entries, message.key);
          process.send?.({ type: 'gatehouse:conf-ack', token: message.token } satisfies ClusterMessage);
          return;
        case 'gatehouse:issued': {
          const waiter = this.issued.get(message.id);
          this.issued.delete(message.id);
          waiter?.resolve(message.token);
          return;
        }
        case 'gatehouse:settle':
          this.handlers.settle?.(message.entries);
          return;
        case 'gatehouse:status':
          process.send?.({ type: 'gatehouse:status-reply', id: message.id, ...this.handlers.status() } satisfies ClusterMessage);
          return;
        default:
          return;
      }
    });
  }

  /** Joins the cluster: resolves once this worker holds every live conf. */
  hello(): Promise<void> {
    return new Promise((resolve) => {
      this.helloDone = resolve;
      process.send?.({ type: 'gatehouse:hello' } satisfies ClusterMessage);
    });
  }

  /** A token for a chain this worker validated; valid on every worker once it resolves. */
  issueToken(entries: ConfEntry[], key: string | null, timeoutMs = 5_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const id = ++this.requestIds;
      const timer = setTimeout(() => {
        this.issued.delete(id);
        reject(new Error('the runner primary did not issue a conf token in time'));
      }, timeoutMs);
      this.issued.set(id, {
        resolve: (token) => {
          clearTimeout(timer);
          resolve(token);
        },
        reject,
      });
      process.send?.({ type: 'gatehouse:issue', id, entries: entries.map(({ name, value }) => ({ name, value })), key } satisfies ClusterMessage);
    });
  }

  private adopt(token: number, entries: ConfEntry[], key: string | null): void {
    try {
      this.handlers.adopt(token, entries, key);
    } catch (err) {
      // The same code validated it in another worker: only a bug gets here.
      this.handlers.log.error({ err, token }, 'could not adopt a conf another worker prepared');
    }
  }
}
