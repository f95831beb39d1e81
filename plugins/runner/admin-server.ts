// The runner's own HTTP port (RUNNER_METRICS_PORT): Prometheus metrics,
// liveness and readiness. Kept off the APISIX socket on purpose.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';

export async function startAdminServer(options: {
  host: string;
  port: number;
  registry: Registry;
  /** Whether this process can make decisions, and what it knows of its policies (and budgets). */
  readiness: () => { ready: boolean; policies: unknown };
  log: Logger;
}): Promise<FastifyInstance> {
  // Request lines are logged at info; this port is scraped every few seconds, so only warnings and up.
  const app = Fastify({ loggerInstance: options.log.child({ component: 'admin' }, { level: 'warn' }) as FastifyBaseLogger });
  app.get('/metrics', async (_request, reply) => {
    reply.header('content-type', options.registry.contentType);
    return options.registry.metrics();
  });
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const { ready, ...state } = options.readiness();
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'not ready', ...state };
  });
  await app.listen({ host: options.host, port: options.port });
  return app;
}
