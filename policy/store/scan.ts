/**
 * Reading every current policy from etcd in pages, at one pinned revision.
 *
 * One range over /policies/ would carry every retained version and every
 * wasm in a single response, growing with the number of policies until it
 * no longer fits a gRPC message. Instead:
 *
 *   1. Names come from the index of current policies (keys.ts), in pages of
 *      bounded size. The first page pins the revision; every later read asks
 *      for it, so the whole read is one consistent cut: a write that lands
 *      meanwhile is either wholly in it (committed at or before the pin) or
 *      wholly out.
 *   2. meta and data of those names come in read-only transactions of a
 *      bounded number of names, a few at a time.
 *   3. wasm is read once per distinct sha256 (projects sharing Rego share
 *      the module), skipping the ones the caller already holds; or not at
 *      all (`modules: false`, what a gateway does: it reads each module when
 *      it first builds its engine, policy/watcher/modules.ts).
 *
 * No response grows with the number of policies, and history is never read.
 * When etcd compacts the pinned revision away mid-read, the read fails with
 * PinnedRevisionCompactedError; the caller starts again at a new revision.
 */
import { Range, type Etcd3, type IKeyValue } from 'etcd3';
import pLimit from 'p-limit';
import { POLICIES_PREFIX, POLICY_INDEX_PREFIX, POLICY_SET_WRITTEN_KEY, parseIndexKey, parsePolicyKey, policyKeys } from './keys.js';
import { sha256Hex, unknownMetadata, type PolicyMetadata } from './metadata.js';

/** meta+data transactions in flight at once during a full read. */
const READ_CONCURRENCY = 4;
/** Names per meta+data transaction: two reads each, within etcd's default --max-txn-ops of 128. */
export const DEFAULT_READ_BATCH_NAMES = 50;

export class PinnedRevisionCompactedError extends Error {
  override readonly name = 'PinnedRevisionCompactedError';
}

/** The first key after every key that starts with `prefix`. */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

const INDEX_END = prefixEnd(POLICY_INDEX_PREFIX);

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

/**
 * The etcd revision of the newest policy write (keys.ts: POLICY_SET_WRITTEN_KEY),
 * and etcd's current revision; null before the first write that marked it.
 */
export async function policySetRevision(client: Etcd3): Promise<{ written: number | null; etcd: number }> {
  const response = await client.get(POLICY_SET_WRITTEN_KEY).exec();
  const kv = response.kvs[0];
  return { written: kv ? Number(kv.mod_revision) : null, etcd: Number(response.header.revision) };
}

/** Index entries per page: a name and a copy of its metadata, about 400 bytes each. */
export const DEFAULT_INDEX_PAGE = 1_000;

export interface IndexEntry {
  name: string;
  meta: PolicyMetadata;
  /** The entry as stored (the metadata JSON). */
  text: string;
}

/**
 * One page of the index of current policies, by name (byte order), after
 * `after`, at `revision` (the current one when absent, given back). With
 * `prefix`, only names that start with it: the read starts at the prefix and
 * ends past it, whatever `after` says.
 */
export async function indexPage(
  client: Etcd3,
  options: { after?: string; limit: number; revision?: number; prefix?: string },
): Promise<{ revision: number; entries: IndexEntry[]; more: boolean }> {
  const from = `${POLICY_INDEX_PREFIX}${options.prefix ?? ''}`;
  const after = options.after === undefined ? null : `${policyKeys(options.after).index}\0`;
  const start = after !== null && after > from ? after : from;
  const end = options.prefix ? prefixEnd(from) : INDEX_END;
  if (start >= end) return { revision: options.revision ?? (await currentRevision(client)), entries: [], more: false };
  let query = client
    .getAll()
    .inRange(new Range(start, end))
    .limit(options.limit + 1);
  if (options.revision !== undefined) query = query.revision(options.revision);
  const response = await pinned(() => query.exec());
  const entries: IndexEntry[] = [];
  for (const kv of response.kvs.slice(0, options.limit)) {
    const name = parseIndexKey(kv.key.toString('utf8'));
    if (name === null) continue;
    const text = kv.value.toString('utf8');
    entries.push({ name, meta: JSON.parse(text) as PolicyMetadata, text });
  }
  return { revision: Number(response.header.revision), entries, more: response.kvs.length > options.limit };
}

/**
 * The whole index of current policies, page by page, at `revision` (pinned
 * by the first page when absent, and given back).
 */
export async function readIndex(
  client: Etcd3,
  options: { revision?: number; pageSize?: number; onPage?: (revision: number, entries: IndexEntry[]) => Promise<void> | void } = {},
): Promise<{ revision: number; entries: IndexEntry[] }> {
  const entries: IndexEntry[] = [];
  let revision = options.revision;
  let after: string | undefined;
  for (;;) {
    const page = await indexPage(client, {
      limit: options.pageSize ?? DEFAULT_INDEX_PAGE,
      ...(revision === undefined ? {} : { revision }),
      ...(after === undefined ? {} : { after }),
    });
    revision ??= page.revision;
    entries.push(...page.entries);
    await options.onPage?.(revision, page.entries);
    if (!page.more) return { revision, entries };
    after = page.entries[page.entries.length - 1]!.name;
  }
}

/**
 * The key space of names under /policies/, cut by their first character (a
 * name starts with [0-9a-z]). Only rebuilding the index ranges there: each
 * page's range ends at its partition's end, because etcd 3.4 walks its
 * in-memory index from a range's start to its end for every request,
 * whatever the limit.
 */
const PARTITIONS = [...'0123456789abcdefghijklmnopqrstuvwxyz'].map((first) => ({
  start: `${POLICIES_PREFIX}${first}`,
  end: `${POLICIES_PREFIX}${String.fromCharCode(first.charCodeAt(0) + 1)}`,
}));

/** Keys per page of the raw scan (key-only, ~40 bytes each). */
const SCAN_PAGE_KEYS = 5_000;

/**
 * Names of current policies (those with a meta key) at `revision`, from the
 * policies' own keys rather than the index: what rebuilding the index reads.
 * Key-only pages; a page that ends inside a policy's history jumps past it.
 */
export async function scanPolicyNames(client: Etcd3, revision: number, pageKeys = SCAN_PAGE_KEYS): Promise<string[]> {
  const names: string[] = [];
  for (const partition of PARTITIONS) {
    let cursor = partition.start;
    for (;;) {
      const keys = await pinned(() => client.getAll().inRange(new Range(cursor, partition.end)).revision(revision).limit(pageKeys).keys());
      for (const key of keys) {
        const parsed = parsePolicyKey(key);
        if (parsed?.kind === 'current' && parsed.part === 'meta') names.push(parsed.name);
      }
      if (keys.length < pageKeys) break;
      const last = keys[keys.length - 1]!;
      const parsed = parsePolicyKey(last);
      cursor = parsed?.kind === 'history' ? prefixEnd(policyKeys(parsed.name).historyPrefix(parsed.part)) : `${last}\0`;
    }
  }
  return names;
}

/** A policy's current metadata and data, as read at one revision. */
export interface CurrentPolicyRecord {
  name: string;
  meta: PolicyMetadata;
  /** The revision of the transaction that wrote this version. */
  modRevision: number;
  dataText: string;
  /**
   * Why this policy cannot be enforced, when it cannot (its metadata is not
   * JSON, its data or wasm is missing, its wasm does not match its sha256).
   * Such a policy exists all the same: a gateway denies for it rather than
   * treat it as absent.
   */
  broken?: string;
}

/**
 * The values of `keys` at `revision`, in one read-only transaction (keep
 * `keys` within etcd's --max-txn-ops, 128 by default); undefined for a key
 * absent there.
 */
export async function readKeysAt(client: Etcd3, keys: string[], revision: number): Promise<(IKeyValue | undefined)[]> {
  if (keys.length === 0) return [];
  // A read-only transaction needs a compare; this one always holds (no key's
  // mod revision reaches 2^53), so the reads run in `then`.
  const reads = keys.map((key) => client.get(key).revision(revision));
  const response = await pinned(() =>
    client
      .if(POLICIES_PREFIX, 'Mod', '<', Number.MAX_SAFE_INTEGER)
      .then(...reads)
      .commit(),
  );
  return keys.map((_, i) => response.responses[i]?.response_range?.kvs?.[0]);
}

/** meta and data of `names` at `revision`; a name without a meta key there is left out (it is not current). */
export async function readCurrentRecords(client: Etcd3, names: string[], revision: number): Promise<CurrentPolicyRecord[]> {
  const values = await readKeysAt(
    client,
    names.flatMap((name) => [policyKeys(name).meta, policyKeys(name).data]),
    revision,
  );
  const records: CurrentPolicyRecord[] = [];
  names.forEach((name, i) => {
    const meta = values[2 * i];
    const data = values[2 * i + 1];
    if (!meta) return;
    const modRevision = Number(meta.mod_revision);
    let parsed: PolicyMetadata;
    try {
      parsed = JSON.parse(meta.value.toString('utf8')) as PolicyMetadata;
    } catch {
      records.push({ name, meta: unknownMetadata(name), modRevision, dataText: '{}', broken: 'its metadata is not JSON' });
      return;
    }
    if (!data) {
      records.push({ name, meta: parsed, modRevision, dataText: '{}', broken: 'its data key is missing' });
      return;
    }
    records.push({ name, meta: parsed, modRevision, dataText: data.value.toString('utf8') });
  });
  return records;
}

/** The wasm of `name` at `revision`, checked against the sha256 its metadata names. */
export async function readPolicyWasm(client: Etcd3, name: string, revision: number, wasmSha256: string): Promise<Buffer> {
  const key = policyKeys(name).wasm;
  const wasm = await pinned(() => client.get(key).revision(revision).buffer());
  if (wasm === null) throw new Error(`${key} is missing at revision ${revision}`);
  if (sha256Hex(wasm) !== wasmSha256) throw new Error(`wasm of ${name} does not match its metadata sha256`);
  return wasm;
}

export interface ConsistentCut {
  revision: number;
  records: CurrentPolicyRecord[];
  /** wasm by sha256, for every module the records name that `known` did not already hold. */
  modules: Map<string, Buffer>;
}

export interface ConsistentCutOptions {
  /** false: no module is read (a gateway reads each when it builds its engine); `modules` is then empty. */
  modules?: boolean;
  /** Modules the caller holds already (by sha256): not read again. */
  known?: (wasmSha256: string) => boolean;
  indexPage?: number;
  batchNames?: number;
  /** Called after each page of the index (tests use it to write or compact mid-read). */
  onPage?: (page: { revision: number; names: string[] }) => Promise<void> | void;
}

/**
 * Every current policy at one revision, read in pages. Throws
 * PinnedRevisionCompactedError when etcd compacted the revision meanwhile
 * (start again), and etcd's own errors when it cannot be reached.
 */
export async function readConsistentCut(client: Etcd3, options: ConsistentCutOptions = {}): Promise<ConsistentCut> {
  const pageSize = options.indexPage ?? DEFAULT_INDEX_PAGE;
  const batch = options.batchNames ?? DEFAULT_READ_BATCH_NAMES;
  const index = await readIndex(client, {
    pageSize,
    ...(options.onPage ? { onPage: (revision: number, entries: IndexEntry[]) => options.onPage!({ revision, names: entries.map((e) => e.name) }) } : {}),
  });
  const revision = index.revision;
  const names = index.entries.map((entry) => entry.name);
  const reads = pLimit(READ_CONCURRENCY);
  const batches: string[][] = [];
  for (let i = 0; i < names.length; i += batch) batches.push(names.slice(i, i + batch));
  const records = (await Promise.all(batches.map((slice) => reads(() => readCurrentRecords(client, slice, revision))))).flat();

  // One read per distinct module; when a holder's copy is unusable
  // (missing, or not the bytes its metadata names), the next holder's is tried.
  const holders = new Map<string, CurrentPolicyRecord[]>();
  for (const record of records) {
    const sha = record.meta.wasmSha256;
    if (record.broken || options.modules === false || options.known?.(sha)) continue;
    holders.set(sha, [...(holders.get(sha) ?? []), record]);
  }
  const modules = new Map<string, Buffer>();
  const failed = new Map<string, string>();
  await Promise.all(
    [...holders].map(([sha, candidates]) =>
      reads(async () => {
        for (const record of candidates) {
          try {
            modules.set(sha, await readPolicyWasm(client, record.name, revision, sha));
            failed.delete(sha);
            return;
          } catch (error) {
            if (error instanceof PinnedRevisionCompactedError) throw error;
            failed.set(sha, (error as Error).message);
          }
        }
      }),
    ),
  );
  return {
    revision,
    records: records.map((r) => (!r.broken && failed.has(r.meta.wasmSha256) ? { ...r, broken: failed.get(r.meta.wasmSha256)! } : r)),
    modules,
  };
}
