// A new policy (platform admins): its name, Rego and data; Save creates it
// with If-None-Match: * (never replaces one that exists), errors are marked
// as on a policy's page, and the new policy's page follows.
import { api, type Problem } from '../api.js';
import { editor, el, isAdmin, main, problemView, showWriteProblem, startWrite } from '../dom.js';

const NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const TEMPLATE_REGO = 'package project.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';
const TEMPLATE_DATA = '{\n  "roles": []\n}';

export async function newPolicyView(): Promise<void> {
  if (!isAdmin()) return problemView(403, { detail: 'only platform admins create policies' });
  const name = el('input', { id: 'new-name', placeholder: 'name (a lowercase DNS label, e.g. team-a)', autocomplete: 'off' });
  const regoBox = el('div', { className: 'editor', id: 'rego' });
  const dataBox = el('div', { className: 'editor', id: 'data' });
  const message = el('div', { id: 'message' });
  const create = el('button', { id: 'create', textContent: 'Save' });
  main.replaceChildren(
    el('h1', { textContent: 'New policy' }),
    el('p', {}, el('label', {}, 'Name ', name)),
    el('h2', { textContent: 'Rego' }),
    regoBox,
    el('h2', { textContent: 'Data' }),
    dataBox,
    el('p', {}, create, el('a', { href: '#/', textContent: 'Cancel' })),
    message,
  );
  const rego = editor(regoBox, TEMPLATE_REGO, false, 'rego');
  const data = editor(dataBox, TEMPLATE_DATA, false, 'json');

  create.onclick = async () => {
    const policy = name.value.trim();
    const started = startWrite(message, rego, data);
    // A bad name is said first, whatever the data.
    if (!NAME_PATTERN.test(policy)) {
      message.replaceChildren(el('p', { className: 'error', textContent: 'The name must be a lowercase DNS label: a-z, 0-9 and -, at most 63.' }));
      return;
    }
    if (!started) return;
    create.disabled = true;
    try {
      const saved = await api('PUT', `/policies/${encodeURIComponent(policy)}`, {
        body: JSON.stringify({ rego: rego.state.doc.toString(), data: started.data }),
        headers: { 'if-none-match': '*' },
      });
      if (saved.status === 201) {
        location.hash = `#/p/${policy}`;
        return;
      }
      showWriteProblem(
        message,
        rego,
        data,
        saved.status,
        (saved.body ?? {}) as Problem,
        saved.status === 412 ? `A policy named ${policy} exists already: nothing was written.` : undefined,
      );
    } finally {
      create.disabled = false;
    }
  };
}
