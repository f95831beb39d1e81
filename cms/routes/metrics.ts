/** GET /metrics: this CMS's Prometheus metrics (cms/metrics.ts), without identity. */
import type { FastifyPluginAsync } from 'fastify';
import type { CmsMetrics } from '../metrics.js';

export const metricsRoutes: FastifyPluginAsync<{ metrics: CmsMetrics }> = async (app, { metrics }) => {
  app.get('/metrics', async (_request, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
};
