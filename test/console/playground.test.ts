// The console's playground in a real browser (Debian's chromium driven by
// playwright-core) against a real CMS, etcd and opa: an input evaluated with
// the live version (allow for one, deny for another), a draft's compile
// error marked at its row, a draft evaluated; a project user evaluates their
// own project's live version only, and cannot edit. Screenshot:
// .local/console-screenshots/playground.png.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { signedIn as signInToConsole } from '../support/console.js';
import { repoRoot } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(repoRoot, '.local', 'console-screenshots');
// Six rows; the editor's seventh (empty) row is where the tests type.
const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';

let harness: Harness;
let cms: Cms;
let browser: Browser;

const signedIn = (token: string) => signInToConsole(browser, cms.baseUrl, token);

/** Replaces the input editor's document and evaluates it, with the live version or the draft. */
async function evaluateIn(page: Page, input: string, button: '#evaluate-live' | '#evaluate-draft'): Promise<void> {
  await page.fill('#input .cm-content', input);
  await page.click(button);
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms({ consoleDemoTokens: [] });
  for (const name of ['team-a', 'team-b']) {
    const put = await cms.request('PUT', `/policies/${name}`, {
      token: harness.tokens.admin,
      body: JSON.stringify({ rego: REGO, data: { roles: ['admin'] } }),
    });
    expect(put.status).toBe(201);
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  mkdirSync(SHOTS, { recursive: true });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await harness?.close();
});

describe('the playground', () => {
  it('as a platform admin: allow for one input, deny for another, a compile error at its row, a draft evaluated; nothing written', async () => {
    const before = await harness.snapshot();
    const page = await signedIn(harness.tokens.admin);
    await page.click('#policies a:text("team-a")');
    await page.click('#playground-link');
    await page.waitForSelector('#input .cm-content');
    expect(page.url()).toMatch(/#\/p\/team-a\/playground$/);
    expect(await page.getAttribute('#rego .cm-content', 'contenteditable')).toBe('true');
    expect(await page.textContent('#rego .cm-content')).toContain('allow if input.user.role in data.roles');

    await evaluateIn(page, '{"user": {"role": "admin"}}', '#evaluate-live');
    await expect.poll(() => page.textContent('#result'), { timeout: 10_000 }).toMatch(/"allow": true/);
    expect(await page.textContent('#evaluation')).toMatch(/^version 1 evaluated in \d+\.\d ms$/);
    await evaluateIn(page, '{"user": {"role": "viewer"}}', '#evaluate-live');
    await expect.poll(() => page.textContent('#result'), { timeout: 10_000 }).toMatch(/"allow": false/);

    // A draft with an error on row 7: refused, listed with its row, marked on that row of the Rego editor.
    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    await page.keyboard.type('also if no_such_function(input.user)');
    await page.click('#evaluate-draft');
    await page.waitForSelector('#message .diagnostic', { timeout: 10_000 });
    expect(await page.textContent('#message')).toMatch(/policy\.rego:7:\d+: .*no_such_function/);
    await page.waitForSelector('#rego .cm-lintRange-error');
    expect(await page.locator('#rego .cm-line').nth(6).locator('.cm-lintRange-error').count()).toBe(1);
    expect(await page.textContent('#result')).toBe('');

    // Fixed: the draft allows viewers too, and says so for a viewer.
    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    for (let i = 0; i < 'also if no_such_function(input.user)'.length; i++) await page.keyboard.press('Backspace');
    await page.keyboard.type('allow if input.user.role == "viewer"');
    await page.click('#evaluate-draft');
    await expect.poll(async () => `${await page.textContent('#result')}${await page.textContent('#message')}`, { timeout: 10_000 }).toMatch(/"allow": true/);
    expect(await page.textContent('#evaluation')).toMatch(/^the draft evaluated in /);
    expect(await page.locator('#message .diagnostic').count()).toBe(0);
    await page.screenshot({ path: join(SHOTS, 'playground.png'), fullPage: true });

    expect(await harness.snapshot()).toEqual(before);
    await page.close();
  }, 60_000);

  it('as a project user: their own project live only, read-only Rego, no draft; another project is refused', async () => {
    const page = await signedIn(harness.tokens.teamA);
    await page.goto(`${cms.baseUrl}/console/#/p/team-a/playground`);
    await page.waitForSelector('#input .cm-content');
    expect(await page.getAttribute('#rego .cm-content', 'contenteditable')).toBe('false');
    expect(await page.getAttribute('#data .cm-content', 'contenteditable')).toBe('false');
    expect(await page.locator('#evaluate-draft').count()).toBe(0);
    await evaluateIn(page, '{"user": {"role": "admin"}}', '#evaluate-live');
    await expect.poll(() => page.textContent('#result'), { timeout: 10_000 }).toMatch(/"allow": true/);
    await page.screenshot({ path: join(SHOTS, 'playground-project-user.png'), fullPage: true });

    await page.goto(`${cms.baseUrl}/console/#/p/team-b/playground`);
    await page.waitForSelector('main h1:text("403")');
    expect(await page.locator('#evaluate-live').count()).toBe(0);
    await page.close();
  });
});
