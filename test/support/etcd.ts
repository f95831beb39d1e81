/**
 * A real etcd for integration tests (see dev/local-etcd): Debian's `etcd`
 * binary on free loopback ports, data under <repo>/.local/test-etcd/<random>.
 *
 *   const etcd = await startEtcd();
 *   etcd.endpoints            // ['http://127.0.0.1:<port>']
 *   await etcd.stop();        // kill it, keep the data (to test an outage)
 *   await etcd.restart();     // same ports, same data
 *   await etcd.cleanup();     // kill it and remove the data (afterAll)
 */
import { startLocalEtcd, type LocalEtcd } from '../../dev/local-etcd/index.js';

export type TestEtcd = LocalEtcd;

export function startEtcd(): Promise<TestEtcd> {
  return startLocalEtcd({ dataRoot: 'test-etcd' });
}
