/**
 * The policy pipeline of a process that enforces policies (each runner
 * worker, each decision API), assembled in one place: the etcd client it is
 * given -> engine cache -> evaluator (this thread or a pool) -> decision
 * memo -> policy watcher (with its last-known-good snapshot) -> fleet
 * report -> candidates' shadow and their reports -> decision log. Both
 * services build theirs here from their configuration and use what it
 * returns; close() stops it in order (the etcd client stays the caller's).
 */
import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { EngineCache } from './engine/cache.js';
import { createEvaluator, type AbortReason, type EvaluationSettings, type Evaluator } from './engine/evaluator.js';
import { DecisionMemo } from './engine/decision-memo.js';
import { PolicyWatcher } from './watcher/watcher.js';
import { snapshotDir } from './watcher/snapshot.js';
import { GatewayReporter, type GatewayKind } from './fleet/report.js';
import { FileSignatureVerifier } from './signing/index.js';
import { openDecisionLog, type DecisionLog, type DecisionLogSettings } from './decision-log/index.js';
import { CandidateReporter, CandidateShadow, type ShadowOutcome } from './candidate/index.js';

export interface EnforcerOptions {
  /** The service's etcd client (it may share it, e.g. with the LLM budgets, and closes it itself). */
  client: Etcd3;
  log: Logger;
  kind: GatewayKind;
  /** This process's name as a gateway: its fleet report's key and the `gateway` of its decision log events (policy/fleet gatewayId). */
  gateway: string;
  /** GATEHOUSE_DATACENTER, in the fleet report. */
  datacenter: string | null;
  /** The fleet report lease's TTL, s (default 10). */
  reportTtlSeconds?: number;
  /** Where the last-known-good snapshot is kept (a `policies` directory is made in it). */
  stateDir: string;
  /** Read the snapshot but leave writing it to another process sharing the directory. */
  snapshotReadOnly?: boolean;
  /** The engines' memory budget, bytes (RUNNER_POLICY_CACHE_MB, DECISION_POLICY_CACHE_MB). */
  cacheBytes: number;
  evaluation: EvaluationSettings;
  /** null: no decision log. */
  decisionLog: DecisionLogSettings | null;
  /** POLICY_VERIFY_KEYS_FILE: the JWKS whose keys every policy version must be signed by (policy/signing); null: not checked. */
  verifyKeysFile?: string | null;
  /** Told of every evaluation stopped or failed (metrics). */
  onAbort?: (reason: AbortReason, tenant: string) => void;
  /** Told of decision log events written to the sink, or dropped because it did not keep up (metrics). */
  onDecisionLogWritten?: (n: number) => void;
  onDecisionLogDropped?: (n: number) => void;
  /** Told of each shadow evaluation of a candidate (metrics). */
  onShadow?: (policy: string, outcome: ShadowOutcome) => void;
}

export interface Enforcer {
  readonly watcher: PolicyWatcher;
  readonly reporter: GatewayReporter;
  readonly decisionLog: DecisionLog | null;
  readonly evaluator: Evaluator;
  /** Where recent decisions are remembered (POLICY_DECISION_CACHE_MB); null when it is 0. */
  readonly memo: DecisionMemo | null;
  /** Where decisions shadow and canary policies' candidates (policy/candidate). */
  readonly candidates: CandidateShadow;
  /**
   * Starts watching and reporting. Resolves once a first policy set is in
   * place (from etcd, else from the snapshot) or neither exists; it never
   * rejects (etcd is retried in the background).
   */
  start(): Promise<void>;
  /** Stops reporting (the report goes at once), watching and evaluating, and flushes the decision log. */
  close(): Promise<void>;
}

export function createEnforcer(options: EnforcerOptions): Enforcer {
  const { evaluation } = options;
  const engines = new EngineCache({ budgetBytes: options.cacheBytes, maxMemoryBytes: evaluation.memoryMaxBytes, fuel: evaluation.fuel });
  // Decisions run on this thread, bounded by fuel and memory, runaway tenants made to wait; or, with
  // POLICY_EVAL_WORKERS, in worker threads under a deadline too (engine/evaluator.ts).
  const evaluator = createEvaluator({ ...evaluation, engines, cacheBytes: options.cacheBytes, ...(options.onAbort ? { onAbort: options.onAbort } : {}) });
  // Decisions on an input a policy saw moments ago are answered as they were (engine/decision-memo.ts).
  const memo = evaluation.decisionCacheBytes > 0 ? new DecisionMemo(evaluation.decisionCacheBytes) : null;
  // Signatures checked before a version is loaded (policy/signing); the file is read now, a bad one stops the start.
  const verifier = options.verifyKeysFile
    ? new FileSignatureVerifier(options.verifyKeysFile, (error) =>
        options.log.error({ err: error.message, cause: String(error.cause) }, 'policy verify keys file unusable; keeping the keys read before'),
      )
    : null;
  if (verifier) options.log.info({ file: options.verifyKeysFile, kids: verifier.kids }, 'policy signatures are checked');
  else options.log.warn('policy signatures are NOT checked (no POLICY_VERIFY_KEYS_FILE): any version in etcd is enforced, signed or not');
  const watcher = new PolicyWatcher({
    client: options.client,
    verifier,
    log: options.log.child({ component: 'policy-watcher' }),
    snapshotDir: snapshotDir(options.stateDir),
    snapshotReadOnly: options.snapshotReadOnly ?? false,
    engines,
    pool: evaluator,
    memo,
  });
  // Tells etcd what this process enforces (policy/fleet), for the CMS's status.
  const reporter = new GatewayReporter({
    client: options.client,
    watcher,
    kind: options.kind,
    id: options.gateway,
    datacenter: options.datacenter,
    log: options.log.child({ component: 'fleet' }),
    ...(options.reportTtlSeconds !== undefined ? { ttlSeconds: options.reportTtlSeconds } : {}),
  });
  const decisionLog = options.decisionLog
    ? openDecisionLog(options.decisionLog, {
        ...(options.onDecisionLogWritten ? { onWritten: options.onDecisionLogWritten } : {}),
        ...(options.onDecisionLogDropped ? { onDropped: options.onDecisionLogDropped } : {}),
      })
    : null;
  const candidates = new CandidateShadow({ gateway: reporter.id, ...(options.onShadow ? { onOutcome: options.onShadow } : {}) });
  const candidateReporter = new CandidateReporter({
    client: options.client,
    shadow: candidates,
    watcher,
    log: options.log.child({ component: 'candidates' }),
    ...(options.reportTtlSeconds !== undefined ? { ttlSeconds: options.reportTtlSeconds } : {}),
  });
  let started: Promise<void> | null = null;
  return {
    watcher,
    reporter,
    decisionLog,
    evaluator,
    memo,
    candidates,
    start() {
      if (!started) {
        started = watcher.start();
        reporter.start();
        candidateReporter.start();
      }
      return started;
    },
    async close() {
      await started;
      await reporter.stop();
      await candidateReporter.stop();
      await watcher.stop();
      verifier?.close();
      await evaluator.close();
      await decisionLog?.close();
    },
  };
}
