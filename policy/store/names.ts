/**
 * Policy names: lowercase DNS labels. `platform` names the platform-wide
 * policy, so no project can be called that.
 */
export const PLATFORM_POLICY_NAME = 'platform';

const POLICY_NAME_PATTERN = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

export function isValidPolicyName(name: string): boolean {
  return POLICY_NAME_PATTERN.test(name);
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
