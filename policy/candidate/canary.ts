// Which callers a canary gives the candidate: a stable hash of the policy's
// name and the caller's subject, so one caller always meets the same version
// of a policy (and different policies' canaries do not pick the same callers).
import { createHash } from 'node:crypto';

/** The caller's place in [0, 100) for policy `name`: the same for the same subject, every time, on every gateway. */
export function canaryPoint(name: string, subject: string): number {
  const digest = createHash('sha256').update(name).update('\0').update(subject).digest();
  return (digest.readUInt32BE(0) / 0x1_0000_0000) * 100;
}

/** Whether `subject` gets the candidate of policy `name` when it is enforced for `enforcePercent` of callers. */
export function onCandidate(name: string, subject: string | null, enforcePercent: number): boolean {
  // A caller without a subject has no stable place: it stays on the live version.
  if (subject === null || enforcePercent <= 0) return false;
  return enforcePercent >= 100 || canaryPoint(name, subject) < enforcePercent;
}
