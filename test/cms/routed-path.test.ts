// The CMS judges the path it routes: however a client spells a path
// (percent-encoded letters, encoded names), identity and the permission
// table see exactly what the handler acts on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { policyBody, startHarness, V1_POLICY, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  for (const name of ['platform', 'team-a', 'team-b']) {
    const put = await cms.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: policyBody(V1_POLICY) });
    expect(put.status).toBe(201);
  }
});

afterAll(async () => {
  await harness?.close();
});

const spellings = ['/%70olicies/platform', '/policie%73/platform', '/policies/%70latform', '/%70olicies/%70latform'];

describe('the routed path decides', () => {
  it('an encoded path without a token is 401, whatever the method, and nothing changes', async () => {
    const before = await harness.snapshot();
    for (const path of spellings) {
      for (const method of ['GET', 'DELETE', 'PUT']) {
        const response = await cms.request(method, path, method === 'PUT' ? { body: policyBody(V1_POLICY, { evil: true }) } : {});
        expect(response.status, `${method} ${path}`).toBe(401);
        expect(response.headers['www-authenticate']).toMatch(/^Bearer/);
      }
    }
    expect(await harness.snapshot()).toEqual(before);
  });

  it("a project user cannot reach the platform policy or another project's through an encoded path", async () => {
    const before = await harness.snapshot();
    for (const path of [...spellings, '/%70olicies/team-b', '/policies/team-%62', '/policies/team-%62/history']) {
      for (const method of ['GET', 'DELETE']) {
        const response = await cms.request(method, path, { token: harness.tokens.teamA });
        expect(response.status, `${method} ${path}`).toBe(403);
      }
    }
    expect(await harness.snapshot()).toEqual(before);
    // The same spelling of their own policy works: the path is decoded, not refused.
    expect((await cms.request('GET', '/%70olicies/team-%61', { token: harness.tokens.teamA })).status).toBe(200);
  });

  it('an encoded list request is judged as the list', async () => {
    const response = await cms.request('GET', '/%70olicies', { token: harness.tokens.teamA });
    expect(response.status).toBe(200);
    expect(response.json().policies.map((p: { name: string }) => p.name)).toEqual(['team-a']);
    expect((await cms.request('GET', '/%70olicies')).status).toBe(401);
  });
});
