import { readFile, stat } from 'node:fs/promises';
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
  /** The kid of the key that verified the token (for traces). */
  keyId?: string;
}

export interface IdentityVerifier {
  /** Verifies a compact JWT. Rejects with AuthenticationError only. */
  verifyToken(token: string): Promise<Identity>;
  /** Extracts the bearer token from an Authorization header value, then verifies it. */
  verifyAuthorizationHeader(header: string | undefined): Promise<Identity>;
  /**
   * The identity of an Authorization header value verified a moment ago and
   * still valid, at once; undefined when there is none (verify it then). A
   * verifier that remembers nothing leaves it out.
   */
  rememberedIdentity?(header: string | undefined): Identity | undefined;
  /**
   * Changes whenever the signing keys change (a JWKS file re-read with other
   * contents), so that whoever remembers verifications forgets them: a key
   * removed from the file revokes its tokens at once. Cheap; it looks at the
   * file at most once a second, in the background.
   */
  keysGeneration(): number;
}

/** Minimum time between two reads of a JWKS file triggered by unknown kids. */
const FILE_RELOAD_COOLDOWN_MS = 1_000;

/** How often a JWKS file is looked at for changes. */
const FILE_CHECK_INTERVAL_MS = 1_000;

interface KeyResolver {
  getKey: JWTVerifyGetKey;
  generation(): number;
}

/**
 * A key resolver over a JWKS file that re-reads the file when it changes
 * (checked at most once a second) and when a token names a kid it does not
 * hold: keys rotate without a restart, and a key removed from the file
 * stops verifying within about a second.
 */
function fileKeyResolver(path: string): KeyResolver {
  let keySet: JWTVerifyGetKey | undefined;
  let loadedText: string | undefined;
  let generation = 0;
  let lastLoadAt = 0;
  let lastCheckAt = 0;
  let checking: Promise<void> | null = null;
  async function load(): Promise<JWTVerifyGetKey> {
    lastLoadAt = Date.now();
    let text: string;
    try {
      text = await readFile(path, 'utf8');
      const next = createLocalJWKSet(JSON.parse(text));
      if (text !== loadedText) generation++;
      loadedText = text;
      keySet = next;
    } catch (cause) {
      // Unreadable or not a JWKS: nothing verifies until it is fixed (fail closed).
      if (keySet !== undefined) generation++;
      keySet = undefined;
      loadedText = undefined;
      throw new AuthenticationError('keys_unavailable', 'signing keys are unavailable', { cause });
    }
    return keySet;
  }
  /** Re-reads the file when its contents may have changed (size, time, inode). */
  let seen = '';
  function check(): void {
    if (checking || Date.now() - lastCheckAt < FILE_CHECK_INTERVAL_MS) return;
    lastCheckAt = Date.now();
    checking = stat(path)
      .then(
        (info) => `${info.ino}:${info.size}:${info.mtimeMs}`,
        () => 'missing',
      )
      .then(async (now) => {
        if (now === seen) return;
        seen = now;
        await load().catch(() => undefined);
      })
      .finally(() => {
        checking = null;
      });
  }
  const getKey: JWTVerifyGetKey = async (header, token) => {
    check();
    await checking;
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
  return {
    getKey,
    generation() {
      check();
      return generation;
    },
  };
}

function keyResolver(config: IdentityConfig): KeyResolver {
  if (config.jwks.kind === 'file') return fileKeyResolver(config.jwks.path);
  // jose caches the set and re-fetches it (at most every cooldownDuration) when a kid is unknown.
  const remote = createRemoteJWKSet(config.jwks.url, { timeoutDuration: 5_000, cooldownDuration: 30_000 });
  return { getKey: remote, generation: () => 0 };
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
  const keys = keyResolver(config);
  const getKey = keys.getKey;
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
        // A token that never expires is refused; with a lifetime limit, so is one that does not say when it was issued.
        requiredClaims: config.maxTokenLifetimeSeconds === undefined ? ['exp'] : ['exp', 'iat'],
      }));
    } catch (error) {
      throw translateJoseError(error);
    }
    const lifetime = config.maxTokenLifetimeSeconds;
    if (lifetime !== undefined && typeof payload.exp === 'number' && typeof payload.iat === 'number' && payload.exp - payload.iat > lifetime) {
      throw refuse('invalid_claims', `token lifetime (exp - iat) exceeds ${lifetime} seconds`);
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
      keyId: header.kid,
    };
  }

  return {
    verifyToken,
    verifyAuthorizationHeader: (header) => verifyHeader(verifyToken, header),
    keysGeneration: () => keys.generation(),
  };
}

/** `verify`'s answer for the bearer token of `header`; rejects (never throws) when there is none. */
export function verifyHeader(verify: (token: string) => Promise<Identity>, header: string | undefined): Promise<Identity> {
  let token: string;
  try {
    token = bearerToken(header);
  } catch (error) {
    return Promise.reject(error);
  }
  return verify(token);
}

/** The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive (RFC 9110). */
export function bearerToken(header: string | undefined): string {
  const match = header?.match(/^Bearer[ ]+([A-Za-z0-9\-._~+/]+=*)[ ]*$/i);
  if (!match?.[1]) throw refuse('missing_token', 'a bearer token is required');
  return match[1];
}
