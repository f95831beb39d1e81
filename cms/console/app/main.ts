// The Gatehouse console: the CMS API in a browser. Sign in with a token; see
// the policies you may read; edit and save (If-Match), with compile and test
// errors marked at their row and column; history with diffs between any two
// versions; rollback; and which gateway enforces which version, live.
// Everything is rendered with textContent: nothing from the API becomes HTML.
import { basicSetup, EditorView } from 'codemirror';
import { EditorState } from '@codemirror/state';
import { json } from '@codemirror/lang-json';
import { setDiagnostics, type Diagnostic } from '@codemirror/lint';
import { diffLines } from 'diff';
import { api, claims, signIn, signOut, token, type Problem } from './api.js';

const main = document.getElementById('main')!;
let stopPolling: (() => void) | null = null;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { id?: string } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

const isAdmin = () => claims().role === 'platform_admin';

function header(): void {
  const who = document.getElementById('who')!;
  const out = document.getElementById('sign-out')!;
  const c = claims();
  who.textContent = token() ? `${c.sub ?? '?'}${isAdmin() ? ' (platform admin)' : c.project ? ` (project ${c.project})` : ''}` : '';
  out.hidden = !token();
  out.onclick = () => {
    signOut();
    location.hash = '#/';
    void route();
  };
}

async function signInView(): Promise<void> {
  const input = el('textarea', { id: 'token-input', rows: 4, placeholder: 'Paste a bearer token (JWT)' });
  const button = el('button', { id: 'sign-in', textContent: 'Sign in' });
  const message = el('p', { className: 'error', id: 'message' });
  button.onclick = async () => {
    signIn(input.value);
    const probe = await api('GET', '/policies?limit=1');
    if (probe.status !== 200) {
      signOut();
      message.textContent = `The CMS refused this token (${probe.status}): ${(probe.body as Problem | null)?.detail ?? ''}`;
      return;
    }
    await route();
  };
  main.replaceChildren(el('h1', { textContent: 'Sign in' }), input, el('p', {}, button), message);
  // The local stack offers its demo identities; a real CMS answers 404 here.
  const demo = await api<{ label: string; token: string }[]>('GET', '/console/demo-tokens');
  if (demo.status === 200 && Array.isArray(demo.body)) {
    const buttons = demo.body.map((d) => {
      const b = el('button', { className: 'demo', textContent: `Demo: ${d.label}` });
      b.onclick = async () => {
        signIn(d.token);
        await route();
      };
      return b;
    });
    main.append(el('p', { className: 'muted', textContent: 'Local stack only: ' }, ...buttons));
  }
}

async function listView(): Promise<void> {
  const answer = await api<{ policies: { name: string; version: number; updatedAt: string; author: string }[] }>('GET', '/policies?limit=1000');
  if (answer.status !== 200) return problemView(answer.status, answer.body as Problem);
  const rows = answer.body.policies.map((p) =>
    el(
      'tr',
      {},
      el('td', {}, el('a', { href: `#/p/${p.name}`, textContent: p.name })),
      el('td', { textContent: `v${p.version}` }),
      el('td', { textContent: p.author }),
      el('td', { textContent: p.updatedAt }),
    ),
  );
  main.replaceChildren(
    el('h1', { textContent: 'Policies' }),
    rows.length
      ? el('table', { id: 'policies' }, el('tr', {}, ...['name', 'version', 'by', 'updated'].map((h) => el('th', { textContent: h }))), ...rows)
      : el('p', { textContent: 'No policy you may read.' }),
  );
}

function problemView(status: number, problem: Problem | null): void {
  main.replaceChildren(
    el('h1', { textContent: `${status}` }),
    el('p', { className: 'error', textContent: problem?.detail ?? problem?.title ?? 'request failed' }),
  );
}

function editor(parent: HTMLElement, doc: string, readOnly: boolean, language: 'rego' | 'json'): EditorView {
  return new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [basicSetup, ...(language === 'json' ? [json()] : []), EditorState.readOnly.of(readOnly), EditorView.editable.of(!readOnly)],
    }),
  });
}

/** A diagnostic at a row and column (1-based, as opa reports them). */
function at(view: EditorView, row: number | undefined, col: number | undefined, message: string): Diagnostic {
  const line = view.state.doc.line(Math.min(Math.max(row ?? 1, 1), view.state.doc.lines));
  const from = Math.min(line.from + Math.max((col ?? 1) - 1, 0), line.to);
  return { from, to: Math.max(from + 1, line.to), severity: 'error', message };
}

async function policyView(name: string): Promise<void> {
  const answer = await api<{ rego: string; data: unknown; tests?: Record<string, string> }>('GET', `/policies/${encodeURIComponent(name)}`);
  if (answer.status !== 200) return problemView(answer.status, answer.body as Problem);
  const admin = isAdmin();
  let etag = answer.etag;
  const version = el('span', { id: 'version', textContent: etag ? `version ${etag.replace(/"/g, '')}` : '' });
  const regoBox = el('div', { className: 'editor', id: 'rego' });
  const dataBox = el('div', { className: 'editor', id: 'data' });
  const message = el('div', { id: 'message' });
  const enforced = el('p', { id: 'enforced', className: 'muted' });
  const gateways = el('table', { id: 'gateways' });
  const candidate = el('div', { id: 'candidate' });
  const history = el('div', { id: 'history' });
  const diff = el('pre', { id: 'diff', className: 'diff' });
  const save = el('button', { id: 'save', textContent: 'Save' });
  const tests = Object.entries(answer.body.tests ?? {});
  main.replaceChildren(
    el('h1', {}, `${name} `, version),
    el('h2', { textContent: 'Rego' }),
    regoBox,
    el('h2', { textContent: 'Data' }),
    dataBox,
    ...(tests.length
      ? [
          el('h2', { textContent: 'Tests' }),
          ...tests.map(([file, module]) => el('details', {}, el('summary', { textContent: file }), el('pre', { textContent: module }))),
        ]
      : []),
    ...(admin ? [el('p', {}, save)] : [el('p', { className: 'muted', textContent: 'Read only: only platform admins change policies.' })]),
    message,
    el('h2', { textContent: 'Gateways' }),
    enforced,
    gateways,
    el('h2', { textContent: 'Candidate' }),
    candidate,
    el('h2', { textContent: 'History' }),
    history,
    diff,
  );
  const rego = editor(regoBox, answer.body.rego, !admin, 'rego');
  const data = editor(dataBox, JSON.stringify(answer.body.data, null, 2), !admin, 'json');

  save.onclick = async () => {
    message.replaceChildren();
    rego.dispatch(setDiagnostics(rego.state, []));
    data.dispatch(setDiagnostics(data.state, []));
    let dataValue: unknown;
    try {
      dataValue = JSON.parse(data.state.doc.toString());
    } catch (err) {
      message.replaceChildren(el('p', { className: 'error', textContent: `Data is not JSON: ${(err as Error).message}` }));
      return;
    }
    const body = JSON.stringify({ rego: rego.state.doc.toString(), data: dataValue, ...(tests.length ? { tests: Object.fromEntries(tests) } : {}) });
    const saved = await api('PUT', `/policies/${encodeURIComponent(name)}`, { body, headers: etag ? { 'if-match': etag } : {} });
    if (saved.status === 200 || saved.status === 201) {
      etag = saved.etag;
      version.textContent = `version ${etag?.replace(/"/g, '') ?? '?'}`;
      message.replaceChildren(el('p', { className: 'ok', textContent: `Saved as ${version.textContent}.` }));
      await loadHistory();
      return;
    }
    const problem = saved.body as Problem;
    const lines: string[] = [];
    const regoMarks: Diagnostic[] = [];
    const dataMarks: Diagnostic[] = [];
    for (const e of problem.errors ?? []) {
      lines.push(`${e.file ?? ''}:${e.row ?? 0}:${e.col ?? 0}: ${e.message ?? ''}`);
      if (e.file === 'data.json') dataMarks.push(at(data, e.row, e.col, e.message ?? 'error'));
      else if (!e.file || e.file === 'policy.rego') regoMarks.push(at(rego, e.row, e.col, e.message ?? 'error'));
    }
    for (const f of problem.failures ?? []) lines.push(`${f.file ?? ''}:${f.row ?? 0}: FAIL ${f.name ?? ''}: ${f.message ?? ''}`);
    rego.dispatch(setDiagnostics(rego.state, regoMarks));
    data.dispatch(setDiagnostics(data.state, dataMarks));
    message.replaceChildren(
      el('p', {
        className: 'error',
        textContent:
          saved.status === 412
            ? 'Someone saved a newer version meanwhile: reload to see it (nothing was written).'
            : `${saved.status} ${problem.title ?? ''}: ${problem.detail ?? ''}`,
      }),
      ...lines.map((line) => el('div', { className: 'error diagnostic', textContent: line })),
    );
  };

  const loadHistory = async () => {
    const list = await api<{ versions: { version: number; author: string; updatedAt: string }[] }>('GET', `/policies/${encodeURIComponent(name)}/history`);
    if (list.status !== 200) return;
    const pick = (side: 'a' | 'b', v: number, checked: boolean) =>
      el('input', { type: 'radio', name: side, value: String(v), checked, className: `pick-${side}` });
    const rows = list.body.versions.map((v, i) => {
      const rollback = el('button', { className: 'rollback', textContent: 'Roll back to this' });
      rollback.dataset.version = String(v.version);
      rollback.onclick = async () => {
        const done = await api('POST', `/policies/${encodeURIComponent(name)}/rollback`, {
          body: JSON.stringify({ version: v.version }),
          headers: etag ? { 'if-match': etag } : {},
        });
        if (done.status === 200 || done.status === 201) await policyView(name);
        else message.replaceChildren(el('p', { className: 'error', textContent: `Rollback refused (${done.status}): ${(done.body as Problem).detail ?? ''}` }));
      };
      return el(
        'tr',
        {},
        el('td', {}, pick('a', v.version, i === 1), pick('b', v.version, i === 0)),
        el('td', { textContent: `v${v.version}` }),
        el('td', { textContent: v.author }),
        el('td', { textContent: v.updatedAt }),
        el('td', {}, ...(admin && i > 0 ? [rollback] : [])),
      );
    });
    const compare = el('button', { id: 'compare', textContent: 'Compare A → B' });
    compare.onclick = async () => {
      const a = (history.querySelector('input.pick-a:checked') as HTMLInputElement | null)?.value;
      const b = (history.querySelector('input.pick-b:checked') as HTMLInputElement | null)?.value;
      if (!a || !b) return;
      const [va, vb] = await Promise.all([a, b].map((v) => api<{ rego: string; data: unknown }>('GET', `/policies/${encodeURIComponent(name)}/history/${v}`)));
      const text = (p: { rego: string; data: unknown }) => `${p.rego}\n--- data ---\n${JSON.stringify(p.data, null, 2)}\n`;
      diff.replaceChildren(
        ...diffLines(text(va!.body), text(vb!.body)).map((part) =>
          el('span', {
            className: part.added ? 'add' : part.removed ? 'del' : '',
            textContent: part.value.replace(/^/gm, part.added ? '+ ' : part.removed ? '- ' : '  ').replace(/[+ -] $/, ''),
          }),
        ),
      );
    };
    history.replaceChildren(
      el('table', {}, el('tr', {}, ...['A  B', 'version', 'by', 'when', ''].map((h) => el('th', { textContent: h }))), ...rows),
      el('p', {}, compare),
    );
  };
  await loadHistory();

  // Which gateway enforces which version, live.
  const poll = async () => {
    const status = await api<{
      version: number;
      enforcedBy: number;
      gateways: { id: string; datacenter: string | null; revision: number; enforces: boolean }[];
    }>('GET', `/policies/${encodeURIComponent(name)}/status`);
    if (status.status !== 200) return;
    enforced.textContent = `${status.body.enforcedBy}/${status.body.gateways.length} gateways enforce version ${status.body.version}`;
    gateways.replaceChildren(
      el('tr', {}, ...['gateway', 'datacenter', 'revision', ''].map((h) => el('th', { textContent: h }))),
      ...status.body.gateways.map((g) =>
        el(
          'tr',
          {},
          el('td', { textContent: g.id }),
          el('td', { textContent: g.datacenter ?? '' }),
          el('td', { textContent: String(g.revision) }),
          el('td', { textContent: g.enforces ? 'enforces' : 'behind' }),
        ),
      ),
    );
  };
  // The candidate beside it (shadowed, canaried), what the gateways saw of it, and who is on which version.
  const subject = el('input', { id: 'subject', placeholder: "a caller's subject" });
  const decidedBy = el('span', { id: 'decided-by' });
  const whichVersion = el('button', { id: 'which-version', textContent: 'Which version decides for them?' });
  const candidateFigures = el('div', { id: 'candidate-figures' });
  const candidateMessage = el('div', { id: 'candidate-message' });
  const candidatePath = `/policies/${encodeURIComponent(name)}/candidate`;
  whichVersion.onclick = async () => {
    const who = subject.value;
    decidedBy.textContent = '';
    const asked = await api<{ subject?: { decided_by: string } }>('GET', `${candidatePath}?subject=${encodeURIComponent(who)}`);
    decidedBy.textContent = asked.status === 200 ? `${who} is decided by the ${asked.body.subject?.decided_by ?? 'live'} version` : `(${asked.status})`;
  };
  const promote = el('button', { id: 'promote', textContent: 'Promote' });
  const discard = el('button', { id: 'discard', textContent: 'Discard' });
  let candidateVersion: number | null = null;
  promote.onclick = async () => {
    const done = await api('POST', `${candidatePath}/promote`, {
      body: JSON.stringify({ version: candidateVersion }),
      headers: etag ? { 'if-match': etag } : {},
    });
    if (done.status === 200) await policyView(name);
    else
      candidateMessage.replaceChildren(
        el('p', { className: 'error', textContent: `Promote refused (${done.status}): ${(done.body as Problem).detail ?? ''}` }),
      );
  };
  discard.onclick = async () => {
    const done = await api('DELETE', candidatePath, { headers: candidateVersion ? { 'if-match': `"${candidateVersion}"` } : {} });
    if (done.status !== 204)
      candidateMessage.replaceChildren(
        el('p', { className: 'error', textContent: `Discard refused (${done.status}): ${(done.body as Problem).detail ?? ''}` }),
      );
    await pollCandidate();
  };
  candidate.replaceChildren(
    candidateFigures,
    el('p', {}, subject, ' ', whichVersion, ' ', decidedBy),
    ...(admin ? [el('p', {}, promote, ' ', discard)] : []),
    candidateMessage,
  );
  const pollCandidate = async () => {
    const answer = await api<{
      version: number;
      sample_percent: number;
      enforce_percent: number;
      report: { evaluated: number; diverged: number; errors: number; dropped: number; enforced: { live: number; candidate: number } };
    }>('GET', candidatePath);
    candidateVersion = answer.status === 200 ? answer.body.version : null;
    promote.disabled = discard.disabled = whichVersion.disabled = candidateVersion === null;
    if (answer.status !== 200) {
      candidateFigures.replaceChildren(el('p', { className: 'muted', textContent: answer.status === 404 ? 'No candidate.' : `(${answer.status})` }));
      return;
    }
    const { report } = answer.body;
    candidateFigures.replaceChildren(
      el('p', {
        textContent:
          `Candidate version ${answer.body.version}: shadowed on ${answer.body.sample_percent}% of decisions, ` +
          `enforced for ${answer.body.enforce_percent}% of callers.`,
      }),
      el('p', {
        id: 'candidate-report',
        textContent:
          `${report.evaluated} shadowed, ${report.diverged} diverged, ${report.errors} failed, ${report.dropped} dropped; ` +
          `decided by the live version ${report.enforced.live} times, by the candidate ${report.enforced.candidate} times.`,
      }),
    );
  };
  await poll();
  await pollCandidate();
  const timer = setInterval(() => {
    void poll();
    void pollCandidate();
  }, 1_000);
  stopPolling = () => clearInterval(timer);
}

async function route(): Promise<void> {
  stopPolling?.();
  stopPolling = null;
  header();
  if (!token()) return signInView();
  const match = /^#\/p\/([a-z0-9-]+)$/.exec(location.hash);
  if (match) return policyView(match[1]!);
  return listView();
}

window.addEventListener('hashchange', () => void route());
void route();
