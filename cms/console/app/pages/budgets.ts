// LLM budgets and usage: the projects with a budget (a project user sees
// their own), and one project's budget document in the editor (platform
// admins save it with If-Match, or create it with If-None-Match: *), what
// its windows were charged so far, and charts of the tokens charged per hour
// and per day by model (uPlot, on canvas) beside the API's totals as text.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { api, claims, type Problem } from '../api.js';
import { editor, el, isAdmin, main, problemView } from '../dom.js';

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** The hours chart covers the last two days, the days chart the last 31 (the current month is always inside). */
const HOURS_SHOWN = 48;
const DAYS_SHOWN = 31;

interface UsageRecord {
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  charged_tokens: number;
  unsettled: number;
}
interface Usage {
  from: string;
  to: string;
  total: UsageRecord;
  models: Record<string, UsageRecord>;
  hours?: ({ hour: string; model: string } & UsageRecord)[];
  days?: ({ day: string; model: string } & UsageRecord)[];
}
interface Window {
  per: 'minute' | 'hour' | 'day' | 'month';
  tokens: number;
}
interface Budget {
  windows: Window[];
  models?: Record<string, { windows: Window[] }>;
}

const TEMPLATE = { windows: [{ per: 'day', tokens: 1_000_000 }], default_max_tokens: 512 };

/** The projects whose budget the user may read: every budget for platform admins, their own project for its users. */
export async function budgetsView(): Promise<void> {
  let projects: string[];
  if (isAdmin()) {
    const answer = await api<{ budgets: { project: string }[] }>('GET', '/budgets?limit=1000');
    if (answer.status !== 200) return problemView(answer.status, answer.body as Problem);
    projects = answer.body.budgets.map((b) => b.project);
  } else {
    projects = claims().project ? [claims().project!] : [];
  }
  const name = el('input', { id: 'new-project', placeholder: 'project' });
  const open = el('button', { id: 'open-project', textContent: 'Open' });
  open.onclick = () => {
    if (name.value) location.hash = `#/b/${name.value.trim()}`;
  };
  main.replaceChildren(
    el('h1', { textContent: 'Budgets and usage' }),
    projects.length
      ? el('ul', { id: 'budgets' }, ...projects.map((p) => el('li', {}, el('a', { href: `#/b/${p}`, textContent: p }))))
      : el('p', { textContent: 'No budget you may read.' }),
    ...(isAdmin() ? [el('p', {}, 'Another project (a budget to create): ', name, ' ', open)] : []),
  );
}

const rerender = () => window.dispatchEvent(new HashChangeEvent('hashchange'));

/** One project's budget and usage; the function it returns removes the charts (and their window listeners). */
export async function budgetView(project: string): Promise<() => void> {
  const path = `/budgets/${encodeURIComponent(project)}`;
  const answer = await api<Budget>('GET', path);
  const admin = isAdmin();
  if (answer.status !== 200 && !(answer.status === 404 && admin)) {
    problemView(answer.status, answer.body as Problem);
    return () => undefined;
  }
  const exists = answer.status === 200;
  let etag = answer.etag;
  const version = el('span', { id: 'version', textContent: exists && etag ? `version ${etag.replace(/"/g, '')}` : 'no budget yet' });
  const box = el('div', { className: 'editor', id: 'budget' });
  const save = el('button', { id: 'save', textContent: exists ? 'Save' : 'Create' });
  const message = el('div', { id: 'message' });
  const windows = el('div', { id: 'windows' });
  const hoursChart = el('div', { id: 'chart-hours', className: 'chart' });
  const hoursTotals = el('div', { id: 'totals-hours', className: 'totals' });
  const daysChart = el('div', { id: 'chart-days', className: 'chart' });
  const daysTotals = el('div', { id: 'totals-days', className: 'totals' });
  main.replaceChildren(
    el('h1', {}, `Budget of ${project} `, version),
    box,
    ...(admin ? [el('p', {}, save)] : [el('p', { className: 'muted', textContent: 'Read only: only platform admins change budgets.' })]),
    message,
    el('h2', { textContent: 'Windows' }),
    windows,
    el('h2', { textContent: `Tokens charged per hour, last ${HOURS_SHOWN} hours (UTC)` }),
    el('div', { className: 'usage' }, hoursChart, hoursTotals),
    el('h2', { textContent: `Tokens charged per day, last ${DAYS_SHOWN} days (UTC)` }),
    el('div', { className: 'usage' }, daysChart, daysTotals),
  );
  const view = editor(box, JSON.stringify(exists ? answer.body : TEMPLATE, null, 2), !admin, 'json');

  save.onclick = async () => {
    message.replaceChildren();
    const body = view.state.doc.toString();
    try {
      JSON.parse(body);
    } catch (err) {
      message.replaceChildren(el('p', { className: 'error', textContent: `Not JSON: ${(err as Error).message}` }));
      return;
    }
    const saved = await api('PUT', path, { body, headers: etag ? { 'if-match': etag } : { 'if-none-match': '*' } });
    if (saved.status === 200 || saved.status === 201) {
      etag = saved.etag;
      version.textContent = `version ${etag?.replace(/"/g, '') ?? '?'}`;
      save.textContent = 'Save';
      message.replaceChildren(el('p', { className: 'ok', textContent: `Saved as ${version.textContent}.` }));
      showWindows(JSON.parse(body) as Budget);
      return;
    }
    const problem = (saved.body ?? {}) as Omit<Problem, 'errors'> & { errors?: { pointer?: string; message?: string }[] };
    message.replaceChildren(
      el('p', {
        className: 'error',
        textContent:
          saved.status === 412
            ? etag
              ? `Someone saved a newer version than yours (${etag.replace(/"/g, '')}) meanwhile: nothing was written. Reload to see theirs, then make your change again.`
              : 'Someone created this budget meanwhile: nothing was written. Reload to see it, then make your change again.'
            : `${saved.status} ${problem.title ?? ''}: ${problem.detail ?? ''}`,
      }),
      ...(saved.status === 412 ? [el('p', {}, el('button', { id: 'reload', textContent: 'Reload', onclick: rerender }))] : []),
      ...(problem.errors ?? []).map((e) => el('div', { className: 'error diagnostic', textContent: `${e.pointer || '(document)'}: ${e.message ?? ''}` })),
    );
  };

  const now = Date.now();
  const hourStart = Math.floor(now / HOUR_MS) * HOUR_MS;
  const dayStart = Math.floor(now / DAY_MS) * DAY_MS;
  const [hours, days] = await Promise.all([
    api<Usage>('GET', `/usage/${encodeURIComponent(project)}?from=${iso(hourStart - (HOURS_SHOWN - 1) * HOUR_MS)}&to=${iso(hourStart + HOUR_MS)}`),
    api<Usage>('GET', `/usage/${encodeURIComponent(project)}?from=${iso(dayStart - (DAYS_SHOWN - 1) * DAY_MS)}&to=${iso(dayStart + DAY_MS)}&group=day`),
  ]);

  // Where each limit stands in its window, from the gateways' shared ledger (GET .../remaining).
  const remaining = await api<{ limits: { scope: string; per: string; consumed: number; held: number; available: number; resets_at: string }[] }>(
    'GET',
    `/budgets/${encodeURIComponent(project)}/remaining`,
  );
  const ledgerOf = (scope: string, per: string) =>
    remaining.status === 200 ? remaining.body.limits.find((l) => l.scope === scope && l.per === per) : undefined;

  // What each window was charged so far, from the usage the gateways recorded (hours and days are what usage keeps).
  function showWindows(budget: Budget): void {
    const monthStart = Date.UTC(new Date(now).getUTCFullYear(), new Date(now).getUTCMonth(), 1);
    const charged = (scope: string, per: Window['per']): number | null => {
      if (per === 'minute' || hours.status !== 200 || days.status !== 200) return null;
      const rows =
        per === 'hour'
          ? (hours.body.hours ?? []).filter((h) => Date.parse(h.hour) === hourStart)
          : (days.body.days ?? []).filter((d) => Date.parse(d.day) >= (per === 'day' ? dayStart : monthStart));
      return rows.filter((r) => scope === '*' || r.model === scope).reduce((sum, r) => sum + r.charged_tokens, 0);
    };
    const limits = [
      ...(budget.windows ?? []).map((w) => ({ scope: '*', ...w })),
      ...Object.entries(budget.models ?? {}).flatMap(([model, m]) => (m.windows ?? []).map((w) => ({ scope: model, ...w }))),
    ];
    windows.replaceChildren(
      el(
        'table',
        { id: 'window-table' },
        el(
          'tr',
          {},
          ...['scope', 'per', 'limit', 'charged so far (settled)', 'consumed', 'held by gateways', 'available', 'resets at (UTC)'].map((h) =>
            el('th', { textContent: h }),
          ),
        ),
        ...limits.map((l) => {
          const used = charged(l.scope, l.per);
          const ledger = ledgerOf(l.scope, l.per);
          const figure = (n: number | undefined) => (n === undefined ? '—' : n.toLocaleString('en'));
          return el(
            'tr',
            {},
            el('td', { textContent: l.scope === '*' ? 'project' : `model ${l.scope}` }),
            el('td', { textContent: l.per }),
            el('td', { textContent: l.tokens.toLocaleString('en') }),
            el('td', { textContent: used === null ? '—' : used.toLocaleString('en') }),
            el('td', { textContent: figure(ledger?.consumed) }),
            el('td', { textContent: figure(ledger?.held) }),
            el('td', { className: 'available', textContent: figure(ledger?.available) }),
            el('td', { textContent: ledger ? ledger.resets_at.replace('T', ' ').replace(/:00\.000Z$/, '') : '—' }),
          );
        }),
      ),
      el('p', {
        className: 'muted',
        textContent:
          'Charged so far: what the gateways recorded for settled calls in the current UTC window (usage is kept per hour, so not per minute). ' +
          "Consumed, held and available: the gateways' shared ledger now. Gateways lease blocks and give back what they do not use, " +
          'so held tokens come back as available unless calls spend them.',
      }),
    );
  }
  if (exists) showWindows(answer.body);
  else windows.replaceChildren(el('p', { className: 'muted', textContent: 'No budget: no windows.' }));

  const charts: uPlot[] = [];
  const draw = (target: HTMLElement, totals: HTMLElement, usage: typeof hours, slots: number[], key: 'hour' | 'day') => {
    if (usage.status !== 200) {
      target.replaceChildren(el('p', { className: 'error', textContent: `usage: ${usage.status} ${(usage.body as Problem).detail ?? ''}` }));
      return;
    }
    const rows = (key === 'hour' ? usage.body.hours : usage.body.days) ?? [];
    const models = Object.keys(usage.body.models).sort();
    const index = new Map(slots.map((t, i) => [t, i]));
    const series = models.map(() => slots.map(() => 0));
    for (const row of rows) {
      const i = index.get(Date.parse(key === 'hour' ? (row as { hour: string }).hour : (row as { day: string }).day));
      if (i !== undefined) series[models.indexOf(row.model)]![i]! += row.charged_tokens;
    }
    totals.replaceChildren(totalsTable(usage.body));
    if (models.length === 0) {
      target.replaceChildren(el('p', { className: 'muted', textContent: 'No usage recorded in this range.' }));
      return;
    }
    charts.push(
      new uPlot(
        {
          width: 500,
          height: 240,
          tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
          scales: { x: { time: true } },
          axes: [{}, { label: 'tokens', size: 70 }],
          series: [
            { label: key === 'hour' ? 'hour (UTC)' : 'day (UTC)' },
            ...models.map((model, i) => ({
              label: model,
              stroke: COLOURS[i % COLOURS.length]!,
              width: 2,
              points: { show: true },
            })),
          ],
        },
        [slots.map((t) => t / 1000), ...series],
        target,
      ),
    );
  };
  draw(hoursChart, hoursTotals, hours, slotsOf(hourStart, HOURS_SHOWN, HOUR_MS), 'hour');
  draw(daysChart, daysTotals, days, slotsOf(dayStart, DAYS_SHOWN, DAY_MS), 'day');
  return () => {
    for (const chart of charts) chart.destroy();
  };
}

const COLOURS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];

/** The starts of the last `count` slots of `size` ms, ending with the one starting at `last`. */
function slotsOf(last: number, count: number, size: number): number[] {
  return Array.from({ length: count }, (_, i) => last - (count - 1 - i) * size);
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/** The API's totals per model and overall, as text beside a chart. */
function totalsTable(usage: Usage): HTMLElement {
  const head = ['model', 'requests', 'prompt', 'completion', 'charged', 'unsettled'];
  const row = (name: string, r: UsageRecord, className = '') =>
    el(
      'tr',
      { className },
      el('td', { textContent: name }),
      ...[r.requests, r.prompt_tokens, r.completion_tokens, r.charged_tokens, r.unsettled].map((n) => el('td', { className: 'num', textContent: String(n) })),
    );
  return el(
    'div',
    {},
    el('p', { className: 'muted range', textContent: `${usage.from} to ${usage.to}` }),
    el(
      'table',
      {},
      el('tr', {}, ...head.map((h) => el('th', { textContent: h }))),
      ...Object.keys(usage.models)
        .sort()
        .map((model) => row(model, usage.models[model]!)),
      row('total', usage.total, 'total'),
    ),
  );
}
