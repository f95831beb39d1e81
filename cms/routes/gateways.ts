/**
 * The fleet: GET /gateways lists the gateways that report to etcd, with the
 * revision of the policy set each enforces (registered by app.ts, after
 * identity and the access policy).
 */
import type { Etcd3 } from 'etcd3';
import type { FastifyPluginAsync } from 'fastify';
import { listGateways } from '../../policy/fleet/report.js';
import { methodNotAllowed, verifiedIdentity } from '../request.js';

export interface GatewayRoutesOptions {
  /** Where the gateways report. */
  etcd: Etcd3;
}

export const gatewayRoutes: FastifyPluginAsync<GatewayRoutesOptions> = async (app, { etcd }) => {
  app.get('/gateways', async (request, reply) => {
    verifiedIdentity(request);
    return reply.type('application/json').send({ gateways: await listGateways(etcd) });
  });
  methodNotAllowed(app, '/gateways', ['GET']);
};
