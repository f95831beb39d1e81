// The web console in a real browser: Debian's chromium driven by
// playwright-core, against a real CMS, etcd and runner. Sign in; edit a
// policy with a syntax error and see it marked at its row; fix it and save;
// see the version change and the gateway catch up; compare two versions;
// roll back. A project user sees only their project and cannot edit.
// Screenshots of the main pages go to .local/console-screenshots/.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { signedIn as signInToConsole } from '../support/console.js';
import { repoRoot, startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { onCandidate } from '../../policy/candidate/index.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(repoRoot, '.local', 'console-screenshots');
const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';

let harness: Harness;
let cms: Cms;
let runner: RunnerProcess;
let browser: Browser;

const signedIn = (token: string) => signInToConsole(browser, cms.baseUrl, token);

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms({ consoleDemoTokens: [] });
  runner = await startRunner({
    env: {
      ETCD_ENDPOINTS: harness.etcd.endpoints.join(','),
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-console-')),
      ...harness.keys.env,
    },
  });
  for (const name of ['team-a', 'team-b']) {
    const put = await cms.request('PUT', `/policies/${name}`, {
      token: harness.tokens.admin,
      headers: { prefer: 'wait=10' },
      body: JSON.stringify({ rego: REGO, data: { roles: ['admin'] } }),
    });
    expect(put.status).toBe(201);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  mkdirSync(SHOTS, { recursive: true });
  console.log(`console screenshots: ${SHOTS}`);
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await runner?.stop();
  await harness?.close();
});

describe('the console, as a platform admin', () => {
  it('signs in and lists the policies', async () => {
    const page = await signedIn(harness.tokens.admin);
    await page.waitForSelector('#policies');
    expect(await page.locator('#policies a').allTextContents()).toEqual(['team-a', 'team-b']);
    expect(await page.textContent('#who')).toContain('platform admin');
    await page.screenshot({ path: join(SHOTS, 'policies.png'), fullPage: true });
    await page.close();
  });

  it('marks a syntax error at its row, saves the fix, shows the new version enforced, compares and rolls back', async () => {
    const page = await signedIn(harness.tokens.admin);
    await page.click('#policies a:text("team-a")');
    await page.waitForSelector('#rego .cm-content');
    expect(await page.textContent('#version')).toBe('version 1');
    await expect.poll(() => page.textContent('#enforced'), { timeout: 10_000 }).toMatch(/^1\/1 /);

    // A syntax error on row 6: marked in the editor, listed with its row; nothing written.
    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    // An expression cut short (typed without brackets: the editor would close those).
    await page.keyboard.type('broken if input.user.role ==');
    await page.click('#save');
    await page.waitForSelector('#message .diagnostic', { timeout: 10_000 });
    expect(await page.textContent('#message')).toMatch(/policy\.rego:\d+:\d+/);
    await page.waitForSelector('#rego .cm-lintRange-error');
    await page.screenshot({ path: join(SHOTS, 'policy-error.png'), fullPage: true });
    expect((await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin })).headers.etag).toBe('"1"');

    // Fixed: saved with If-Match as version 2, which the gateway then enforces.
    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    for (let i = 0; i < 'broken if input.user.role =='.length; i++) await page.keyboard.press('Backspace');
    await page.keyboard.type('allow if input.user.role == "auditor"');
    await page.click('#save');
    await expect.poll(() => page.textContent('#version'), { timeout: 10_000 }).toBe('version 2');
    await expect.poll(() => page.textContent('#enforced'), { timeout: 10_000 }).toBe('1/1 gateways enforce version 2');
    expect(await page.locator('#gateways td:text("enforces")').count()).toBe(1);
    await page.screenshot({ path: join(SHOTS, 'policy-saved.png'), fullPage: true });

    // History: version 1 against version 2 shows the added line.
    await page.click('#compare');
    await page.waitForSelector('#diff .add');
    expect(await page.textContent('#diff .add')).toContain('auditor');
    await page.screenshot({ path: join(SHOTS, 'history-diff.png'), fullPage: true });

    // Roll back to version 1: written as version 3, and enforced.
    await page.click('button.rollback[data-version="1"]');
    await expect.poll(() => page.textContent('#version'), { timeout: 10_000 }).toBe('version 3');
    await expect.poll(() => page.textContent('#enforced'), { timeout: 10_000 }).toBe('1/1 gateways enforce version 3');
    expect((await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin })).json().rego).toBe(REGO);
    await page.close();
  }, 60_000);
});

describe('a candidate in the console', () => {
  it('shows its rollout, what the gateways saw and who is on which version; a platform admin promotes it', async () => {
    const put = await cms.request('PUT', '/policies/team-b/candidate', {
      token: harness.tokens.admin,
      headers: { prefer: 'wait=10' },
      body: JSON.stringify({ rego: REGO, data: { roles: ['admin', 'viewer'] }, enforce_percent: 50 }),
    });
    expect(put.status).toBe(201);
    // Decisions for a viewer the canary leaves on the live version: denied, and shadowed by a candidate that allows them.
    const viewer = Array.from({ length: 50 }, (_, i) => `viewer-${i}`).find((sub) => !onCandidate('team-b', sub, 50))!;
    const bearer = await harness.keys.token({ sub: viewer, role: 'viewer', project: 'team-b' });
    const conf = [
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["caller-project"]}' },
    ];
    for (let i = 0; i < 3; i++) expect(await chainStatus(runner.socketPath, conf, { bearer })).toBe(403);
    const page = await signedIn(harness.tokens.admin);
    await page.goto(`${cms.baseUrl}/console/#/p/team-b`);
    // What the gateway saw: three divergences, the samples' results side by side.
    await expect.poll(() => page.locator('#candidate-samples tr.sample').count(), { timeout: 10_000 }).toBe(3);
    expect(await page.textContent('#candidate-report')).toMatch(/^3 shadowed, 3 diverged/);
    expect(await page.locator('#candidate-samples tr.sample td code').allTextContents()).toEqual(
      Array.from({ length: 3 }, () => ['{"allow":false}', '{"allow":true}']).flat(),
    );
    await expect
      .poll(() => page.textContent('#candidate'), { timeout: 10_000 })
      .toContain('Candidate version 1: shadowed on 100% of decisions, enforced for 50% of callers.');
    // A subject on each side of the canary, as the gateways choose it.
    const sides = new Set<string>();
    for (let i = 0; i < 8 && sides.size < 2; i++) {
      await page.fill('#subject', `caller-${i}`);
      await page.click('#which-version');
      const asked = (await cms.request('GET', `/policies/team-b/candidate?subject=caller-${i}`, { token: harness.tokens.admin })).json();
      await expect.poll(() => page.textContent('#decided-by')).toBe(`caller-${i} is decided by the ${asked.subject.decided_by} version`);
      sides.add(asked.subject.decided_by);
    }
    expect(sides.size).toBe(2);
    await page.screenshot({ path: join(SHOTS, 'candidate.png'), fullPage: true });
    await page.click('#promote');
    await expect.poll(() => page.textContent('#version'), { timeout: 10_000 }).toBe('version 2');
    await expect.poll(() => page.textContent('#candidate'), { timeout: 10_000 }).toContain('No candidate.');
    expect((await cms.request('GET', '/policies/team-b', { token: harness.tokens.admin })).json().data).toEqual({ roles: ['admin', 'viewer'] });
    await page.close();
  }, 60_000);
});

describe('the console, as a project user', () => {
  it('shows only their project, read only', async () => {
    const page = await signedIn(harness.tokens.teamA);
    await page.waitForSelector('#policies');
    expect(await page.locator('#policies a').allTextContents()).toEqual(['team-a']);
    await page.click('#policies a:text("team-a")');
    await page.waitForSelector('#rego .cm-content');
    expect(await page.locator('#save').count()).toBe(0);
    expect(await page.getAttribute('#rego .cm-content', 'contenteditable')).toBe('false');
    expect(await page.locator('button.rollback').count()).toBe(0);
    await page.screenshot({ path: join(SHOTS, 'project-user.png'), fullPage: true });
    // Another project's page: the CMS refuses it, and the console says so.
    await page.goto(`${cms.baseUrl}/console/#/p/team-b`);
    await page.waitForSelector('main h1:text("403")');
    await page.close();
  });

  it('a token the CMS refuses does not sign in', async () => {
    const page = await browser.newPage();
    await page.goto(`${cms.baseUrl}/console/`);
    await page.fill('#token-input', 'not-a-token');
    await page.click('#sign-in');
    await page.waitForSelector('#message:text("refused")');
    await page.close();
  });
});

describe('the console files', () => {
  it('are served with a content security policy and nothing from elsewhere', async () => {
    const res = await cms.request('GET', '/console/');
    expect(res.status).toBe(200);
    expect(String(res.headers['content-security-policy'])).toMatch(/default-src 'none'; script-src 'self'/);
    expect(res.text).not.toMatch(/https?:\/\//);
    expect((await cms.request('GET', '/console/demo-tokens')).status).toBe(200);
  });
});
