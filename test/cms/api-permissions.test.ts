/**
 * The permission matrix: every endpoint x every kind of caller, against a
 * real etcd and opa. Identity is checked first (401), then the access policy
 * (403), and both come before any validation answer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN, policyBody, startHarness, TEAM_A_USER, V1_POLICY, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

type Caller = 'admin' | 'teamA' | 'teamB';
interface Endpoint {
  method: string;
  path: string;
  /** A valid write body where the endpoint takes one. */
  body?: string;
  expected: Record<Caller, number>;
}

const validBody = policyBody(V1_POLICY, { valid_roles: ['admin'] });

const endpoints: Endpoint[] = [
  { method: 'GET', path: '/policies', expected: { admin: 200, teamA: 200, teamB: 200 } },
  { method: 'GET', path: '/policies/team-a', expected: { admin: 200, teamA: 200, teamB: 403 } },
  { method: 'HEAD', path: '/policies/team-a', expected: { admin: 200, teamA: 200, teamB: 403 } },
  { method: 'GET', path: '/policies/platform', expected: { admin: 200, teamA: 403, teamB: 403 } },
  { method: 'PUT', path: '/policies/team-a', body: validBody, expected: { admin: 200, teamA: 403, teamB: 403 } },
  { method: 'PUT', path: '/policies/platform', body: validBody, expected: { admin: 200, teamA: 403, teamB: 403 } },
  { method: 'DELETE', path: '/policies/team-a', expected: { admin: 204, teamA: 403, teamB: 403 } },
  { method: 'GET', path: '/policies/team-a/history', expected: { admin: 200, teamA: 200, teamB: 403 } },
  { method: 'GET', path: '/policies/team-a/history/1', expected: { admin: 200, teamA: 200, teamB: 403 } },
  { method: 'GET', path: '/policies/platform/history', expected: { admin: 200, teamA: 403, teamB: 403 } },
  { method: 'GET', path: '/policies/platform/history/1', expected: { admin: 200, teamA: 403, teamB: 403 } },
];

const badCredentials: Array<{ what: string; header: () => Promise<string | undefined> }> = [
  { what: 'no token', header: async () => undefined },
  { what: 'not a bearer token', header: async () => 'Basic YWRhOnNlY3JldA==' },
  { what: 'garbage token', header: async () => 'Bearer not-a-jwt' },
  { what: 'expired token', header: async () => `Bearer ${await harness.keys.expiredToken(ADMIN)}` },
  { what: 'token not valid yet', header: async () => `Bearer ${await harness.keys.notYetValidToken(ADMIN)}` },
  { what: 'wrong issuer', header: async () => `Bearer ${await harness.keys.wrongIssuerToken(ADMIN)}` },
  { what: 'wrong audience', header: async () => `Bearer ${await harness.keys.wrongAudienceToken(ADMIN)}` },
  { what: 'bad signature', header: async () => `Bearer ${await harness.keys.badSignatureToken(ADMIN)}` },
  { what: 'alg none', header: async () => `Bearer ${await harness.keys.algNoneToken(ADMIN)}` },
  { what: 'kid not in the JWKS', header: async () => `Bearer ${await harness.keys.unknownKidToken(ADMIN)}` },
  { what: 'no kid', header: async () => `Bearer ${await harness.keys.noKidToken(ADMIN)}` },
  { what: 'no sub', header: async () => `Bearer ${await harness.keys.token({ role: 'platform_admin' })}` },
];

async function ensurePolicies(): Promise<void> {
  for (const name of ['team-a', 'platform']) {
    const existing = await cms.request('GET', `/policies/${name}`, { token: harness.tokens.admin });
    if (existing.status === 404) {
      const put = await cms.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: validBody });
      expect([200, 201]).toContain(put.status);
    }
  }
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  await ensurePolicies();
});
afterAll(async () => {
  await harness?.close();
});

describe('permission matrix', () => {
  for (const endpoint of endpoints) {
    for (const caller of ['admin', 'teamA', 'teamB'] as const) {
      const expected = endpoint.expected[caller];
      it(`${endpoint.method} ${endpoint.path} as ${caller}: ${expected}`, async () => {
        await ensurePolicies();
        const before = await harness.snapshot();
        const response = await cms.request(endpoint.method, endpoint.path, {
          token: harness.tokens[caller],
          ...(endpoint.body ? { body: endpoint.body } : {}),
        });
        expect(response.status).toBe(expected);
        if (expected === 403) {
          expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
          if (endpoint.method !== 'HEAD') {
            expect(response.json()).toMatchObject({ status: 403, type: 'urn:gatehouse:problem:forbidden' });
          }
          expect(await harness.snapshot()).toEqual(before);
        }
      });
    }

    for (const credentials of badCredentials) {
      it(`${endpoint.method} ${endpoint.path} with ${credentials.what}: 401`, async () => {
        const before = await harness.snapshot();
        const header = await credentials.header();
        const response = await cms.request(endpoint.method, endpoint.path, {
          headers: header === undefined ? {} : { authorization: header },
          ...(endpoint.body ? { body: endpoint.body } : {}),
        });
        expect(response.status).toBe(401);
        expect(String(response.headers['www-authenticate'])).toMatch(/^Bearer realm="gatehouse"/);
        if (endpoint.method !== 'HEAD') {
          expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
          expect(response.json()).toMatchObject({ status: 401, type: 'urn:gatehouse:problem:unauthenticated' });
        }
        expect(await harness.snapshot()).toEqual(before);
      });
    }
  }

  it('a project user whose project claim is "platform" still cannot read the platform policy', async () => {
    const token = await harness.keys.token({ sub: 'pat', role: 'project_user', project: 'platform' });
    expect((await cms.request('GET', '/policies/platform', { token })).status).toBe(403);
  });

  it('any role other than platform_admin, with a project claim, is a project user of that project', async () => {
    const token = await harness.keys.token({ sub: 'vic', role: 'viewer', project: 'team-a' });
    expect((await cms.request('GET', '/policies/team-a', { token })).status).not.toBe(403);
    expect((await cms.request('GET', '/policies/team-b', { token })).status).toBe(403);
    expect((await cms.request('PUT', '/policies/team-a', { token, body: validBody })).status).toBe(403);
  });

  it('a token with neither the admin role nor a project gets 403', async () => {
    const token = await harness.keys.token({ sub: 'vic', role: 'viewer' });
    expect((await cms.request('GET', '/policies/team-a', { token })).status).toBe(403);
  });
});

describe('identity and permission come before validation', () => {
  const invalidRequests: Array<{ what: string; method: string; path: string; body?: string; headers?: Record<string, string>; adminStatus: number }> = [
    { what: 'invalid name', method: 'PUT', path: '/policies/Not_Valid', body: validBody, adminStatus: 400 },
    { what: 'malformed JSON', method: 'PUT', path: '/policies/team-a', body: '{"rego":', adminStatus: 400 },
    { what: 'wrong media type', method: 'PUT', path: '/policies/team-a', body: validBody, headers: { 'content-type': 'text/plain' }, adminStatus: 415 },
    { what: 'oversized body', method: 'PUT', path: '/policies/team-a', body: policyBody('package x\n', { pad: 'x'.repeat(300_000) }), adminStatus: 413 },
    { what: 'compile error', method: 'PUT', path: '/policies/team-a', body: policyBody('package x\nallow if {'), adminStatus: 400 },
    { what: 'stale If-Match', method: 'PUT', path: '/policies/team-a', body: validBody, headers: { 'if-match': '"999"' }, adminStatus: 412 },
    { what: 'unknown policy', method: 'GET', path: '/policies/team-c', adminStatus: 404 },
    { what: 'method not allowed', method: 'POST', path: '/policies/team-a', body: validBody, adminStatus: 405 },
    { what: 'bad path', method: 'GET', path: '/policies/team-a/x/y/z', adminStatus: 400 },
  ];
  for (const request of invalidRequests) {
    it(`${request.what}: 401 without a token, 403 for a project user, ${request.adminStatus} for an admin`, async () => {
      const options = { headers: request.headers ?? {}, ...(request.body ? { body: request.body } : {}) };
      expect((await cms.request(request.method, request.path, options)).status).toBe(401);
      const projectUser = await harness.keys.token({ ...TEAM_A_USER, project: 'team-b' });
      expect((await cms.request(request.method, request.path, { ...options, token: projectUser })).status).toBe(403);
      expect((await cms.request(request.method, request.path, { ...options, token: harness.tokens.admin })).status).toBe(request.adminStatus);
    });
  }
});
