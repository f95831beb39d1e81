// Signed policies end to end, through the real APISIX: the local stack with
// signing on (as npm start runs it). What the CMS writes is signed and
// enforced; a version written straight into etcd, past the CMS, is denied
// by every gateway (the runner and the decision API) and shown as unsigned
// in the policy's status and the fleet list.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startTestStack, until, type TestStack } from '../support/stack.js';
import { createEtcdClient } from '../../etcd/index.js';

const POLICY = JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "admin"\n', data: {} });
const ALLOW_ALL = 'package project.authz\nimport rego.v1\ndefault allow := true\n';

let test: TestStack;
let admin: Etcd3;
const tokens: Record<string, string> = {};
const call = (method: string, path: string, token: string, body?: string) =>
  test.call(method, path, { token, ...(body === undefined ? {} : { body }) }).then(({ status, text }) => ({ status, text }));

beforeAll(async () => {
  test = await startTestStack({ name: 'signed-stack', policySigning: true });
  admin = createEtcdClient(test.stack.etcdEndpoints);
  tokens.admin = await test.keys.token({ sub: 'root', role: 'platform_admin' });
  tokens.teamA = await test.keys.token({ sub: 'alice', role: 'admin', project: 'team-a' });
}, 120_000);

afterAll(async () => {
  admin?.close();
  await test?.stop();
});

type Status = { version: number; gateways: { id: string; kind: string; enforces: boolean; signature: string }[] };

describe('signed policies through the gateway', () => {
  it('the CMS signs and gateways enforce; a version written past the CMS is denied everywhere and shown as unsigned', async () => {
    const put = await test.call('PUT', '/policies/team-a', { token: tokens.admin, body: POLICY, headers: { prefer: 'wait=10' } });
    expect(put.status).toBe(201);
    test.rag.reset();
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(200);
    expect(test.rag.requests).toHaveLength(1);
    const decision = () => call('POST', '/v1/data/team-a/project/authz/allow', tokens.teamA!, '{"input":{"user":{"role":"admin"}}}');
    expect(await decision()).toEqual({ status: 200, text: '{"result":true}' });
    const status = async () => JSON.parse((await call('GET', '/policies/team-a/status', tokens.admin!)).text) as Status;
    const signed = await status();
    // The runner and the decision API both report to the fleet.
    expect(new Set(signed.gateways.map((g) => g.kind))).toEqual(new Set(['runner', 'decision-api']));
    expect(signed.gateways.every((g) => g.signature === 'valid')).toBe(true);

    // Straight into etcd: a valid compiled policy that allows everything, without a signature.
    await new EtcdPolicyWriter(admin).put('team-a', ALLOW_ALL);
    await until(status, (now) => now.gateways.every((g) => g.signature === 'unsigned' && g.enforces), 'every gateway to refuse it');
    test.rag.reset();
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(500);
    expect(test.rag.requests).toHaveLength(0);
    expect((await decision()).status).toBe(500);
    const fleet = JSON.parse((await call('GET', '/gateways', tokens.admin!)).text) as {
      gateways: { signatures: string; unloadable: { unsigned: string[] } }[];
    };
    for (const gateway of fleet.gateways) expect(gateway).toMatchObject({ signatures: 'checked', unloadable: { unsigned: ['team-a'] } });

    // Written again through the CMS: signed, enforced again.
    const again = await test.call('PUT', '/policies/team-a', { token: tokens.admin, body: POLICY, headers: { prefer: 'wait=10' } });
    expect(again.status).toBe(200);
    await until(status, (now) => now.gateways.every((g) => g.signature === 'valid'), 'every gateway to load it');
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(200);
  });
});
