/**
 * Policy names: lowercase DNS labels. `platform` names the platform-wide
 * policy, so no project can be called that.
 *
 * A policy's candidate (a version shadowed or canaried beside the live one)
 * is stored as a policy of its own named `<name>.candidate`: no policy name
 * holds a dot, so it can never be taken by a project, and everything that
 * reads, checks, snapshots and watches policies carries candidates too.
 * keys.ts puts its keys beside the live version's.
 */
export const PLATFORM_POLICY_NAME = 'platform';

const POLICY_NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function isValidPolicyName(name: string): boolean {
  return POLICY_NAME_PATTERN.test(name);
}

const CANDIDATE_SUFFIX = '.candidate';

/** The stored name of `name`'s candidate. */
export function candidateName(name: string): string {
  return `${name}${CANDIDATE_SUFFIX}`;
}

/** The live policy a candidate's stored name belongs to; null when `stored` names no candidate. */
export function candidateOf(stored: string): string | null {
  if (!stored.endsWith(CANDIDATE_SUFFIX)) return null;
  const name = stored.slice(0, -CANDIDATE_SUFFIX.length);
  return isValidPolicyName(name) ? name : null;
}

/** A name the store keeps: a policy's, or a policy's candidate's. */
export function isStoredPolicyName(name: string): boolean {
  return isValidPolicyName(name) || candidateOf(name) !== null;
}

export function isPlatformPolicy(name: string): boolean {
  return name === PLATFORM_POLICY_NAME;
}

export class InvalidPolicyNameError extends Error {
  override readonly name = 'InvalidPolicyNameError';
  constructor(readonly policyName: string) {
    super('policy names are lowercase DNS labels: ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$');
  }
}

export function assertValidPolicyName(name: string): void {
  if (!isValidPolicyName(name)) throw new InvalidPolicyNameError(name);
}

export function assertStoredPolicyName(name: string): void {
  if (!isStoredPolicyName(name)) throw new InvalidPolicyNameError(name);
}
