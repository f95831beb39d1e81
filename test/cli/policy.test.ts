// `gatehouse policy`: a directory of policies round-tripped against a real
// CMS on a real etcd (and a runner, for --wait): pull, edit, diff, push,
// status, history, rollback, check and local tests, each with the exit code a
// CI job relies on; a stale push is a conflict, never an overwrite.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPolicyCli } from '../../cli/policy/command.js';
import { EXIT } from '../../cli/io.js';
import { repoRoot, startRunner, type RunnerProcess } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';
import { opaPath } from '../support/policies.js';

let harness: Harness;
let cms: Cms;
let runner: RunnerProcess;
let dir: string;

const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';
const TESTS = 'package team.authz_test\nimport rego.v1\nimport data.team.authz\n\ntest_admin if authz.allow with input as {"user": {"role": "admin"}}\n';
const FAILING = 'package team.authz_test\nimport rego.v1\nimport data.team.authz\n\ntest_nobody if authz.allow with input as {}\n';
// 12345678901234567890 is past 2^53: it must come back with every digit.
const BODY = JSON.stringify({ rego: REGO, data: { roles: ['admin'] }, tests: { 'authz_test.rego': TESTS } }).replace(
  '"roles"',
  '"big":12345678901234567890,"roles"',
);

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
  for (const name of ['team-a', 'team-b'])
    expect((await cms.request('PUT', `/policies/${name}`, { token: harness.tokens.admin, body: BODY })).status).toBe(201);
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
    expect(
      (await cli(['history', 'team-a'])).out
        .trim()
        .split('\n')
        .map((l) => Number(l.trim().split(/\s+/)[0])),
    ).toEqual([2, 1]);
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

/** A CMS that answers whatever it is told to: names to list, and a policy object (by name) for every GET. */
async function fakeCms(host: string, names: unknown[], objects: Record<string, unknown>) {
  const requests: { url: string; authorization: string | undefined }[] = [];
  const server = createServer((req, res) => {
    requests.push({ url: req.url ?? '', authorization: req.headers.authorization });
    const url = new URL(req.url ?? '/', 'http://cms');
    if (url.pathname === '/policies')
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ policies: names.map((name) => ({ name })) }));
    const name = decodeURIComponent(url.pathname.replace(/^\/policies\//, ''));
    const object = objects[name] ?? objects['*'];
    res.writeHead(200, { 'content-type': 'application/json', etag: '"1"' }).end(JSON.stringify(object));
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const port = (server.address() as AddressInfo).port;
  return { port, requests, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** Every file and folder under root, relative. */
function tree(root: string): string[] {
  return readdirSync(root, { recursive: true, encoding: 'utf8' }).sort();
}

const GOOD = { rego: REGO, data: { roles: ['admin'] }, tests: { 'authz_test.rego': TESTS } };

describe('gatehouse policy pull against a CMS that sends paths for names', () => {
  async function pullFrom(cmsUrl: string, args: string[], root: string) {
    let out = '';
    let err = '';
    const code = await runPolicyCli(['pull', ...args, '--dir', join(root, 'policies'), '--url', cmsUrl], {
      env: { GATEHOUSE_TOKEN: 'a-token-for-the-fake-cms' },
      out: (t) => (out += t),
      err: (t) => (err += t),
    });
    return { code, out, err };
  }

  it('refuses a listed policy name that is not one (../, absolute, ..): nothing written, inside the folder or out', async () => {
    for (const bad of ['../escaped', '/tmp/gatehouse-absolute', 'a/../../b', '..', 'UPPER']) {
      const root = mkdtempSync(join(tmpdir(), 'gh-evil-names-'));
      const cmsFake = await fakeCms('127.0.0.1', ['good', bad], { '*': GOOD });
      try {
        const res = await pullFrom(`http://127.0.0.1:${cmsFake.port}`, [], root);
        expect(res.code, bad).toBe(EXIT.failed);
        expect(res.err).toContain(`the CMS listed ${JSON.stringify(bad)}, which is not a policy name: refused, nothing written`);
        expect(tree(root), bad).toEqual([]);
        // Only the list was asked for.
        expect(cmsFake.requests.map((r) => r.url)).toEqual(['/policies?limit=1000']);
      } finally {
        await cmsFake.close();
      }
    }
  });

  it('refuses such a name on the command line too, before asking the CMS anything', async () => {
    const root = mkdtempSync(join(tmpdir(), 'gh-evil-args-'));
    const cmsFake = await fakeCms('127.0.0.1', [], { '*': GOOD });
    try {
      for (const bad of ['../escaped', '/tmp/gatehouse-absolute']) {
        const res = await pullFrom(`http://127.0.0.1:${cmsFake.port}`, [bad], root);
        expect(res.code, bad).toBe(EXIT.usage);
        expect(res.err).toContain(`${JSON.stringify(bad)} is not a policy name`);
      }
      expect(cmsFake.requests).toHaveLength(0);
      expect(tree(root)).toEqual([]);
    } finally {
      await cmsFake.close();
    }
  });

  it("refuses test file names the CMS's own rule refuses (../, absolute, not *_test.rego): not one policy written", async () => {
    for (const bad of ['../../pwned_test.rego', '/tmp/gatehouse-pwned_test.rego', 'sub/dir_test.rego', '.gatehouse.json', 'policy.rego']) {
      const root = mkdtempSync(join(tmpdir(), 'gh-evil-tests-'));
      const evil = { ...GOOD, tests: { 'authz_test.rego': TESTS, [bad]: TESTS } };
      const cmsFake = await fakeCms('127.0.0.1', ['good', 'evil'], { good: GOOD, evil });
      try {
        const res = await pullFrom(`http://127.0.0.1:${cmsFake.port}`, [], root);
        expect(res.code, bad).toBe(EXIT.failed);
        expect(res.err).toContain(`the CMS sent evil in a form it never accepts (test file name ${JSON.stringify(bad)} must be`);
        expect(tree(root), bad).toEqual([]);
      } finally {
        await cmsFake.close();
      }
    }
  });

  it('refuses a plain http:// CMS that is not on this machine unless --insecure: the token is not sent', async () => {
    const external = Object.values(networkInterfaces())
      .flat()
      .find((address) => address && address.family === 'IPv4' && !address.internal)?.address;
    const cmsFake = await fakeCms('0.0.0.0', ['good'], { '*': GOOD });
    try {
      for (const url of [`http://${external ?? '192.0.2.1'}:${cmsFake.port}`, 'http://cms.gatehouse.invalid:9080']) {
        const root = mkdtempSync(join(tmpdir(), 'gh-insecure-'));
        const res = await pullFrom(url, [], root);
        expect(res.code, url).toBe(EXIT.usage);
        expect(res.err).toMatch(/refusing to send the token over plain http to .*: use https:\/\/, or pass --insecure/);
        expect(tree(root)).toEqual([]);
      }
      expect(cmsFake.requests).toHaveLength(0);
      // Loopback over http is fine (as every other test here), and so is --insecure, when asked for.
      if (external) {
        const root = mkdtempSync(join(tmpdir(), 'gh-insecure-'));
        const res = await pullFrom(`http://${external}:${cmsFake.port}`, ['--insecure'], root);
        expect(res.code, res.err).toBe(EXIT.ok);
        expect(existsSync(join(root, 'policies', 'good', 'authz_test.rego'))).toBe(true);
        expect(cmsFake.requests[0]?.authorization).toBe('Bearer a-token-for-the-fake-cms');
      }
    } finally {
      await cmsFake.close();
    }
  });
});

describe('gatehouse policy test runs the tests as the CMS gate does', () => {
  const bin = () => join(repoRoot, (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin.gatehouse!);

  async function testWithBin(policiesDir: string, env: NodeJS.ProcessEnv) {
    try {
      const { stdout, stderr } = await promisify(execFile)(process.execPath, [bin(), 'policy', 'test', '--dir', policiesDir], { encoding: 'utf8', env });
      return { code: 0, out: stdout + stderr };
    } catch (error) {
      const failure = error as { code?: number; stdout?: string; stderr?: string };
      return { code: failure.code, out: `${failure.stdout ?? ''}${failure.stderr ?? ''}` };
    }
  }

  it('a test cannot reach a listener with http.send, nor read GATEHOUSE_TOKEN from opa.runtime().env; the CLI says so', async () => {
    const connections: string[] = [];
    const listener = createNetServer((socket) => {
      connections.push(socket.remoteAddress ?? '?');
      socket.on('data', () => socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
    const port = (listener.address() as AddressInfo).port;
    const token = `tok-${Math.random().toString(36).slice(2)}`;
    const policies = mkdtempSync(join(tmpdir(), 'gh-sandbox-'));
    const write = (name: string, test: string) => {
      mkdirSync(join(policies, name));
      writeFileSync(join(policies, name, 'policy.rego'), REGO);
      writeFileSync(join(policies, name, 'data.json'), '{"roles": ["admin"]}');
      writeFileSync(join(policies, name, 'leak_test.rego'), `package team.authz_test\nimport rego.v1\n\n${test}\n`);
    };
    write('sender', `test_send if http.send({"method": "POST", "url": "http://127.0.0.1:${port}/", "body": {"x": 1}}).status_code == 200`);
    write('reader', 'test_token if startswith(opa.runtime().env.GATEHOUSE_TOKEN, "tok-")');
    try {
      const res = await testWithBin(policies, { PATH: process.env.PATH, GATEHOUSE_TOKEN: token });
      expect(res.code, res.out).toBe(EXIT.refused);
      expect(res.out).toMatch(/sender: the tests do not load:[\s\S]*undefined function http\.send/);
      expect(res.out).toMatch(/reader: the tests do not load:[\s\S]*undefined function opa\.runtime/);
      expect(res.out).not.toContain(token);
      expect(connections).toEqual([]);
    } finally {
      await new Promise((resolve) => listener.close(resolve));
    }
  });

  it("opa runs with PATH and a private HOME only: no token, key or proxy setting of the caller's environment", async () => {
    // OPA_PATH names a wrapper that records the environment opa is started with, then runs the real opa.
    const work = mkdtempSync(join(tmpdir(), 'gh-opa-env-'));
    const recorded = join(work, 'env.txt');
    const wrapper = join(work, 'opa');
    writeFileSync(wrapper, `#!/bin/sh\nenv >> '${recorded}'\necho --- >> '${recorded}'\nexec '${opaPath}' "$@"\n`, { mode: 0o755 });
    const policies = join(work, 'policies');
    mkdirSync(join(policies, 'team-a'), { recursive: true });
    writeFileSync(join(policies, 'team-a', 'policy.rego'), REGO);
    writeFileSync(join(policies, 'team-a', 'data.json'), '{"roles": ["admin"]}');
    writeFileSync(join(policies, 'team-a', 'authz_test.rego'), TESTS);
    const secrets = { GATEHOUSE_TOKEN: 'tok-env-5b1e', VAULT_TOKEN: 'hvs.env-9c2d', HTTPS_PROXY: 'http://proxy-user:proxy-pass-3f7a@127.0.0.1:1' };
    const res = await testWithBin(policies, { PATH: process.env.PATH, OPA_PATH: wrapper, ...secrets });
    expect(res.code, res.out).toBe(EXIT.ok);
    const runs = readFileSync(recorded, 'utf8')
      .split('---\n')
      .filter((run) => run.trim() !== '');
    expect(runs.length).toBeGreaterThan(0);
    for (const run of runs) {
      const env = Object.fromEntries(
        run
          .trim()
          .split('\n')
          .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
      );
      // What sh itself sets (PWD, SHLVL, _) aside, opa gets PATH and a HOME of its own.
      const { PWD: _pwd, SHLVL: _shlvl, _: _last, OLDPWD: _old, ...given } = env;
      expect(Object.keys(given).sort(), run).toEqual(['HOME', 'PATH']);
      expect(given.PATH).toBe(process.env.PATH);
      expect(given.HOME).toMatch(/gatehouse-policy-test-/);
      for (const value of Object.values(secrets)) expect(run).not.toContain(value);
    }
  });
});
