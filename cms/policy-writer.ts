/**
 * The one way a policy version reaches etcd. PUT, rollback and DELETE on
 * /policies (routes/policies.ts) call it, POST /policies/{name}/check runs
 * its checks without the write; it knows nothing of HTTP, so it is tested on
 * its own against etcd and opa (test/cms/policy-writer.test.ts).
 *
 * A write, in order, so that nothing is written unless every check passes
 * and a stale precondition costs no compile:
 *   1. the preconditions (If-Match, If-None-Match), early; the etcd
 *      transaction checks them again, atomically
 *   2. compile with opa, the policy's tests run with it (the test gate)
 *   3. the load check: loaded and evaluated once in the gateways' engine,
 *      under their bounds
 *   4. one etcd transaction
 *   5. metrics and the audit line
 * Waiting for the gateways to enforce it (Prefer: wait) comes after the
 * write, in `waitForGateways`, so that the caller can say which version it
 * wrote before it waits.
 */
import type { Etcd3 } from 'etcd3';
import { EvaluationBudgetError } from '../policy/engine/index.js';
import { MeteringError } from '../policy/engine/meter.js';
import type { EvaluationTarget } from '../policy/engine/evaluation.js';
import { EvaluationMemoryError, EvaluationTimeoutError, type EvaluationPool } from '../policy/engine/pool.js';
import {
  candidateName,
  PolicyNotFoundError,
  PreconditionFailedError,
  sha256Hex,
  type CandidateRollout,
  type PolicyMetadata,
  type PolicyStore,
  type PutResult,
  type WriteConditions,
} from '../policy/store/index.js';
import { waitForFleet } from './fleet.js';
import type { CmsMetrics } from './metrics.js';
import { renderTests, type PolicyBody } from './policy-body.js';
import { DEFAULT_REPLAY_TIMEOUT_MS, replay, type ReplayInputs, type ReplayReport } from './replay.js';
import { inSpan } from './tracing.js';
import { PolicyTestsFailedError, PolicyTestsStoppedError, policySubmission, type CompiledPolicy, type RegoCompiler } from './rego-compiler.js';

export interface PolicyWriterOptions {
  compiler: RegoCompiler;
  /** The load check's evaluation pool: the gateways' fuel, deadline and memory ceiling. */
  checks: EvaluationPool;
  store: PolicyStore;
  /** Where the gateways report the revision they enforce. */
  etcd: Etcd3;
  metrics: CmsMetrics;
  /** A replay's time budget, all its evaluations together (default DEFAULT_REPLAY_TIMEOUT_MS). */
  replayTimeoutMs?: number;
}

/** The pool's tenant of every evaluation of POST /policies/{name}/evaluate: not a policy name, so never a load check's. */
export const EVALUATE_TENANT = '(evaluate)';

/** What an evaluation answers: the document (undefined when no rule decides it), the live version evaluated (null: a draft), how long the pool took. */
export interface EvaluatedPolicy {
  document: unknown;
  version: number | null;
  evaluationMs: number;
}

/** What a check answers: the compiled policy, and the replay's report when inputs were replayed. */
export type CheckedPolicy = CompiledPolicy & { replay?: ReplayReport };

/** Who writes, and the logger the audit line goes to (a request's: it carries the request id). */
export interface PolicyAuthor {
  sub: string;
  log: { info(object: object, message: string): void };
}

/** A version as written: the store's answer, and how long opa took. */
export interface WrittenPolicy extends PutResult {
  compileMs: number;
}

/** The compiled policy does not load or evaluate in the gateways' engine: the author's to fix. */
export class PolicyDoesNotLoadError extends Error {
  override readonly name = 'PolicyDoesNotLoadError';
}

/** Evaluated once on an empty input, the policy ran past the gateways' time, memory or fuel bound. */
export class PolicyEvaluationBoundError extends Error {
  override readonly name = 'PolicyEvaluationBoundError';
  constructor(
    readonly bound: 'time' | 'memory' | 'fuel',
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export class PolicyWriter {
  private readonly compiler: RegoCompiler;
  private readonly checks: EvaluationPool;
  private readonly store: PolicyStore;
  private readonly etcd: Etcd3;
  private readonly metrics: CmsMetrics;
  private readonly replayTimeoutMs: number;

  constructor(options: PolicyWriterOptions) {
    ({ compiler: this.compiler, checks: this.checks, store: this.store, etcd: this.etcd, metrics: this.metrics } = options);
    this.replayTimeoutMs = options.replayTimeoutMs ?? DEFAULT_REPLAY_TIMEOUT_MS;
  }

  /**
   * Everything a write checks (compile, tests, load), nothing written. With
   * `inputs`, then those decision inputs evaluated with the live version (the
   * current one in etcd, if any) and with this one, and the ones whose result
   * changed (replay.ts).
   */
  async check(name: string, policy: PolicyBody, inputs?: ReplayInputs): Promise<CheckedPolicy> {
    const compiled = await this.compile(policy.rego, policy.dataText, policy.tests);
    await this.checkLoads(name, compiled, policy.dataText);
    if (!inputs) return compiled;
    const live = await this.liveTarget(name);
    const draft = { source: engineSource(compiled, policy.dataText), entrypoint: compiled.entrypoint };
    const report = await replay(this.checks, { live: live?.target ?? null, liveVersion: live?.version ?? null, draft }, inputs.inputs, this.replayTimeoutMs);
    return { ...compiled, replay: report };
  }

  /**
   * Evaluates `input` with the live version of `name` (`draft` null;
   * PolicyNotFoundError when there is none) or with `draft`, compiled as a
   * check compiles it (its tests are not run; this evaluation is its load
   * check): in the check pool, under the gateways' bounds, all evaluations
   * as one tenant (EVALUATE_TENANT), so that together they hold at most all
   * but one of its workers and the load checks of PUTs go on beside them.
   * The document is the package's, undefined when no rule decides it.
   * Nothing is written.
   */
  async evaluate(name: string, draft: Pick<PolicyBody, 'rego' | 'dataText'> | null, input: unknown): Promise<EvaluatedPolicy> {
    let target: EvaluationTarget;
    let version: number | null = null;
    if (draft) {
      const compiled = await this.compile(draft.rego, draft.dataText, null);
      target = { source: engineSource(compiled, draft.dataText), entrypoint: compiled.entrypoint };
    } else {
      const live = await this.liveTarget(name);
      if (!live) throw new PolicyNotFoundError(`no policy named ${name}`);
      ({ target, version } = live);
    }
    const started = performance.now();
    let document: unknown;
    try {
      document = await this.checks.evaluate(EVALUATE_TENANT, target, input);
    } catch (error) {
      throw evaluationFailure(error, 'evaluated on this input, the policy', 'gateways would deny this request');
    }
    return { document, version, evaluationMs: performance.now() - started };
  }

  /** The live version of `name` as the gateways' engine loads it; null when there is none. */
  private async liveTarget(name: string): Promise<{ target: EvaluationTarget; version: number } | null> {
    const current = await this.store.get(name, { withWasm: true });
    if (!current) return null;
    if (current.wasm === undefined) throw new Error(`the live version of ${name} has no compiled module in etcd`);
    return {
      target: {
        source: {
          wasmSha256: current.meta.wasmSha256,
          wasm: new Uint8Array(current.wasm),
          dataSha256: sha256Hex(current.dataText),
          dataText: current.dataText,
        },
        entrypoint: current.meta.entrypoint,
      },
      version: current.meta.version,
    };
  }

  /** Writes `policy` as the next version of `name` (created or replaced). */
  write(name: string, policy: PolicyBody, conditions: WriteConditions, author: PolicyAuthor): Promise<WrittenPolicy> {
    return this.writeVersion(name, policy, conditions, author);
  }

  /**
   * Writes a version from the history again, as the next version: history
   * stays linear, and the rollback is checked like any write (compiled again
   * by today's opa). Null when the history holds no such version.
   */
  async rollback(name: string, version: number, conditions: WriteConditions, author: PolicyAuthor): Promise<WrittenPolicy | null> {
    const old = await this.store.historyVersion(name, version);
    if (!old) return null;
    const tests = old.testsText === null ? null : (JSON.parse(old.testsText) as Record<string, string>);
    return this.writeVersion(name, { rego: old.rego, dataText: old.dataText, tests }, conditions, author, 'rollback', { from: version });
  }

  /**
   * Writes `policy` as the candidate of `name` (policy/candidate): checked
   * exactly as a write (compile, tests, load), stored beside the live
   * version under its own versions, never enforced unless `rollout` canaries
   * it. `conditions` are on the candidate's version. PolicyNotFoundError when
   * `name` has no live version to stand beside.
   */
  async writeCandidate(name: string, policy: PolicyBody, rollout: CandidateRollout, conditions: WriteConditions, author: PolicyAuthor): Promise<WrittenPolicy> {
    if (!(await this.store.currentRevision(name))) throw new PolicyNotFoundError(`no policy named ${name}: a candidate stands beside a live version`);
    return this.writeVersion(
      candidateName(name),
      policy,
      conditions,
      author,
      'candidate',
      { rollout: { samplePercent: rollout.samplePercent, enforcePercent: rollout.enforcePercent } },
      rollout,
    );
  }

  /**
   * Writes the candidate of `name` as its next version and removes the
   * candidate, in one transaction (`conditions` on the live version;
   * `candidateVersion`, when given, must still be the candidate's). Not
   * compiled again: it is the module that was checked and shadowed.
   * PolicyNotFoundError when there is no candidate.
   */
  async promote(name: string, candidateVersion: number | null, conditions: WriteConditions, author: PolicyAuthor): Promise<WrittenPolicy> {
    const candidate = await this.store.get(candidateName(name), { withWasm: true });
    if (!candidate?.wasm) throw new PolicyNotFoundError(`policy ${name} has no candidate`);
    if (candidateVersion !== null && candidate.meta.version !== candidateVersion) {
      throw new PreconditionFailedError(`the candidate is version ${candidate.meta.version}, not ${candidateVersion}`);
    }
    const { meta } = candidate;
    const result = await this.store.put(
      name,
      {
        rego: candidate.rego,
        dataText: candidate.dataText,
        testsText: candidate.testsText,
        wasm: new Uint8Array(candidate.wasm),
        author: author.sub,
        opaVersion: meta.opaVersion,
        entrypoint: meta.entrypoint,
        syntaxVersion: meta.syntaxVersion,
        ...(meta.inputRefs ? { inputRefs: meta.inputRefs } : {}),
      },
      conditions,
      { promoting: { version: meta.version } },
    );
    this.metrics.etcdWriteDuration.observe({ operation: 'put' }, result.etcdMs / 1000);
    this.metrics.policyWrites.inc({ operation: 'put', outcome: 'promoted' });
    audit(author, 'promote', result.meta, { candidateVersion: meta.version });
    return { ...result, compileMs: 0 };
  }

  /** Removes the candidate of `name` (its history stays); PolicyNotFoundError when there is none. */
  async discardCandidate(name: string, conditions: WriteConditions, author: PolicyAuthor): Promise<{ meta: PolicyMetadata; revision: number | null }> {
    let deleted;
    try {
      deleted = await this.store.delete(candidateName(name), conditions);
    } catch (error) {
      if (error instanceof PolicyNotFoundError) throw new PolicyNotFoundError(`policy ${name} has no candidate`);
      throw error;
    }
    this.metrics.policyWrites.inc({ operation: 'delete', outcome: 'candidate_discarded' });
    audit(author, 'discard candidate', deleted.meta);
    return deleted;
  }

  /** Deletes the current version (the history keeps it); PolicyNotFoundError when there is none. */
  async delete(name: string, conditions: WriteConditions, author: PolicyAuthor): Promise<{ meta: PolicyMetadata; revision: number | null }> {
    const started = performance.now();
    const deleted = await this.store.delete(name, conditions);
    this.metrics.etcdWriteDuration.observe({ operation: 'delete' }, (performance.now() - started) / 1000);
    this.metrics.policyWrites.inc({ operation: 'delete', outcome: 'deleted' });
    audit(author, 'delete', deleted.meta);
    return deleted;
  }

  /** Waits until every live gateway enforces `revision`, or `seconds` pass (Prefer: wait); the fleet's status then. */
  waitForGateways(revision: number, seconds: number) {
    return waitForFleet(this.etcd, revision, seconds);
  }

  private async writeVersion(
    name: string,
    policy: PolicyBody,
    conditions: WriteConditions,
    author: PolicyAuthor,
    operation?: string,
    auditExtra: Record<string, unknown> = {},
    rollout?: CandidateRollout,
  ): Promise<WrittenPolicy> {
    if (conditions.ifVersion !== undefined || conditions.ifAbsent) await this.store.checkWriteConditions(name, conditions);
    let compiled;
    try {
      compiled = await inSpan('compile', () => this.compile(policy.rego, policy.dataText, policy.tests), { 'gatehouse.policy.name': name });
      this.metrics.compileDuration.observe({ outcome: 'ok' }, compiled.durationMs / 1000);
    } catch (error) {
      const outcome = error instanceof PolicyTestsFailedError ? 'tests_failed' : error instanceof PolicyTestsStoppedError ? 'tests_stopped' : 'compile_error';
      this.metrics.policyWrites.inc({ operation: 'put', outcome });
      throw error;
    }
    await this.checkLoads(name, compiled, policy.dataText);
    const testsText = policy.tests === null ? null : renderTests(policy.tests);
    const result = await inSpan(
      'etcd write',
      () =>
        this.store.put(
          name,
          { ...policySubmission(policy.rego, policy.dataText, compiled, author.sub), testsText, ...(rollout ? { rollout } : {}) },
          conditions,
        ),
      { 'gatehouse.policy.name': name },
    );
    this.metrics.etcdWriteDuration.observe({ operation: 'put' }, result.etcdMs / 1000);
    this.metrics.policyWrites.inc({ operation: 'put', outcome: result.created ? 'created' : 'replaced' });
    audit(author, operation ?? (result.created ? 'create' : 'replace'), result.meta, {
      syntaxVersion: compiled.syntaxVersion,
      ...(compiled.tests ? { testsPassed: compiled.tests.passed } : {}),
      ...auditExtra,
    });
    return { ...result, compileMs: compiled.durationMs };
  }

  /**
   * Compiled by opa and metered for the gateways (rego-compiler.ts). A module
   * binaryen cannot meter (an instruction the metering walk does not know)
   * is one no gateway could bound: refused as not loadable.
   */
  private async compile(rego: string, dataText: string, tests: Record<string, string> | null): Promise<CompiledPolicy> {
    try {
      return await this.compiler.compile(rego, dataText, tests);
    } catch (error) {
      if (error instanceof MeteringError) {
        throw new PolicyDoesNotLoadError(`the compiled policy cannot be metered for the gateways' fuel bound: ${error.message}`, { cause: error });
      }
      throw error;
    }
  }

  /**
   * What `opa build` accepts, the gateway's engine may still refuse (data
   * with a lone surrogate such as "\ud800" parses in Go, not in the wasm's
   * JSON parser; a module may fail at evaluation). The policy is loaded with
   * its data in the engine every gateway uses, and evaluated once on an empty
   * input, before anything is written: a refusal is the author's, never a
   * version the gateways cannot enforce. It runs in the evaluation pool,
   * under the gateways' bounds, so the CMS answers other requests meanwhile.
   */
  private async checkLoads(name: string, compiled: CompiledPolicy, dataText: string): Promise<void> {
    const source = engineSource(compiled, dataText);
    try {
      await inSpan('load check', () => this.checks.evaluate(name, { source, entrypoint: compiled.entrypoint }, {}), { 'gatehouse.policy.name': name });
    } catch (error) {
      throw evaluationFailure(error, 'evaluated once on an empty input, the compiled policy', 'gateways would deny every request it decides');
    }
  }
}

/**
 * A failed evaluation in the check pool as the author's error: past one of
 * the gateways' bounds (time, memory, fuel) a PolicyEvaluationBoundError,
 * anything else (a module the engine refuses, a runtime error) a
 * PolicyDoesNotLoadError. `what` and `consequence` finish the message.
 */
function evaluationFailure(error: unknown, what: string, consequence: string): Error {
  if (error instanceof EvaluationTimeoutError || error instanceof EvaluationMemoryError || error instanceof EvaluationBudgetError) {
    const bound = error instanceof EvaluationTimeoutError ? 'time' : error instanceof EvaluationMemoryError ? 'memory' : 'fuel';
    return new PolicyEvaluationBoundError(bound, `${what} exceeded the gateways' ${bound} bound (${error.message}); ${consequence}; nothing was written`, {
      cause: error,
    });
  }
  const reason = error instanceof Error ? (error.cause instanceof Error ? `${error.message}: ${error.cause.message}` : error.message) : String(error);
  return new PolicyDoesNotLoadError(`the compiled policy does not load or evaluate in the gateway's engine: ${reason}`, { cause: error });
}

/** A compiled policy with its data, as the gateways' engine loads it. */
function engineSource(compiled: CompiledPolicy, dataText: string) {
  return { wasmSha256: sha256Hex(compiled.wasm), wasm: new Uint8Array(compiled.wasm), dataSha256: sha256Hex(dataText), dataText };
}

function audit(author: PolicyAuthor, operation: string, meta: PolicyMetadata, extra: Record<string, unknown> = {}): void {
  author.log.info(
    {
      audit: {
        operation,
        policy: meta.name,
        version: meta.version,
        sha256: meta.sha256,
        wasmSha256: meta.wasmSha256,
        by: author.sub,
        ...extra,
      },
    },
    `audit: ${operation} ${meta.name} v${meta.version}`,
  );
}
