// One policy: its Rego and data in the editor (save with If-Match, compile
// and test errors marked at their row and column), which gateway enforces
// which version (live), its candidate, its history with diffs between any two
// versions, and rollback.
import { diffLines } from 'diff';
import { api, type Problem } from '../api.js';
import { editor, el, isAdmin, main, problemView, showWriteProblem, startWrite } from '../dom.js';

/** Shows the current page again, through the router (which stops this one's polling first). */
const rerender = () => window.dispatchEvent(new HashChangeEvent('hashchange'));

/** Renders the page; the function it returns stops its polling when the page is left. */
export async function policyView(name: string): Promise<() => void> {
  const answer = await api<{ rego: string; data: unknown; tests?: Record<string, string> }>('GET', `/policies/${encodeURIComponent(name)}`);
  if (answer.status !== 200) {
    problemView(answer.status, answer.body as Problem);
    return () => undefined;
  }
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
    el(
      'h1',
      {},
      `${name} `,
      version,
      ' ',
      el('a', { id: 'playground-link', className: 'small', href: `#/p/${encodeURIComponent(name)}/playground`, textContent: 'playground' }),
    ),
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
    const started = startWrite(message, rego, data);
    if (!started) return;
    const body = JSON.stringify({ rego: rego.state.doc.toString(), data: started.data, ...(tests.length ? { tests: Object.fromEntries(tests) } : {}) });
    const saved = await api('PUT', `/policies/${encodeURIComponent(name)}`, { body, headers: etag ? { 'if-match': etag } : {} });
    if (saved.status === 200 || saved.status === 201) {
      etag = saved.etag;
      version.textContent = `version ${etag?.replace(/"/g, '') ?? '?'}`;
      message.replaceChildren(el('p', { className: 'ok', textContent: `Saved as ${version.textContent}.` }));
      await loadHistory();
      return;
    }
    showWriteProblem(
      message,
      rego,
      data,
      saved.status,
      saved.body as Problem,
      saved.status === 412 ? 'Someone saved a newer version meanwhile: reload to see it (nothing was written).' : undefined,
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
        if (done.status === 200 || done.status === 201) rerender();
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
    if (done.status === 200) rerender();
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
      report: {
        evaluated: number;
        diverged: number;
        errors: number;
        dropped: number;
        enforced: { live: number; candidate: number };
        samples: { time: string; gateway: string; input: unknown; live: unknown; candidate: unknown }[];
      };
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
      // The newest divergences the gateways kept (inputs masked as decision logs mask them): what the change would flip.
      ...(report.samples.length
        ? [
            el(
              'table',
              { id: 'candidate-samples' },
              el('tr', {}, ...['when', 'gateway', 'live', 'candidate', 'input'].map((h) => el('th', { textContent: h }))),
              ...report.samples.map((sample) =>
                el(
                  'tr',
                  { className: 'sample' },
                  el('td', { textContent: sample.time }),
                  el('td', { textContent: sample.gateway }),
                  el('td', {}, el('code', { textContent: JSON.stringify(sample.live) })),
                  el('td', {}, el('code', { textContent: JSON.stringify(sample.candidate) })),
                  el('td', {}, el('details', {}, el('summary', { textContent: 'input' }), el('pre', { textContent: JSON.stringify(sample.input, null, 2) }))),
                ),
              ),
            ),
          ]
        : []),
    );
  };
  await poll();
  await pollCandidate();
  const timer = setInterval(() => {
    void poll();
    void pollCandidate();
  }, 1_000);
  return () => clearInterval(timer);
}
