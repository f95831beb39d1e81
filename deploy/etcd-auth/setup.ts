// The users and roles deploy/ names, for enableEtcdAuth (roles.ts).
import { randomBytes } from 'node:crypto';
import { Range } from 'etcd3';
import type { EtcdAuthSetup } from './roles.js';

/** What deploy/ names: the APISIX user (CN of apisix-etcd-client) and its prefix, the operators' CN. */
export function deploymentAuthSetup(rootPassword: string): EtcdAuthSetup {
  const unused = () => randomBytes(24).toString('base64url');
  return {
    rootPassword,
    cmsPassword: unused(),
    gatewayPassword: unused(),
    extraRoles: [{ role: 'apisix', user: 'apisix', password: unused(), ranges: [Range.prefix('/apisix/')], permission: 'Readwrite' }],
    admins: [{ user: 'gatehouse-admin', password: unused() }],
  };
}
