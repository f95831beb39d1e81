import { readFile } from 'node:fs/promises';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
  type ProtectedHeaderParameters,
} from 'jose';
import { validateIdentityConfig, type IdentityConfig } from './config.js';
import { AuthenticationError } from './errors.js';

export const PLATFORM_ADMIN_ROLE = 'platform_admin';

/** Who is asking, as established by a verified token. */
export interface Identity {
  sub: string;
  /** The role claim when it is a string, else null. */
  role: string | null;
  /** The project claim when it is a non-empty string, else null. */
  project: string | null;
  /** Every verified claim, for plugins that need more than the three above. */
  claims: JWTPayload;
  isPlatformAdmin: boolean;
}

export interface IdentityVerifier {
  /** Verifies a compact JWT. Rejects with AuthenticationError only. */
  verifyToken(token: string): Promise<Identity>;
  /** Extracts the bearer token from an Authorization header value, then verifies it. */
  verifyAuthorizationHeader(header: string | undefined): Promise<Identity>;
}

/** Minimum time between two reads of a JWKS file triggered by unknown kids. */
const FILE_RELOAD_COOLDOWN_MS = 1_000;

/**
 * A key resolver over a JWKS file that re-reads the file when a token names
 * a kid it does not hold, so keys can be rotated without a restart.
 */
function fileKeyResolver(path: string): JWTVerifyGetKey {
  let keySet: JWTVerifyGetKey | undefined;
  let lastLoadAt = 0;
  async function load(): Promise<JWTVerifyGetKey> {
    lastLoadAt = Date.now();
    let text: string;
    try {
      text = await readFile(path, 'utf8');
      keySet = createLocalJWKSet(JSON.parse(text));
    } catch (cause) {
      throw new AuthenticationError('keys_unavailable', 'signing keys are unavailable', { cause });
    }
    return keySet;
  }
  return async (header, token) => {
    const current = keySet ?? (await load());
    try {
      return await current(header, token);
    } catch (error) {
      if (error instanceof errors.JWKSNoMatchingKey && Date.now() - lastLoadAt >= FILE_RELOAD_COOLDOWN_MS) {
        return (await load())(header, token);
      }
      throw error;
    }
  };
}

function keyResolver(config: IdentityConfig): JWTVerifyGetKey {
  if (config.jwks.kind === 'file') return fileKeyResolver(config.jwks.path);
  // jose caches the set and re-fetches it (at most every cooldownDuration) when a kid is unknown.
  return createRemoteJWKSet(config.jwks.url, { timeoutDuration: 5_000, cooldownDuration: 30_000 });
}

function refuse(failure: AuthenticationError['failure'], reason: string, cause?: unknown): AuthenticationError {
  return new AuthenticationError(failure, reason, { cause });
}

/** Maps jose's errors to our failures; anything unknown is still a refusal (fail closed). */
function translateJoseError(error: unknown): AuthenticationError {
  if (error instanceof AuthenticationError) return error;
  if (error instanceof errors.JWTExpired) return refuse('expired', 'token has expired', error);
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case 'iss':
        return refuse('wrong_issuer', 'token issuer is not accepted', error);
      case 'aud':
        return refuse('wrong_audience', 'token audience is not accepted', error);
      case 'nbf':
        return refuse('not_yet_valid', 'token is not valid yet', error);
      default:
        return refuse('invalid_claims', `token claim "${error.claim}" is missing or invalid`, error);
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return refuse('algorithm_not_allowed', 'token algorithm is not allowed', error);
  if (error instanceof errors.JWKSNoMatchingKey) return refuse('unknown_key', 'token key id is not known', error);
  if (error instanceof errors.JWSSignatureVerificationFailed) return refuse('bad_signature', 'token signature is invalid', error);
  if (error instanceof errors.JWKSTimeout || error instanceof errors.JWKSInvalid) {
    return refuse('keys_unavailable', 'signing keys are unavailable', error);
  }
  if (error instanceof errors.JWSInvalid || error instanceof errors.JWTInvalid) {
    return refuse('malformed_token', 'token is malformed', error);
  }
  return refuse('malformed_token', 'token could not be verified', error);
}

function stringClaim(payload: JWTPayload, name: string): string | null {
  const value = payload[name];
  return typeof value === 'string' && value.length > 0 ? value : null;
}

export function createIdentityVerifier(config: IdentityConfig): IdentityVerifier {
  validateIdentityConfig(config);
  const getKey = keyResolver(config);
  const allowed = new Set(config.algorithms);

  async function verifyToken(token: string): Promise<Identity> {
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch (cause) {
      throw refuse('malformed_token', 'token is malformed', cause);
    }
    // Checked before any key lookup so that "none" and unexpected algorithms never reach a key.
    if (typeof header.alg !== 'string' || !allowed.has(header.alg)) {
      throw refuse('algorithm_not_allowed', 'token algorithm is not allowed');
    }
    if (typeof header.kid !== 'string' || header.kid.length === 0) {
      throw refuse('missing_key_id', 'token header has no key id');
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, getKey, {
        issuer: config.issuer,
        audience: config.audience,
        algorithms: config.algorithms,
        clockTolerance: config.clockToleranceSeconds,
        requiredClaims: ['exp'], // a token that never expires is refused
      }));
    } catch (error) {
      throw translateJoseError(error);
    }
    const sub = stringClaim(payload, config.claimNames.sub);
    if (sub === null) throw refuse('missing_subject', 'token has no subject');
    const role = stringClaim(payload, config.claimNames.role);
    return {
      sub,
      role,
      project: stringClaim(payload, config.claimNames.project),
      claims: payload,
      isPlatformAdmin: role === PLATFORM_ADMIN_ROLE,
    };
  }

  return {
    verifyToken,
    async verifyAuthorizationHeader(header) {
      return verifyToken(bearerToken(header));
    },
  };
}

/** The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive (RFC 9110). */
export function bearerToken(header: string | undefined): string {
  const match = header?.match(/^Bearer[ ]+([A-Za-z0-9\-._~+/]+=*)[ ]*$/i);
  if (!match?.[1]) throw refuse('missing_token', 'a bearer token is required');
  return match[1];
}
