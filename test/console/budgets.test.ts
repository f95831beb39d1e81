// The console's budgets and usage page in a real browser (Debian's chromium
// driven by playwright-core) against a real CMS and etcd. Usage is seeded as
// a gateway records it (budget/usage.ts UsageRecorder) over several hours and
// two models; the page charts it per hour and per day (uPlot, on canvas) with
// the API's totals as text beside each chart. A platform admin edits the
// budget with If-Match (an invalid document and a stale version are
// refused and explained); a project user sees their own project, read only.
// No Content-Security-Policy violation on the way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { pino } from 'pino';
import { HOUR_MS, type UsageRecord } from '../../budget/keys.js';
import { UsageRecorder } from '../../budget/usage.js';
import { BudgetLedger } from '../../budget/ledger.js';
import { createEtcdClient } from '../../etcd/index.js';
import type { Etcd3 } from 'etcd3';
import { repoRoot } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = join(repoRoot, '.local', 'console-screenshots');
const BUDGET = { windows: [{ per: 'hour', tokens: 50_000 }], models: { 'gpt-4o': { windows: [{ per: 'day', tokens: 200_000 }] } }, default_max_tokens: 512 };

let harness: Harness;
let cms: Cms;
let browser: Browser;
/** A gateway holding a block of team-a's hour window, as one does while it serves calls. */
let ledger: BudgetLedger;
let ledgerClient: Etcd3;
/** What the gateway charged in the current hour, all models: the hour window's "charged so far". */
let chargedThisHour = 0;

function usage(requests: number, prompt: number, completion: number): UsageRecord {
  return { requests, prompt_tokens: prompt, completion_tokens: completion, charged_tokens: prompt + completion, unsettled: 0 };
}

/** A page signed in with `token`, recording every CSP violation and console error it meets. */
async function signedIn(token: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems: string[] = [];
  // Errors in the console but the statuses of answers (the CMS refusing a request is the page's to show).
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.exposeFunction('reportViolation', (text: string) => problems.push(text));
  // (Run in the page, which the test's own types do not describe: written as text.)
  await page.addInitScript({
    content: "document.addEventListener('securitypolicyviolation', (e) => window.reportViolation(`csp: ${e.violatedDirective} ${e.blockedURI}`));",
  });
  await page.goto(`${cms.baseUrl}/console/`);
  await page.fill('#token-input', token);
  await page.click('#sign-in');
  await page.waitForSelector('main h1:text("Policies")');
  return { page, problems };
}

/** The totals table beside a chart, as the API's field names: { model: record }. */
async function totalsShown(page: Page, id: string): Promise<Record<string, UsageRecord>> {
  const rows = await page.locator(`#${id} tr`).evaluateAll((trs) => trs.slice(1).map((tr) => [...tr.children].map((td) => td.textContent ?? '')));
  return Object.fromEntries(
    rows.map(([model, ...n]) => [
      model!,
      { requests: Number(n[0]), prompt_tokens: Number(n[1]), completion_tokens: Number(n[2]), charged_tokens: Number(n[3]), unsettled: Number(n[4]) },
    ]),
  );
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  for (const project of ['team-a', 'team-b']) {
    const put = await cms.request('PUT', `/budgets/${project}`, {
      token: harness.tokens.admin,
      headers: { 'if-none-match': '*' },
      body: JSON.stringify(BUDGET),
    });
    expect(put.status).toBe(201);
  }
  // Several hours and two models, the way a gateway records its calls; two days ago too; and another project's.
  const recorder = new UsageRecorder(harness.etcdClient, pino({ level: 'silent' }));
  const now = Date.now();
  const seeded: [number, string, UsageRecord][] = [
    [0, 'gpt-4o', usage(3, 1200, 300)],
    [0, 'llama-3', usage(1, 100, 50)],
    [1, 'gpt-4o', usage(2, 800, 200)],
    [2, 'llama-3', usage(5, 2000, 900)],
    [3, 'gpt-4o', usage(1, 400, 100)],
    [3, 'llama-3', usage(2, 600, 150)],
    [50, 'gpt-4o', usage(4, 1600, 400)],
  ];
  for (const [hoursAgo, model, record] of seeded) recorder.record('team-a', model, now - hoursAgo * HOUR_MS, record);
  recorder.record('team-b', 'mistral', now, usage(9, 9000, 900));
  await recorder.flush();
  chargedThisHour = seeded.filter(([h]) => h === 0).reduce((sum, [, , r]) => sum + r.charged_tokens, 0);
  ledgerClient = createEtcdClient(harness.etcd.endpoints);
  ledger = new BudgetLedger({ client: ledgerClient, gateway: 'gw-console', log: pino({ level: 'silent' }), idleReturnMs: 600_000 });
  await ledger.start();
  expect((await ledger.reserve('team-a', [{ limit: { scope: '*', per: 'hour', tokens: 50_000 }, block: 2_000 }], 700)).ok).toBe(true);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  mkdirSync(SHOTS, { recursive: true });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await ledger?.stop();
  ledgerClient?.close();
  await harness?.close();
});

describe('the budgets page, as a platform admin', () => {
  it("lists the budgets and charts a project's usage per hour and per day by model, with the API's totals beside", async () => {
    const { page, problems } = await signedIn(harness.tokens.admin);
    await page.click('#nav-budgets');
    await page.waitForSelector('#budgets');
    expect(await page.locator('#budgets a').allTextContents()).toEqual(['team-a', 'team-b']);
    await page.click('#budgets a:text("team-a")');
    await page.waitForSelector('#chart-hours canvas');
    await page.waitForSelector('#chart-days canvas');
    expect(await page.textContent('#version')).toBe('version 1');

    for (const [chart, totals, group] of [
      ['chart-hours', 'totals-hours', 'hour'],
      ['chart-days', 'totals-days', 'day'],
    ] as const) {
      // The chart's series are the models; the totals beside it are the API's for the range the page shows.
      expect(await page.locator(`#${chart} .u-legend .u-series .u-label`).allTextContents()).toEqual([`${group} (UTC)`, 'gpt-4o', 'llama-3']);
      const [from, to] = (await page.textContent(`#${totals} .range`))!.split(' to ');
      const api = await cms.request('GET', `/usage/team-a?from=${from}&to=${to}&group=${group}`, { token: harness.tokens.admin });
      expect(api.status).toBe(200);
      const body = api.json() as { total: UsageRecord; models: Record<string, UsageRecord> };
      expect(await totalsShown(page, totals)).toEqual({ ...body.models, total: body.total });
    }
    // The record of two days ago is in the days chart's totals only (the hours chart shows 48 hours).
    const hours = await totalsShown(page, 'totals-hours');
    const days = await totalsShown(page, 'totals-days');
    expect(hours['gpt-4o']!.requests).toBe(days['gpt-4o']!.requests - 4);
    expect(days.total!.charged_tokens).toBe(8800);
    expect(hours.total!.charged_tokens).toBe(6800);

    // The hour window of the project shows what this hour was charged, and where the ledger stands: the gateway's block held.
    const row = await page.locator('#window-table tr:has-text("project") td').allTextContents();
    expect(row.slice(0, 7)).toEqual(['project', 'hour', '50,000', chargedThisHour.toLocaleString('en'), '0', '2,000', '48,000']);
    expect(row[7]).toBe(
      new Date(Math.floor(Date.now() / HOUR_MS) * HOUR_MS + HOUR_MS)
        .toISOString()
        .replace('T', ' ')
        .replace(/:00\.000Z$/, ''),
    );
    await page.screenshot({ path: join(SHOTS, 'budgets.png'), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  }, 60_000);

  it('edits the budget with If-Match; shows the problems of an invalid one and explains a stale version', async () => {
    const { page, problems } = await signedIn(harness.tokens.admin);
    await page.goto(`${cms.baseUrl}/console/#/b/team-a`);
    await page.waitForSelector('#budget .cm-content');
    const replaceDocument = async (text: string) => {
      await page.click('#budget .cm-content');
      await page.keyboard.press('Control+A');
      await page.keyboard.press('Delete');
      await page.keyboard.insertText(text);
    };

    // An invalid document: 400, every problem with its pointer, nothing written.
    await replaceDocument(JSON.stringify({ windows: [{ per: 'week', tokens: -1 }] }));
    await page.click('#save');
    await page.waitForSelector('#message .diagnostic');
    expect(await page.textContent('#message')).toContain('400 Invalid budget');
    expect(await page.locator('#message .diagnostic').allTextContents()).toEqual(expect.arrayContaining([expect.stringMatching(/^\/windows\/0\/per: /)]));
    expect((await cms.request('GET', '/budgets/team-a', { token: harness.tokens.admin })).headers.etag).toBe('"1"');

    // A valid one: saved with If-Match "1" as version 2.
    const edited = { ...BUDGET, windows: [{ per: 'hour', tokens: 60_000 }] };
    await replaceDocument(JSON.stringify(edited, null, 2));
    await page.click('#save');
    await expect.poll(() => page.textContent('#version'), { timeout: 10_000 }).toBe('version 2');
    const stored = await cms.request('GET', '/budgets/team-a', { token: harness.tokens.admin });
    expect(stored.headers.etag).toBe('"2"');
    expect(stored.json()).toEqual(edited);
    expect(await page.locator('#window-table tr:has-text("project") td').nth(2).textContent()).toBe('60,000');

    // Someone else writes version 3: this page's save (If-Match "2") is refused with 412, explained, nothing written.
    const other = await cms.request('PUT', '/budgets/team-a', { token: harness.tokens.admin, headers: { 'if-match': '"2"' }, body: JSON.stringify(BUDGET) });
    expect(other.status).toBe(200);
    await replaceDocument(JSON.stringify({ ...BUDGET, default_max_tokens: 1024 }));
    await page.click('#save');
    await expect.poll(() => page.textContent('#message')).toContain('Someone saved a newer version than yours (2) meanwhile: nothing was written.');
    expect((await cms.request('GET', '/budgets/team-a', { token: harness.tokens.admin })).json()).toEqual(BUDGET);
    // Reload shows theirs.
    await page.click('#reload');
    await expect.poll(() => page.textContent('#version')).toBe('version 3');
    expect(problems).toEqual([]);
    await page.close();
  }, 60_000);
});

describe('the budgets page, as a project user', () => {
  it('shows their own project only, read only; another project is refused', async () => {
    const { page, problems } = await signedIn(harness.tokens.teamA);
    await page.click('#nav-budgets');
    await page.waitForSelector('#budgets');
    expect(await page.locator('#budgets a').allTextContents()).toEqual(['team-a']);
    await page.click('#budgets a:text("team-a")');
    await page.waitForSelector('#chart-hours canvas');
    expect(await page.locator('#save').count()).toBe(0);
    expect(await page.getAttribute('#budget .cm-content', 'contenteditable')).toBe('false');
    expect(await page.locator('#chart-hours .u-legend .u-series .u-label').allTextContents()).toEqual(['hour (UTC)', 'gpt-4o', 'llama-3']);
    await page.goto(`${cms.baseUrl}/console/#/b/team-b`);
    await page.waitForSelector('main h1:text("403")');
    expect(await page.locator('#chart-hours').count()).toBe(0);
    expect(problems).toEqual([]);
    // The watch would have seen a violation: an inline script, which the CSP blocks.
    await page.evaluate("document.body.append(Object.assign(document.createElement('script'), { textContent: 'window.ran = true' }))");
    await expect.poll(() => problems.some((p) => p.startsWith('csp: script-src'))).toBe(true);
    expect(await page.evaluate('window.ran')).toBeUndefined();
    await page.close();
  }, 60_000);
});
