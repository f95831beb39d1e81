// End to end through APISIX, the real runner (jwt + opa), the
// CMS and a real etcd, with a recording RAG upstream on loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import type { RecordingUpstream } from '../support/upstream.js';
import { startTestStack, type TestStack } from '../support/stack.js';
import type { LocalStack } from '../../dev/local-stack/index.js';
import { SERVER_HEADER } from '../support/gateway.js';

// The seed's example policy object (section 4.1), verbatim.
const SEED_POLICY_BODY =
  '{\n  "rego": "package project.authz\\n\\ndefault allow = false\\n\\nallow {\\n  input.user.role == \\"admin\\"\\n}",\n  "data": {\n    "valid_roles": ["admin", "viewer"]\n  }\n}';

let test: TestStack;
let stack: LocalStack;
let rag: RecordingUpstream;
const tokens: Record<string, string> = {};
const call: TestStack['call'] = (...args) => test.call(...args);

beforeAll(async () => {
  test = await startTestStack({ name: 'stack' });
  ({ stack, rag } = test);
  tokens.admin = await test.keys.token({ sub: 'root', role: 'platform_admin' });
  tokens.teamAAdmin = await test.keys.token({ sub: 'alice', role: 'admin', project: 'team-a' });
  tokens.teamAViewer = await test.keys.token({ sub: 'victor', role: 'viewer', project: 'team-a' });
  tokens.teamB = await test.keys.token({ sub: 'bob', role: 'admin', project: 'team-b' });
}, 120_000);

afterAll(async () => {
  await test?.stop();
});

describe('the gateway', () => {
  it('is the real APISIX', async () => {
    const res = await call('GET', '/no-route-here');
    expect(res.status).toBe(404);
    expect(res.headers.get('server')).toMatch(SERVER_HEADER);
  });
});

describe('the CMS behind the gateway follows the seed table', () => {
  it('no token: 401 from the gateway with WWW-Authenticate and a problem body', async () => {
    const res = await call('GET', '/policies/team-a');
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm="gatehouse"/);
    expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
  });

  it("a Platform Admin creates the seed's example policy verbatim (201), replaces it (200)", async () => {
    let res = await call('PUT', '/policies/team-a', { token: tokens.admin, body: SEED_POLICY_BODY });
    expect(res.status).toBe(201);
    // Answered once every gateway process enforces it: the tests below decide on it at once.
    res = await call('PUT', '/policies/team-a', { token: tokens.admin, body: SEED_POLICY_BODY, headers: { prefer: 'wait=10' } });
    expect(res.status).toBe(200);
    expect(res.headers.get('etag')).toBe('"2"');
    expect(res.headers.get('preference-applied')).toBe('wait=10');
    expect(res.headers.get('gatehouse-behind')).toBeNull();
  });

  it('Project Users read their own project only; never write; never the platform policy', async () => {
    let res = await call('GET', '/policies/team-a', { token: tokens.teamAViewer });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual(JSON.parse(SEED_POLICY_BODY));
    expect((await call('GET', '/policies/team-a', { token: tokens.teamB })).status).toBe(403);
    expect((await call('PUT', '/policies/team-a', { token: tokens.teamAAdmin, body: SEED_POLICY_BODY })).status).toBe(403);
    expect((await call('PUT', '/policies/platform', { token: tokens.teamAAdmin, body: SEED_POLICY_BODY })).status).toBe(403);
    expect((await call('GET', '/policies/platform', { token: tokens.teamAAdmin })).status).toBe(403);
    res = await call('GET', '/policies/platform', { token: tokens.admin });
    expect(res.status).toBe(404);
  });
});

describe('RAG route: jwt then the platform and project policies', () => {
  it("the seed's example policy decides as written, and denied requests never reach the upstream", async () => {
    rag.reset();
    const allowed = await call('POST', '/rag/ask', { token: tokens.teamAAdmin, body: '{"q":"hi"}' });
    expect(allowed.status).toBe(200);
    expect(allowed.text).toBe('{"answer":"42"}');
    expect(rag.requests).toHaveLength(1);
    const denied = await call('POST', '/rag/ask', { token: tokens.teamAViewer, body: '{"q":"hi"}' });
    expect(denied.status).toBe(403);
    expect(rag.requests).toHaveLength(1);
    // team-b has no policy at all: denied.
    expect((await call('GET', '/rag/ask', { token: tokens.teamB })).status).toBe(403);
    expect(rag.requests).toHaveLength(1);
  });

  it('a spoofed identity header never reaches the upstream, even after 110 other headers', async () => {
    rag.reset();
    const headers: Record<string, string> = {};
    for (let i = 0; i < 110; i++) headers[`x-filler-${String(i).padStart(3, '0')}`] = 'x';
    // Past the 100 that ngx.req.get_headers() returns by default: deleted whether or not the runner sees it.
    headers['x-gatehouse-role'] = 'platform_admin';
    headers['x-gatehouse-sub'] = 'mallory';
    const res = await call('GET', '/rag/ask', { token: tokens.teamAAdmin, headers });
    expect(res.status).toBe(200);
    const seen = rag.last().headers;
    expect(seen['x-gatehouse-sub']).toBe('alice');
    expect(seen['x-gatehouse-project']).toBe('team-a');
    expect(seen['x-gatehouse-role']).toBe('admin');
    expect(rag.last().rawHeaders.filter(([name]) => name.toLowerCase().startsWith('x-gatehouse-'))).toHaveLength(3);
  });

  it('a PUT through the CMS flips decisions in the running gateway within milliseconds', async () => {
    expect((await call('GET', '/rag/ask', { token: tokens.teamAViewer })).status).toBe(403);
    const allowViewers = SEED_POLICY_BODY.replace('\\"admin\\"', '\\"viewer\\"');
    const res = await call('PUT', '/policies/team-a', { token: tokens.admin, body: allowViewers });
    expect(res.status).toBe(200);
    const written = Date.now();
    let status = 0;
    while (Date.now() - written < 10_000) {
      status = (await call('GET', '/rag/ask', { token: tokens.teamAViewer })).status;
      if (status === 200) break;
    }
    expect(status).toBe(200);
    console.log(`CMS PUT returned -> gateway enforces: ${Date.now() - written} ms (including request round trips)`);
    // Each runner worker swaps on its own watch: once every one has, viewers are
    // allowed and admins denied on every call, whichever worker takes it.
    let flipped = 0;
    let statuses: number[] = [];
    while (Date.now() - written < 10_000 && flipped < 8) {
      statuses = [(await call('GET', '/rag/ask', { token: tokens.teamAViewer })).status, (await call('GET', '/rag/ask', { token: tokens.teamAAdmin })).status];
      flipped = statuses[0] === 200 && statuses[1] === 403 ? flipped + 1 : 0;
    }
    expect(statuses).toEqual([200, 403]);
    expect(flipped).toBe(8);
    console.log(`CMS PUT returned -> every worker enforces: ${Date.now() - written} ms`);
  });

  it('the platform policy, once written, restricts every project', async () => {
    const platform = JSON.stringify({
      rego: 'package platform\nimport rego.v1\ndefault allow := true\nallow := false if startswith(input.request.path, "/rag/admin")\n',
      data: {},
    });
    expect((await call('PUT', '/policies/platform', { token: tokens.admin, body: platform })).status).toBe(201);
    let status = 0;
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && status !== 403) status = (await call('GET', '/rag/admin/x', { token: tokens.teamAViewer })).status;
    expect(status).toBe(403);
    expect((await call('GET', '/rag/ask', { token: tokens.teamAViewer })).status).toBe(200);
  });
});

describe('decision API behind the gateway', () => {
  it("answers OPA's Data API for the caller's own project", async () => {
    const res = await call('POST', '/v1/data/team-a/project/authz/allow', {
      token: tokens.teamAViewer,
      body: JSON.stringify({ input: { user: { role: 'viewer' } } }),
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ result: true });
    expect((await call('POST', '/v1/data/team-a/project/authz/allow', { token: tokens.teamB, body: '{"input":{}}' })).status).toBe(403);
  });
});

describe('a malformed request never gets past the gateway', () => {
  it('a method outside the protocol enum is refused before the runner', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${stack.gateway.url}/rag/ask`, { method: 'PURGE', headers: { authorization: `Bearer ${tokens.teamAAdmin}` } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.end();
    });
    expect(status).toBe(500);
  });
});
