import { readdirSync } from 'node:fs';
import { defineConfig } from 'vitest/config';

// Files that only start an etcd, an opa or a CMS of their own (free ports,
// temporary directories) run two at a time, first; every other file (timing:
// deadlines, leases, propagation budgets, a gateway stopped mid-test; the big
// stacks: APISIX, the rehearsal's network namespaces) runs alone, after them.
const PARALLEL_FOLDERS = ['test/cms', 'test/cli', 'test/identity', 'test/protocol', 'test/dev'];
/** Files of those folders that lean on timing all the same. */
const ALONE = new Set(['test/cms/fleet.test.ts', 'test/cms/check-bounds.test.ts', 'test/cms/api-resilience.test.ts', 'test/cms/store-retried-write.test.ts']);

function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory()) return testFiles(path);
    return entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

const parallel = PARALLEL_FOLDERS.flatMap((dir) => testFiles(dir)).filter((file) => !ALONE.has(file));

// Integration tests start real processes (runner, etcd, opa); give them room on a shared 2-core machine.
const timeouts = { testTimeout: 30_000, hookTimeout: 60_000 };

export default defineConfig({
  test: {
    projects: [
      { test: { ...timeouts, name: 'parallel', include: parallel, maxWorkers: 2, sequence: { groupOrder: 0 } } },
      { test: { ...timeouts, name: 'alone', include: ['test/**/*.test.ts'], exclude: parallel, fileParallelism: false, sequence: { groupOrder: 1 } } },
    ],
  },
});
