// The JWT_* environment that the CMS, the decision API and the runner read
// (identity/config.ts), from an identity configuration.
import type { IdentityConfig } from '../../identity/index.js';

export function identityEnv(identity: IdentityConfig): Record<string, string> {
  return {
    ...(identity.jwks.kind === 'file' ? { JWT_JWKS_FILE: identity.jwks.path } : { JWT_JWKS_URL: identity.jwks.url.href }),
    JWT_ISSUER: identity.issuer,
    JWT_AUDIENCE: identity.audience.join(','),
    JWT_ALGORITHMS: identity.algorithms.join(','),
    JWT_CLOCK_TOLERANCE_SECONDS: String(identity.clockToleranceSeconds),
    JWT_CLAIM_SUB: identity.claimNames.sub,
    JWT_CLAIM_ROLE: identity.claimNames.role,
    JWT_CLAIM_PROJECT: identity.claimNames.project,
  };
}
