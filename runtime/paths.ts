/**
 * Where Gatehouse's own files are (runtime/: what every process needs from
 * where it runs, its files here and its logger in logger.ts): the package root (the folder holding its
 * package.json), found from this module whether it runs from dist/ or from
 * sources, and the tools setup puts under it. The one place that finds them:
 * the services, the gatehouse command and the development tools alike.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

/** The folder holding Gatehouse's package.json, whether running from dist/ or from sources. */
export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot find the Gatehouse package root');
    dir = parent;
  }
  root = dir;
  return dir;
}

/** The opa binary: `configured` (OPA_PATH) when given, else the one `npm run setup` puts in <package>/.local/bin. */
export function opaPath(configured?: string): string {
  return configured?.trim() || join(packageRoot(), '.local', 'bin', 'opa');
}
