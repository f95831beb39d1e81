// What each gateway enforces, told to etcd: every process with a policy
// watcher (each runner worker, each decision API) keeps one small report
// under a lease of its own (/gatehouse/gateways/<id>, policy/store/keys.ts).
// The CMS reads them back to say which gateways enforce a policy's current
// version, and to wait until all of them do. A gateway that dies stops
// renewing its lease and its report vanishes within the lease's TTL.
//
// Cheap at scale: a report is a few hundred bytes whatever the number of
// policies (one revision, not a version per policy), and a gateway writes it
// when what it enforces changes, at most once per `minIntervalMs`, plus a
// refresh every `refreshMs` for its staleness.
import { hostname } from 'node:os';
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';
import { GATEWAYS_PREFIX, gatewayKey } from '../store/keys.js';
import type { PolicyWatcher } from '../watcher/watcher.js';

export type GatewayKind = 'runner' | 'decision-api';

export interface GatewayReport {
  id: string;
  kind: GatewayKind;
  host: string;
  pid: number;
  /** GATEHOUSE_DATACENTER, when set. */
  datacenter: string | null;
  startedAt: string;
  reportedAt: string;
  /** The etcd revision of the policy set it enforces: it enforces every policy write at or below it. */
  revision: number;
  /** Where that set came from: etcd, the last-known-good snapshot, or nothing yet. */
  source: 'etcd' | 'snapshot' | 'none';
  state: string;
  /** Seconds since it last knew it was in step with etcd (0 while watching). */
  staleSeconds: number;
  policies: number;
  /**
   * Policies it cannot enforce (every decision needing them is denied): how
   * many, and the first names; of them, those refused for their signature
   * (policy/signing): no signature, or none by a listed key over these bytes.
   */
  unloadable: { count: number; names: string[]; unsigned: string[]; badSignature: string[] };
  /** Whether it checks policy signatures ('not checked': it enforces any version in etcd). */
  signatures: 'checked' | 'not checked';
}

export interface GatewayReporterOptions {
  client: Etcd3;
  watcher: PolicyWatcher;
  kind: GatewayKind;
  log: Logger;
  id?: string;
  datacenter?: string | null;
  /** The lease's TTL: how long a dead gateway's report outlives it (GATEWAY_REPORT_TTL_SECONDS; default 10 s). */
  ttlSeconds?: number;
  minIntervalMs?: number;
  refreshMs?: number;
}

const MAX_NAMES = 20;
/** Names of policies refused for their signature, per kind: enough for a policy's status to name each. */
export const MAX_SIGNATURE_NAMES = 100;

export const DEFAULT_REPORT_TTL_SECONDS = 10;

/** GATEWAY_REPORT_TTL_SECONDS in `env` (default DEFAULT_REPORT_TTL_SECONDS). */
export function reportTtlSeconds(env: NodeJS.ProcessEnv): number {
  const raw = env.GATEWAY_REPORT_TTL_SECONDS;
  if (raw === undefined || raw === '') return DEFAULT_REPORT_TTL_SECONDS;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 2 || value > 3600) throw new Error('GATEWAY_REPORT_TTL_SECONDS must be a whole number of seconds from 2 to 3600');
  return value;
}

/** `configured` (GATEWAY_ID), else host-kind-pid: unique per process, readable in a list. */
export function gatewayId(kind: GatewayKind, configured?: string | null): string {
  const id = configured || `${hostname()}-${kind}-${process.pid}`;
  return id.replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 128);
}

export class GatewayReporter {
  readonly id: string;
  private lease: Lease | null = null;
  private readonly startedAt = new Date().toISOString();
  private timer: NodeJS.Timeout | null = null;
  private refresh: NodeJS.Timeout | null = null;
  private lastWrite = 0;
  private writing: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly onChange = () => this.schedule();

  constructor(private readonly options: GatewayReporterOptions) {
    this.id = options.id ?? gatewayId(options.kind);
    gatewayKey(this.id); // refuses an invalid id now rather than at the first write
  }

  start(): void {
    const { watcher } = this.options;
    watcher.on('revision', this.onChange);
    watcher.on('state', this.onChange);
    this.refresh = setInterval(() => this.schedule(), this.options.refreshMs ?? 5_000);
    this.refresh.unref();
    this.schedule();
  }

  /** The report as it would be written now. */
  report(): GatewayReport {
    const status = this.options.watcher.status;
    const unloadable = status.unloadable;
    return {
      id: this.id,
      kind: this.options.kind,
      host: hostname(),
      pid: process.pid,
      datacenter: this.options.datacenter ?? null,
      startedAt: this.startedAt,
      reportedAt: new Date().toISOString(),
      revision: status.revision,
      source: status.source,
      state: status.state,
      staleSeconds: Math.round(status.staleSeconds * 10) / 10,
      policies: status.policies,
      unloadable: {
        count: unloadable.length,
        names: unloadable.slice(0, MAX_NAMES).map((u) => u.name),
        unsigned: unloadable
          .filter((u) => u.signature === 'unsigned')
          .slice(0, MAX_SIGNATURE_NAMES)
          .map((u) => u.name),
        badSignature: unloadable
          .filter((u) => u.signature === 'bad signature')
          .slice(0, MAX_SIGNATURE_NAMES)
          .map((u) => u.name),
      },
      signatures: status.signatures.checked ? 'checked' : 'not checked',
    };
  }

  /** Revokes the lease: the report is gone at once (a clean stop need not wait for the TTL). */
  async stop(): Promise<void> {
    this.stopped = true;
    this.options.watcher.off('revision', this.onChange);
    this.options.watcher.off('state', this.onChange);
    if (this.timer) clearTimeout(this.timer);
    if (this.refresh) clearInterval(this.refresh);
    await this.writing;
    const lease = this.lease;
    this.lease = null;
    await lease?.revoke().catch(() => undefined);
  }

  private schedule(): void {
    if (this.stopped || this.timer) return;
    const wait = Math.max(0, this.lastWrite + (this.options.minIntervalMs ?? 200) - Date.now());
    this.timer = setTimeout(() => {
      this.timer = null;
      this.writing = this.writing.then(() => this.write());
    }, wait);
    this.timer.unref();
  }

  private async write(): Promise<void> {
    if (this.stopped) return;
    this.lastWrite = Date.now();
    try {
      const lease = this.currentLease();
      await lease.put(gatewayKey(this.id)).value(JSON.stringify(this.report()));
    } catch (err) {
      // etcd away: the report goes stale with the lease; written again once it answers.
      this.options.log.debug({ err: String(err) }, 'could not write the gateway report');
      this.retryLater();
    }
  }

  private retryLater(): void {
    if (this.stopped) return;
    setTimeout(() => this.schedule(), 1_000).unref();
  }

  private currentLease(): Lease {
    if (this.lease) return this.lease;
    const lease = this.options.client.lease(this.options.ttlSeconds ?? DEFAULT_REPORT_TTL_SECONDS);
    lease.on('lost', (err: Error) => {
      // Expired (etcd away longer than the TTL) or revoked: a new lease, the report again.
      if (this.lease === lease) this.lease = null;
      this.options.log.warn({ err: err.message }, 'gateway report lease lost; granting a new one');
      this.schedule();
    });
    this.lease = lease;
    return lease;
  }
}

/** Every live gateway's report (expired leases have taken the dead ones' away). */
export async function listGateways(client: Etcd3): Promise<GatewayReport[]> {
  const values = await client.getAll().prefix(GATEWAYS_PREFIX).strings();
  const reports: GatewayReport[] = [];
  for (const text of Object.values(values)) {
    try {
      reports.push(JSON.parse(text) as GatewayReport);
    } catch {
      // not a report: ignored
    }
  }
  return reports.sort((a, b) => a.id.localeCompare(b.id));
}
