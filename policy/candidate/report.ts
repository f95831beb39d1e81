// What each gateway saw of each candidate, told to etcd: one key per policy
// and gateway (/gatehouse/candidates/<name>/<id>, policy/store/keys.ts) under
// a lease of the gateway's own, so a dead gateway's reports go with it. A
// report is written when its counts changed, at most once per
// `intervalMs`; once a policy's candidate is gone from the gateway's set,
// its report is deleted. The CMS reads them back (readCandidateReports) for
// GET /policies/{name}/candidate.
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';
import { candidateName, candidateReportKey, candidateReportsPrefix } from '../store/index.js';
import type { PolicyWatcher } from '../watcher/watcher.js';
import { DEFAULT_REPORT_TTL_SECONDS } from '../fleet/report.js';
import type { CandidateShadow, ShadowReport } from './shadow.js';

export interface CandidateReporterOptions {
  client: Etcd3;
  shadow: CandidateShadow;
  watcher: PolicyWatcher;
  log: Logger;
  ttlSeconds?: number;
  /** How often changed reports are written (ms, default 1000). */
  intervalMs?: number;
}

export class CandidateReporter {
  private lease: Lease | null = null;
  private timer: NodeJS.Timeout | null = null;
  private writing: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly options: CandidateReporterOptions) {}

  start(): void {
    this.timer = setInterval(() => {
      this.writing = this.writing.then(() => this.flush());
    }, this.options.intervalMs ?? 1_000);
    this.timer.unref();
  }

  /** Writes what changed and deletes the reports of candidates that are gone. */
  async flush(): Promise<void> {
    if (this.stopped) return;
    const { shadow, watcher } = this.options;
    const set = watcher.current;
    const gone = shadow.tracked().filter((t) => set.get(candidateName(t.policy))?.meta.version !== t.candidateVersion);
    for (const { policy } of gone) shadow.forget(policy);
    const changed = shadow.takeChanged();
    if (changed.length === 0 && gone.length === 0) return;
    try {
      const lease = this.currentLease();
      for (const report of changed) await lease.put(candidateReportKey(report.policy, shadow.gateway)).value(JSON.stringify(report));
      // A candidate replaced by a newer version is reported again by its next decision; one deleted is not.
      for (const { policy } of gone) {
        if (!set.get(candidateName(policy))) await this.options.client.delete().key(candidateReportKey(policy, shadow.gateway));
      }
    } catch (err) {
      // etcd away: the counts stay in the tallies' next report (they are totals, not increments).
      this.options.log.debug({ err: String(err) }, 'could not write the candidate reports');
      for (const report of changed) shadow.markChanged(report.policy);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    await this.writing;
    const lease = this.lease;
    this.lease = null;
    await lease?.revoke().catch(() => undefined);
  }

  private currentLease(): Lease {
    if (this.lease) return this.lease;
    const lease = this.options.client.lease(this.options.ttlSeconds ?? DEFAULT_REPORT_TTL_SECONDS);
    lease.on('lost', () => {
      // Expired or revoked: everything is written again under a new one.
      if (this.lease === lease) this.lease = null;
      for (const { policy } of this.options.shadow.tracked()) this.options.shadow.markChanged(policy);
    });
    this.lease = lease;
    return lease;
  }
}

/** Every live gateway's report on `name`'s candidate at `candidateVersion`. */
export async function readCandidateReports(client: Etcd3, name: string, candidateVersion: number): Promise<ShadowReport[]> {
  const values = await client.getAll().prefix(candidateReportsPrefix(name)).strings();
  const reports: ShadowReport[] = [];
  for (const text of Object.values(values)) {
    try {
      const report = JSON.parse(text) as ShadowReport;
      if (report.candidateVersion === candidateVersion) reports.push(report);
    } catch {
      // A report that does not parse is no gateway's word: left out.
    }
  }
  return reports.sort((a, b) => a.gateway.localeCompare(b.gateway));
}
