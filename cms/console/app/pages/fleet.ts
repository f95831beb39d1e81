// The fleet (platform admins): every live gateway (runner workers, decision
// APIs) as it reports itself to etcd, refreshed every second. A gateway that
// is behind the newest policy write, not watching etcd, or out of step for
// too long stands out (a class and a word); one that stops is gone from the
// list once its lease expires (GATEWAY_REPORT_TTL_SECONDS).
import { api, type Problem } from '../api.js';
import { el, main, problemView } from '../dom.js';

/** A gateway out of step with etcd for longer than this is stale, even while it catches up. */
export const STALE_AFTER_SECONDS = 5;

interface Gateway {
  id: string;
  kind: string;
  host: string;
  datacenter: string | null;
  revision: number;
  state: string;
  staleSeconds: number;
  source: string;
  unloadable?: { count: number; names: string[]; unsigned?: string[]; badSignature?: string[] };
  signatures?: string;
}

interface Fleet {
  /** The etcd revision of the newest policy write; null before the first. */
  revision: number | null;
  gateways: Gateway[];
}

/** What is wrong with a gateway, in words; none when it is in step. */
function troubles(gateway: Gateway, newest: number | null): string[] {
  const found: string[] = [];
  if (newest !== null && gateway.revision < newest) found.push('behind');
  if (gateway.state !== 'watching') found.push(gateway.state);
  if (gateway.staleSeconds > STALE_AFTER_SECONDS) found.push(`stale ${gateway.staleSeconds} s`);
  return found;
}

function unloadableText(gateway: Gateway): string {
  const u = gateway.unloadable;
  if (!u || u.count === 0) return 'none';
  const parts = [`${u.count}: ${u.names.join(', ')}${u.count > u.names.length ? ', …' : ''}`];
  if (u.unsigned?.length) parts.push(`unsigned: ${u.unsigned.join(', ')}`);
  if (u.badSignature?.length) parts.push(`bad signature: ${u.badSignature.join(', ')}`);
  return parts.join('; ');
}

function row(gateway: Gateway, newest: number | null): HTMLTableRowElement {
  const wrong = troubles(gateway, newest);
  const behind = newest === null ? '?' : gateway.revision >= newest ? '0' : String(newest - gateway.revision);
  const tr = el(
    'tr',
    { className: wrong.length ? 'gateway stale' : 'gateway' },
    el('td', { textContent: gateway.id }),
    el('td', { textContent: gateway.kind }),
    el('td', { textContent: gateway.host }),
    el('td', { textContent: gateway.datacenter ?? '' }),
    el('td', { className: 'num', textContent: String(gateway.revision) }),
    el('td', { className: 'num behind', textContent: behind }),
    el('td', { textContent: `${gateway.state} (${gateway.source})` }),
    el('td', { className: 'num', textContent: String(gateway.staleSeconds) }),
    el('td', { className: gateway.unloadable?.count ? 'unloadable error' : 'unloadable', textContent: unloadableText(gateway) }),
    el('td', { textContent: gateway.signatures ?? '' }),
    el('td', { className: 'verdict', textContent: wrong.length ? wrong.join(', ') : 'in step' }),
  );
  tr.dataset.id = gateway.id;
  return tr;
}

export async function fleetView(): Promise<() => void> {
  const first = await api<Fleet>('GET', '/gateways');
  if (first.status !== 200) {
    problemView(first.status, first.body as unknown as Problem);
    return () => undefined;
  }
  const summary = el('p', { id: 'fleet-summary' });
  const table = el('table', { id: 'fleet' });
  const message = el('p', { id: 'fleet-message', className: 'error' });
  main.replaceChildren(
    el('h1', { textContent: 'Fleet' }),
    summary,
    table,
    message,
    el('p', {
      className: 'muted',
      textContent:
        `Stale: behind the newest policy write, not watching etcd, or out of step for over ${STALE_AFTER_SECONDS} s. ` +
        'A gateway that stops leaves the list when its report lease expires.',
    }),
  );
  const render = (fleet: Fleet) => {
    const stale = fleet.gateways.filter((g) => troubles(g, fleet.revision).length > 0).length;
    summary.textContent = `${fleet.gateways.length} gateways; newest policy revision ${fleet.revision ?? 'unknown (no write yet)'}; ${stale} stale or behind`;
    table.replaceChildren(
      el(
        'tr',
        {},
        ...['gateway', 'kind', 'host', 'datacenter', 'revision', 'behind (revisions)', 'state', 'out of step (s)', 'unloadable', 'signatures', ''].map((h) =>
          el('th', { textContent: h }),
        ),
      ),
      ...fleet.gateways.map((g) => row(g, fleet.revision)),
    );
  };
  render(first.body);
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void api<Fleet>('GET', '/gateways')
      .then((answer) => {
        if (answer.status === 200) {
          message.textContent = '';
          render(answer.body);
        } else message.textContent = `Refresh failed (${answer.status}): ${(answer.body as unknown as Problem)?.detail ?? ''}`;
      })
      .catch((err: unknown) => (message.textContent = `Refresh failed: ${(err as Error).message}`))
      .finally(() => (busy = false));
  }, 1_000);
  return () => clearInterval(timer);
}
