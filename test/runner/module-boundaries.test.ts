// Where imports may point, read from the source: a plugin never imports
// another plugin (what one tells a later one goes through the call
// context's slots, plugins/api/slots.ts), and the policy store's modules
// import each other in one direction only.
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

describe('module boundaries', () => {
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
    expect(cycles).toEqual([]);
  });
});
