// Budgets and usage through the gateway: APISIX with apisix-conf/apisix.yaml,
// the real runner (jwt, then opa with the `cms-access` choice) in front of
// the CMS, and a real etcd. The cms route must reach the new paths, and the
// gateway must judge them with the same access policy as the CMS.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { HOUR_MS } from '../../budget/keys.js';
import { addUsage } from '../../budget/usage.js';
import { createEtcdClient } from '../../etcd/index.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { opaPath } from '../support/policies.js';

let keys: TestKeys;
let stack: LocalStack;
const tokens: Record<string, string> = {};
const BUDGET = { windows: [{ per: 'minute', tokens: 1000 }], default_max_tokens: 64 };

async function call(method: string, path: string, options: { token?: string; body?: string; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = options.token ? { authorization: `Bearer ${options.token}` } : {};
  Object.assign(headers, options.headers);
  if (options.body !== undefined) headers['content-type'] ??= 'application/json';
  const response = await fetch(`${stack.gateway.url}${path}`, { method, headers, body: options.body });
  return { status: response.status, headers: response.headers, text: await response.text() };
}

beforeAll(async () => {
  keys = await createTestKeys();
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdDataRoot: 'test-etcd',
    workDir: mkdtempSync(join(tmpdir(), 'gh-budget-stack-')),
    opaPath,
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  });
  tokens.admin = await keys.token({ sub: 'root', role: 'platform_admin' });
  tokens.teamA = await keys.token({ sub: 'alice', role: 'viewer', project: 'team-a' });
  tokens.teamB = await keys.token({ sub: 'bob', role: 'admin', project: 'team-b' });
}, 120_000);

afterAll(async () => {
  await stack?.stop();
  await keys?.cleanup();
});

describe('budgets through the gateway', () => {
  it('no token: 401 from the gateway on every new path', async () => {
    for (const path of ['/budgets', '/budgets/team-a', '/budgets/team-a/history', '/usage/team-a']) {
      const response = await call('GET', path);
      expect(response.status, path).toBe(401);
      expect(response.headers.get('www-authenticate')).toMatch(/^Bearer realm="gatehouse"/);
      expect(response.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
  });

  it('a platform admin creates, reads, lists and replaces a budget with If-Match', async () => {
    const created = await call('PUT', '/budgets/team-a', { token: tokens.admin, body: JSON.stringify(BUDGET) });
    expect(created.status, created.text).toBe(201);
    expect(created.headers.get('etag')).toBe('"1"');
    const read = await call('GET', '/budgets/team-a', { token: tokens.admin });
    expect(read.status).toBe(200);
    expect(JSON.parse(read.text)).toEqual(BUDGET);
    const list = await call('GET', '/budgets', { token: tokens.admin });
    expect(JSON.parse(list.text).budgets.map((b: { project: string }) => b.project)).toEqual(['team-a']);
    expect((await call('PUT', '/budgets/team-a', { token: tokens.admin, headers: { 'if-match': '"9"' }, body: JSON.stringify(BUDGET) })).status).toBe(412);
    const replaced = await call('PUT', '/budgets/team-a', { token: tokens.admin, headers: { 'if-match': '"1"' }, body: JSON.stringify(BUDGET) });
    expect(replaced.status).toBe(200);
    expect(replaced.headers.get('etag')).toBe('"2"');
    const invalid = await call('PUT', '/budgets/team-a', { token: tokens.admin, body: '{"windows":[{"per":"week","tokens":1}]}' });
    expect(invalid.status).toBe(400);
    expect(JSON.parse(invalid.text).errors).toEqual([expect.objectContaining({ pointer: '/windows/0/per' })]);
  });

  it("project users read their own project's budget, history and usage; never another's, never a write, never the list", async () => {
    expect((await call('GET', '/budgets/team-a', { token: tokens.teamA })).status).toBe(200);
    expect((await call('GET', '/budgets/team-a/history', { token: tokens.teamA })).status).toBe(200);
    expect((await call('GET', '/budgets/team-a/history/1', { token: tokens.teamA })).status).toBe(200);
    for (const [method, path, token] of [
      ['GET', '/budgets/team-a', tokens.teamB],
      ['GET', '/usage/team-a', tokens.teamB],
      ['PUT', '/budgets/team-a', tokens.teamA],
      ['DELETE', '/budgets/team-a', tokens.teamA],
      ['GET', '/budgets', tokens.teamA],
    ] as const) {
      const response = await call(method, path, { token, ...(method === 'PUT' ? { body: JSON.stringify(BUDGET) } : {}) });
      expect(response.status, `${method} ${path}`).toBe(403);
      expect(response.headers.get('content-type')).toMatch(/application\/problem\+json/);
    }
    expect((await call('GET', '/budgets/team-a', { token: tokens.admin })).headers.get('etag')).toBe('"2"');
  });

  it('usage with its query reaches the CMS', async () => {
    const hour = Math.floor(Date.now() / HOUR_MS) * HOUR_MS - 3 * HOUR_MS;
    const client = createEtcdClient(stack.etcdEndpoints);
    try {
      await addUsage(client, 'team-a', hour, 'llama-3', { requests: 2, prompt_tokens: 20, completion_tokens: 10, charged_tokens: 30, unsettled: 0 });
    } finally {
      client.close();
    }
    const from = new Date(hour).toISOString();
    const to = new Date(hour + HOUR_MS).toISOString();
    const response = await call('GET', `/usage/team-a?from=${from}&to=${to}`, { token: tokens.teamA });
    expect(response.status, response.text).toBe(200);
    expect(JSON.parse(response.text)).toMatchObject({
      project: 'team-a',
      from,
      to,
      total: { requests: 2, charged_tokens: 30 },
      models: { 'llama-3': { prompt_tokens: 20 } },
    });
    expect((await call('GET', '/usage/team-a?from=not-a-time', { token: tokens.teamA })).status).toBe(400);
  });

  it('a platform admin deletes with If-Match', async () => {
    expect((await call('DELETE', '/budgets/team-a', { token: tokens.admin, headers: { 'if-match': '"2"' } })).status).toBe(204);
    expect((await call('GET', '/budgets/team-a', { token: tokens.admin })).status).toBe(404);
  });
});
