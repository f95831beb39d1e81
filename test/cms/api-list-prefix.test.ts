// GET /policies?prefix=: the list of names that start with a prefix, paged,
// read from the index at the prefix and no further, still filtered by the
// access policy; and GET /gateways's `revision`, the newest policy write's.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pLimit from 'p-limit';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startHarness, policyBody, V1_POLICY, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;
let writer: EtcdPolicyWriter;
// "ab" names and their neighbours in byte order on both sides ("aa-", "ab" itself, "ab-", "abc", "ac", "b").
const AB = ['ab', 'abc', 'ab-z', ...Array.from({ length: 40 }, (_, i) => `ab-${String(i).padStart(3, '0')}`)];
const OTHERS = ['a', 'aa-9', 'aaz', 'ac', 'ac-1', 'b', 'team-a', 'team-b', 'team-ab'];

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  writer = new EtcdPolicyWriter(harness.etcdClient);
  const limit = pLimit(8);
  await Promise.all([...AB, ...OTHERS].map((name) => limit(() => writer.put(name, V1_POLICY, { valid_roles: ['admin'] }))));
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

async function listAll(token: string, query: string): Promise<{ names: string[]; pages: number }> {
  const names: string[] = [];
  let pageToken: string | undefined;
  let pages = 0;
  for (;;) {
    const response = await cms.request('GET', `/policies?${query}${pageToken ? `&page_token=${pageToken}` : ''}`, { token });
    expect(response.status, query).toBe(200);
    const body = response.json() as { policies: { name: string }[]; next_page_token?: string };
    names.push(...body.policies.map((p) => p.name));
    pages++;
    if (!body.next_page_token) return { names, pages };
    pageToken = body.next_page_token;
  }
}

describe('GET /policies?prefix=', () => {
  it('pages through the names that start with the prefix, each once, in order, and never another', async () => {
    const { names, pages } = await listAll(harness.tokens.admin, 'prefix=ab&limit=7');
    expect(names).toEqual([...AB].sort());
    expect(pages).toBe(Math.ceil(AB.length / 7));
    expect((await listAll(harness.tokens.admin, 'prefix=ab-0&limit=1000')).names).toEqual(AB.filter((n) => n.startsWith('ab-0')).sort());
    expect((await listAll(harness.tokens.admin, 'prefix=team')).names).toEqual(['team-a', 'team-ab', 'team-b']);
    expect((await listAll(harness.tokens.admin, 'prefix=zz')).names).toEqual([]);
    // The store's page of a prefix ends with it: no continuation past the last "ab" name.
    const page = await writer.store.listPage({ prefix: 'ab', limit: AB.length });
    expect(page.policies.map((p) => p.name)).toEqual([...AB].sort());
    expect(page.next).toBeNull();
  });

  it('a token from outside the prefix never leads outside it', async () => {
    const token = (name: string) => Buffer.from(`after:${name}`).toString('base64url');
    expect((await listAll(harness.tokens.admin, `prefix=ab&page_token=${token('aa-9')}`)).names).toEqual([...AB].sort());
    expect((await listAll(harness.tokens.admin, `prefix=ab&page_token=${token('b')}`)).names).toEqual([]);
    expect((await listAll(harness.tokens.admin, `prefix=ab&page_token=${token('ab-020')}`)).names).toEqual([...AB].sort().filter((n) => n > 'ab-020'));
  });

  it('still shows a project user only what they may read', async () => {
    expect((await listAll(harness.tokens.teamA, 'prefix=team&limit=1')).names).toEqual(['team-a']);
    expect((await listAll(harness.tokens.teamA, 'prefix=ab')).names).toEqual([]);
    expect((await listAll(harness.tokens.teamB, 'prefix=team-')).names).toEqual(['team-b']);
  });

  it('refuses a prefix that is no start of a policy name, with a problem', async () => {
    for (const query of ['prefix=', 'prefix=AB', 'prefix=a_b', 'prefix=-a', 'prefix=a.candidate', `prefix=${'a'.repeat(64)}`, 'prefix=a&prefix=b']) {
      const response = await cms.request('GET', `/policies?${query}`, { token: harness.tokens.admin });
      expect(response.status, query).toBe(400);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
    }
    // Lists that take no prefix still refuse it.
    expect((await cms.request('GET', '/budgets?prefix=a', { token: harness.tokens.admin })).status).toBe(400);
  });
});

describe('GET /gateways: the newest policy write', () => {
  it("is the revision of the last policy put or delete, not etcd's", async () => {
    const revision = async () => (await cms.request('GET', '/gateways', { token: harness.tokens.admin })).json().revision as number;
    const put = await cms.request('PUT', '/policies/team-a', { token: harness.tokens.admin, body: policyBody(V1_POLICY, { valid_roles: ['x'] }) });
    expect(put.status).toBe(200);
    const written = (await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.admin })).json().revision as number;
    expect(await revision()).toBe(written);
    // A write that is no policy's (a gateway's report, a budget) leaves it.
    await harness.etcdClient.put('/elsewhere').value('not a policy');
    expect(await revision()).toBe(written);
    expect((await cms.request('DELETE', '/policies/ac-1', { token: harness.tokens.admin })).status).toBe(204);
    expect(await revision()).toBeGreaterThan(written);
  });
});
