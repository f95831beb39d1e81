// The last-known-good policy set on local disk, so a gateway that starts
// while etcd is away still enforces the policies it last saw. It is only read
// when etcd cannot be reached at start; once etcd answers, etcd wins.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { PolicyMetadata } from '../store/index.js';
import type { PolicySet } from './policy-set.js';

export interface SnapshotEntry {
  meta: PolicyMetadata;
  modRevision: number;
  dataText: string;
  wasmBase64: string;
}

export interface SnapshotFile {
  format: 1;
  revision: number;
  savedAt: string;
  policies: SnapshotEntry[];
}

export const SNAPSHOT_FILE_NAME = 'policies.snapshot.json';

export function snapshotPath(stateDir: string): string {
  return join(stateDir, SNAPSHOT_FILE_NAME);
}

export async function writeSnapshot(path: string, set: PolicySet): Promise<void> {
  const file: SnapshotFile = {
    format: 1,
    revision: set.revision,
    savedAt: new Date().toISOString(),
    policies: [...set.policies.values()].map((p) => ({
      meta: p.meta,
      modRevision: p.modRevision,
      dataText: p.dataText,
      wasmBase64: Buffer.from(p.wasm).toString('base64'),
    })),
  };
  await mkdir(dirname(path), { recursive: true });
  // Write then rename: a crash mid-write never leaves a torn snapshot.
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, JSON.stringify(file), { mode: 0o600 });
  await rename(temporary, path);
}

/** The snapshot, or null when there is none or it cannot be read. */
export async function readSnapshot(path: string): Promise<SnapshotFile | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return null;
  }
  const parsed = JSON.parse(text) as SnapshotFile;
  if (parsed.format !== 1 || !Array.isArray(parsed.policies)) throw new Error(`${path}: unknown snapshot format`);
  return parsed;
}
