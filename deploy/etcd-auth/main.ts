#!/usr/bin/env node
// Turns on etcd's access control for Gatehouse, once per cluster
// (deploy/RUNBOOK.md): the CMS reads and writes policies, gateways and the
// decision API only read them, APISIX keeps its /apisix prefix, operators'
// certificate is root. Run it against the cluster before auth is on, with the
// operators' client certificate:
//
//   ETCD_ENDPOINTS=https://etcd-dc1.gatehouse.internal:2379,... \
//   ETCD_CACERT=/etc/gatehouse/tls/ca.crt \
//   ETCD_CERT=/etc/gatehouse/tls/gatehouse-etcd-client.crt ETCD_KEY=/etc/gatehouse/tls/gatehouse-etcd-client.key \
//   ETCD_ROOT_PASSWORD=... node /opt/gatehouse/dist/deploy/etcd-auth/main.js
//
// Users named like the certificates' common names authenticate by
// certificate; their passwords (required by etcd 3.4) are random and unused.
import { createEtcdClient, etcdClientOptionsFromEnv, etcdEndpoints } from '../../etcd/index.js';
import { enableEtcdAuth } from './roles.js';
import { deploymentAuthSetup } from './setup.js';

async function main(): Promise<void> {
  const endpoints = etcdEndpoints(process.env, { optional: true });
  const rootPassword = process.env.ETCD_ROOT_PASSWORD ?? '';
  if (endpoints.length === 0 || rootPassword.length < 16) {
    throw new Error('set ETCD_ENDPOINTS, and ETCD_ROOT_PASSWORD (at least 16 characters; keep it in the secret store)');
  }
  const client = createEtcdClient(endpoints, etcdClientOptionsFromEnv(process.env));
  try {
    await enableEtcdAuth(client, deploymentAuthSetup(rootPassword));
  } finally {
    client.close();
  }
  process.stdout.write('etcd access control is on: gatehouse-cms writes policies, gatehouse-gateway reads them, apisix owns /apisix/\n');
}

main().catch((error: unknown) => {
  process.stderr.write(`etcd-auth: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
