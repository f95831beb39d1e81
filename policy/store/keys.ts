/**
 * The etcd key layout of Gatehouse policies. This module is the only place
 * that knows it; the CMS writes through it and the gateway's watcher reads
 * through it.
 *
 *   /policies/<name>/meta                    PolicyMetadata JSON (the commit marker, see below)
 *   /policies/<name>/source                  Rego source text, as submitted
 *   /policies/<name>/data                    data document, JSON text as submitted (numbers exact)
 *   /policies/<name>/wasm                    policy.wasm compiled by `opa build -t wasm`
 *   /policies/<name>/history/meta/<v>        PolicyMetadata of version v
 *   /policies/<name>/history/source/<v>      Rego source of version v
 *   /policies/<name>/history/data/<v>        data JSON text of version v
 *   /policies/<name>/tests                   the policy's Rego test modules, a JSON object file name -> module (absent: none)
 *   /policies/<name>/history/tests/<v>       the tests of version v (absent: none)
 *
 * <v> is the version zero-padded to 12 digits so that key order is version order.
 *
 * A policy's candidate (names.ts: stored as `<name>.candidate`) has the same
 * parts, current and history, one level down:
 *
 *   /policies/<name>/candidate/meta          PolicyMetadata of the candidate (with its rollout)
 *   /policies/<name>/candidate/{source,data,wasm,tests}
 *   /policies/<name>/candidate/history/<part>/<v>
 *
 * and its own index entry, /policy-index/<name>.candidate, so gateways read
 * it at start and watch it as they do any policy.
 *
 * Beside them, one index of the current policies, outside the policies'
 * own prefixes so that it is contiguous:
 *
 *   /policy-index/<name>                     a copy of /policies/<name>/meta
 *
 * It is written and deleted in the same transaction as the meta key, so at
 * every revision it names exactly the current policies. Reading every policy
 * (a gateway's start-up, the CMS's list) pages through it instead of ranging
 * over /policies/, where each policy's history and wasm sit between its
 * current keys and etcd 3.4 walks every key of a range for each page.
 * Watchers do not watch it: /policies/<name>/meta stays the commit marker.
 *
 * Every write (put or delete) of a policy is ONE etcd transaction, so all
 * of its keys change at the same revision, with one exception: a put leaves
 * the wasm key as it is when it already holds the new version's module (a
 * version that changes only the data, or Rego that builds the same module),
 * so that a module's bytes (often 100 KB or more) go into etcd's log and out
 * to every watcher once, not with every version. At any revision the wasm
 * key holds the module the meta key names. A watcher should treat
 * `/policies/<name>/meta` as the commit marker: on a PUT event of a meta key,
 * read `source`, `data` and `wasm` at that event's mod revision (or take them
 * from the same watch response: etcd never splits one revision's events; the
 * wasm is there only when it changed), and
 * check `wasmSha256` from the metadata against the wasm bytes; on a DELETE
 * event of a meta key the policy is gone. Events on other keys alone never
 * mean a new policy version. History keys survive a delete. The tests are
 * the CMS's alone (it runs them before a write): watchers never read them,
 * and parsePolicyKey does not recognise them.
 *
 * Every write (put or delete) of a policy also puts one key in its
 * transaction, whose mod revision is therefore the revision of the newest
 * policy write: a gateway whose policy set is at or past it is in step (the
 * fleet page's "behind"). Its name is no policy's, so watchers and scans pass
 * it by; it is absent until the first write by a CMS that writes it.
 *
 *   /policies/.written                       the name of the policy last written
 *
 * Apart from policies, each live gateway (runner worker, decision API) keeps
 * one report of what it enforces, under an etcd lease of its own, so that it
 * vanishes when the gateway does (policy/fleet):
 *
 *   /gatehouse/gateways/<id>                 GatewayReport JSON
 *
 * and, while a policy has a candidate, what it saw of it (policy/candidate):
 *
 *   /gatehouse/candidates/<name>/<id>        ShadowReport JSON, under the same kind of lease
 */
import { assertStoredPolicyName, candidateName, candidateOf, isStoredPolicyName, isValidPolicyName } from './names.js';

export const POLICIES_PREFIX = '/policies/';
export const POLICY_INDEX_PREFIX = '/policy-index/';
export const GATEWAYS_PREFIX = '/gatehouse/gateways/';
/** Put by every policy write: its mod revision is the newest policy write's (see above). */
export const POLICY_SET_WRITTEN_KEY = `${POLICIES_PREFIX}.written`;
export const CANDIDATE_REPORTS_PREFIX = '/gatehouse/candidates/';

const GATEWAY_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

/** A gateway's report key; ids are [A-Za-z0-9._-], 1-128 characters. */
export function gatewayKey(id: string): string {
  if (!GATEWAY_ID_PATTERN.test(id)) throw new Error(`invalid gateway id ${JSON.stringify(id)}`);
  return `${GATEWAYS_PREFIX}${id}`;
}

/** Where every gateway's report on `name`'s candidate is kept. */
export function candidateReportsPrefix(name: string): string {
  if (!isValidPolicyName(name)) throw new Error(`invalid policy name ${JSON.stringify(name)}`);
  return `${CANDIDATE_REPORTS_PREFIX}${name}/`;
}

/** One gateway's report on `name`'s candidate. */
export function candidateReportKey(name: string, gatewayIdentifier: string): string {
  if (!GATEWAY_ID_PATTERN.test(gatewayIdentifier)) throw new Error(`invalid gateway id ${JSON.stringify(gatewayIdentifier)}`);
  return `${candidateReportsPrefix(name)}${gatewayIdentifier}`;
}

const VERSION_DIGITS = 12;

export type CurrentPart = 'meta' | 'source' | 'data' | 'wasm';
export type HistoryPart = 'meta' | 'source' | 'data' | 'tests';

export type ParsedPolicyKey = { name: string; kind: 'current'; part: CurrentPart } | { name: string; kind: 'history'; part: HistoryPart; version: number };

export interface PolicyKeys {
  /** Every key of this policy starts with it (current and history). */
  prefix: string;
  /** Its entry in the index of current policies. */
  index: string;
  meta: string;
  source: string;
  data: string;
  wasm: string;
  tests: string;
  /** Prefix of the history entries of one part, e.g. all metadata of past versions. */
  historyPrefix(part: HistoryPart): string;
  history(part: HistoryPart, version: number): string;
}

export function encodeVersion(version: number): string {
  if (!Number.isSafeInteger(version) || version < 0) throw new RangeError(`bad policy version ${version}`);
  return String(version).padStart(VERSION_DIGITS, '0');
}

export function policyKeys(name: string): PolicyKeys {
  assertStoredPolicyName(name);
  const candidateFor = candidateOf(name);
  const prefix = candidateFor === null ? `${POLICIES_PREFIX}${name}/` : `${POLICIES_PREFIX}${candidateFor}/candidate/`;
  return {
    prefix,
    index: `${POLICY_INDEX_PREFIX}${name}`,
    meta: `${prefix}meta`,
    source: `${prefix}source`,
    data: `${prefix}data`,
    wasm: `${prefix}wasm`,
    tests: `${prefix}tests`,
    historyPrefix: (part) => `${prefix}history/${part}/`,
    history: (part, version) => `${prefix}history/${part}/${encodeVersion(version)}`,
  };
}

const CURRENT_PARTS: readonly string[] = ['meta', 'source', 'data', 'wasm'];
const HISTORY_PARTS: readonly string[] = ['meta', 'source', 'data'];

/** The policy name of an index key, or null. */
export function parseIndexKey(key: string): string | null {
  if (!key.startsWith(POLICY_INDEX_PREFIX)) return null;
  const name = key.slice(POLICY_INDEX_PREFIX.length);
  return isStoredPolicyName(name) ? name : null;
}

/** Recognises a Gatehouse policy key; anything else (including malformed keys) gives null. */
export function parsePolicyKey(key: string): ParsedPolicyKey | null {
  if (!key.startsWith(POLICIES_PREFIX)) return null;
  const segments = key.slice(POLICIES_PREFIX.length).split('/');
  if (segments[1] === 'candidate' && segments.length > 2) {
    // A candidate's keys: the same parts one level down, under its stored name.
    const parsed = parsePolicyKey(`${POLICIES_PREFIX}${segments[0]}/${segments.slice(2).join('/')}`);
    return parsed && isValidPolicyName(parsed.name) ? { ...parsed, name: candidateName(parsed.name) } : null;
  }
  const [name, first, part, version] = segments;
  if (name === undefined || !isValidPolicyName(name) || first === undefined) return null;
  if (segments.length === 2 && CURRENT_PARTS.includes(first)) {
    return { name, kind: 'current', part: first as CurrentPart };
  }
  if (segments.length === 4 && first === 'history' && part !== undefined && HISTORY_PARTS.includes(part) && version !== undefined && /^\d{12}$/.test(version)) {
    return { name, kind: 'history', part: part as HistoryPart, version: Number(version) };
  }
  return null;
}
