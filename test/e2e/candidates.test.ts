// A policy's candidate end to end: written through the CMS behind APISIX,
// shadowed and canaried by the real runner's workers, reported back through
// etcd, promoted and discarded.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Etcd3 } from 'etcd3';
import { startTestStack, until, type TestStack } from '../support/stack.js';
import { candidateReportsPrefix } from '../../policy/store/index.js';
import { onCandidate } from '../../policy/candidate/index.js';

const LIVE = JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "admin"\n', data: {} });
/** One more role than the live version. */
const WITH_ANALYSTS = JSON.stringify({
  rego: 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role in {"admin", "analyst"}\n',
  data: {},
  sample_percent: 100,
});
const EVERYONE = (extra: Record<string, unknown>) =>
  JSON.stringify({ rego: 'package project.authz\nimport rego.v1\ndefault allow := true\n', data: {}, ...extra });

let test: TestStack;
let etcd: Etcd3;
const tokens: Record<string, string> = {};
const call: TestStack['call'] = (...args) => test.call(...args);

interface CandidateAnswer {
  version: number;
  live_version: number;
  sample_percent: number;
  enforce_percent: number;
  subject?: { sub: string; decided_by: string };
  policy: { rego: string };
  report: {
    evaluated: number;
    diverged: number;
    errors: number;
    enforced: { live: number; candidate: number };
    gateways: { gateway: string; evaluated: number }[];
    samples: { gateway: string; input: { user: { role: string }; request: { headers: Record<string, string> } }; live: unknown; candidate: unknown }[];
  };
}

const candidate = async (name: string, token = tokens.admin!, query = '') => {
  const res = await call('GET', `/policies/${name}/candidate${query}`, { token });
  return { status: res.status, body: res.status === 200 ? (JSON.parse(res.text) as CandidateAnswer) : null, text: res.text };
};

beforeAll(async () => {
  test = await startTestStack({ name: 'candidates', etcdName: `candidates-${process.pid}` });
  etcd = new Etcd3({ hosts: test.stack.etcdEndpoints });
  tokens.admin = await test.keys.token({ sub: 'root', role: 'platform_admin' });
  tokens.teamAAdmin = await test.keys.token({ sub: 'alice', role: 'admin', project: 'team-a' });
  tokens.teamAAnalyst = await test.keys.token({ sub: 'anna', role: 'analyst', project: 'team-a' });
  tokens.teamB = await test.keys.token({ sub: 'bob', role: 'admin', project: 'team-b' });
  for (const project of ['team-a', 'team-c']) {
    const res = await call('PUT', `/policies/${project}`, { token: tokens.admin, body: LIVE, headers: { prefer: 'wait=10' } });
    expect(res.status, res.text).toBe(201);
  }
}, 120_000);

afterAll(async () => {
  etcd?.close();
  await test?.stop();
});

describe('a shadow candidate', () => {
  it('that allows one more role: that role shows up as divergences with masked samples, is still denied, and is allowed after promote', async () => {
    const put = await call('PUT', '/policies/team-a/candidate', { token: tokens.admin, body: WITH_ANALYSTS, headers: { prefer: 'wait=10' } });
    expect(put.status, put.text).toBe(201);
    expect(put.headers.get('location')).toBe('/policies/team-a/candidate');
    expect(put.headers.get('gatehouse-behind')).toBeNull();

    test.rag.reset();
    for (let i = 0; i < 6; i++) {
      const res = await call('POST', '/rag/ask', { token: tokens.teamAAnalyst, body: '{"q":"hi"}', headers: { 'x-api-key': 'not-for-logs' } });
      expect(res.status).toBe(403); // shadowed, never enforced
    }
    for (let i = 0; i < 4; i++) expect((await call('POST', '/rag/ask', { token: tokens.teamAAdmin, body: '{"q":"hi"}' })).status).toBe(200);
    expect(test.rag.requests).toHaveLength(4);

    const seen = await until(
      () => candidate('team-a'),
      (c) => (c.body?.report.evaluated ?? 0) >= 10,
      'every shadowed decision in the report',
    );
    const report = seen.body!.report;
    expect(report.evaluated).toBe(10);
    expect(report.diverged).toBe(6);
    expect(report.errors).toBe(0);
    expect(report.enforced).toEqual({ live: 10, candidate: 0 });
    expect(report.gateways.reduce((n, g) => n + g.evaluated, 0)).toBe(10);
    expect(report.samples.length).toBeGreaterThan(0);
    for (const sample of report.samples) {
      expect(sample.input.user.role).toBe('analyst');
      // The whole input, though neither version reads a header: the sample shows what the request was.
      expect(Object.keys(sample.input.request.headers)).toContain('host');
      expect(sample.live).toEqual({ allow: false });
      expect(sample.candidate).toEqual({ allow: true });
      // Masked as decision logs are: no credential reaches a report.
      expect(JSON.stringify(sample)).not.toContain(tokens.teamAAnalyst);
      expect(JSON.stringify(sample)).not.toContain('not-for-logs');
    }

    // The project's users read it; another project's do not; only admins write.
    expect((await candidate('team-a', tokens.teamAAnalyst)).status).toBe(200);
    expect((await candidate('team-a', tokens.teamB)).status).toBe(403);
    expect((await call('POST', '/policies/team-a/candidate/promote', { token: tokens.teamAAdmin })).status).toBe(403);

    const live = JSON.parse((await call('GET', '/policies/team-a/status', { token: tokens.admin })).text) as { version: number };
    const promoted = await call('POST', '/policies/team-a/candidate/promote', {
      token: tokens.admin,
      body: JSON.stringify({ version: seen.body!.version }),
      headers: { 'if-match': `"${live.version}"`, prefer: 'wait=10' },
    });
    expect(promoted.status, promoted.text).toBe(200);
    expect(promoted.headers.get('etag')).toBe(`"${live.version + 1}"`);
    expect(promoted.headers.get('gatehouse-behind')).toBeNull();
    expect((await call('POST', '/rag/ask', { token: tokens.teamAAnalyst, body: '{"q":"hi"}' })).status).toBe(200);
    expect((await candidate('team-a')).status).toBe(404);
    expect(JSON.parse((await call('GET', '/policies/team-a', { token: tokens.admin })).text).rego).toContain('"analyst"');
    // Its reports go with it, from every gateway.
    await until(
      async () => Object.keys(await etcd.getAll().prefix(candidateReportsPrefix('team-a')).strings()).length,
      (n) => n === 0,
      'the reports of the promoted candidate to be gone',
    );
  });

  it('DELETE ends the shadowing on every gateway', async () => {
    const put = await call('PUT', '/policies/team-c/candidate', { token: tokens.admin, body: EVERYONE({}), headers: { prefer: 'wait=10' } });
    expect(put.status, put.text).toBe(201);
    const teamC = await test.keys.token({ sub: 'carl', role: 'viewer', project: 'team-c' });
    for (let i = 0; i < 4; i++) expect((await call('GET', '/rag/ask', { token: teamC })).status).toBe(403);
    // The decision API is a gateway too: it shadows the candidate for the document it answers.
    for (let i = 0; i < 2; i++) {
      const res = await call('POST', '/v1/data/team-c/project/authz/allow', { token: teamC, body: '{"input":{}}' });
      expect(JSON.parse(res.text)).toEqual({ result: false });
    }
    const seen = await until(
      () => candidate('team-c'),
      (c) => c.body?.report.diverged === 6,
      'the divergences in the report',
    );
    expect(seen.body!.report.gateways.some((g) => g.gateway.includes('decision-api') && g.evaluated === 2)).toBe(true);
    expect(seen.body!.report.samples.some((s) => s.live === false && s.candidate === true)).toBe(true);
    const discarded = await call('DELETE', '/policies/team-c/candidate', { token: tokens.admin, headers: { 'if-match': '"1"', prefer: 'wait=10' } });
    expect(discarded.status, discarded.text).toBe(204);
    expect(discarded.headers.get('gatehouse-behind')).toBeNull();
    expect((await candidate('team-c')).status).toBe(404);
    await until(
      async () => Object.keys(await etcd.getAll().prefix(candidateReportsPrefix('team-c')).strings()).length,
      (n) => n === 0,
      'the reports of the discarded candidate to be gone',
    );
    // Any gateway still shadowing would report again within its interval (1 s).
    for (let i = 0; i < 10; i++) expect((await call('GET', '/rag/ask', { token: teamC })).status).toBe(403);
    await new Promise((r) => setTimeout(r, 1_500));
    expect(await etcd.getAll().prefix(candidateReportsPrefix('team-c')).strings()).toEqual({});
  });
});

describe('a canary', () => {
  it('with enforce_percent 50, about half of 200 subjects get the candidate, each always the same one', async () => {
    const put = await call('PUT', '/policies/team-c/candidate', {
      token: tokens.admin,
      body: EVERYONE({ enforce_percent: 50, sample_percent: 0 }),
      headers: { prefer: 'wait=10' },
    });
    expect(put.status, put.text).toBe(201);
    let onCanary = 0;
    for (let i = 0; i < 200; i++) {
      const sub = `caller-${i}`;
      const token = await test.keys.token({ sub, role: 'viewer', project: 'team-c' });
      const first = (await call('GET', '/rag/ask', { token })).status;
      const second = (await call('GET', '/rag/ask', { token })).status;
      expect(second, sub).toBe(first);
      // The live version denies viewers; the candidate allows everyone.
      expect(first === 200, sub).toBe(onCandidate('team-c', sub, 50));
      if (first === 200) onCanary++;
    }
    expect(onCanary).toBeGreaterThan(70);
    expect(onCanary).toBeLessThan(130);
    // Who is on which version, as the CMS says it.
    const asked = await candidate('team-c', tokens.admin, '?subject=caller-7');
    expect(asked.body!.subject).toEqual({ sub: 'caller-7', decided_by: onCandidate('team-c', 'caller-7', 50) ? 'candidate' : 'live' });
    const report = await until(
      () => candidate('team-c'),
      (c) => (c.body?.report.enforced.live ?? 0) + (c.body?.report.enforced.candidate ?? 0) === 400,
      'the split in the report',
    );
    expect(report.body!.report.enforced).toEqual({ live: 400 - 2 * onCanary, candidate: 2 * onCanary });
    expect(report.body!.report.evaluated).toBe(0); // sample_percent 0: nothing shadowed
  });
});
