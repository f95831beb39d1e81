// Where a gateway gets a policy's wasm when it compiles it: not from memory.
//
// A gateway holds every policy's metadata and data, but no wasm: with every
// tenant's Rego its own (some 55 KB each), ten thousand modules would be
// half a gigabyte in every process. A module is read when its engine is
// built (a project's first decision, or again after the EngineCache evicted
// it), then let go:
//
//   1. from a load already under way (concurrent first decisions of projects
//      on the same module share one read), or bytes held for a moment (a
//      watch event carries the new version's wasm: it is built from those);
//   2. from the snapshot directory's content-addressed modules
//      (<dir>/<sha256>.wasm, see snapshot.ts), checked against the sha256;
//   3. from etcd: the current key while the policy version is still current,
//      else the key at the revision that wrote the version; checked against
//      the sha256, and then written to the directory (under a temporary name, renamed into
//      place: any process sharing the directory may write it, the same
//      content always has the same name).
//
// etcd away and the module not on disk: the load fails with
// WasmUnavailableError, which the EngineCache does not remember, so that
// decision fails closed and the next one tries again. A module etcd does not
// hold, or holds altered, fails for good (PolicyEngineError).
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { WasmUnavailableError } from '../engine/cache.js';
import { PolicyEngineError } from '../engine/index.js';
import { PinnedRevisionCompactedError, policyKeys, readPolicyWasm } from '../store/index.js';
import { sha256Hex } from '../store/index.js';

/** Which module, and a policy version whose keys hold it (any holder will do). */
export interface ModuleRef {
  name: string;
  wasmSha256: string;
  modRevision: number;
}

export interface ModuleStoreStats {
  /** Modules being read, or held for a moment, right now; and their bytes. */
  held: number;
  heldBytes: number;
  /** Reads since start, by where the bytes came from. */
  fromDisk: number;
  fromEtcd: number;
}

export class ModuleStore {
  private readonly loading = new Map<string, Promise<Uint8Array>>();
  private readonly held = new Map<string, { bytes: Uint8Array; holders: number }>();
  private readonly counters = { fromDisk: 0, fromEtcd: 0 };
  private dirReady: Promise<void> | null = null;

  /** `dir`: the content-addressed modules directory (none: etcd only). */
  constructor(
    private readonly client: Etcd3,
    readonly dir: string | null,
  ) {}

  /** The module's bytes, verified; not kept here once the caller has them. */
  load(ref: ModuleRef): Promise<Uint8Array> {
    const held = this.held.get(ref.wasmSha256);
    if (held) return Promise.resolve(held.bytes);
    let loading = this.loading.get(ref.wasmSha256);
    if (!loading) {
      loading = this.read(ref).finally(() => this.loading.delete(ref.wasmSha256));
      this.loading.set(ref.wasmSha256, loading);
    }
    return loading;
  }

  /**
   * Keeps `bytes` (verified by the caller) at hand until the returned
   * function is called, and writes them to the directory if they are not
   * there yet. The write is not waited for: a new version is built and
   * enforced from the bytes held, and the disk (only a start with etcd away
   * needs it) is brought in step meanwhile.
   */
  hold(sha: string, bytes: Uint8Array): () => void {
    const entry = this.held.get(sha) ?? { bytes, holders: 0 };
    entry.holders++;
    this.held.set(sha, entry);
    const release = () => {
      if (--entry.holders === 0 && this.held.get(sha) === entry) this.held.delete(sha);
    };
    if (this.dir) {
      void this.onDisk(sha)
        .then((there) => (there ? undefined : this.write(sha, bytes)))
        // Not on disk: the snapshot writer writes it, or a later load from etcd does.
        .catch(() => undefined);
    }
    return release;
  }

  /**
   * Makes sure the module is in the directory, reading it from etcd only if
   * it is not; the bytes written (0 when it was there).
   */
  async persist(ref: ModuleRef): Promise<number> {
    if (!this.dir) return 0;
    if (await this.onDisk(ref.wasmSha256)) return 0;
    const held = this.held.get(ref.wasmSha256)?.bytes;
    const bytes = held ?? (await this.fromEtcd(ref));
    if (held) await this.write(ref.wasmSha256, held);
    return bytes.byteLength;
  }

  get stats(): ModuleStoreStats {
    const pending = new Set([...this.loading.keys(), ...this.held.keys()]);
    let heldBytes = 0;
    for (const { bytes } of this.held.values()) heldBytes += bytes.byteLength;
    return { held: pending.size, heldBytes, ...this.counters };
  }

  private path(sha: string): string {
    return join(this.dir!, `${sha}.wasm`);
  }

  private async onDisk(sha: string): Promise<boolean> {
    return stat(this.path(sha)).then(
      () => true,
      () => false,
    );
  }

  private async read(ref: ModuleRef): Promise<Uint8Array> {
    if (this.dir) {
      const bytes = await readFile(this.path(ref.wasmSha256)).catch(() => null);
      if (bytes && sha256Hex(bytes) === ref.wasmSha256) {
        this.counters.fromDisk++;
        return bytes;
      }
    }
    return this.fromEtcd(ref);
  }

  /**
   * From etcd, verified, then written to the directory. The current wasm key
   * while this version is still current (one transaction with its meta key);
   * else the key at the revision that wrote this version.
   */
  private async fromEtcd(ref: ModuleRef): Promise<Uint8Array> {
    const keys = policyKeys(ref.name);
    const unavailable = (cause: unknown) => new WasmUnavailableError(`the wasm of policy ${ref.name} is not on disk and etcd cannot be read`, { cause });
    const unloadable = (reason: string) => new PolicyEngineError(`policy ${ref.name} cannot be loaded: ${reason}`);
    let bytes: Buffer;
    try {
      // A read-only transaction (its compare always holds): meta and wasm at one revision.
      const response = await this.client
        .if(keys.meta, 'Mod', '<', Number.MAX_SAFE_INTEGER)
        .then(this.client.get(keys.meta), this.client.get(keys.wasm))
        .commit();
      const meta = response.responses[0]?.response_range?.kvs?.[0];
      const wasm = response.responses[1]?.response_range?.kvs?.[0];
      if (meta && Number(meta.mod_revision) === ref.modRevision) {
        if (!wasm) throw unloadable(`${keys.wasm} is missing`);
        if (sha256Hex(wasm.value) !== ref.wasmSha256) throw unloadable('its wasm does not match its metadata sha256');
        bytes = wasm.value;
      } else {
        // A newer version (or a delete) is on its way by the watch: this one's own revision.
        bytes = await readPolicyWasm(this.client, ref.name, ref.modRevision, ref.wasmSha256);
      }
    } catch (error) {
      if (error instanceof PolicyEngineError) throw error;
      if (error instanceof PinnedRevisionCompactedError) {
        throw new WasmUnavailableError(`policy ${ref.name} changed in etcd since this version, whose revision was compacted; its new version is on its way`);
      }
      if (error instanceof Error && /is missing at revision|does not match/.test(error.message)) throw unloadable(error.message);
      throw unavailable(error);
    }
    this.counters.fromEtcd++;
    if (this.dir) await this.write(ref.wasmSha256, bytes).catch(() => undefined);
    return bytes;
  }

  /** Whole or not at all: an unpredictable temporary name, then a rename (same content, same name). */
  private async write(sha: string, bytes: Uint8Array): Promise<void> {
    const dir = this.dir!;
    this.dirReady ??= mkdir(dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    await this.dirReady.catch(() => {
      this.dirReady = null;
    });
    const temporary = join(dir, `.${randomUUID()}.tmp`);
    await writeFile(temporary, bytes, { mode: 0o600, flag: 'wx' });
    try {
      await rename(temporary, this.path(sha));
    } catch (error) {
      await unlink(temporary).catch(() => undefined);
      throw error;
    }
  }
}
