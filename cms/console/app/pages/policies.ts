// The policies the signed-in user may read, a page at a time, filtered by the
// start of their name (the CMS filters: GET /policies?prefix=, so the list
// stays quick with tens of thousands of policies). Platform admins get a
// "New policy" button.
import { api, type Problem } from '../api.js';
import { el, isAdmin, main, problemView } from '../dom.js';

/** Policies per page. */
export const PAGE_SIZE = 50;
/**
 * Empty pages followed at most before showing one: the CMS reads a bounded
 * number of names per request, so a project user's page may hold none of
 * theirs yet give a continuation.
 */
const EMPTY_PAGES_FOLLOWED = 5;

interface Summary {
  name: string;
  version: number;
  updatedAt: string;
  author: string;
}
interface Listing {
  policies: Summary[];
  next_page_token?: string;
}

/** The filter, kept while the user goes to a policy and back. */
let filter = '';

export async function listView(): Promise<void> {
  const input = el('input', { id: 'filter', type: 'search', placeholder: 'name starts with…', value: filter, autocomplete: 'off' });
  const apply = el('button', { id: 'apply-filter', textContent: 'Filter' });
  const form = el('form', { id: 'filter-form' }, input, ' ', apply);
  const table = el('table', { id: 'policies' });
  const empty = el('p', { id: 'list-empty', className: 'muted' });
  const message = el('p', { id: 'list-message', className: 'error' });
  const previous = el('button', { id: 'previous', textContent: 'Previous' });
  const next = el('button', { id: 'next', textContent: 'Next' });
  const where = el('span', { id: 'page-info', className: 'muted' });
  /** The token of each page shown so far (undefined: the first). */
  let tokens: (string | undefined)[] = [undefined];
  let current = 0;
  let following: string | undefined;

  const load = async (token: string | undefined): Promise<Listing | null> => {
    let pageToken = token;
    for (let followed = 0; ; followed++) {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
      if (filter) query.set('prefix', filter);
      if (pageToken) query.set('page_token', pageToken);
      const answer = await api<Listing>('GET', `/policies?${query.toString()}`);
      if (answer.status !== 200) {
        if (answer.status === 400) {
          message.textContent = `${(answer.body as unknown as Problem)?.detail ?? 'bad filter'}`;
          return { policies: [] };
        }
        problemView(answer.status, answer.body as unknown as Problem);
        return null;
      }
      if (answer.body.policies.length > 0 || !answer.body.next_page_token || followed >= EMPTY_PAGES_FOLLOWED) return answer.body;
      pageToken = answer.body.next_page_token;
    }
  };

  const show = async (): Promise<boolean> => {
    message.textContent = '';
    const page = await load(tokens[current]);
    if (!page) return false;
    following = page.next_page_token;
    table.replaceChildren(
      el('tr', {}, ...['name', 'version', 'by', 'updated'].map((h) => el('th', { textContent: h }))),
      ...page.policies.map((p) =>
        el(
          'tr',
          {},
          el('td', {}, el('a', { href: `#/p/${p.name}`, textContent: p.name })),
          el('td', { textContent: `v${p.version}` }),
          el('td', { textContent: p.author }),
          el('td', { textContent: p.updatedAt }),
        ),
      ),
    );
    empty.textContent = page.policies.length ? '' : filter ? `No policy you may read starts with "${filter}".` : 'No policy you may read.';
    previous.disabled = current === 0;
    next.disabled = following === undefined;
    where.textContent = `page ${current + 1}${filter ? ` of names starting with "${filter}"` : ''}`;
    return true;
  };

  previous.onclick = () => {
    if (current === 0) return;
    current--;
    void show();
  };
  next.onclick = () => {
    if (following === undefined) return;
    tokens = [...tokens.slice(0, current + 1), following];
    current++;
    void show();
  };
  form.onsubmit = (event) => {
    event.preventDefault();
    filter = input.value.trim().toLowerCase();
    tokens = [undefined];
    current = 0;
    void show();
  };

  const create = el('button', { id: 'new-policy', textContent: 'New policy' });
  create.onclick = () => (location.hash = '#/new');
  // The first page before the page: whoever waits for the table finds it filled.
  if (!(await show())) return;
  main.replaceChildren(
    el('h1', { textContent: 'Policies' }),
    ...(isAdmin() ? [el('p', {}, create)] : []),
    form,
    message,
    table,
    empty,
    el('p', {}, previous, next, where),
  );
}
