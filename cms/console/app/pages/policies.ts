// The policies the signed-in user may read.
import { api, type Problem } from '../api.js';
import { el, main, problemView } from '../dom.js';

export async function listView(): Promise<void> {
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
