// What every page of the console is built with: elements made from
// properties (text only: nothing from the API becomes HTML), the code
// editor, diagnostics at a row and column, a problem's page, and the page's
// place in the document.
import { basicSetup, EditorView } from 'codemirror';
import { EditorState } from '@codemirror/state';
import { json } from '@codemirror/lang-json';
import { setDiagnostics, type Diagnostic } from '@codemirror/lint';
import { claims, type Problem } from './api.js';

/** Where pages render. */
export const main = document.getElementById('main')!;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { id?: string } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) node.append(child);
  return node;
}

export const isAdmin = () => claims().role === 'platform_admin';

export function problemView(status: number, problem: Problem | null): void {
  main.replaceChildren(
    el('h1', { textContent: `${status}` }),
    el('p', { className: 'error', textContent: problem?.detail ?? problem?.title ?? 'request failed' }),
  );
}

export function editor(parent: HTMLElement, doc: string, readOnly: boolean, language: 'rego' | 'json'): EditorView {
  return new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [basicSetup, ...(language === 'json' ? [json()] : []), EditorState.readOnly.of(readOnly), EditorView.editable.of(!readOnly)],
    }),
  });
}

/** A diagnostic at a row and column (1-based, as opa reports them). */
export function at(view: EditorView, row: number | undefined, col: number | undefined, message: string): Diagnostic {
  const line = view.state.doc.line(Math.min(Math.max(row ?? 1, 1), view.state.doc.lines));
  const from = Math.min(line.from + Math.max((col ?? 1) - 1, 0), line.to);
  return { from, to: Math.max(from + 1, line.to), severity: 'error', message };
}

/**
 * Starts a write of a policy: the last one's marks and messages cleared, and
 * the data editor's document parsed; null (said in `message`) when it is not JSON.
 */
export function startWrite(message: HTMLElement, rego: EditorView, data: EditorView): { data: unknown } | null {
  message.replaceChildren();
  rego.dispatch(setDiagnostics(rego.state, []));
  data.dispatch(setDiagnostics(data.state, []));
  try {
    return { data: JSON.parse(data.state.doc.toString()) };
  } catch (err) {
    message.replaceChildren(el('p', { className: 'error', textContent: `Data is not JSON: ${(err as Error).message}` }));
    return null;
  }
}

/**
 * A refused write of a policy: its errors marked in the Rego and data editors
 * at their row and column, and every error and test failure listed in
 * `message` under `headline` (the status and the problem's words unless given).
 */
export function showWriteProblem(message: HTMLElement, rego: EditorView, data: EditorView, status: number, problem: Problem, headline?: string): void {
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
    el('p', { className: 'error', textContent: headline ?? `${status} ${problem.title ?? ''}: ${problem.detail ?? ''}` }),
    ...lines.map((line) => el('div', { className: 'error diagnostic', textContent: line })),
  );
}
