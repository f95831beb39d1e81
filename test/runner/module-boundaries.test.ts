// Where imports may point, read from the source: the layers point down only
// (services -> plugins -> budget -> policy -> the ground floor), nothing that
// ships imports what only development uses, no module imports itself back
// through others, and a plugin never imports another plugin (what one tells
// a later one goes through the call context's slots, plugins/api/slots.ts).
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { repoRoot } from '../support/runner-process.js';

/** Folders of plugins/ that are not plugins: the interface they share, the protocol, the runner that assembles them. */
const NOT_PLUGINS = new Set(['api', 'protocol', 'runner']);

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return name === 'generated' ? [] : sourceFiles(path);
    return name.endsWith('.ts') ? [path] : [];
  });
}

/** The repository files a module imports (relative imports only), as paths from the repository root. */
function importsOf(file: string): string[] {
  const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return importedFiles
    .map(({ fileName }) => fileName)
    .filter((name) => name.startsWith('.'))
    .map((name) => relative(repoRoot, resolve(dirname(file), name.replace(/\.js$/, '.ts'))));
}

/** Every circle of imports in `graph` (module -> the modules it imports), as "a -> b -> a"; imports outside the graph are not followed. */
function cyclesIn(graph: Map<string, string[]>): string[] {
  const cycles: string[] = [];
  const done = new Set<string>();
  const visit = (module: string, path: string[]): void => {
    if (path.includes(module)) {
      cycles.push([...path.slice(path.indexOf(module)), module].join(' -> '));
      return;
    }
    if (done.has(module)) return;
    for (const target of graph.get(module) ?? []) if (graph.has(target)) visit(target, [...path, module]);
    done.add(module);
  };
  for (const module of graph.keys()) visit(module, []);
  return cycles;
}

/**
 * The layers, highest first; a module imports its own folder or a lower
 * layer. What only development uses (bench/ and scripts/ on dev/) stands
 * above everything, so nothing that ships imports it.
 */
const LAYERS: string[][] = [
  ['bench', 'scripts'],
  ['dev'],
  ['cli', 'deploy'],
  ['cms', 'decision-api', 'plugins/runner'],
  ['plugins/jwt', 'plugins/opa', 'plugins/vault', 'plugins/llm-budget', 'plugins/path-rewrite', 'plugins/example'],
  ['plugins/api'],
  ['plugins/protocol', 'budget'],
  ['policy'],
  ['identity', 'etcd', 'http', 'runtime'],
];

/** The layer of a file (its folder's index in LAYERS) and its folder, or null outside every layer. */
function layerOf(file: string): { layer: number; folder: string } | null {
  for (const [layer, folders] of LAYERS.entries()) {
    for (const folder of folders) if (file === folder || file.startsWith(`${folder}/`)) return { layer, folder };
  }
  return null;
}

const layeredSources = () =>
  LAYERS.flat()
    .map((folder) => join(repoRoot, folder))
    .filter((dir) => {
      try {
        return statSync(dir).isDirectory();
      } catch {
        return false;
      }
    })
    .flatMap(sourceFiles)
    .filter((file) => !file.includes(`${join('cms', 'console', 'app')}`));

describe('module boundaries', () => {
  it('every folder of the tree has its layer, and imports point down the layers only', () => {
    const upward: string[] = [];
    for (const file of layeredSources()) {
      const from = layerOf(relative(repoRoot, file))!;
      for (const target of importsOf(file)) {
        const to = layerOf(target);
        if (!to) {
          upward.push(`${relative(repoRoot, file)} -> ${target} (no layer)`);
          continue;
        }
        if (to.folder !== from.folder && to.layer <= from.layer) upward.push(`${relative(repoRoot, file)} -> ${target}`);
      }
    }
    expect(upward).toEqual([]);
  });

  it('no module imports itself back through others', () => {
    const graph = new Map(layeredSources().map((file) => [relative(repoRoot, file), importsOf(file)]));
    expect(cyclesIn(graph)).toEqual([]);
  });

  it('no plugin imports another plugin', () => {
    const pluginsDir = join(repoRoot, 'plugins');
    const plugins = readdirSync(pluginsDir).filter((name) => statSync(join(pluginsDir, name)).isDirectory() && !NOT_PLUGINS.has(name));
    expect(plugins).toEqual(expect.arrayContaining(['jwt', 'opa', 'vault', 'llm-budget', 'path-rewrite', 'example']));
    const crossings: string[] = [];
    for (const plugin of plugins) {
      for (const file of sourceFiles(join(pluginsDir, plugin))) {
        for (const target of importsOf(file)) {
          const [top, folder] = target.split('/');
          if (top === 'plugins' && folder !== plugin && plugins.includes(folder!)) crossings.push(`${relative(repoRoot, file)} -> ${target}`);
        }
      }
    }
    expect(crossings).toEqual([]);
  });

  it('the policy store has no import cycle', () => {
    const storeDir = join(repoRoot, 'policy', 'store');
    const graph = new Map(sourceFiles(storeDir).map((file) => [relative(repoRoot, file), importsOf(file)]));
    expect(cyclesIn(graph)).toEqual([]);
  });
});
