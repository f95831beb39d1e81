// Signing in to the web console in a browser page, as a user would.
import type { Browser, Page } from 'playwright-core';

/**
 * A new page of `browser` signed in to the console at `baseUrl` with `token`,
 * once the policy list is shown. (Not "any paragraph": the list page holds a
 * message paragraph that stays empty, hence hidden, and a wait for a visible
 * one that finds it first never ends.)
 */
export async function signedIn(browser: Browser, baseUrl: string, token: string): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${baseUrl}/console/`);
  await page.fill('#token-input', token);
  await page.click('#sign-in');
  await page.waitForSelector('#policies');
  return page;
}
