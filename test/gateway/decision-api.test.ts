// The decision API (OPA's Data API) on real etcd and compiled policies.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { createIdentityVerifier } from '../../identity/index.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import { buildDecisionApp, documentAt } from '../../decision-api/app.js';
import { Writable } from 'node:stream';
import { DecisionLog } from '../../policy/decision-log/index.js';

const SEED_POLICY = 'package project.authz\n\ndefault allow = false\n\nallow {\n  input.user.role == "admin"\n}';
const accessWasm = defaultAccessPolicyWasmPath();

let etcd: TestEtcd;
let client: Etcd3;
let watcher: PolicyWatcher;
let app: FastifyInstance;
let keys: TestKeys;
/** What the app's decision log wrote. */
let logged = '';
let decisionLog: DecisionLog;

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
  keys = await createTestKeys();
  await new EtcdPolicyWriter(client).put('team-a', SEED_POLICY, { valid_roles: ['admin'] });
  await new EtcdPolicyWriter(client).put('team-c', 'package echo\nimport rego.v1\nheaders := input.request.headers\nuser_sub := input.user.sub\n');
  await new EtcdPolicyWriter(client).put('team-d', 'package echo\nimport rego.v1\nrequest := input.request\n');
  decisionLog = new DecisionLog(new Writable({ write: (chunk: Buffer, _encoding, done) => ((logged += chunk.toString()), done()) }));
  watcher = new PolicyWatcher({ client, log: pino({ level: 'silent' }) });
  await watcher.start();
  app = await buildDecisionApp({
    watcher,
    verifier: createIdentityVerifier(keys.identityConfig),
    access: await loadAccessPolicy(accessWasm),
    log: pino({ level: 'silent' }),
    registry: new Registry(),
    decisionLog: { log: decisionLog, gateway: 'test' },
  });
});

afterAll(async () => {
  await app?.close();
  await watcher?.stop();
  client?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

describe('decision API', () => {
  it('answers like OPA: {"result": ...} at any depth, no result when undefined', async () => {
    // `user` in the input is always the verified identity: the token's role decides.
    const admin = await keys.token({ sub: 'rag', role: 'admin', project: 'team-a' });
    const viewer = await keys.token({ sub: 'rag', role: 'viewer', project: 'team-a' });
    const ask = (url: string, input: unknown, token = admin) =>
      app.inject({ method: 'POST', url, headers: { authorization: `Bearer ${token}` }, payload: { input } });

    let res = await ask('/v1/data/team-a/project/authz/allow', {});
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ result: true });
    res = await ask('/v1/data/team-a/project/authz/allow', {}, viewer);
    expect(res.json()).toEqual({ result: false });
    res = await ask('/v1/data/team-a/project/authz', {});
    expect(res.json()).toEqual({ result: { allow: true } });
    res = await ask('/v1/data/team-a/project', {});
    expect(res.json()).toEqual({ result: { authz: { allow: true } } });
    res = await ask('/v1/data/team-a/project/authz/no_such_rule', {});
    expect(res.json()).toEqual({});
  });

  it('refuses callers without a valid token, and project users asking about another project', async () => {
    let res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: { input: {} } });
    expect(res.statusCode).toBe(401);
    expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
    const other = await keys.token({ sub: 'b', role: 'project_user', project: 'team-b' });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', headers: { authorization: `Bearer ${other}` }, payload: { input: {} } });
    expect(res.statusCode).toBe(403);
    const forged = await keys.badSignatureToken({ sub: 'x', role: 'platform_admin' });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', headers: { authorization: `Bearer ${forged}` }, payload: { input: {} } });
    expect(res.statusCode).toBe(401);
  });

  it('bad requests get problem+json: bad JSON, a body that is not an object, unknown policy, bad name', async () => {
    const token = await keys.token({ sub: 'root', role: 'platform_admin' });
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    const cases: [string, string, number][] = [
      ['/v1/data/team-a/project/authz', '{"input":', 400],
      ['/v1/data/team-a/project/authz', '[1,2]', 400],
      ['/v1/data/nobody/project/authz', '{"input":{}}', 404],
      ['/v1/data/Bad..Name/x', '{"input":{}}', 400],
    ];
    for (const [url, payload, status] of cases) {
      const res = await app.inject({ method: 'POST', url, headers, payload });
      expect([url, payload, res.statusCode]).toEqual([url, payload, status]);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
    }
  });

  it("serves APISIX's built-in opa plugin unchanged: the client's token inside the input decides, and never reaches the policy", async () => {
    const admin = await keys.token({ sub: 'ada', role: 'admin', project: 'team-a' });
    const viewer = await keys.token({ sub: 'vic', role: 'viewer', project: 'team-a' });
    // The document APISIX's `opa` plugin posts (no Authorization header on the call itself).
    const apisixInput = (token: string) => ({
      input: {
        type: 'http',
        request: {
          scheme: 'http',
          method: 'GET',
          host: 'gw',
          port: 9080,
          path: '/rag/ask',
          headers: { authorization: `Bearer ${token}`, accept: '*/*' },
          query: {},
        },
        var: { remote_addr: '10.0.0.1', server_port: '9080', timestamp: 1700000000 },
      },
    });
    let res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: apisixInput(admin) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ result: { allow: true } });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: apisixInput(viewer) });
    expect(res.json()).toEqual({ result: { allow: false } });
    // Refusals of the client are decisions the plugin reads (it turns any answer but 200 into 503).
    const forged = await keys.badSignatureToken({ sub: 'x', role: 'admin', project: 'team-a' });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: apisixInput(forged) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      result: {
        allow: false,
        status_code: 401,
        headers: { 'WWW-Authenticate': 'Bearer realm="gatehouse", error="invalid_token"', 'Content-Type': 'application/problem+json' },
        reason: { status: 401, title: 'Unauthorized', detail: expect.any(String) },
      },
    });
    const otherProject = await keys.token({ sub: 'b', role: 'admin', project: 'team-b' });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: apisixInput(otherProject) });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ result: { allow: false, status_code: 403, reason: { status: 403, detail: 'you may not query this policy' } } });
    const anonymous = apisixInput('');
    anonymous.input.request.headers = { accept: '*/*' } as typeof anonymous.input.request.headers;
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: anonymous });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ result: { allow: false, status_code: 401, headers: { 'WWW-Authenticate': 'Bearer realm="gatehouse"' } } });
    // A caller with a token of its own is the Data API's client: its refusal stays an HTTP status.
    res = await app.inject({
      method: 'POST',
      url: '/v1/data/team-a/project/authz',
      headers: { authorization: `Bearer ${forged}` },
      payload: apisixInput(admin),
    });
    expect(res.statusCode).toBe(401);
    // What the policy saw: the verified user, and no credentials.
    const carl = await keys.token({ sub: 'carl', role: 'dev', project: 'team-c' });
    res = await app.inject({ method: 'POST', url: '/v1/data/team-c/echo', payload: apisixInput(carl) });
    expect(res.json()).toEqual({ result: { headers: { accept: '*/*' }, user_sub: 'carl' } });
  });

  it('credentials reach neither the policy nor the decision log, whatever the case of their names', async () => {
    const carl = await keys.token({ sub: 'carl', role: 'dev', project: 'team-d' });
    const admin = await keys.token({ sub: 'ada', role: 'admin', project: 'team-a' });
    // Header names as Go's http.Header writes them, and credential query parameters.
    const request = (authorization: string) => ({
      scheme: 'http',
      method: 'GET',
      path: '/v1/chat?api-version=1&key=PATH-KEY-1',
      headers: {
        Authorization: authorization,
        'Proxy-Authorization': 'Basic PROXY-SECRET-1',
        Cookie: 'sid=COOKIE-1',
        'Set-Cookie': 'sid=COOKIE-2',
        'Api-Key': 'AZURE-KEY-SECRET-1',
        'X-Api-Key': 'ANTHROPIC-KEY-1',
        Accept: '*/*',
      },
      query: { 'api-version': '1', Key: 'QUERY-KEY-1', access_token: 'QUERY-TOKEN-1', TOKEN: 'QUERY-TOKEN-2', api_key: ['QUERY-KEY-2'] },
    });
    let res = await app.inject({
      method: 'POST',
      url: '/v1/data/team-d/echo/request',
      headers: { authorization: `Bearer ${carl}` },
      payload: { input: { request: request('Bearer CALLER-TOKEN-1') } },
    });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({
      result: { scheme: 'http', method: 'GET', path: '/v1/chat?api-version=1&key=[masked]', headers: { Accept: '*/*' }, query: { 'api-version': '1' } },
    });
    // APISIX's plugin shape, the client's token under `Authorization`: verified, then withheld.
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: { input: { type: 'http', request: request(`Bearer ${admin}`) } } });
    expect(res.json()).toEqual({ result: { allow: true } });
    res = await app.inject({
      method: 'POST',
      url: '/v1/data/team-d/echo/request/headers',
      payload: { input: { type: 'http', request: request(`Bearer ${carl}`) } },
    });
    expect(res.json()).toEqual({ result: { Accept: '*/*' } });
    // Two different Authorization headers (names differing in case): refused, not one of them picked.
    const twice = request(`Bearer ${admin}`);
    (twice.headers as Record<string, string>).authorization = `Bearer ${carl}`;
    res = await app.inject({ method: 'POST', url: '/v1/data/team-a/project/authz', payload: { input: { type: 'http', request: twice } } });
    expect(res.json()).toMatchObject({ result: { allow: false, status_code: 401 } });

    const deadline = Date.now() + 5_000;
    while (logged.split('\n').filter(Boolean).length < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(logged).toContain('/v1/data/team-d/echo/request');
    expect(logged).not.toMatch(/CALLER-TOKEN|PROXY-SECRET|COOKIE-|AZURE-KEY|ANTHROPIC-KEY|QUERY-KEY|QUERY-TOKEN|PATH-KEY/);
    for (const token of [carl, admin]) expect(logged).not.toContain(token.split('.')[2]);
  });

  it("a caller's own token: the user it writes into the input is replaced by the verified identity", async () => {
    const viewer = await keys.token({ sub: 'vic', role: 'viewer', project: 'team-a' });
    let res = await app.inject({
      method: 'POST',
      url: '/v1/data/team-a/project/authz/allow',
      headers: { authorization: `Bearer ${viewer}` },
      payload: { input: { user: { role: 'admin', sub: 'root' }, project: 'team-b' } },
    });
    expect(res.json()).toEqual({ result: false });
    const carl = await keys.token({ sub: 'carl', role: 'dev', project: 'team-c' });
    res = await app.inject({
      method: 'POST',
      url: '/v1/data/team-c/echo/user_sub',
      headers: { authorization: `Bearer ${carl}` },
      payload: { input: { user: { sub: 'mallory' } } },
    });
    expect(res.json()).toEqual({ result: 'carl' });
  });

  it('documentAt walks into and nests above the package document', () => {
    expect(documentAt(['a', 'b'], { allow: true }, ['a', 'b', 'allow'])).toBe(true);
    expect(documentAt(['a', 'b'], { allow: true }, ['a'])).toEqual({ b: { allow: true } });
    expect(documentAt(['a', 'b'], { allow: true }, ['x'])).toBeUndefined();
  });
});
