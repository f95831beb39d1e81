/** Probes, without identity: /healthz (the process answers) and /readyz (etcd answers too). */
import type { FastifyPluginAsync } from 'fastify';
import type { PolicyStore } from '../../policy/store/index.js';

export interface HealthRoutesOptions {
  store: PolicyStore;
}

export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, { store }) => {
  app.get('/healthz', async (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    await store.ping();
    return reply.send({ status: 'ready' });
  });
};
