// The Gatehouse console: the CMS API in a browser, one module per page
// (pages/), routed by the location's hash. Everything is rendered with
// textContent: nothing from the API becomes HTML.
import { claims, signOut, token } from './api.js';
import { isAdmin } from './dom.js';
import { budgetsView, budgetView } from './pages/budgets.js';
import { fleetView } from './pages/fleet.js';
import { newPolicyView } from './pages/new-policy.js';
import { listView } from './pages/policies.js';
import { playgroundView } from './pages/playground.js';
import { policyView } from './pages/policy.js';
import { signInView } from './pages/sign-in.js';

/** What the page being shown must stop (its polling) when another is shown. */
let leave: (() => void) | null = null;

function header(): void {
  const who = document.getElementById('who')!;
  const out = document.getElementById('sign-out')!;
  const c = claims();
  who.textContent = token() ? `${c.sub ?? '?'}${isAdmin() ? ' (platform admin)' : c.project ? ` (project ${c.project})` : ''}` : '';
  out.hidden = !token();
  document.getElementById('nav-fleet')!.hidden = !isAdmin();
  out.onclick = () => {
    signOut();
    location.hash = '#/';
    void route();
  };
}

/** The pages by the hash they answer: a pattern, and the page given its captures (it may return what stops it). */
const routes: [RegExp, (...captures: string[]) => Promise<(() => void) | void>][] = [
  [/^#\/p\/([a-z0-9-]+)$/, (name) => policyView(name)],
  [/^#\/budgets$/, () => budgetsView()],
  [/^#\/b\/([a-z0-9-]+)$/, (project) => budgetView(project)],
  [/^#\/p\/([a-z0-9-]+)\/playground$/, (name) => playgroundView(name)],
  [/^#\/fleet$/, () => fleetView()],
  [/^#\/new$/, () => newPolicyView()],
  [/^(#\/?)?$/, () => listView()],
];

async function route(): Promise<void> {
  leave?.();
  leave = null;
  header();
  if (!token()) return signInView(route);
  for (const [pattern, page] of routes) {
    const match = pattern.exec(location.hash);
    if (match) {
      leave = (await page(...match.slice(1))) ?? null;
      return;
    }
  }
  return listView();
}

window.addEventListener('hashchange', () => void route());
void route();
