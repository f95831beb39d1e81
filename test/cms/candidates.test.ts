// /policies/{name}/candidate on the CMS, against etcd and opa: checked as a
// write is, stored beside the live version and never listed as a policy;
// bad input, stale preconditions and missing policies answered clearly with
// nothing written; promote and discard in one transaction each, audited.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

const LIVE = JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := false\n', data: {} });
const DRAFT = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := true\n', data: { exact: 1.5 }, ...extra });

const admin = () => harness.tokens.admin;
const put = (name: string, body: string, headers: Record<string, string> = {}, token = admin()) =>
  cms.request('PUT', `/policies/${name}/candidate`, { token, body, headers });

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  for (const name of ['team-a', 'team-b']) expect((await cms.request('PUT', `/policies/${name}`, { token: admin(), body: LIVE })).status).toBe(201);
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

describe('a candidate', () => {
  it('is refused, with nothing written, for bad input, a policy that does not compile, or no live version', async () => {
    const before = await harness.snapshot();
    const cases: [string, string, number, RegExp][] = [
      ['team-a', '{"rego": ', 400, /JSON/],
      ['team-a', DRAFT({ sample_percent: 'all' }), 400, /sample_percent/],
      ['team-a', DRAFT({ enforce_percent: 101 }), 400, /enforce_percent/],
      ['team-a', DRAFT({ enforce_percent: -1 }), 400, /enforce_percent/],
      ['team-a', DRAFT({ shadow: true }), 400, /unexpected member/],
      ['team-a', JSON.stringify({ rego: 'package project.authz\nallow if {', data: {} }), 400, /compile/i],
      ['team-z', DRAFT(), 404, /no policy/],
      ['Team-A', DRAFT(), 400, /policy names/],
    ];
    for (const [name, body, status, detail] of cases) {
      const res = await put(name, body);
      expect(res.status, `${name} ${body}`).toBe(status);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(res.text).toMatch(detail);
    }
    expect((await put('team-a', DRAFT(), {}, harness.tokens.teamA)).status).toBe(403);
    expect(await harness.snapshot()).toEqual(before);
  });

  it('is stored beside the live version with its rollout, readable by the project, never listed as a policy', async () => {
    const res = await put('team-a', DRAFT({ sample_percent: 25, enforce_percent: 10 }), { 'if-none-match': '*' });
    expect(res.status, res.text).toBe(201);
    expect(res.headers.etag).toBe('"1"');
    expect(JSON.parse(res.text)).toMatchObject({ name: 'team-a.candidate', version: 1 });
    expect((await put('team-a', DRAFT(), { 'if-none-match': '*' })).status).toBe(412);

    const read = await cms.request('GET', '/policies/team-a/candidate', { token: harness.tokens.teamA });
    expect(read.status).toBe(200);
    const body = read.json() as Record<string, unknown>;
    expect(body).toMatchObject({ name: 'team-a', version: 1, live_version: 1, sample_percent: 25, enforce_percent: 10 });
    expect(body.report).toMatchObject({ evaluated: 0, diverged: 0, gateways: [], samples: [] });
    // The policy object as written, its numbers exact.
    expect(read.text).toContain('"policy":{"rego":');
    expect(read.text).toContain('"exact":1.5');
    expect((await cms.request('GET', '/policies/team-a/candidate', { token: harness.tokens.teamB })).status).toBe(403);
    expect((await cms.request('GET', '/policies/team-a/candidate?subject=', { token: admin() })).status).toBe(400);

    // The policy's status names it beside the live version.
    const status = (await cms.request('GET', '/policies/team-a/status', { token: harness.tokens.teamA })).json() as Record<string, unknown>;
    expect(status.candidate).toEqual({ version: 1, sample_percent: 25, enforce_percent: 10 });
    expect(((await cms.request('GET', '/policies/team-b/status', { token: admin() })).json() as Record<string, unknown>).candidate).toBeUndefined();
    // The live version is untouched, and the list names policies only.
    expect((await cms.request('GET', '/policies/team-a', { token: admin() })).text).toBe(LIVE);
    const list = (await cms.request('GET', '/policies?limit=1', { token: admin() })).json() as { policies: { name: string }[]; next_page_token?: string };
    const names = [...list.policies.map((p) => p.name)];
    let token = list.next_page_token;
    while (token) {
      const page = (await cms.request('GET', `/policies?limit=1&page_token=${token}`, { token: admin() })).json() as typeof list;
      names.push(...page.policies.map((p) => p.name));
      token = page.next_page_token;
    }
    expect(names).toEqual(['team-a', 'team-b']);
  });

  it('If-Match guards the candidate on PUT and DELETE, the live version on promote', async () => {
    expect((await put('team-a', DRAFT(), { 'if-match': '"7"' })).status).toBe(412);
    expect((await put('team-a', DRAFT({ sample_percent: 50 }), { 'if-match': '"1"' })).status).toBe(200);
    expect((await cms.request('DELETE', '/policies/team-a/candidate', { token: admin(), headers: { 'if-match': '"1"' } })).status).toBe(412);
    const before = await harness.snapshot();
    const stale = await cms.request('POST', '/policies/team-a/candidate/promote', { token: admin(), headers: { 'if-match': '"9"' } });
    expect(stale.status).toBe(412);
    const otherCandidate = await cms.request('POST', '/policies/team-a/candidate/promote', { token: admin(), body: '{"version":1}' });
    expect(otherCandidate.status).toBe(412);
    expect(otherCandidate.text).toMatch(/version 2/);
    expect((await cms.request('POST', '/policies/team-a/candidate/promote', { token: admin(), body: '{"version":"2"}' })).status).toBe(400);
    expect(await harness.snapshot()).toEqual(before);
  });

  it('promote writes it as the next version and removes it in one transaction; the audit says so', async () => {
    const res = await cms.request('POST', '/policies/team-a/candidate/promote', { token: admin(), body: '{"version":2}', headers: { 'if-match': '"1"' } });
    expect(res.status, res.text).toBe(200);
    expect(res.headers.etag).toBe('"2"');
    expect((await cms.request('GET', '/policies/team-a', { token: admin() })).text).toBe(DRAFT());
    expect((await cms.request('GET', '/policies/team-a/candidate', { token: admin() })).status).toBe(404);
    // One revision changed both: the new live version and the candidate's removal.
    const meta = await harness.etcdClient.get('/policies/team-a/meta').exec();
    const gone = await harness.etcdClient.get('/policies/team-a/candidate/meta').exec();
    expect(gone.kvs).toHaveLength(0);
    expect(meta.kvs[0]!.mod_revision).toBe(String(Number(gone.header.revision)));
    expect(cms.logLines.some((line) => line.includes('"operation":"promote"') && line.includes('"candidateVersion":2'))).toBe(true);
    expect((await cms.request('POST', '/policies/team-a/candidate/promote', { token: admin() })).status).toBe(404);
  });

  it('DELETE discards it (audited); deleting the policy takes its candidate along', async () => {
    expect((await put('team-b', DRAFT())).status).toBe(201);
    const discarded = await cms.request('DELETE', '/policies/team-b/candidate', { token: admin(), headers: { 'if-match': '"1"' } });
    expect(discarded.status).toBe(204);
    expect(cms.logLines.some((line) => line.includes('"operation":"discard candidate"'))).toBe(true);
    expect((await cms.request('DELETE', '/policies/team-b/candidate', { token: admin() })).status).toBe(404);
    // Candidate versions go on from the history, as a policy's do.
    const again = await put('team-b', DRAFT());
    expect(again.headers.etag).toBe('"2"');
    expect((await cms.request('DELETE', '/policies/team-b', { token: admin() })).status).toBe(204);
    expect((await harness.etcdClient.getAll().prefix('/policies/team-b/candidate/').keys()).filter((k) => !k.includes('/history/'))).toEqual([]);
    expect((await harness.etcdClient.get('/policy-index/team-b.candidate').exec()).kvs).toHaveLength(0);
  });
});
