// Where the real APISIX is on this machine: the one setup builds from the
// APISIX kit into .local/apisix, or one installed some other way and named by
// APISIX_HOME (with its `openresty` on PATH). Null when there is none; the
// callers then say how to get one.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

export interface ApisixInstallation {
  /** APISIX's home: apisix/ (the Lua code), deps/, conf/ (config-default.yaml, mime.types). */
  home: string;
  /** The directory holding `openresty` (APISIX's CLI looks for it on PATH). */
  binDir: string;
  /** The openresty (nginx) binary. */
  openresty: string;
  /** How it was found. */
  source: 'kit' | 'APISIX_HOME';
}

export function findApisix(repoRoot: string, env: NodeJS.ProcessEnv = process.env): ApisixInstallation | null {
  if (env.APISIX_HOME) {
    const home = env.APISIX_HOME;
    if (!existsSync(join(home, 'apisix', 'cli', 'apisix.lua'))) {
      throw new Error(`APISIX_HOME=${home} holds no APISIX (apisix/cli/apisix.lua is missing)`);
    }
    const found = spawnSync('sh', ['-c', 'command -v openresty'], { encoding: 'utf8', env }).stdout.trim();
    if (!found) throw new Error('APISIX_HOME is set but no `openresty` is on PATH');
    return { home, binDir: dirname(found), openresty: found, source: 'APISIX_HOME' };
  }
  const built = join(repoRoot, '.local', 'apisix');
  // build.id is written last by setup, so a half-finished build is never used.
  if (!existsSync(join(built, 'build.id'))) return null;
  return {
    home: join(built, 'apisix'),
    binDir: join(built, 'bin'),
    openresty: join(built, 'bin', 'openresty'),
    source: 'kit',
  };
}
