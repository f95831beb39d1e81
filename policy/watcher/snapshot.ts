// The last-known-good policy set on local disk, so a gateway that starts
// while etcd is away still enforces the policies it last saw. It is only read
// when etcd cannot be reached at start; once etcd answers, etcd wins.
//
// Incremental and verified:
//
//   <dir>/manifest.json              {"format":2,"revision":...,"savedAt":...}
//   <dir>/policies/<name>.json       one per policy: metadata, mod revision,
//                                    the data's sha256, and a sha256 of itself
//   <dir>/data/<sha256>.json         data documents, by content
//   <dir>/modules/<sha256>.wasm      compiled policies, by content (shared)
//
// Modules are not held in memory: the writer has a policy's module written
// by the ModuleStore (modules.ts), which reads it from etcd only when it is
// not on disk already (a watch event's wasm is written as it arrives), and
// the ModuleStore reads modules from here when an engine is built. Any
// process sharing the directory may add a module (same content, same name,
// written whole); only one writes the rest.
//
// A change writes its policy's file, a data file or module only when that
// content is new, and the manifest: a few hundred bytes for a policy edit,
// whatever the number of policies. Every file is written under an
// unpredictable temporary name and renamed into place; the directory is
// private to the gateway's user (0700, files 0600). Reading checks every
// file against its sha256: a snapshot with any file missing or altered is
// not used at all (decisions then wait for etcd, failing closed), since a
// partial set would silently drop some tenants' rules.
//
// Each etcd transaction of the store changes one policy, so a crash between
// a policy file and the manifest leaves every policy at a version etcd had;
// the manifest's revision is then a little behind, which is harmless: the
// snapshot is never used to resume a watch.
import { randomUUID } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isValidPolicyName, type PolicyMetadata } from '../store/index.js';
import pLimit from 'p-limit';
import { WasmUnavailableError } from '../engine/cache.js';
import { sha256Hex } from '../store/index.js';
import type { ModuleStore } from './modules.js';
import type { PolicySet } from './policy-set.js';

export const SNAPSHOT_FORMAT = 2;

export function snapshotDir(stateDir: string): string {
  return join(stateDir, 'policy-snapshot');
}

export interface SnapshotPolicy {
  meta: PolicyMetadata;
  modRevision: number;
  dataText: string;
  dataSha256: string;
  /** The policy existed but could not be loaded: it is restored as such, and denies. */
  broken?: string;
}

export interface Snapshot {
  revision: number;
  savedAt: string;
  policies: SnapshotPolicy[];
}

interface Manifest {
  format: number;
  revision: number;
  savedAt: string;
}

interface PolicyFile {
  meta: PolicyMetadata;
  modRevision: number;
  dataSha256: string;
  /** Set for a policy that exists but cannot be loaded (no data or module file then). */
  broken?: string;
}

export class SnapshotCorruptError extends Error {
  override readonly name = 'SnapshotCorruptError';
}

const SHA256_FILE = /^([0-9a-f]{64})\.(json|wasm)$/;

/** The text of a policy file: its fields, then a checksum over exactly the text before it. */
function policyFileText(entry: PolicyFile): string {
  const body = JSON.stringify(entry);
  return `${body}\n${sha256Hex(body)}\n`;
}

function parsePolicyFile(text: string, file: string): PolicyFile {
  const [body, checksum] = text.split('\n');
  if (body === undefined || checksum === undefined || sha256Hex(body) !== checksum) {
    throw new SnapshotCorruptError(`${file} does not match its checksum`);
  }
  return JSON.parse(body) as PolicyFile;
}

/** Writes a file whole or not at all: an unpredictable temporary name, then a rename. */
async function writeAtomically(path: string, dir: string, content: string | Uint8Array): Promise<number> {
  const temporary = join(dir, `.${randomUUID()}.tmp`);
  // 'wx': never follow or reuse something that is already there.
  await writeFile(temporary, content, { mode: 0o600, flag: 'wx' });
  try {
    await rename(temporary, path);
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error;
  }
  return typeof content === 'string' ? Buffer.byteLength(content) : content.byteLength;
}

async function ensurePrivateDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: 0o700 });
  // mkdir leaves an existing directory's mode alone.
  await chmod(path, 0o700);
}

async function listDir(path: string): Promise<string[]> {
  try {
    return await readdir(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/** What is on disk, so that a write only adds what changed. */
interface OnDisk {
  /** Policy files on disk, with what they name. */
  policies: Map<string, { modRevision: number; dataSha256?: string; wasmSha256?: string }>;
  data: Set<string>;
  modules: Set<string>;
  /** How many written policy files name each data document and module. */
  dataRefs: Map<string, number>;
  moduleRefs: Map<string, number>;
}

export interface SnapshotWriteResult {
  bytes: number;
  files: number;
  /** Policies left as they were on disk: their module could not be read for now (etcd away); write them again later. */
  unwritten: string[];
}

/** Modules written at once while a write fills the directory. */
const MODULE_WRITES = 8;

/**
 * Keeps a snapshot directory in step with the policy sets given to it. Not
 * safe for concurrent writes: the watcher chains them.
 */
export class SnapshotWriter {
  private onDisk: OnDisk | null = null;

  constructor(
    readonly dir: string,
    private readonly modules: Pick<ModuleStore, 'persist'>,
  ) {}

  private async scan(): Promise<OnDisk> {
    for (const sub of ['', 'policies', 'data', 'modules']) await ensurePrivateDir(join(this.dir, sub));
    const onDisk: OnDisk = { policies: new Map(), data: new Set(), modules: new Set(), dataRefs: new Map(), moduleRefs: new Map() };
    for (const file of await listDir(join(this.dir, 'policies'))) {
      if (!file.endsWith('.json')) continue;
      try {
        const entry = parsePolicyFile(await readFile(join(this.dir, 'policies', file), 'utf8'), file);
        const name = file.slice(0, -'.json'.length);
        if (entry.broken !== undefined) {
          onDisk.policies.set(name, { modRevision: entry.modRevision });
          continue;
        }
        onDisk.policies.set(name, { modRevision: entry.modRevision, dataSha256: entry.dataSha256, wasmSha256: entry.meta.wasmSha256 });
        onDisk.dataRefs.set(entry.dataSha256, (onDisk.dataRefs.get(entry.dataSha256) ?? 0) + 1);
        onDisk.moduleRefs.set(entry.meta.wasmSha256, (onDisk.moduleRefs.get(entry.meta.wasmSha256) ?? 0) + 1);
      } catch {
        // Unreadable: not known, so it is rewritten (or removed) by this write.
      }
    }
    for (const [sub, set] of [
      ['data', onDisk.data],
      ['modules', onDisk.modules],
    ] as const) {
      for (const file of await listDir(join(this.dir, sub))) {
        const match = SHA256_FILE.exec(file);
        if (match) set.add(match[1]!);
      }
    }
    return onDisk;
  }

  /**
   * Brings the directory in step with `set`. `changed` names the policies
   * that may differ from what was last written; 'all' compares every one
   * (after a full read, or the first time). Work and bytes are in proportion
   * to what changed, not to the number of policies.
   */
  async write(set: PolicySet, changed: ReadonlySet<string> | 'all' = 'all'): Promise<SnapshotWriteResult> {
    const first = this.onDisk === null;
    this.onDisk ??= await this.scan();
    const onDisk = this.onDisk;
    const result: SnapshotWriteResult = { bytes: 0, files: 0, unwritten: [] };
    const count = (bytes: number) => {
      result.bytes += bytes;
      result.files++;
    };
    const unreferenced = { data: new Set<string>(), modules: new Set<string>() };
    const refer = (refs: Map<string, number>, sha: string | undefined, delta: number, gone: Set<string>) => {
      if (sha === undefined) return;
      const n = (refs.get(sha) ?? 0) + delta;
      if (n > 0) {
        refs.set(sha, n);
        gone.delete(sha);
      } else {
        refs.delete(sha);
        gone.add(sha);
      }
    };
    const names = changed === 'all' || first ? new Set([...set.policies.keys(), ...onDisk.policies.keys()]) : changed;
    // Modules not on disk yet, a few at a time: a failure that may pass
    // leaves its policies as they were (written again later), one for good
    // (etcd does not hold the module, or holds it altered) writes them as broken.
    const moduleOutcome = new Map<string, Promise<string | null | 'unavailable'>>();
    const writes = pLimit(MODULE_WRITES);
    for (const name of names) {
      const policy = set.get(name);
      if (!policy || policy.broken !== undefined || onDisk.policies.get(name)?.modRevision === policy.modRevision) continue;
      const sha = policy.meta.wasmSha256;
      if (onDisk.modules.has(sha) || moduleOutcome.has(sha)) continue;
      const ref = { name, wasmSha256: sha, modRevision: policy.modRevision };
      moduleOutcome.set(
        sha,
        writes(() => this.modules.persist(ref)).then(
          (bytes) => {
            if (bytes > 0) count(bytes);
            onDisk.modules.add(sha);
            return null;
          },
          (error: unknown) => (error instanceof WasmUnavailableError ? 'unavailable' : error instanceof Error ? error.message : String(error)),
        ),
      );
    }
    const moduleFailure = new Map<string, string | 'unavailable'>();
    for (const [sha, outcome] of moduleOutcome) {
      const failure = await outcome;
      if (failure !== null) moduleFailure.set(sha, failure);
    }
    for (const name of names) {
      const found = set.get(name);
      const written = onDisk.policies.get(name);
      if (found && written?.modRevision === found.modRevision) continue;
      const failure = found && found.broken === undefined ? moduleFailure.get(found.meta.wasmSha256) : undefined;
      if (failure === 'unavailable') {
        result.unwritten.push(name);
        continue;
      }
      const policy = found && failure !== undefined ? { ...found, broken: failure } : found;
      if (written) {
        refer(onDisk.dataRefs, written.dataSha256, -1, unreferenced.data);
        refer(onDisk.moduleRefs, written.wasmSha256, -1, unreferenced.modules);
      }
      if (!policy) {
        await unlink(join(this.dir, 'policies', `${name}.json`)).catch(() => undefined);
        onDisk.policies.delete(name);
        continue;
      }
      if (policy.broken !== undefined) {
        const text = policyFileText({ meta: policy.meta, modRevision: policy.modRevision, dataSha256: '', broken: policy.broken });
        count(await writeAtomically(join(this.dir, 'policies', `${name}.json`), this.dir, text));
        onDisk.policies.set(name, { modRevision: policy.modRevision });
        continue;
      }
      if (!onDisk.data.has(policy.dataSha256)) {
        count(await writeAtomically(join(this.dir, 'data', `${policy.dataSha256}.json`), this.dir, policy.dataText));
        onDisk.data.add(policy.dataSha256);
      }
      if (written?.modRevision !== policy.modRevision) {
        const text = policyFileText({ meta: policy.meta, modRevision: policy.modRevision, dataSha256: policy.dataSha256 });
        count(await writeAtomically(join(this.dir, 'policies', `${name}.json`), this.dir, text));
      }
      onDisk.policies.set(name, { modRevision: policy.modRevision, dataSha256: policy.dataSha256, wasmSha256: policy.meta.wasmSha256 });
      refer(onDisk.dataRefs, policy.dataSha256, 1, unreferenced.data);
      refer(onDisk.moduleRefs, policy.meta.wasmSha256, 1, unreferenced.modules);
    }
    const manifest: Manifest = { format: SNAPSHOT_FORMAT, revision: set.revision, savedAt: new Date().toISOString() };
    count(await writeAtomically(join(this.dir, 'manifest.json'), this.dir, JSON.stringify(manifest)));
    // Content no policy file names any more; removed after the manifest, so a crash keeps what the files name.
    const sweep = async (sub: string, have: Set<string>, refs: Map<string, number>, candidates: Iterable<string>, ext: string) => {
      for (const sha of candidates) {
        if (refs.has(sha) || !have.has(sha)) continue;
        await unlink(join(this.dir, sub, `${sha}.${ext}`)).catch(() => undefined);
        have.delete(sha);
      }
    };
    // The first write also removes what an earlier process left and nothing names.
    await sweep('data', onDisk.data, onDisk.dataRefs, first ? [...onDisk.data] : unreferenced.data, 'json');
    await sweep('modules', onDisk.modules, onDisk.moduleRefs, first ? [...onDisk.modules] : unreferenced.modules, 'wasm');
    return result;
  }
}

/**
 * The snapshot, or null when there is none. Throws SnapshotCorruptError when
 * any file it needs is missing or does not match its sha256.
 */
export async function readSnapshot(dir: string): Promise<Snapshot | null> {
  let manifestText: string;
  try {
    manifestText = await readFile(join(dir, 'manifest.json'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  let manifest: Manifest;
  try {
    manifest = JSON.parse(manifestText) as Manifest;
  } catch {
    throw new SnapshotCorruptError('manifest.json is not JSON');
  }
  if (manifest.format !== SNAPSHOT_FORMAT || !Number.isSafeInteger(manifest.revision)) {
    throw new SnapshotCorruptError(`manifest.json: unknown snapshot format ${String(manifest.format)}`);
  }
  // Modules are checked (read and hashed), not kept: a gateway reads them again when it builds their engines.
  const modules = new Set<string>();
  const data = new Map<string, string>();
  const readVerified = async (path: string, sha: string): Promise<Buffer> => {
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch {
      throw new SnapshotCorruptError(`${path} is missing`);
    }
    if (sha256Hex(bytes) !== sha) throw new SnapshotCorruptError(`${path} does not match its sha256`);
    return bytes;
  };
  const policies: SnapshotPolicy[] = [];
  for (const file of (await listDir(join(dir, 'policies'))).sort()) {
    if (!file.endsWith('.json')) continue;
    const name = file.slice(0, -'.json'.length);
    const entry = parsePolicyFile(await readFile(join(dir, 'policies', file), 'utf8'), file);
    if (!isValidPolicyName(name) || entry.meta?.name !== name) throw new SnapshotCorruptError(`${file} does not hold policy ${name}`);
    if (entry.broken !== undefined) {
      policies.push({ meta: entry.meta, modRevision: entry.modRevision, dataText: '{}', dataSha256: '', broken: String(entry.broken) });
      continue;
    }
    const wasmSha = entry.meta.wasmSha256;
    if (!modules.has(wasmSha)) {
      await readVerified(join(dir, 'modules', `${wasmSha}.wasm`), wasmSha);
      modules.add(wasmSha);
    }
    if (!data.has(entry.dataSha256)) {
      data.set(entry.dataSha256, (await readVerified(join(dir, 'data', `${entry.dataSha256}.json`), entry.dataSha256)).toString('utf8'));
    }
    policies.push({
      meta: entry.meta,
      modRevision: entry.modRevision,
      dataText: data.get(entry.dataSha256)!,
      dataSha256: entry.dataSha256,
    });
  }
  return { revision: manifest.revision, savedAt: manifest.savedAt, policies };
}
