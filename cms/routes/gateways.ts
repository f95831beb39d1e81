/**
 * The fleet: GET /gateways lists the gateways that report to etcd, with the
 * revision of the policy set each enforces (registered by app.ts, after
 * identity and the access policy), and `revision`, that of the newest policy
 * write (policy/store/keys.ts): a gateway below it is behind.
 */
import type { Etcd3 } from 'etcd3';
import type { FastifyPluginAsync } from 'fastify';
import { listGateways } from '../../policy/fleet/report.js';
import { policySetRevision } from '../../policy/store/index.js';
import { methodNotAllowed, verifiedIdentity } from '../request.js';

export interface GatewayRoutesOptions {
  /** Where the gateways report. */
  etcd: Etcd3;
}

export const gatewayRoutes: FastifyPluginAsync<GatewayRoutesOptions> = async (app, { etcd }) => {
  app.get('/gateways', async (request, reply) => {
    verifiedIdentity(request);
    // The revision first: a gateway's report read after it is never behind a write it has seen.
    const { written } = await policySetRevision(etcd);
    return reply.type('application/json').send({ revision: written, gateways: await listGateways(etcd) });
  });
  methodNotAllowed(app, '/gateways', ['GET']);
};
