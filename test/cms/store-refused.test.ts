// When etcd answers and says no (the CMS's etcd user lost a permission, as
// an operator may take it away), the CMS says so: 500 store-refused naming
// what etcd said, not 503 "etcd did not answer in time", which would send
// clients retrying something that can never succeed. Nothing is written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { createEtcdClient } from '../../etcd/index.js';
import { buildCmsApp } from '../../cms/app.js';
import { CMS_USER, POLICY_WRITER_ROLE, policyKeyRanges, type EtcdAuthSetup } from '../../deploy/etcd-auth/roles.js';
import { startEtcd, withAccessControl, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { opaPath } from '../support/policies.js';

const REGO = 'package project.authz\nimport rego.v1\ndefault allow := false\n';

let etcd: TestEtcd;
let setup: EtcdAuthSetup;
let keys: TestKeys;
let cms: FastifyInstance;

beforeAll(async () => {
  etcd = await startEtcd();
  setup = await withAccessControl(etcd.endpoints);
  keys = await createTestKeys();
  cms = await buildCmsApp({
    etcdEndpoints: etcd.endpoints,
    etcdAuth: { username: CMS_USER, password: setup.cmsPassword },
    identity: keys.identityConfig,
    opaPath,
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  await cms?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

async function put(name: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const admin = await keys.token({ sub: 'ada', role: 'platform_admin' });
  const res = await cms.inject({
    method: 'PUT',
    url: `/policies/${name}`,
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    payload: JSON.stringify({ rego: REGO, data: {} }),
  });
  return { status: res.statusCode, body: res.json() };
}

describe('an etcd refusal', () => {
  it('is 500 store-refused with what etcd said, and nothing is written; a granted write goes through as before', async () => {
    expect((await put('granted')).status).toBe(201);

    // An operator takes the CMS's write permission on the policy keys away, leaving it read.
    const root = createEtcdClient(etcd.endpoints, { auth: { username: 'root', password: setup.rootPassword } });
    try {
      const role = root.role(POLICY_WRITER_ROLE);
      for (const range of policyKeyRanges()) {
        await role.revoke({ permission: 'Readwrite', range });
        await role.grant({ permission: 'Read', range });
      }

      const refused = await put('refused');
      expect(refused.status).toBe(500);
      expect(refused.body).toMatchObject({ type: 'urn:gatehouse:problem:store-refused', status: 500, title: 'Policy store refused the request' });
      expect(String(refused.body.detail)).toMatch(/permission denied/i);
      expect(String(refused.body.detail)).toMatch(/nothing was written/);
      // Reading still works, and shows nothing of the refused write.
      const admin = await keys.token({ sub: 'ada', role: 'platform_admin' });
      expect((await cms.inject({ method: 'GET', url: '/policies/refused', headers: { authorization: `Bearer ${admin}` } })).statusCode).toBe(404);
      expect((await cms.inject({ method: 'GET', url: '/policies/granted', headers: { authorization: `Bearer ${admin}` } })).statusCode).toBe(200);
      expect(await root.getAll().prefix('/policies/refused/').keys()).toEqual([]);
    } finally {
      root.close();
    }
  }, 60_000);
});
