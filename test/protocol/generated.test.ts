// The committed generated code is what flatc makes of the schema today: an
// edit to a6.fbs without `npm run gen:protocol` (or a hand edit of the
// generated files) fails here.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { repoRoot } from '../support/runner-process.js';

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

describe('generated FlatBuffers code', () => {
  it('matches a fresh flatc run on a6.fbs', () => {
    const committed = join(repoRoot, 'plugins/protocol/generated');
    const fresh = join(mkdtempSync(join(tmpdir(), 'gh-flatc-')), 'generated');
    execFileSync('bash', [join(repoRoot, 'plugins/protocol/generate.sh'), fresh]);
    const list = (dir: string) =>
      files(dir)
        .map((f) => relative(dir, f))
        .sort();
    expect(list(fresh)).toEqual(list(committed));
    for (const file of list(committed)) {
      expect([file, readFileSync(join(fresh, file), 'utf8')]).toEqual([file, readFileSync(join(committed, file), 'utf8')]);
    }
  });
});
