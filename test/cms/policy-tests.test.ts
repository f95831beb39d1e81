// The test gate: a policy object may carry Rego test modules; the CMS runs
// them with the real opa against the submitted Rego and data before it
// writes. Failing tests are 422 with their names and messages; a test module
// that does not compile (or leans on a builtin the gateway's wasm engine
// lacks) is 400 naming its file; nothing is written on any failure.
// POST /policies/{name}/check runs the same checks without writing.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

const V1 = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles\n';
const V0 = 'package team.authz\n\ndefault allow = false\n\nallow {\n  input.user.role == data.valid_roles[_]\n}\n';
const data = { valid_roles: ['admin', 'analyst'] };

const V1_TESTS = `package team.authz_test
import rego.v1
import data.team.authz

test_admin_allowed if authz.allow with input as {"user": {"role": "admin"}}
test_viewer_denied if not authz.allow with input as {"user": {"role": "viewer"}}
# Reads the data document the policy is written with.
test_every_listed_role_allowed if {
	every role in data.valid_roles {
		authz.allow with input as {"user": {"role": role}}
	}
}
`;
const V0_TESTS = 'package team.authz_test\n\ntest_admin_allowed {\n  data.team.authz.allow with input as {"user": {"role": "admin"}}\n}\n';
const FAILING = `package team.authz_test
import rego.v1
import data.team.authz

test_admin_allowed if authz.allow with input as {"user": {"role": "admin"}}
test_viewer_allowed if authz.allow with input as {"user": {"role": "viewer"}}
test_nobody_allowed if authz.allow with input as {}
`;
const HTTP_SEND = `package team.authz_test
import rego.v1

test_calls_out if {
	resp := http.send({"method": "GET", "url": "https://example.com"})
	resp.status_code == 200
}
`;

const body = (rego: string, tests?: Record<string, string>) => JSON.stringify({ rego, data, ...(tests ? { tests } : {}) });
const put = (name: string, text: string) => cms.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: text });
const check = (name: string, text: string, token = harness.tokens.admin) => cms.request('POST', `/policies/${name}/check`, { token, body: text });

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

describe('policies with tests', () => {
  it('v1 policy with v1 tests (one reading data): written, and the tests are stored, returned and kept in history', async () => {
    const res = await put('team-a', body(V1, { 'authz_test.rego': V1_TESTS }));
    expect(res.status).toBe(201);
    const got = await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin });
    expect(got.json()).toEqual({ rego: V1, data, tests: { 'authz_test.rego': V1_TESTS } });
    // A version without tests clears them; the history keeps the old ones.
    expect((await put('team-a', body(V1))).status).toBe(200);
    expect((await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin })).json()).toEqual({ rego: V1, data });
    const v1 = await cms.request('GET', '/policies/team-a/history/1', { token: harness.tokens.admin });
    expect((v1.json() as { tests: Record<string, string> }).tests).toEqual({ 'authz_test.rego': V1_TESTS });
    expect(cms.logLines.some((line) => /"operation":"create".*"testsPassed":3/.test(line))).toBe(true);
  });

  it('v0 policy with v0 tests, and a v0 policy with v1 tests: each run in the syntax it parses in', async () => {
    expect((await put('team-v0', body(V0, { 'a_test.rego': V0_TESTS }))).status).toBe(201);
    expect((await put('team-v0', body(V0, { 'a_test.rego': V1_TESTS }))).status).toBe(200);
  });

  it('failing tests: 422 with each failing name, file, row and message; nothing written', async () => {
    const before = await harness.snapshot();
    const res = await put('team-b', body(V1, { 'authz_test.rego': FAILING }));
    expect(res.status).toBe(422);
    expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
    const problem = res.json() as { type: string; passed: number; failures: { name: string; file: string; row: number; message: string }[] };
    expect(problem.type).toBe('urn:gatehouse:problem:policy-tests-failed');
    expect(problem.passed).toBe(1);
    expect(problem.failures.map((f) => f.name).sort()).toEqual(['test_nobody_allowed', 'test_viewer_allowed']);
    expect(problem.failures.find((f) => f.name === 'test_viewer_allowed')).toMatchObject({ file: 'authz_test.rego', row: 6 });
    for (const failure of problem.failures) expect(failure.message).toMatch(new RegExp(failure.name));
    expect(await harness.snapshot()).toEqual(before);
  });

  it("a test calling a builtin the gateway's wasm engine lacks is refused with its file and row; nothing written", async () => {
    const before = await harness.snapshot();
    const res = await put('team-b', body(V1, { 'net_test.rego': HTTP_SEND }));
    expect(res.status).toBe(400);
    const problem = res.json() as { errors: { file: string; row: number; message: string }[] };
    expect(problem.errors[0]).toMatchObject({ file: 'net_test.rego', row: 5 });
    expect(problem.errors[0]!.message).toMatch(/http\.send/);
    expect(await harness.snapshot()).toEqual(before);
  });

  it('a test module that does not parse, or that holds no test, is refused; bad test names and shapes are 400', async () => {
    const before = await harness.snapshot();
    expect((await put('team-b', body(V1, { 'x_test.rego': 'package team.authz_test\ntest_broken if {' }))).status).toBe(400);
    expect((await put('team-b', body(V1, { 'x_test.rego': 'package team.authz_test\nimport rego.v1\nhelper := 1\n' }))).status).toBe(400);
    for (const tests of [{ 'x.rego': V1_TESTS }, { '../x_test.rego': V1_TESTS }, { 'x_test.rego': '' }, { 'x_test.rego': 1 }, {}, ['x_test.rego']]) {
      const res = await put('team-b', JSON.stringify({ rego: V1, data, tests }));
      expect(res.status, JSON.stringify(tests)).toBe(400);
    }
    expect(await harness.snapshot()).toEqual(before);
  });
});

describe('POST /policies/{name}/check', () => {
  it('compiles, loads and tests without writing: 200 with the test count, 422 on a failure', async () => {
    const before = await harness.snapshot();
    const ok = await check('team-c', body(V1, { 'authz_test.rego': V1_TESTS }));
    expect(ok.status).toBe(200);
    expect(ok.json()).toMatchObject({ ok: true, entrypoint: 'team/authz', syntaxVersion: 'v1', tests: { passed: 3 } });
    expect((await check('team-c', body(V1, { 'authz_test.rego': FAILING }))).status).toBe(422);
    expect((await check('team-c', body('package broken\nallow if {'))).status).toBe(400);
    expect(await harness.snapshot()).toEqual(before);
    expect((await cms.request('GET', '/policies/team-c', { token: harness.tokens.admin })).status).toBe(404);
  });

  it('is for platform admins', async () => {
    expect((await check('team-a', body(V1), harness.tokens.teamA)).status).toBe(403);
    expect((await cms.request('GET', '/policies/team-a/check', { token: harness.tokens.admin })).status).toBe(405);
  });
});

describe('rollback restores the tests', () => {
  it('version 1 had tests, version 2 none: a rollback to 1 brings them back', async () => {
    const res = await cms.request('POST', '/policies/team-a/rollback', { token: harness.tokens.admin, body: '{"version":1}' });
    expect(res.status).toBe(200);
    expect((await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin })).json()).toEqual({
      rego: V1,
      data,
      tests: { 'authz_test.rego': V1_TESTS },
    });
  });
});
