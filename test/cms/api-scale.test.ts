// The CMS with many policies and many writers: the list pages, compiles are
// bounded (a full queue answers 503 with Retry-After, never a fork storm),
// and a policy too large for one etcd transaction is refused with 413.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdPolicyWriter } from '../support/policies.js';
import { policyBody, startHarness, V1_POLICY, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;
const NAMES = Array.from({ length: 23 }, (_, i) => `team-${String.fromCharCode(97 + (i % 26))}${i >= 26 ? i : ''}`).concat(['platform', 'a-b', 'a']);

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  const writer = new EtcdPolicyWriter(harness.etcdClient);
  for (const name of NAMES) await writer.put(name, V1_POLICY, { valid_roles: ['admin'] });
  // History between current keys must not disturb paging.
  for (let v = 0; v < 4; v++) await writer.put('team-c', V1_POLICY, { valid_roles: [`r${v}`] });
});

afterAll(async () => {
  await harness?.close();
});

async function listAll(token: string, limit: number): Promise<{ names: string[]; pages: number }> {
  const names: string[] = [];
  let pageToken: string | undefined;
  let pages = 0;
  for (;;) {
    const query = `limit=${limit}${pageToken ? `&page_token=${pageToken}` : ''}`;
    const response = await cms.request('GET', `/policies?${query}`, { token });
    expect(response.status).toBe(200);
    const body = response.json() as { policies: { name: string }[]; next_page_token?: string };
    expect(body.policies.length).toBeLessThanOrEqual(limit);
    names.push(...body.policies.map((p) => p.name));
    pages++;
    if (!body.next_page_token) return { names, pages };
    pageToken = body.next_page_token;
  }
}

describe('GET /policies pages', () => {
  it('a platform admin pages through every policy once, by name', async () => {
    const { names, pages } = await listAll(harness.tokens.admin, 4);
    expect(names).toHaveLength(NAMES.length);
    expect(new Set(names)).toEqual(new Set(NAMES));
    expect(names).toEqual([...NAMES].sort());
    expect(pages).toBe(Math.ceil(NAMES.length / 4));
  });

  it('without a limit the first 100 come in one page; a project user sees only theirs', async () => {
    const all = await cms.request('GET', '/policies', { token: harness.tokens.admin });
    expect(all.json().policies).toHaveLength(NAMES.length);
    expect(all.json().next_page_token).toBeUndefined();
    const own = await listAll(harness.tokens.teamA, 2);
    expect(own.names).toEqual(['team-a']);
  });

  it('refuses a bad limit or a token it did not give out, with a problem', async () => {
    for (const query of [
      'limit=0',
      'limit=1001',
      'limit=abc',
      'limit=1.5',
      'page_token=%2F%2F',
      `page_token=${Buffer.from('after:../x').toString('base64url')}`,
      'page_token=',
      'offset=3',
    ]) {
      const response = await cms.request('GET', `/policies?${query}`, { token: harness.tokens.admin });
      expect(response.status, query).toBe(400);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
    }
  });
});

describe('bounded compiles', () => {
  it('a burst beyond the queue is refused with 503 and Retry-After; nothing is half-written', async () => {
    const busy = await harness.startCms({ compileConcurrency: 1, compileQueue: 1 });
    try {
      const names = Array.from({ length: 8 }, (_, i) => `burst-${i}`);
      const answers = await Promise.all(
        names.map((name, i) => busy.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: policyBody(`${V1_POLICY}\nx := ${i}\n`) })),
      );
      const statuses = answers.map((a) => a.status);
      expect(statuses.filter((s) => s === 201).length).toBeGreaterThanOrEqual(2);
      const refused = answers.filter((a) => a.status === 503);
      expect(refused.length).toBeGreaterThan(0);
      expect(statuses.every((s) => s === 201 || s === 503)).toBe(true);
      for (const answer of refused) {
        expect(answer.headers['retry-after']).toBe('1');
        expect(answer.json()).toMatchObject({ status: 503, type: 'urn:gatehouse:problem:compiler-busy' });
      }
      // Exactly the accepted ones exist.
      for (const [i, name] of names.entries()) {
        const got = await cms.request('GET', `/policies/${name}`, { token: harness.tokens.admin });
        expect(got.status).toBe(answers[i]!.status === 201 ? 200 : 404);
      }
    } finally {
      await busy.stop();
    }
  });
});

describe('the largest policy', () => {
  it("a policy whose write would exceed etcd's request limit gets 413 with the sizes, and nothing is written", async () => {
    // A body limit above what etcd can take in one transaction (Rego and data are stored twice).
    const roomy = await harness.startCms({ bodyLimitBytes: 4 * 1024 * 1024 });
    try {
      const before = await harness.snapshot();
      const data = { blob: 'x'.repeat(900 * 1024) };
      const response = await roomy.request('PUT', '/policies/too-big', { token: harness.tokens.admin, body: policyBody(V1_POLICY, data) });
      expect(response.status).toBe(413);
      expect(response.json()).toMatchObject({ status: 413, type: 'urn:gatehouse:problem:policy-too-large' });
      expect(response.json().detail).toMatch(/MiB etcd write, over etcd's limit of 1\.50 MiB/);
      expect(await harness.snapshot()).toEqual(before);
      // Just under the limit goes through.
      const fits = await roomy.request('PUT', '/policies/fits', { token: harness.tokens.admin, body: policyBody(V1_POLICY, { blob: 'x'.repeat(500 * 1024) }) });
      expect(fits.status).toBe(201);
    } finally {
      await roomy.stop();
    }
  });
});
