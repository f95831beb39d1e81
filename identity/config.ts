/**
 * Identity configuration from the environment (each service's configuration
 * module reads it), the same for the CMS and the gateway's `jwt` plugin so
 * that the two verify tokens identically.
 *
 *   JWT_JWKS_FILE                path of a JWKS JSON file (re-read when it changes, and when a token names an unknown kid)
 *   JWT_JWKS_URL                 https URL of a JWKS (cached, re-fetched on an unknown kid)
 *                                exactly one of the two must be set
 *   JWT_JWKS_ALLOW_HTTP          "true" accepts an http:// JWT_JWKS_URL (keys fetched in the clear: tests only)
 *   JWT_MAX_TOKEN_LIFETIME_SECONDS  refuse tokens whose exp - iat is longer (iat then required); unset: no limit
 *   JWT_ISSUER                   required `iss`
 *   JWT_AUDIENCE                 required `aud`; several accepted values separated by commas
 *   JWT_ALGORITHMS               allow-list, comma separated (default RS256,ES256,EdDSA); "none" is never accepted
 *   JWT_CLOCK_TOLERANCE_SECONDS  leeway for exp/nbf (default 30)
 *   JWT_CLAIM_SUB / JWT_CLAIM_ROLE / JWT_CLAIM_PROJECT
 *                                claim names for subject, role and project (defaults sub, role, project)
 *   JWT_VERIFY_CACHE_SECONDS     how long a gateway or decision API remembers a verified token (default 30; 0: not at all)
 */
export interface ClaimNames {
  sub: string;
  role: string;
  project: string;
}

export type JwksSource = { kind: 'file'; path: string } | { kind: 'url'; url: URL };

export interface IdentityConfig {
  jwks: JwksSource;
  issuer: string;
  audience: string[];
  algorithms: string[];
  clockToleranceSeconds: number;
  claimNames: ClaimNames;
  /** Longest accepted exp - iat; tokens must then carry iat. */
  maxTokenLifetimeSeconds?: number;
  /** Accept an http:// JWKS URL (keys fetched in the clear, so anyone on the path could forge tokens). */
  allowPlainHttpJwks?: boolean;
}

export const DEFAULT_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'];
export const DEFAULT_CLOCK_TOLERANCE_SECONDS = 30;
export const DEFAULT_CLAIM_NAMES: ClaimNames = { sub: 'sub', role: 'role', project: 'project' };

export class IdentityConfigError extends Error {
  override readonly name = 'IdentityConfigError';
}

function list(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item.length > 0);
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name]?.trim();
  if (!value) throw new IdentityConfigError(`${name} must be set`);
  return value;
}

/** Checks a config built in code (tests, start script) the same way env config is checked. */
export function validateIdentityConfig(config: IdentityConfig): IdentityConfig {
  if (!config.issuer) throw new IdentityConfigError('issuer must not be empty');
  if (config.audience.length === 0) throw new IdentityConfigError('at least one audience is required');
  if (config.algorithms.length === 0) throw new IdentityConfigError('the algorithm allow-list is empty');
  if (config.algorithms.some((alg) => alg.toLowerCase() === 'none')) {
    throw new IdentityConfigError('"none" cannot be an allowed algorithm');
  }
  if (!Number.isFinite(config.clockToleranceSeconds) || config.clockToleranceSeconds < 0) {
    throw new IdentityConfigError('clock tolerance must be a non-negative number of seconds');
  }
  if (config.jwks.kind === 'url' && config.jwks.url.protocol !== 'https:') {
    if (config.jwks.url.protocol !== 'http:') throw new IdentityConfigError('the JWKS URL must be https://');
    if (!config.allowPlainHttpJwks) {
      throw new IdentityConfigError(
        'the JWKS URL is plain http: keys fetched in the clear can be replaced on the way; use https, or set JWT_JWKS_ALLOW_HTTP=true for tests',
      );
    }
  }
  const lifetime = config.maxTokenLifetimeSeconds;
  if (lifetime !== undefined && (!Number.isFinite(lifetime) || lifetime <= 0)) {
    throw new IdentityConfigError('the maximum token lifetime must be a positive number of seconds');
  }
  return config;
}

function parseUrl(text: string): URL {
  try {
    return new URL(text);
  } catch {
    throw new IdentityConfigError('JWT_JWKS_URL is not a URL');
  }
}

export function identityConfigFromEnv(env: NodeJS.ProcessEnv): IdentityConfig {
  const file = env.JWT_JWKS_FILE?.trim();
  const url = env.JWT_JWKS_URL?.trim();
  if (Boolean(file) === Boolean(url)) {
    throw new IdentityConfigError('set exactly one of JWT_JWKS_FILE and JWT_JWKS_URL');
  }
  const tolerance = env.JWT_CLOCK_TOLERANCE_SECONDS?.trim();
  const algorithms = list(env.JWT_ALGORITHMS);
  return validateIdentityConfig({
    jwks: file ? { kind: 'file', path: file } : { kind: 'url', url: parseUrl(url as string) },
    issuer: required(env, 'JWT_ISSUER'),
    audience: list(required(env, 'JWT_AUDIENCE')),
    algorithms: algorithms.length > 0 ? algorithms : DEFAULT_ALGORITHMS,
    clockToleranceSeconds: tolerance ? Number(tolerance) : DEFAULT_CLOCK_TOLERANCE_SECONDS,
    claimNames: {
      sub: env.JWT_CLAIM_SUB?.trim() || DEFAULT_CLAIM_NAMES.sub,
      role: env.JWT_CLAIM_ROLE?.trim() || DEFAULT_CLAIM_NAMES.role,
      project: env.JWT_CLAIM_PROJECT?.trim() || DEFAULT_CLAIM_NAMES.project,
    },
    ...(env.JWT_MAX_TOKEN_LIFETIME_SECONDS?.trim() ? { maxTokenLifetimeSeconds: Number(env.JWT_MAX_TOKEN_LIFETIME_SECONDS.trim()) } : {}),
    ...(env.JWT_JWKS_ALLOW_HTTP?.trim() === 'true' ? { allowPlainHttpJwks: true } : {}),
  });
}

/** JWT_VERIFY_CACHE_SECONDS (default 30; 0 turns the cache off): see verification-cache.ts. */
export function verifyCacheSecondsFromEnv(env: NodeJS.ProcessEnv): number {
  const seconds = Number(env.JWT_VERIFY_CACHE_SECONDS ?? 30);
  if (!Number.isFinite(seconds) || seconds < 0) throw new IdentityConfigError('JWT_VERIFY_CACHE_SECONDS must be a number of seconds (0 disables)');
  return seconds;
}
