/**
 * Policy store operations on etcd. Every write is one transaction guarded by
 * a compare on the policy's meta key, so concurrent writers cannot interleave
 * and a watcher never sees a half-written policy (see keys.ts).
 */
import { Range, type Etcd3, type IKeyValue, type IResponseOp } from 'etcd3';
import { policyKeys, POLICIES_PREFIX, POLICY_SET_WRITTEN_KEY, parsePolicyKey, type HistoryPart } from './keys.js';
import {
  checkWriteConditions,
  PreconditionFailedError,
  StoreRefusedError,
  StoreUnavailableError,
  WriteConflictError,
  storeFailure,
  type WriteConditions,
} from '../../etcd/store-errors.js';

// The failures and conditions shared with the other stores, as this store's API.
export { PreconditionFailedError, StoreRefusedError, StoreUnavailableError, WriteConflictError, type WriteConditions };
import { currentRevision, indexPage, readIndex, readKeysAt, scanPolicyNames } from './scan.js';
import { signedFieldsOf, type PolicySigner } from '../signing/index.js';
import { sha256Hex, type PolicySignature, type CandidateRollout, type PolicyMetadata } from './metadata.js';
import { candidateName, candidateOf } from './names.js';

export const DEFAULT_HISTORY_RETENTION = 50;
/**
 * etcd's default --max-request-bytes (1.5 MiB). A write is one transaction
 * holding the Rego and the data twice (current and history), the wasm and
 * the metadata twice; a larger one is refused by etcd, so the store refuses
 * it first, with the sizes (PolicyTooLargeError).
 */
export const DEFAULT_ETCD_MAX_REQUEST_BYTES = 1.5 * 1024 * 1024;
/** Room kept for the transaction's own encoding (compares, op headers, prune ranges). */
const TXN_OVERHEAD_BYTES = 4 * 1024;
/** Attempts of an unconditional write before giving up to a stream of concurrent writers. */
const MAX_WRITE_ATTEMPTS = 5;

export interface StoredPolicy {
  meta: PolicyMetadata;
  rego: string;
  /** The data document as JSON text, exactly as it was stored. */
  dataText: string;
  /** The Rego test modules as a JSON object (file name -> module), or null when the version has none. */
  testsText: string | null;
  /** The policy object as JSON text: {"rego": <rego>, "data": <dataText>} (and "tests" when there are some). */
  body: string;
  /** Present when asked for (current versions only). */
  wasm?: Buffer;
}

export interface PolicySubmission {
  rego: string;
  dataText: string;
  /** The Rego test modules as a JSON object (file name -> module); null or absent: none. */
  testsText?: string | null;
  wasm: Uint8Array;
  author: string;
  opaVersion: string;
  entrypoint: string;
  syntaxVersion: 'v0' | 'v1';
  /** The parts of the input the policy reads (PolicyMetadata.inputRefs); absent: the whole input. */
  inputRefs?: string[][];
  /** A candidate's rollout; only for a candidate's stored name (names.ts). */
  rollout?: CandidateRollout;
}

export interface PutOptions {
  /**
   * The version of this policy's candidate that this write promotes: the
   * candidate is removed in the same transaction, which commits only while
   * it is still that version (PreconditionFailedError otherwise).
   */
  promoting?: { version: number };
}

export interface PutResult {
  created: boolean;
  meta: PolicyMetadata;
  /** The etcd revision of the write: a gateway whose policy set is at or past it enforces this version. */
  revision: number;
  /** Time spent in etcd calls for this write (reads and the transaction), milliseconds. */
  etcdMs: number;
}

export class PolicyNotFoundError extends Error {
  override readonly name = 'PolicyNotFoundError';
}
export class PolicyTooLargeError extends Error {
  override readonly name = 'PolicyTooLargeError';
}
/** The configured signer did not sign (Vault unreachable or refusing): nothing was written. */
export class PolicySigningError extends Error {
  override readonly name = 'PolicySigningError';
}

/** The policy object text GET returns; data is spliced in as text so its numbers stay exact. */
export function renderPolicyObject(rego: string, dataText: string, testsText: string | null = null): string {
  return `{"rego":${JSON.stringify(rego)},"data":${dataText}${testsText === null ? '' : `,"tests":${testsText}`}}`;
}

function firstValue(op: IResponseOp | undefined): IKeyValue | undefined {
  return op?.response_range?.kvs?.[0];
}

/** One stored version from its keys, or null when any of the three is missing. */
function storedPolicy(
  meta: IKeyValue | undefined,
  source: IKeyValue | undefined,
  data: IKeyValue | undefined,
  tests: IKeyValue | undefined,
  wasm?: IKeyValue,
): StoredPolicy | null {
  if (!meta || !source || !data) return null;
  const rego = source.value.toString('utf8');
  const dataText = data.value.toString('utf8');
  const testsText = tests ? tests.value.toString('utf8') : null;
  return {
    meta: JSON.parse(meta.value.toString('utf8')) as PolicyMetadata,
    rego,
    dataText,
    testsText,
    body: renderPolicyObject(rego, dataText, testsText),
    ...(wasm ? { wasm: wasm.value } : {}),
  };
}

export interface ListPage {
  policies: PolicyMetadata[];
  /** The last name of this page, to continue after; null on the last page. */
  next: string | null;
}

export class PolicyStore {
  readonly historyRetention: number;
  readonly maxRequestBytes: number;
  /** Signs every version written (policy/signing); null: versions are written unsigned. */
  readonly signer: PolicySigner | null;

  constructor(
    private readonly client: Etcd3,
    options: { historyRetention?: number; maxRequestBytes?: number; signer?: PolicySigner | null } = {},
  ) {
    const retention = options.historyRetention ?? DEFAULT_HISTORY_RETENTION;
    if (!Number.isSafeInteger(retention) || retention < 1) throw new RangeError('history retention must be at least 1');
    this.historyRetention = retention;
    this.maxRequestBytes = options.maxRequestBytes ?? DEFAULT_ETCD_MAX_REQUEST_BYTES;
    this.signer = options.signer ?? null;
  }

  /** Turns any etcd client failure into StoreRefusedError or StoreUnavailableError (etcd/store-errors.ts), or a size refusal. */
  private async etcd<T>(call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (message.includes('request is too large') || message.includes('larger than max')) {
        throw new PolicyTooLargeError('the policy is too large for etcd', { cause: error });
      }
      throw storeFailure('policy', error);
    }
  }

  /** Succeeds when etcd answers a read. */
  async ping(): Promise<void> {
    await this.etcd(() => this.client.get(`${POLICIES_PREFIX}`).exec());
  }

  async get(name: string, options: { withWasm?: boolean } = {}): Promise<StoredPolicy | null> {
    const keys = policyKeys(name);
    const reads = [this.client.get(keys.meta), this.client.get(keys.source), this.client.get(keys.data), this.client.get(keys.tests)];
    if (options.withWasm) reads.push(this.client.get(keys.wasm));
    // One read-only transaction: the keys come from the same revision.
    const response = await this.etcd(() =>
      this.client
        .if(keys.meta, 'Create', '>', 0)
        .then(...reads)
        .commit(),
    );
    if (!response.succeeded) return null;
    const [meta, source, data, tests, wasm] = response.responses.map(firstValue);
    return storedPolicy(meta, source, data, tests, wasm);
  }

  /**
   * One page of current policies' metadata, by name (byte order), after the
   * name `after`: one bounded read of the index (see keys.ts); with `prefix`,
   * of the names that start with it only.
   */
  async listPage(options: { after?: string; limit: number; prefix?: string }): Promise<ListPage> {
    if (!Number.isSafeInteger(options.limit) || options.limit < 1) throw new RangeError('a page holds at least one policy');
    const page = await this.etcd(() =>
      indexPage(this.client, {
        limit: options.limit,
        ...(options.after === undefined ? {} : { after: options.after }),
        ...(options.prefix === undefined ? {} : { prefix: options.prefix }),
      }),
    );
    return { policies: page.entries.map((entry) => entry.meta), next: page.more ? page.entries[page.entries.length - 1]!.name : null };
  }

  /**
   * Brings the index of current policies (keys.ts) in step with the policies'
   * meta keys: an entry for every policy that has none or an outdated one, no
   * entry for a policy that is gone. Each fix is a transaction guarded by the
   * meta key's revision, so it cannot undo a concurrent write. Data written
   * before the index existed needs it once; the CMS runs it at start.
   * Returns the number of entries fixed.
   */
  async rebuildIndex(): Promise<number> {
    return this.etcd(async () => {
      const revision = await currentRevision(this.client);
      const names = await scanPolicyNames(this.client, revision);
      const current = new Set(names);
      const indexed = new Map((await readIndex(this.client, { revision })).entries.map((entry) => [entry.name, entry.text]));
      // The metas, a hundred to a read, compared with their index entries.
      const metas: (IKeyValue | undefined)[] = [];
      for (let i = 0; i < names.length; i += 100) {
        metas.push(
          ...(await readKeysAt(
            this.client,
            names.slice(i, i + 100).map((name) => policyKeys(name).meta),
            revision,
          )),
        );
      }
      let fixed = 0;
      for (const [i, name] of names.entries()) {
        const keys = policyKeys(name);
        const meta = metas[i];
        if (!meta || indexed.get(name) === meta.value.toString('utf8')) continue;
        const done = await this.client.if(keys.meta, 'Mod', '==', meta.mod_revision).then(this.client.put(keys.index).value(meta.value)).commit();
        if (done.succeeded) fixed++;
      }
      for (const name of indexed.keys()) {
        if (current.has(name)) continue;
        const keys = policyKeys(name);
        const done = await this.client.if(keys.meta, 'Create', '==', 0).then(this.client.delete().key(keys.index)).commit();
        if (done.succeeded) fixed++;
      }
      return fixed;
    });
  }

  /** Metadata of every current policy, by name, read page by page. */
  async list(): Promise<PolicyMetadata[]> {
    const all: PolicyMetadata[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.listPage({ limit: 100, ...(after === undefined ? {} : { after }) });
      all.push(...page.policies);
      if (page.next === null) return all;
      after = page.next;
    }
  }

  /** Metadata of the retained versions, newest first. Survives a delete of the policy. */
  async history(name: string): Promise<PolicyMetadata[]> {
    const keys = policyKeys(name);
    const response = await this.etcd(() => this.client.getAll().prefix(keys.historyPrefix('meta')).sort('Key', 'Descend').exec());
    return response.kvs.map((kv) => JSON.parse(kv.value.toString('utf8')) as PolicyMetadata);
  }

  async historyVersion(name: string, version: number): Promise<StoredPolicy | null> {
    const keys = policyKeys(name);
    const response = await this.etcd(() =>
      this.client
        .if(keys.history('meta', version), 'Create', '>', 0)
        .then(
          this.client.get(keys.history('meta', version)),
          this.client.get(keys.history('source', version)),
          this.client.get(keys.history('data', version)),
          this.client.get(keys.history('tests', version)),
        )
        .commit(),
    );
    if (!response.succeeded) return null;
    const [meta, source, data, tests] = response.responses.map(firstValue);
    return storedPolicy(meta, source, data, tests);
  }

  /**
   * The mod revision of the policy's wasm key when it holds exactly the
   * module `wasmSha256` names (read and hashed here, so a key altered in
   * etcd by hand is never taken for the module), else null.
   */
  private async storedModuleRevision(name: string, wasmSha256: string): Promise<string | null> {
    const response = await this.etcd(() => this.client.get(policyKeys(name).wasm).exec());
    const kv = response.kvs[0];
    return kv && sha256Hex(kv.value) === wasmSha256 ? kv.mod_revision : null;
  }

  private async readMeta(name: string): Promise<{ meta: PolicyMetadata; modRevision: string } | null> {
    const response = await this.etcd(() => this.client.get(policyKeys(name).meta).exec());
    const kv = response.kvs[0];
    if (!kv) return null;
    return { meta: JSON.parse(kv.value.toString('utf8')) as PolicyMetadata, modRevision: kv.mod_revision };
  }

  private async lastHistoryVersion(name: string): Promise<number> {
    const keys = policyKeys(name);
    const newest = await this.etcd(() => this.client.getAll().prefix(keys.historyPrefix('meta')).sort('Key', 'Descend').limit(1).keys());
    const parsed = newest[0] === undefined ? null : parsePolicyKey(newest[0]);
    return parsed?.kind === 'history' ? parsed.version : 0;
  }

  private checkConditions(current: PolicyMetadata | null, conditions: WriteConditions): void {
    checkWriteConditions('the policy', { exists: current !== null, version: current?.version }, conditions);
  }

  /** Raises PreconditionFailedError if the conditions do not hold now (an early check; put re-checks atomically). */
  async checkWriteConditions(name: string, conditions: WriteConditions): Promise<void> {
    this.checkConditions((await this.readMeta(name))?.meta ?? null, conditions);
  }

  /**
   * Writes a new version. The transaction only commits if the meta key is
   * unchanged since it was read; a writer that loses re-reads, re-checks its
   * conditions (so a stale If-Match fails with PreconditionFailedError) and,
   * when it has none, tries again on top of the winner.
   */
  async put(name: string, submission: PolicySubmission, conditions: WriteConditions = {}, options: PutOptions = {}): Promise<PutResult> {
    const keys = policyKeys(name);
    if ((submission.rollout !== undefined) !== (candidateOf(name) !== null)) throw new RangeError('a rollout is for a candidate, and a candidate needs one');
    const started = performance.now();
    const wasmSha256 = sha256Hex(submission.wasm);
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const current = await this.readMeta(name);
      this.checkConditions(current?.meta ?? null, conditions);
      const promoted = options.promoting ? await this.readMeta(candidateName(name)) : null;
      if (options.promoting && promoted?.meta.version !== options.promoting.version) {
        throw new PreconditionFailedError(promoted ? `the candidate is version ${promoted.meta.version} now` : 'the policy has no candidate');
      }
      const version = current ? current.meta.version + 1 : (await this.lastHistoryVersion(name)) + 1;
      const testsText = submission.testsText ?? null;
      const body = renderPolicyObject(submission.rego, submission.dataText, testsText);
      const meta: PolicyMetadata = {
        name,
        version,
        sha256: sha256Hex(body),
        wasmSha256,
        author: submission.author,
        updatedAt: new Date().toISOString(),
        opaVersion: submission.opaVersion,
        entrypoint: submission.entrypoint,
        syntaxVersion: submission.syntaxVersion,
        ...(submission.inputRefs ? { inputRefs: submission.inputRefs } : {}),
        ...(submission.rollout ? { rollout: submission.rollout } : {}),
      };
      // Signed as the version it is written as: a retry on top of a concurrent writer signs its own version.
      if (this.signer) meta.signature = await this.sign(meta, submission.dataText);
      const metaText = JSON.stringify(meta);
      const wasm = Buffer.from(submission.wasm.buffer, submission.wasm.byteOffset, submission.wasm.byteLength);
      // The module as stored already (most new versions change only data): not sent again, see keys.ts.
      const storedModule = current?.meta.wasmSha256 === wasmSha256 ? await this.storedModuleRevision(name, wasmSha256) : null;
      const ops = [
        this.client.put(keys.source).value(submission.rego),
        this.client.put(keys.data).value(submission.dataText),
        ...(storedModule === null ? [this.client.put(keys.wasm).value(wasm)] : []),
        this.client.put(keys.history('meta', version)).value(metaText),
        this.client.put(keys.history('source', version)).value(submission.rego),
        this.client.put(keys.history('data', version)).value(submission.dataText),
        // A version without tests clears the previous version's.
        testsText === null ? this.client.delete().key(keys.tests) : this.client.put(keys.tests).value(testsText),
        ...(testsText === null ? [] : [this.client.put(keys.history('tests', version)).value(testsText)]),
        this.client.put(keys.meta).value(metaText),
        this.client.put(keys.index).value(metaText),
        this.client.put(POLICY_SET_WRITTEN_KEY).value(name),
        ...this.pruneHistoryOps(name, version),
        ...(promoted ? this.currentDeleteOps(candidateName(name)) : []),
      ];
      this.checkSize(name, [
        [keys.source, submission.rego],
        [keys.data, submission.dataText],
        ...(storedModule === null ? ([[keys.wasm, wasm]] as [string, Buffer][]) : []),
        [keys.history('meta', version), metaText],
        [keys.history('source', version), submission.rego],
        [keys.history('data', version), submission.dataText],
        ...(testsText === null
          ? []
          : ([
              [keys.tests, testsText],
              [keys.history('tests', version), testsText],
            ] as [string, string][])),
        [keys.meta, metaText],
        [keys.index, metaText],
      ]);
      let guard = current ? this.client.if(keys.meta, 'Mod', '==', current.modRevision) : this.client.if(keys.meta, 'Create', '==', 0);
      if (promoted) guard = guard.and(policyKeys(candidateName(name)).meta, 'Mod', '==', promoted.modRevision);
      // The module kept must still be the one checked: a wasm key rewritten since (by hand) is written again.
      if (storedModule !== null) guard = guard.and(keys.wasm, 'Mod', '==', storedModule);
      const response = await this.etcd(() => guard.then(...ops).commit());
      if (response.succeeded) return { created: current === null, meta, revision: Number(response.header.revision), etcdMs: performance.now() - started };
      const earlier = await this.committedEarlier(keys.history('meta', version), metaText);
      if (earlier !== null) return { created: current === null, meta, revision: earlier, etcdMs: performance.now() - started };
    }
    throw new WriteConflictError('too many concurrent writes to this policy; try again');
  }

  /** The signer's signature of `meta` with its data; a signer that fails (Vault away) fails the write: nothing is written unsigned. */
  private async sign(meta: PolicyMetadata, dataText: string): Promise<PolicySignature> {
    const fields = signedFieldsOf(meta, sha256Hex(dataText));
    try {
      return await this.signer!.sign(fields);
    } catch (error) {
      throw new PolicySigningError(`the policy could not be signed (${this.signer!.description}): ${error instanceof Error ? error.message : String(error)}`, {
        cause: error,
      });
    }
  }

  /** Refuses a write whose transaction etcd would refuse for its size, saying how big it is and why. */
  private checkSize(name: string, puts: [string, string | Buffer][]): void {
    let bytes = TXN_OVERHEAD_BYTES;
    for (const [key, value] of puts) bytes += Buffer.byteLength(key) + (typeof value === 'string' ? Buffer.byteLength(value) : value.byteLength);
    if (bytes <= this.maxRequestBytes) return;
    const mib = (n: number) => `${(n / 1024 / 1024).toFixed(2)} MiB`;
    throw new PolicyTooLargeError(
      `policy ${name} would be a ${mib(bytes)} etcd write, over etcd's limit of ${mib(this.maxRequestBytes)}: ` +
        'the Rego and the data are stored twice (current version and history) beside the compiled wasm; make the Rego or the data smaller',
    );
  }

  /**
   * After a transaction's compare failed: whether that same transaction had
   * committed already. It happens when the client retried it on another
   * member because the first attempt's answer was lost (deadline passed, the
   * member cut off after the commit): the retry then finds its own write and
   * fails the compare. Without this check an unconditional write would go in
   * a second time as the next version, and an If-Match write would report
   * 412 against itself. The history entry of the version, written by the
   * same transaction, decides: its metadata names the author, the digests
   * and the time to the millisecond, so holding exactly ours means ours
   * committed. A concurrent writer's version never matches, and is handled
   * as before (re-read, re-check, try again on top).
   */
  private async committedEarlier(historyMetaKey: string, metaText: string): Promise<number | null> {
    const response = await this.etcd(() => this.client.get(historyMetaKey).exec());
    const kv = response.kvs[0];
    // The revision our own transaction committed at, when it did.
    return kv && kv.value.toString('utf8') === metaText ? Number(kv.mod_revision) : null;
  }

  /** The current version of a policy and the etcd revision it was written at; null when there is none. */
  async currentRevision(name: string): Promise<{ meta: PolicyMetadata; revision: number } | null> {
    const current = await this.readMeta(name);
    return current ? { meta: current.meta, revision: Number(current.modRevision) } : null;
  }

  /** Deletes of every current key of `name` (its history stays). */
  private currentDeleteOps(name: string) {
    const keys = policyKeys(name);
    return [keys.source, keys.data, keys.wasm, keys.tests, keys.meta, keys.index].map((key) => this.client.delete().key(key));
  }

  /** Deletes of history entries older than the retention window, for the write of `version`. */
  private pruneHistoryOps(name: string, version: number) {
    const oldestKept = version - this.historyRetention + 1;
    if (oldestKept <= 1) return [];
    const keys = policyKeys(name);
    const parts: HistoryPart[] = ['meta', 'source', 'data', 'tests'];
    return parts.map((part) => this.client.delete().range(new Range(keys.history(part, 0), keys.history(part, oldestKept))));
  }

  /**
   * Removes the current version (history stays). Throws PolicyNotFoundError
   * when there is none. The revision is the delete's (null when a retried
   * delete finds its first attempt, or a concurrent one, already done).
   */
  async delete(name: string, conditions: WriteConditions = {}): Promise<{ meta: PolicyMetadata; revision: number | null }> {
    const keys = policyKeys(name);
    let attempted: PolicyMetadata | null = null;
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const current = await this.readMeta(name);
      // Our transaction failed its compare and the policy is gone: either it
      // had committed (a retried attempt whose first answer was lost) or a
      // concurrent delete removed the same version. Either way the version
      // this request meant to delete is deleted, which is what it asked for.
      if (!current && attempted) return { meta: attempted, revision: null };
      if (!current) {
        if (conditions.ifVersion !== undefined) throw new PreconditionFailedError('the policy does not exist');
        throw new PolicyNotFoundError(`no policy named ${name}`);
      }
      this.checkConditions(current.meta, conditions);
      attempted = current.meta;
      // A policy's candidate goes with it: there is nothing left for it to shadow.
      const ops = [
        ...this.currentDeleteOps(name),
        ...(candidateOf(name) === null ? this.currentDeleteOps(candidateName(name)) : []),
        this.client.put(POLICY_SET_WRITTEN_KEY).value(name),
      ];
      const response = await this.etcd(() =>
        this.client
          .if(keys.meta, 'Mod', '==', current.modRevision)
          .then(...ops)
          .commit(),
      );
      if (response.succeeded) return { meta: current.meta, revision: Number(response.header.revision) };
    }
    throw new WriteConflictError('too many concurrent writes to this policy; try again');
  }
}
