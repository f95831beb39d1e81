// Signed policies end to end, through the real APISIX: the local stack with
// signing on (as npm start runs it). What the CMS writes is signed and
// enforced; a version written straight into etcd, past the CMS, is denied
// by every gateway (the runner and the decision API) and shown as unsigned
// in the policy's status and the fleet list.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { createEtcdClient } from '../../etcd/index.js';

const POLICY = JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "admin"\n', data: {} });
const ALLOW_ALL = 'package project.authz\nimport rego.v1\ndefault allow := true\n';

let keys: TestKeys;
let rag: RecordingUpstream;
let stack: LocalStack;
let admin: Etcd3;
const tokens: Record<string, string> = {};

async function call(method: string, path: string, token: string, body?: string): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) };
  const response = await fetch(`${stack.gateway.url}${path}`, { method, headers, body });
  return { status: response.status, text: await response.text() };
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

beforeAll(async () => {
  keys = await createTestKeys();
  rag = await startRecordingUpstream({ status: 200, body: '{"answer":"42"}', headers: { 'content-type': 'application/json' } });
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdDataRoot: 'test-etcd',
    upstreams: { rag: rag.url },
    workDir: mkdtempSync(join(tmpdir(), 'gh-signed-stack-')),
    opaPath,
    policySigning: true,
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  });
  admin = createEtcdClient(stack.etcdEndpoints);
  tokens.admin = await keys.token({ sub: 'root', role: 'platform_admin' });
  tokens.teamA = await keys.token({ sub: 'alice', role: 'admin', project: 'team-a' });
}, 120_000);

afterAll(async () => {
  admin?.close();
  await stack?.stop();
  await rag?.close();
  await keys?.cleanup();
});

type Status = { version: number; gateways: { id: string; kind: string; enforces: boolean; signature: string }[] };

describe('signed policies through the gateway', () => {
  it('the CMS signs and gateways enforce; a version written past the CMS is denied everywhere and shown as unsigned', async () => {
    const put = await fetch(`${stack.gateway.url}/policies/team-a`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${tokens.admin}`, 'content-type': 'application/json', prefer: 'wait=10' },
      body: POLICY,
    });
    expect(put.status).toBe(201);
    rag.reset();
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(200);
    expect(rag.requests).toHaveLength(1);
    const decision = () => call('POST', '/v1/data/team-a/project/authz/allow', tokens.teamA!, '{"input":{"user":{"role":"admin"}}}');
    expect(await decision()).toEqual({ status: 200, text: '{"result":true}' });
    const status = async () => JSON.parse((await call('GET', '/policies/team-a/status', tokens.admin!)).text) as Status;
    const signed = await status();
    // The runner reports to the fleet (the local stack's decision API does not); the decision API is asked below.
    expect(signed.gateways.filter((g) => g.kind === 'runner').length).toBeGreaterThan(0);
    expect(signed.gateways.every((g) => g.signature === 'valid')).toBe(true);

    // Straight into etcd: a valid compiled policy that allows everything, without a signature.
    await new EtcdPolicyWriter(admin).put('team-a', ALLOW_ALL);
    await until(async () => (await status()).gateways.every((g) => g.signature === 'unsigned' && g.enforces), 'every gateway to refuse it');
    rag.reset();
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(500);
    expect(rag.requests).toHaveLength(0);
    expect((await decision()).status).toBe(500);
    const fleet = JSON.parse((await call('GET', '/gateways', tokens.admin!)).text) as {
      gateways: { signatures: string; unloadable: { unsigned: string[] } }[];
    };
    for (const gateway of fleet.gateways) expect(gateway).toMatchObject({ signatures: 'checked', unloadable: { unsigned: ['team-a'] } });

    // Written again through the CMS: signed, enforced again.
    const again = await fetch(`${stack.gateway.url}/policies/team-a`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${tokens.admin}`, 'content-type': 'application/json', prefer: 'wait=10' },
      body: POLICY,
    });
    expect(again.status).toBe(200);
    await until(async () => (await status()).gateways.every((g) => g.signature === 'valid'), 'every gateway to load it');
    expect((await call('POST', '/rag/ask', tokens.teamA!, '{"q":"hi"}')).status).toBe(200);
  });
});
