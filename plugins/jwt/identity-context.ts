// How the verified identity travels along a chain: the `jwt` plugin puts it
// in the call context, later plugins (opa, vault) read it from there.
import type { CallContext } from '../api/plugin.js';
import type { Identity } from '../../identity/index.js';

const IDENTITY_KEY = 'gatehouse.identity';

export function setCallerIdentity(ctx: CallContext, identity: Identity): void {
  ctx.state.set(IDENTITY_KEY, identity);
}

/** The identity verified earlier in this chain, or null when no `jwt` plugin ran before. */
export function callerIdentity(ctx: CallContext): Identity | null {
  return (ctx.state.get(IDENTITY_KEY) as Identity | undefined) ?? null;
}

/**
 * Headers the gateway owns: it sets them from the verified identity and
 * deletes whatever a client sent under these names.
 */
export const IDENTITY_HEADERS = {
  sub: 'x-gatehouse-sub',
  role: 'x-gatehouse-role',
  project: 'x-gatehouse-project',
} as const;
export const OWNED_HEADER_PREFIX = 'x-gatehouse-';
