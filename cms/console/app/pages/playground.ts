// A policy's playground: an input evaluated with the live version, or (for
// platform admins) with a draft of the Rego and data, in the gateways' engine
// under their bounds (POST /policies/{name}/evaluate: nothing is written).
// The result document and how long the evaluation took are shown; a draft's
// compile errors are marked at their row as a save's are.
import { setDiagnostics, type Diagnostic } from '@codemirror/lint';
import { api, type Problem } from '../api.js';
import { at, editor, el, isAdmin, main, problemView } from '../dom.js';

interface Evaluated {
  result?: unknown;
  version: number | null;
  evaluation_ms: number;
}

export async function playgroundView(name: string): Promise<void> {
  const path = `/policies/${encodeURIComponent(name)}`;
  const answer = await api<{ rego: string; data: unknown }>('GET', path);
  if (answer.status !== 200) return problemView(answer.status, answer.body as Problem);
  const admin = isAdmin();
  const live = answer.etag?.replace(/"/g, '') ?? '?';
  const inputBox = el('div', { className: 'editor', id: 'input' });
  const regoBox = el('div', { className: 'editor', id: 'rego' });
  const dataBox = el('div', { className: 'editor', id: 'data' });
  const entrypoint = el('input', { id: 'entrypoint', placeholder: 'entrypoint, e.g. allow (empty: the whole document)', size: 40 });
  const evaluateLive = el('button', { id: 'evaluate-live', textContent: `Evaluate live (version ${live})` });
  const evaluateDraft = el('button', { id: 'evaluate-draft', textContent: 'Evaluate draft' });
  const timing = el('p', { id: 'evaluation', className: 'muted' });
  const result = el('pre', { id: 'result', className: 'result' });
  const message = el('div', { id: 'message' });
  main.replaceChildren(
    el('h1', {}, el('a', { href: `#/p/${encodeURIComponent(name)}`, textContent: name }), ' playground'),
    el('h2', { textContent: 'Input' }),
    inputBox,
    el('p', {}, entrypoint),
    el('p', {}, evaluateLive, ...(admin ? [evaluateDraft] : [])),
    message,
    el('h2', { textContent: 'Result' }),
    timing,
    result,
    el('h2', { textContent: admin ? 'Rego (edit it and evaluate the draft: nothing is written)' : 'Rego (live version)' }),
    regoBox,
    el('h2', { textContent: 'Data' }),
    dataBox,
    ...(admin ? [] : [el('p', { className: 'muted', textContent: 'Read only: only platform admins evaluate drafts.' })]),
  );
  const input = editor(inputBox, '{}', false, 'json');
  const rego = editor(regoBox, answer.body.rego, !admin, 'rego');
  const data = editor(dataBox, JSON.stringify(answer.body.data, null, 2), !admin, 'json');

  const failed = (text: string, lines: string[] = []) =>
    message.replaceChildren(
      el('p', { className: 'error', textContent: text }),
      ...lines.map((line) => el('div', { className: 'error diagnostic', textContent: line })),
    );

  const evaluate = async (draft: boolean) => {
    message.replaceChildren();
    timing.textContent = '';
    result.textContent = '';
    for (const view of [input, rego, data]) view.dispatch(setDiagnostics(view.state, []));
    const parsed = (view: typeof input, what: string): { ok: true; value: unknown } | { ok: false } => {
      try {
        return { ok: true, value: JSON.parse(view.state.doc.toString()) };
      } catch (err) {
        failed(`${what} is not JSON: ${(err as Error).message}`);
        return { ok: false };
      }
    };
    const inputValue = parsed(input, 'Input');
    if (!inputValue.ok) return;
    const dataValue = draft ? parsed(data, 'Data') : { ok: true as const, value: undefined };
    if (!dataValue.ok) return;
    const body = JSON.stringify({
      input: inputValue.value,
      ...(entrypoint.value.trim() ? { entrypoint: entrypoint.value.trim() } : {}),
      ...(draft ? { rego: rego.state.doc.toString(), data: dataValue.value } : {}),
    });
    const evaluated = await api<Evaluated>('POST', `${path}/evaluate`, { body });
    if (evaluated.status === 200) {
      const { body: answer } = evaluated;
      timing.textContent = `${answer.version === null ? 'the draft' : `version ${answer.version}`} evaluated in ${answer.evaluation_ms.toFixed(1)} ms`;
      result.textContent = 'result' in answer ? JSON.stringify(answer.result, null, 2) : 'undefined (no rule decides it)';
      return;
    }
    const problem = evaluated.body as Problem;
    const marks: Diagnostic[] = [];
    const lines: string[] = [];
    for (const e of problem.errors ?? []) {
      lines.push(`${e.file ?? ''}:${e.row ?? 0}:${e.col ?? 0}: ${e.message ?? ''}`);
      if (!e.file || e.file === 'policy.rego') marks.push(at(rego, e.row, e.col, e.message ?? 'error'));
    }
    rego.dispatch(setDiagnostics(rego.state, marks));
    failed(`${evaluated.status} ${problem.title ?? ''}: ${problem.detail ?? ''}`, lines);
  };
  evaluateLive.onclick = () => void evaluate(false);
  evaluateDraft.onclick = () => void evaluate(true);
}
