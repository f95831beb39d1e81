// `jwt`: verifies `Authorization: Bearer` with the same rules as the CMS,
// hands the identity to later plugins and forwards it upstream in headers
// the gateway owns. A client can never spoof those headers: they are deleted
// on every request, seen or not (APISIX shows the runner only the first 100
// request headers, the rest still reach the upstream).
import { unavailablePlugin, type CallContext, type Plugin } from '../api/plugin.js';
import { jsonConfParser } from '../api/json-conf.js';
import { identitySlot } from '../api/slots.js';
import { AuthenticationError, type Identity, type IdentityVerifier } from '../../identity/index.js';
import type { GatewayRequest, StopResponse } from '../api/http.js';

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

export interface JwtConf {
  /** Set x-gatehouse-sub/-role/-project on the upstream request (default true). */
  forward_identity: boolean;
  /** Remove the Authorization header before the upstream (default false). */
  strip_authorization: boolean;
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    forward_identity: { type: 'boolean', default: true },
    strip_authorization: { type: 'boolean', default: false },
  },
};

function challenge(error?: AuthenticationError): string {
  if (!error || error.failure === 'missing_token') return 'Bearer realm="gatehouse"';
  const description = error.publicReason.replace(/["\\]/g, '');
  return `Bearer realm="gatehouse", error="invalid_token", error_description="${description}"`;
}

/** `verifier` is null when JWT_* is not configured: routes naming `jwt` then fail at PrepareConf. */
export function createJwtPlugin(verifier: IdentityVerifier | null, configError?: string): Plugin<JwtConf> {
  if (!verifier) return unavailablePlugin('jwt', `token verification is not configured (${configError ?? 'JWT_* unset'})`);
  return verifyingPlugin(verifier);
}

function verifyingPlugin(verifier: IdentityVerifier): Plugin<JwtConf> {
  async function verifyAndAdmit(conf: JwtConf, request: GatewayRequest, response: StopResponse, ctx: CallContext, header: string | undefined): Promise<void> {
    let identity;
    try {
      identity = await verifier.verifyAuthorizationHeader(header);
    } catch (err) {
      if (!(err instanceof AuthenticationError)) throw err;
      ctx.log.info({ failure: err.failure, requestId: request.id }, 'token refused');
      ctx.trace?.attributes({ 'gatehouse.jwt.failure': err.failure });
      if (err.isServerSide) {
        response.problem(503, 'token verification is unavailable');
        return;
      }
      response.problem(401, err.publicReason, { failure: err.failure });
      response.headers.set('www-authenticate', challenge(err));
      return;
    }
    admit(conf, request, ctx, identity);
  }

  return {
    name: 'jwt',
    parseConf: jsonConfParser<JwtConf>('jwt', schema),

    requestFilter(conf, request, response, ctx) {
      for (const name of Object.values(IDENTITY_HEADERS)) request.headers.delete(name);
      for (const name of [...request.headers.keys()]) {
        if (name.startsWith(OWNED_HEADER_PREFIX)) request.headers.delete(name);
      }
      const header = request.headers.get('authorization') ?? undefined;
      // A token verified a moment ago is admitted at once: no promise to wait on, on every request a client repeats its token.
      const remembered = verifier.rememberedIdentity?.(header);
      if (remembered) return admit(conf, request, ctx, remembered);
      return verifyAndAdmit(conf, request, response, ctx, header);
    },
  };
}

/** Hands the verified identity to later plugins and, unless the route says otherwise, to the upstream. */
function admit(conf: JwtConf, request: GatewayRequest, ctx: CallContext, identity: Identity): void {
  identitySlot.set(ctx, identity);
  // Who issued the token and with which key: never the token or its other claims.
  ctx.trace?.attributes({
    'gatehouse.jwt.issuer': typeof identity.claims.iss === 'string' ? identity.claims.iss : '',
    'gatehouse.jwt.kid': identity.keyId ?? '',
    ...(identity.project !== null ? { 'gatehouse.project': identity.project } : {}),
  });
  if (conf.forward_identity) {
    request.headers.set(IDENTITY_HEADERS.sub, identity.sub);
    if (identity.role !== null) request.headers.set(IDENTITY_HEADERS.role, identity.role);
    if (identity.project !== null) request.headers.set(IDENTITY_HEADERS.project, identity.project);
  }
  if (conf.strip_authorization) request.headers.delete('authorization');
}
