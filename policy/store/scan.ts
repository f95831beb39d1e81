/**
 * Reading every current policy from etcd in pages, at one pinned revision.
 *
 * The key layout (keys.ts) puts each policy's history between its current
 * keys, so one range over /policies/ would carry every retained version and
 * every wasm in a single response, growing with the number of policies
 * until it no longer fits a gRPC message. Instead:
 *
 *   1. The revision is pinned first; every later read asks for it, so the
 *      whole read is one consistent cut: a write that lands meanwhile is
 *      either wholly in it (committed at or before the pin) or wholly out.
 *   2. Names come from key-only pages of bounded size. A page that ends
 *      inside a policy's history jumps past the rest of that history.
 *   3. meta and data of the names found come in read-only transactions of
 *      a bounded number of names.
 *   4. wasm is read once per distinct sha256 (projects sharing Rego share
 *      the module), skipping the ones the caller already holds.
 *
 * No response grows with the number of policies. When etcd compacts the
 * pinned revision away mid-read, the read fails with PinnedRevisionCompactedError;
 * the caller starts again at a new revision (see readConsistentCut).
 */
import { createHash } from 'node:crypto';
import { Range, type Etcd3, type IKeyValue } from 'etcd3';
import { POLICIES_PREFIX, parsePolicyKey, policyKeys } from './keys.js';
import type { PolicyMetadata } from './store.js';

/** Keys per name-discovery page (key-only, ~60 bytes each). */
export const DEFAULT_SCAN_PAGE_KEYS = 1_000;
/** Names per meta+data transaction: two reads each, within etcd's default --max-txn-ops of 128. */
export const DEFAULT_READ_BATCH_NAMES = 50;

export class PinnedRevisionCompactedError extends Error {
  override readonly name = 'PinnedRevisionCompactedError';
}

/** The first key after every key that starts with `prefix`. */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

const POLICIES_END = prefixEnd(POLICIES_PREFIX);

function isCompaction(error: unknown): boolean {
  return error instanceof Error && /compacted/i.test(error.message);
}

async function pinned<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (isCompaction(error)) throw new PinnedRevisionCompactedError('the pinned revision was compacted during a paged read', { cause: error });
    throw error;
  }
}

/** etcd's current revision (a read of a key nobody writes). */
export async function currentRevision(client: Etcd3): Promise<number> {
  const response = await client.get(POLICIES_PREFIX).exec();
  return Number(response.header.revision);
}

export interface NamePageOptions {
  revision: number;
  /** Start after this policy name (a continuation); from the first name when absent. */
  after?: string;
  /** At most this many names. */
  limit: number;
  pageKeys?: number;
}

/**
 * Names of current policies (those with a meta key) at `revision`, in key
 * order, after `after`. `more` tells whether another name follows.
 */
export async function policyNamesPage(client: Etcd3, options: NamePageOptions): Promise<{ names: string[]; more: boolean }> {
  const pageKeys = options.pageKeys ?? DEFAULT_SCAN_PAGE_KEYS;
  let cursor = options.after === undefined ? POLICIES_PREFIX : prefixEnd(policyKeys(options.after).prefix);
  const names: string[] = [];
  for (;;) {
    const keys = await pinned(() =>
      client.getAll().inRange(new Range(cursor, POLICIES_END)).revision(options.revision).limit(pageKeys).keys(),
    );
    for (const key of keys) {
      const parsed = parsePolicyKey(key);
      if (parsed?.kind !== 'current' || parsed.part !== 'meta') continue;
      // One more than asked for tells whether there is a next page.
      if (names.length === options.limit) return { names, more: true };
      names.push(parsed.name);
    }
    if (keys.length < pageKeys) return { names, more: false };
    const last = keys[keys.length - 1]!;
    const parsed = parsePolicyKey(last);
    // Inside a history: the rest of it holds no current key, jump past it.
    cursor = parsed?.kind === 'history' ? prefixEnd(policyKeys(parsed.name).historyPrefix(parsed.part)) : `${last}\0`;
  }
}

/** A policy's current metadata and data, as read at one revision. */
export interface CurrentPolicyRecord {
  name: string;
  meta: PolicyMetadata;
  /** The revision of the transaction that wrote this version. */
  modRevision: number;
  dataText: string;
}

/** meta and data of `names` at `revision`; a name without a meta key there is left out. */
export async function readCurrentRecords(
  client: Etcd3,
  names: string[],
  revision: number,
): Promise<CurrentPolicyRecord[]> {
  if (names.length === 0) return [];
  const reads = names.flatMap((name) => {
    const keys = policyKeys(name);
    return [client.get(keys.meta).revision(revision), client.get(keys.data).revision(revision)];
  });
  // A read-only transaction needs a compare; this one always holds (no key's
  // mod revision reaches 2^53), so the reads run in `then`.
  const response = await pinned(() => client.if(POLICIES_PREFIX, 'Mod', '<', Number.MAX_SAFE_INTEGER).then(...reads).commit());
  const records: CurrentPolicyRecord[] = [];
  names.forEach((name, i) => {
    const meta: IKeyValue | undefined = response.responses[2 * i]?.response_range?.kvs?.[0];
    const data: IKeyValue | undefined = response.responses[2 * i + 1]?.response_range?.kvs?.[0];
    if (!meta || !data) return;
    records.push({
      name,
      meta: JSON.parse(meta.value.toString('utf8')) as PolicyMetadata,
      modRevision: Number(meta.mod_revision),
      dataText: data.value.toString('utf8'),
    });
  });
  return records;
}

/** The wasm of `name` at `revision`, checked against the sha256 its metadata names. */
export async function readPolicyWasm(client: Etcd3, name: string, revision: number, wasmSha256: string): Promise<Buffer> {
  const key = policyKeys(name).wasm;
  const wasm = await pinned(() => client.get(key).revision(revision).buffer());
  if (wasm === null) throw new Error(`${key} is missing at revision ${revision}`);
  const digest = createHash('sha256').update(wasm).digest('hex');
  if (digest !== wasmSha256) throw new Error(`wasm of ${name} does not match its metadata sha256`);
  return wasm;
}

export interface ConsistentCut {
  revision: number;
  records: CurrentPolicyRecord[];
  /** wasm by sha256, for every module the records name that `known` did not already hold. */
  modules: Map<string, Buffer>;
  /** Policies none of whose holders' wasm could be read or matched its sha256 (they are not in `records`). */
  unreadable: { name: string; reason: string }[];
}

export interface ConsistentCutOptions {
  /** Modules the caller holds already (by sha256): not read again. */
  known?: (wasmSha256: string) => boolean;
  pageKeys?: number;
  batchNames?: number;
  /** Called after each page of names (tests use it to write or compact mid-read). */
  onPage?: (page: { revision: number; names: string[] }) => Promise<void> | void;
}

/**
 * Every current policy at one revision, read in pages. Throws
 * PinnedRevisionCompactedError when etcd compacted the revision meanwhile
 * (start again), and etcd's own errors when it cannot be reached.
 */
export async function readConsistentCut(client: Etcd3, options: ConsistentCutOptions = {}): Promise<ConsistentCut> {
  const revision = await currentRevision(client);
  const batch = options.batchNames ?? DEFAULT_READ_BATCH_NAMES;
  const records: CurrentPolicyRecord[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await policyNamesPage(client, { revision, limit: batch, ...(after === undefined ? {} : { after }), ...(options.pageKeys ? { pageKeys: options.pageKeys } : {}) });
    await options.onPage?.({ revision, names: page.names });
    records.push(...(await readCurrentRecords(client, page.names, revision)));
    if (!page.more) break;
    after = page.names[page.names.length - 1];
  }

  // One read per distinct module; when a holder's copy is unusable
  // (missing, or not the bytes its metadata names), the next holder's is tried.
  const holders = new Map<string, CurrentPolicyRecord[]>();
  for (const record of records) {
    const sha = record.meta.wasmSha256;
    if (options.known?.(sha)) continue;
    holders.set(sha, [...(holders.get(sha) ?? []), record]);
  }
  const modules = new Map<string, Buffer>();
  const failed = new Map<string, string>();
  for (const [sha, candidates] of holders) {
    for (const record of candidates) {
      try {
        modules.set(sha, await readPolicyWasm(client, record.name, revision, sha));
        failed.delete(sha);
        break;
      } catch (error) {
        if (error instanceof PinnedRevisionCompactedError) throw error;
        failed.set(sha, (error as Error).message);
      }
    }
  }
  return {
    revision,
    records: records.filter((r) => !failed.has(r.meta.wasmSha256)),
    modules,
    unreadable: records.filter((r) => failed.has(r.meta.wasmSha256)).map((r) => ({ name: r.name, reason: failed.get(r.meta.wasmSha256)! })),
  };
}
