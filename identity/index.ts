/**
 * JWT identity for Gatehouse: one verifier, used by the CMS and the gateway's
 * `jwt` plugin, independent of any HTTP framework.
 *
 *   const verifier = createIdentityVerifier(identityConfigFromEnv(env));
 *   const identity = await verifier.verifyAuthorizationHeader(req.headers.authorization);
 *   // identity: { sub, role, project, claims, isPlatformAdmin }
 *   // failures: AuthenticationError { failure, publicReason, isServerSide }
 */
export * from './config.js';
export * from './errors.js';
export * from './verifier.js';
export * from './verification-cache.js';
