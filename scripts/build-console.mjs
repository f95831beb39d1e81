#!/usr/bin/env node
// Builds the web console (cms/console/app) into dist/console: type-checked
// with its own tsconfig (DOM types), bundled with esbuild into one script,
// nothing fetched from outside at run time. The CMS serves it under /console.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const app = join(root, 'cms', 'console', 'app');
const out = join(root, 'dist', 'console');
execFileSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(app, 'tsconfig.json')], { stdio: 'inherit' });
mkdirSync(out, { recursive: true });
const bundle = await build({
  entryPoints: [join(app, 'main.ts')],
  bundle: true,
  format: 'esm',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  outfile: join(out, 'app.js'),
  logLevel: 'warning',
  write: false,
});
// The stylesheets the modules import (uPlot's) come bundled first, the console's own style.css after them.
let css = '';
for (const file of bundle.outputFiles) {
  if (file.path.endsWith('.css')) css += file.text;
  else writeFileSync(file.path, file.contents);
}
copyFileSync(join(app, 'index.html'), join(out, 'index.html'));
writeFileSync(join(out, 'app.css'), css + readFileSync(join(app, 'style.css'), 'utf8'));
process.stderr.write('[build-console] cms/console/app -> dist/console\n');
