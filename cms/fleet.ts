// What the CMS knows of the gateways: their reports (policy/fleet), which of
// them enforce a given write, and waiting for all of them (Prefer: wait).
import type { Etcd3 } from 'etcd3';
import { listGateways, MAX_SIGNATURE_NAMES, type GatewayReport } from '../policy/fleet/report.js';
import { HttpProblem } from '../http/problem.js';

/** The longest a write may wait for the gateways, whatever Prefer asks. */
export const MAX_WAIT_SECONDS = 60;
const POLL_MS = 25;

export interface GatewayStatus {
  id: string;
  kind: GatewayReport['kind'];
  host: string;
  datacenter: string | null;
  revision: number;
  state: string;
  staleSeconds: number;
  /** It enforces the write in question: its policy set is at or past the write's revision. */
  enforces: boolean;
  /**
   * For a policy's status: what it makes of the signature of the version it
   * holds (policy/signing): 'valid', 'unsigned' or 'bad signature' (then it
   * denies every decision that needs the policy), 'not checked' (it verifies
   * no signatures), 'unknown' (too many refused to name them all).
   */
  signature?: 'valid' | 'unsigned' | 'bad signature' | 'not checked' | 'unknown';
}

export interface FleetStatus {
  /** The write's etcd revision. */
  revision: number;
  enforcedBy: number;
  gateways: GatewayStatus[];
}

/** What a gateway's report says of `policy`'s signature (see GatewayStatus). */
function signatureOf(report: GatewayReport, policy: string): NonNullable<GatewayStatus['signature']> {
  if (report.signatures !== 'checked') return 'not checked';
  const { unsigned = [], badSignature = [] } = report.unloadable;
  if (unsigned.includes(policy)) return 'unsigned';
  if (badSignature.includes(policy)) return 'bad signature';
  return unsigned.length >= MAX_SIGNATURE_NAMES || badSignature.length >= MAX_SIGNATURE_NAMES ? 'unknown' : 'valid';
}

/** The fleet's status for a write at `revision`; of `policy`'s signature too, when named. */
export function fleetStatus(reports: GatewayReport[], revision: number, policy?: string): FleetStatus {
  const gateways = reports.map((report) => ({
    id: report.id,
    kind: report.kind,
    host: report.host,
    datacenter: report.datacenter,
    revision: report.revision,
    state: report.state,
    staleSeconds: report.staleSeconds,
    enforces: report.revision >= revision,
    ...(policy === undefined ? {} : { signature: signatureOf(report, policy) }),
  }));
  return { revision, enforcedBy: gateways.filter((g) => g.enforces).length, gateways };
}

export async function currentFleetStatus(client: Etcd3, revision: number, policy?: string): Promise<FleetStatus> {
  return fleetStatus(await listGateways(client), revision, policy);
}

/**
 * `Prefer: wait=N` (RFC 7240): how many seconds the caller will wait for
 * every gateway; null when it did not ask. A malformed preference is 400
 * (rather than ignored, as RFC 7240 allows) so that a typo does not silently
 * turn a gated deployment step into a fire-and-forget one.
 */
export function preferredWait(header: string | string[] | undefined): number | null {
  if (header === undefined) return null;
  const text = Array.isArray(header) ? header.join(',') : header;
  for (const preference of text.split(',')) {
    const [token, value] = preference
      .split(';')[0]!
      .trim()
      .split('=')
      .map((s) => s.trim());
    if (token?.toLowerCase() !== 'wait') continue;
    if (value === undefined || !/^\d{1,6}$/.test(value)) {
      throw new HttpProblem({ status: 400, title: 'Invalid Prefer header', detail: 'Prefer: wait=N takes a whole number of seconds' });
    }
    return Math.min(Number(value), MAX_WAIT_SECONDS);
  }
  return null;
}

/** Waits until every live gateway enforces `revision`, or `seconds` pass; the status at that moment. */
export async function waitForFleet(client: Etcd3, revision: number, seconds: number): Promise<FleetStatus & { waitedMs: number }> {
  const started = performance.now();
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const status = await currentFleetStatus(client, revision);
    if (status.enforcedBy === status.gateways.length || Date.now() >= deadline) return { ...status, waitedMs: performance.now() - started };
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Response headers saying how far the fleet got: enforced by k of n, and who is behind. */
export function fleetHeaders(status: FleetStatus, wait: number): Record<string, string> {
  const behind = status.gateways.filter((g) => !g.enforces).map((g) => g.id);
  return {
    'Preference-Applied': `wait=${wait}`,
    'Gatehouse-Enforced-By': `${status.enforcedBy}/${status.gateways.length}`,
    ...(behind.length > 0 ? { 'Gatehouse-Behind': behind.join(', ') } : {}),
  };
}
