// The runner's own HTTP port (RUNNER_METRICS_PORT): Prometheus metrics,
// liveness and readiness. Kept off the APISIX socket on purpose.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { PolicyWatcher } from '../../policy/watcher/watcher.js';

export async function startAdminServer(options: {
  host: string;
  port: number;
  registry: Registry;
  watcher: PolicyWatcher | null;
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
    const policies = options.watcher?.status ?? null;
    // Ready when decisions can be made: policies loaded from etcd or from the
    // last-known-good snapshot (staleness is reported, not fatal).
    const ready = policies === null || policies.source !== 'none';
    reply.code(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'not ready', policies };
  });
  await app.listen({ host: options.host, port: options.port });
  return app;
}
