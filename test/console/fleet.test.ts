// The console's fleet page, its "new policy" page and its policy list that
// pages and filters on the CMS, in a real browser (chromium + playwright-core)
// against a real CMS, etcd and runner processes. Two runners report to the
// fleet page; one frozen falls behind a write, stands out, and leaves the list
// when its lease expires. A policy is created from the console. Among 1,200
// names the list shows only those that start with the filter, a page at a
// time. A project user sees their project only and cannot create or see the
// fleet. Screenshots go to .local/console-screenshots/.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pLimit from 'p-limit';
import { chromium, type Browser, type Page } from 'playwright-core';
import { repoRoot, startRunner, type RunnerProcess } from '../support/runner-process.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(repoRoot, '.local', 'console-screenshots');
const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';
/**
 * The report lease of the runners. A frozen runner's report outlives it by at
 * most this long: long enough for the page (refreshed every second) to show
 * it behind a write before it goes, short enough to watch it go.
 */
const TTL_SECONDS = 4;

let harness: Harness;
let cms: Cms;
let writer: EtcdPolicyWriter;
const runners: RunnerProcess[] = [];
let browser: Browser;

async function signedIn(token: string, hash = ''): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${cms.baseUrl}/console/`);
  await page.fill('#token-input', token);
  await page.click('#sign-in');
  await page.waitForSelector('#policies, main h1');
  if (hash) await page.goto(`${cms.baseUrl}/console/${hash}`);
  return page;
}

/** The gateways the fleet page shows: id, row classes and the verdict word(s). */
async function rows(page: Page): Promise<{ id: string; stale: boolean; datacenter: string; verdict: string }[]> {
  return page.locator('#fleet tr.gateway').evaluateAll((trs) =>
    trs.map((tr) => ({
      id: tr.getAttribute('data-id') ?? '',
      stale: tr.classList.contains('stale'),
      datacenter: tr.children[3]?.textContent ?? '',
      verdict: tr.querySelector('td.verdict')?.textContent ?? '',
    })),
  );
}

async function gatewayIdOf(runner: RunnerProcess): Promise<string> {
  for (;;) {
    const listed = (await cms.request('GET', '/gateways', { token: harness.tokens.admin })).json() as { gateways: { id: string; pid: number }[] };
    const found = listed.gateways.find((g) => g.pid === runner.child.pid);
    if (found) return found.id;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms({ consoleDemoTokens: [] });
  writer = new EtcdPolicyWriter(harness.etcdClient);
  for (const name of ['team-a', 'team-b']) await writer.put(name, REGO, { roles: ['admin'] });
  const env = (dc: string) => ({
    ETCD_ENDPOINTS: harness.etcd.endpoints.join(','),
    RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-console-fleet-')),
    GATEWAY_REPORT_TTL_SECONDS: String(TTL_SECONDS),
    GATEHOUSE_DATACENTER: dc,
  });
  runners.push(...(await Promise.all([startRunner({ env: env('dc1') }), startRunner({ env: env('dc2') })])));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  mkdirSync(SHOTS, { recursive: true });
}, 90_000);

afterAll(async () => {
  await browser?.close();
  for (const runner of runners) {
    try {
      process.kill(runner.child.pid!, 'SIGCONT');
    } catch {
      // gone
    }
    await runner.stop();
  }
  await harness?.close();
});

describe('the fleet page', () => {
  it('lists every gateway live; a frozen one stands out behind a write, then is gone', async () => {
    const page = await signedIn(harness.tokens.admin);
    await page.click('#nav-fleet');
    await expect.poll(async () => (await rows(page)).length, { timeout: 15_000 }).toBe(2);
    await expect
      .poll(async () => (await rows(page)).map((r) => `${r.datacenter} ${r.verdict}`).sort(), { timeout: 10_000 })
      .toEqual(['dc1 in step', 'dc2 in step']);
    expect(await page.textContent('#fleet-summary')).toMatch(/^2 gateways; newest policy revision \d+; 0 stale or behind$/);

    const frozen = runners[1]!;
    const frozenId = await gatewayIdOf(frozen);
    const liveId = await gatewayIdOf(runners[0]!);
    process.kill(frozen.child.pid!, 'SIGSTOP');
    try {
      // A write the frozen runner cannot apply: it is behind until its lease takes its report away.
      await writer.put('team-b', REGO, { roles: ['admin', 'viewer'] });
      await expect
        .poll(async () => (await rows(page)).find((r) => r.id === frozenId), { timeout: TTL_SECONDS * 1000, interval: 100 })
        .toMatchObject({ stale: true, verdict: 'behind' });
      await expect.poll(async () => (await rows(page)).find((r) => r.id === liveId)).toMatchObject({ stale: false, verdict: 'in step' });
      await expect.poll(() => page.textContent('#fleet-summary')).toMatch(/; 1 stale or behind$/);
      await page.screenshot({ path: join(SHOTS, 'fleet.png'), fullPage: true });
      await expect.poll(async () => (await rows(page)).map((r) => r.id), { timeout: (TTL_SECONDS + 10) * 1000 }).toEqual([liveId]);
    } finally {
      process.kill(frozen.child.pid!, 'SIGCONT');
    }
    await page.close();
    // The rest of the file needs no gateway (and 1,200 policies would only load them).
    for (const runner of runners.splice(0)) await runner.stop();
  }, 60_000);
});

describe('a new policy', () => {
  it('is created from the list page, its errors marked first, then shown', async () => {
    const page = await signedIn(harness.tokens.admin);
    await page.click('#new-policy');
    await page.waitForSelector('#rego .cm-content');
    await page.fill('#new-name', 'fresh-one');
    // A syntax error: marked at its row in the editor, listed; nothing written.
    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    const broken = 'broken if input.user.role ==';
    await page.keyboard.type(broken);
    await page.click('#create');
    await page.waitForSelector('#message .diagnostic', { timeout: 15_000 });
    expect(await page.textContent('#message')).toMatch(/policy\.rego:\d+:\d+/);
    await page.waitForSelector('#rego .cm-lintRange-error');
    expect((await cms.request('GET', '/policies/fresh-one', { token: harness.tokens.admin })).status).toBe(404);

    await page.click('#rego .cm-content');
    await page.keyboard.press('Control+End');
    for (let i = 0; i < broken.length; i++) await page.keyboard.press('Backspace');
    await page.click('#create');
    await expect.poll(() => page.url(), { timeout: 15_000 }).toMatch(/#\/p\/fresh-one$/);
    await expect.poll(() => page.textContent('#version'), { timeout: 10_000 }).toBe('version 1');
    const created = await cms.request('GET', '/policies/fresh-one', { token: harness.tokens.admin });
    expect(created.json()).toMatchObject({ rego: expect.stringContaining('allow if input.user.role in data.roles'), data: { roles: [] } });

    // The same name again: If-None-Match: * keeps the existing policy.
    await page.goto(`${cms.baseUrl}/console/#/new`);
    await page.waitForSelector('#rego .cm-content');
    await page.fill('#new-name', 'fresh-one');
    await page.click('#create');
    await expect.poll(() => page.textContent('#message'), { timeout: 15_000 }).toBe('A policy named fresh-one exists already: nothing was written.');
    expect((await cms.request('GET', '/policies/fresh-one', { token: harness.tokens.admin })).headers.etag).toBe('"1"');
    await page.close();
  }, 60_000);
});

describe('the policy list among many', () => {
  beforeAll(async () => {
    const limit = pLimit(16);
    await Promise.all(Array.from({ length: 1_200 }, (_, i) => limit(() => writer.put(`svc-${String(i).padStart(4, '0')}`, REGO, { roles: [] }))));
  }, 120_000);

  const names = (page: Page) => page.locator('#policies a').allTextContents();
  const svc = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => `svc-${String(from + i).padStart(4, '0')}`);

  it('shows only the names that start with the filter, a page at a time', async () => {
    const page = await signedIn(harness.tokens.admin);
    await page.waitForSelector('#policies a');
    expect(await names(page)).toEqual(['fresh-one', ...svc(0, 49)]);
    expect(await page.isDisabled('#previous')).toBe(true);

    await page.fill('#filter', 'svc-10');
    await page.click('#apply-filter');
    await expect.poll(() => names(page)).toEqual(svc(1000, 1050));
    expect(await page.isDisabled('#next')).toBe(false);
    await page.click('#next');
    await expect.poll(() => names(page)).toEqual(svc(1050, 1100));
    expect(await page.isDisabled('#next')).toBe(true);
    await page.screenshot({ path: join(SHOTS, 'policies-filtered.png'), fullPage: true });
    await page.click('#previous');
    await expect.poll(() => names(page)).toEqual(svc(1000, 1050));

    await page.fill('#filter', 'team');
    await page.click('#apply-filter');
    await expect.poll(() => names(page)).toEqual(['team-a', 'team-b']);
    await page.fill('#filter', 'nothing-here');
    await page.click('#apply-filter');
    await expect.poll(() => page.textContent('#list-empty')).toBe('No policy you may read starts with "nothing-here".');
    expect(await names(page)).toEqual([]);
    await page.close();
  }, 60_000);

  it('a project user sees their project only, and can neither create nor see the fleet', async () => {
    const page = await signedIn(harness.tokens.teamA);
    await page.waitForSelector('#policies a');
    expect(await names(page)).toEqual(['team-a']);
    expect(await page.isDisabled('#next')).toBe(true);
    expect(await page.locator('#new-policy').count()).toBe(0);
    expect(await page.isHidden('#nav-fleet')).toBe(true);
    await page.fill('#filter', 'svc');
    await page.click('#apply-filter');
    await expect.poll(() => page.textContent('#list-empty')).toBe('No policy you may read starts with "svc".');
    await page.goto(`${cms.baseUrl}/console/#/new`);
    await page.waitForSelector('main h1:text("403")');
    await page.goto(`${cms.baseUrl}/console/#/fleet`);
    await page.waitForSelector('main h1:text("403")');
    expect(await page.textContent('main')).toMatch(/platform admin/i);
    await page.close();
  }, 30_000);
});
