// `gatehouse policy`: a directory of policies round-tripped against a real
// CMS on a real etcd (and a runner, for --wait): pull, edit, diff, push,
// status, history, rollback, check and local tests, each with the exit code a
// CI job relies on; a stale push is a conflict, never an overwrite.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT, runPolicyCli } from '../../tools/policy-cli/cli.js';
import { repoRoot, startRunner, type RunnerProcess } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;
let runner: RunnerProcess;
let dir: string;

const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';
const TESTS = 'package team.authz_test\nimport rego.v1\nimport data.team.authz\n\ntest_admin if authz.allow with input as {"user": {"role": "admin"}}\n';
const FAILING = 'package team.authz_test\nimport rego.v1\nimport data.team.authz\n\ntest_nobody if authz.allow with input as {}\n';
// 12345678901234567890 is past 2^53: it must come back with every digit.
const BODY = JSON.stringify({ rego: REGO, data: { roles: ['admin'] }, tests: { 'authz_test.rego': TESTS } }).replace('"roles"', '"big":12345678901234567890,"roles"');

async function cli(args: string[], options: { token?: string | null } = {}) {
  let out = '';
  let err = '';
  const env: NodeJS.ProcessEnv = { GATEHOUSE_URL: cms.baseUrl };
  if (options.token !== null) env.GATEHOUSE_TOKEN = options.token ?? harness.tokens.admin;
  const code = await runPolicyCli([...args, '--dir', dir], { env, out: (t) => (out += t), err: (t) => (err += t) });
  return { code, out, err, json: () => JSON.parse(out) as Record<string, any> };
}

const version = async (name: string) => (await cms.request('GET', `/policies/${name}`, { token: harness.tokens.admin })).headers.etag;

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  runner = await startRunner({ env: { ETCD_ENDPOINTS: harness.etcd.endpoints.join(','), RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-cli-state-')) } });
  for (const name of ['team-a', 'team-b']) expect((await cms.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: BODY })).status).toBe(201);
  dir = mkdtempSync(join(tmpdir(), 'gh-policies-'));
}, 60_000);

afterAll(async () => {
  await runner?.stop();
  await harness?.close();
});

describe('gatehouse policy', () => {
  it('pull writes every policy as files, numbers exact, with the version pulled', async () => {
    const res = await cli(['pull', '--json']);
    expect(res.code).toBe(EXIT.ok);
    expect(res.json().pulled).toEqual([
      { name: 'team-a', version: 1 },
      { name: 'team-b', version: 1 },
    ]);
    expect(readFileSync(join(dir, 'team-a', 'policy.rego'), 'utf8')).toBe(REGO);
    expect(readFileSync(join(dir, 'team-a', 'data.json'), 'utf8')).toContain('"big": 12345678901234567890');
    expect(readFileSync(join(dir, 'team-a', 'authz_test.rego'), 'utf8')).toBe(TESTS);
    expect(JSON.parse(readFileSync(join(dir, 'team-a', '.gatehouse.json'), 'utf8'))).toMatchObject({ version: 1 });
  });

  it('diff: nothing after a pull; an edit shows as a unified diff, and --exit-code says so', async () => {
    expect((await cli(['diff'])).out).toMatch(/no differences/);
    expect((await cli(['diff', '--exit-code'])).code).toBe(EXIT.ok);
    writeFileSync(join(dir, 'team-a', 'data.json'), readFileSync(join(dir, 'team-a', 'data.json'), 'utf8').replace('"admin"', '"admin",\n    "analyst"'));
    const res = await cli(['diff', '--exit-code']);
    expect(res.code).toBe(EXIT.differs);
    expect(res.out).toMatch(/~ team-a \(live version 1\)/);
    expect(res.out).toMatch(/\+\s+"analyst"/);
    expect(res.out).not.toMatch(/team-b \(/);
    const json = (await cli(['diff', '--json'])).json();
    expect(json.changes).toEqual([
      { name: 'team-a', status: 'changed', files: ['data.json'] },
      { name: 'team-b', status: 'same', files: [] },
    ]);
  });

  it('push writes only what changed, with If-Match, and can wait until every gateway enforces it', async () => {
    const res = await cli(['push', '--wait', '10', '--json']);
    expect(res.code, res.err).toBe(EXIT.ok);
    expect(res.json().pushed).toEqual([
      { name: 'team-a', outcome: 'replaced', version: 2, enforcedBy: '1/1' },
      { name: 'team-b', outcome: 'unchanged', version: 1 },
    ]);
    expect(await version('team-b')).toBe('"1"');
    expect(JSON.parse(readFileSync(join(dir, 'team-a', '.gatehouse.json'), 'utf8'))).toMatchObject({ version: 2 });
    expect((await cli(['diff', '--exit-code'])).code).toBe(EXIT.ok);
  });

  it('a new directory is created on the CMS (If-None-Match)', async () => {
    execFileSync('cp', ['-r', join(dir, 'team-b'), join(dir, 'team-c')]);
    execFileSync('rm', [join(dir, 'team-c', '.gatehouse.json')]);
    const res = await cli(['push', 'team-c']);
    expect(res.code, res.err).toBe(EXIT.ok);
    expect(res.out).toMatch(/team-c: created, version 1/);
  });

  it('a stale push is a conflict, not an overwrite; so is pushing what was never pulled', async () => {
    // Someone else writes team-b after our pull.
    expect((await cms.request('PUT', '/policies/team-b', { token: harness.tokens.admin, body: BODY.replace('"admin"', '"admin","other"') })).status).toBe(200);
    writeFileSync(join(dir, 'team-b', 'policy.rego'), `${REGO}# ours\n`);
    const res = await cli(['push', 'team-b']);
    expect(res.code).toBe(EXIT.conflict);
    expect(res.err).toMatch(/changed on the CMS since version 1 was pulled \(now version 2\)/);
    expect(await version('team-b')).toBe('"2"');
    expect((await cms.request('GET', '/policies/team-b', { token: harness.tokens.admin })).json().data.roles).toEqual(['admin', 'other']);
    // Pulled again, the edit is gone; a directory made by hand for an existing policy is refused too.
    expect((await cli(['pull', 'team-b'])).code).toBe(EXIT.ok);
    execFileSync('rm', [join(dir, 'team-b', '.gatehouse.json')]);
    writeFileSync(join(dir, 'team-b', 'policy.rego'), `${REGO}# mine\n`);
    expect((await cli(['push', 'team-b'])).code).toBe(EXIT.conflict);
    expect(await version('team-b')).toBe('"2"');
    expect((await cli(['pull', 'team-b'])).code).toBe(EXIT.ok);
  });

  it('check runs the CMS gate without writing; test runs the tests locally with opa', async () => {
    expect((await cli(['check', 'team-a'])).out).toMatch(/team-a: ok \(1 tests passed\)/);
    expect((await cli(['test', 'team-a'])).code).toBe(EXIT.ok);
    writeFileSync(join(dir, 'team-a', 'nobody_test.rego'), FAILING);
    const checked = await cli(['check', 'team-a']);
    expect(checked.code).toBe(EXIT.refused);
    expect(checked.out).toMatch(/nobody_test\.rego:5: FAIL test_nobody/);
    const tested = await cli(['test', 'team-a', '--json']);
    expect(tested.code).toBe(EXIT.refused);
    expect(tested.json().tested).toEqual([{ name: 'team-a', passed: 1, failed: ['test_nobody'] }]);
    // A refused push writes nothing.
    expect((await cli(['push', 'team-a'])).code).toBe(EXIT.refused);
    expect(await version('team-a')).toBe('"2"');
    execFileSync('rm', [join(dir, 'team-a', 'nobody_test.rego')]);
  });

  it('status, history and rollback', async () => {
    const status = await cli(['status', 'team-a', '--json']);
    expect(status.code).toBe(EXIT.ok);
    expect(status.json()).toMatchObject({ version: 2, enforcedBy: 1 });
    expect((await cli(['history', 'team-a'])).out.trim().split('\n').map((l) => Number(l.trim().split(/\s+/)[0]))).toEqual([2, 1]);
    const back = await cli(['rollback', 'team-a', '1', '--wait', '10']);
    expect(back.code, back.err).toBe(EXIT.ok);
    expect(back.out).toMatch(/version 1 written again as version 3, enforced by 1\/1 gateways/);
    expect((await cli(['diff', 'team-a', '--exit-code'])).code).toBe(EXIT.differs);
  });

  it('usage and credentials: exit 2', async () => {
    expect((await cli(['frobnicate'])).code).toBe(EXIT.usage);
    expect((await cli(['status'])).code).toBe(EXIT.usage);
    expect((await cli(['push', '--wait', 'soon'])).code).toBe(EXIT.usage);
    const noToken = await cli(['pull'], { token: null });
    expect(noToken.code).toBe(EXIT.usage);
    expect(noToken.err).toMatch(/GATEHOUSE_TOKEN/);
    expect((await cli(['pull'], { token: 'not-a-token' })).code).toBe(EXIT.usage);
    // A project user pulls what it may read: its own project.
    const own = await cli(['pull', '--json'], { token: harness.tokens.teamA });
    expect(own.code).toBe(EXIT.ok);
    expect(own.json().pulled).toEqual([{ name: 'team-a', version: 3 }]);
    expect((await cli(['push', 'team-a'], { token: harness.tokens.teamA })).code).toBe(EXIT.ok); // unchanged: nothing to write
    writeFileSync(join(dir, 'team-a', 'policy.rego'), `${REGO}# project user edit\n`);
    expect((await cli(['push', 'team-a'], { token: harness.tokens.teamA })).code).toBe(EXIT.usage); // 403: only platform admins write
  });

  it('the compiled bin runs it', async () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    // Not execFileSync: the CMS answering it runs in this process.
    const { stdout: out } = await promisify(execFile)(process.execPath, [join(repoRoot, pkg.bin.gatehouse!), 'policy', 'history', 'team-a', '--dir', dir], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH, GATEHOUSE_URL: cms.baseUrl, GATEHOUSE_TOKEN: harness.tokens.admin },
    });
    expect(out).toMatch(/^\s+3 /);
    expect(existsSync(join(dir, 'team-a', 'policy.rego'))).toBe(true);
  });
});
