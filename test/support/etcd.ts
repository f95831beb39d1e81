/**
 * A real etcd for integration tests (see dev/local-etcd): Debian's `etcd`
 * binary on free loopback ports, data under <repo>/.local/test-etcd/<random>.
 *
 *   const etcd = await startEtcd();
 *   etcd.endpoints            // ['http://127.0.0.1:<port>']
 *   await etcd.stop();        // kill it, keep the data (to test an outage)
 *   await etcd.restart();     // same ports, same data
 *   await etcd.cleanup();     // kill it and remove the data (afterAll)
 *   await withAccessControl(etcd.endpoints);  // users, roles and auth on, as deploy/etcd-auth sets them up
 */
import { randomBytes } from 'node:crypto';
import { startLocalEtcd, type LocalEtcd } from '../../dev/local-etcd/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { enableEtcdAuth, type EtcdAuthSetup } from '../../deploy/etcd-auth/roles.js';

export type TestEtcd = LocalEtcd;

export function startEtcd(): Promise<TestEtcd> {
  return startLocalEtcd({ dataRoot: 'test-etcd' });
}

/** Users and roles as deploy/etcd-auth makes them, with fresh passwords, and auth turned on. */
export async function withAccessControl(endpoints: string[]): Promise<EtcdAuthSetup> {
  const password = () => randomBytes(12).toString('hex');
  const setup: EtcdAuthSetup = { rootPassword: password(), cmsPassword: password(), gatewayPassword: password() };
  const client = createEtcdClient(endpoints);
  try {
    await enableEtcdAuth(client, setup);
  } finally {
    client.close();
  }
  return setup;
}
