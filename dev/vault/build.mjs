#!/usr/bin/env node
// Builds the pinned Vault (go.mod) into the given path (default .local/bin/vault).
//
// Vault v1.14.1 was released against the sdk in its own tree, which is not on
// the module proxy. sdk v0.9.2 is the published release that compiles with it,
// but its framework panics at start-up on two enterprise-only sys paths of
// Vault 1.14 ("defines a CreateOperation but no ExistenceCheck", a check the
// sdk gained after 1.14 branched). The module cache is read-only and `go build
// -overlay` refuses files in it, so the sdk is copied to .local/vault-sdk (the
// replace in go.mod), that check is turned off in the copy, and Vault is built.
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const out = process.argv[2] ?? join(root, '.local/bin/vault');
const sdkCopy = join(root, '.local/vault-sdk');

function go(args, opts = {}) {
  const result = spawnSync('go', args, { cwd: here, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], ...opts });
  if (result.status !== 0) throw new Error(`go ${args.join(' ')} failed with status ${result.status}`);
  return result.stdout;
}

function makeWritable(path) {
  const stat = statSync(path);
  chmodSync(path, stat.mode | 0o200);
  if (stat.isDirectory()) for (const entry of readdirSync(path)) makeWritable(join(path, entry));
}

const gomod = readFileSync(join(here, 'go.mod'), 'utf8');
const sdkVersion = gomod.match(/^\s*github\.com\/hashicorp\/vault\/sdk (v[\w.\-]+)\s*$/m)?.[1];
if (!sdkVersion) throw new Error('dev/vault/go.mod does not pin github.com/hashicorp/vault/sdk');

// Checked against go.sum like any other download.
const { Dir: sdkDir } = JSON.parse(go(['mod', 'download', '-json', `github.com/hashicorp/vault/sdk@${sdkVersion}`]));
if (!sdkDir) throw new Error(`go mod download gave no directory for the vault sdk ${sdkVersion}`);

rmSync(sdkCopy, { recursive: true, force: true });
mkdirSync(dirname(sdkCopy), { recursive: true });
cpSync(sdkDir, sdkCopy, { recursive: true });
makeWritable(sdkCopy);

const backendFile = join(sdkCopy, 'framework/backend.go');
const check = 'panic(fmt.Sprintf("Pattern %v defines a CreateOperation but no ExistenceCheck", p.Pattern))';
const source = readFileSync(backendFile, 'utf8');
const found = source.split(check).length - 1;
// Exactly the two lines of sdk v0.9.2; anything else means a new sdk pin needs a fresh look.
if (found !== 2) throw new Error(`expected the ExistenceCheck panic twice in ${backendFile}, found it ${found} times`);
writeFileSync(backendFile, source.replaceAll(check, '// relaxed for Vault 1.14 (dev/vault/build.mjs)'));

mkdirSync(dirname(out), { recursive: true });
go(['build', '-o', out, '.'], { stdio: 'inherit' });
