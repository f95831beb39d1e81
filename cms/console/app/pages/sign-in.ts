// Sign in: paste a token (kept in this tab's session storage), or, on the
// local stack, pick one of its demo identities.
import { api, signIn, signOut, type Problem } from '../api.js';
import { el, main } from '../dom.js';

export async function signInView(signedIn: () => Promise<void>): Promise<void> {
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
    await signedIn();
  };
  main.replaceChildren(el('h1', { textContent: 'Sign in' }), input, el('p', {}, button), message);
  // The local stack offers its demo identities; a real CMS answers 404 here.
  const demo = await api<{ label: string; token: string }[]>('GET', '/console/demo-tokens');
  if (demo.status === 200 && Array.isArray(demo.body)) {
    const buttons = demo.body.map((d) => {
      const b = el('button', { className: 'demo', textContent: `Demo: ${d.label}` });
      b.onclick = async () => {
        signIn(d.token);
        await signedIn();
      };
      return b;
    });
    main.append(el('p', { className: 'muted', textContent: 'Local stack only: ' }, ...buttons));
  }
}
