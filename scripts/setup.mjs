#!/usr/bin/env node
// Installs whatever this machine is missing for `npm start` and `npm test`,
// and does nothing the second time. Plain JavaScript: it runs before the build.
//
//   node modules  -> npm ci, when node_modules is older than package-lock.json
//   etcd, haproxy, keepalived, flatc -> Debian packages, when missing from PATH
//   opa           -> built once from the pinned Go module in tools/opa
//   vault         -> built once from the pinned Go module in tools/vault
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const log = (msg) => process.stderr.write(`[setup] ${msg}\n`);

function run(cmd, args, opts = {}) {
  const result = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (result.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed with status ${result.status}`);
  }
}

function onPath(bin) {
  return spawnSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }).status === 0;
}

function ensureNodeModules() {
  const lock = join(root, 'package-lock.json');
  const stamp = join(root, 'node_modules', '.package-lock.json');
  if (existsSync(stamp) && statSync(stamp).mtimeMs >= statSync(lock).mtimeMs) return;
  log('installing node modules (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

function ensureDebianPackages() {
  const wanted = [];
  if (!onPath('etcd')) wanted.push('etcd-server');
  if (!onPath('haproxy')) wanted.push('haproxy');
  // keepalived: the deploy tests check the load balancer pair's config with keepalived -t.
  if (!onPath('keepalived')) wanted.push('keepalived');
  // flatc: only to check (and regenerate) the committed protocol code.
  if (!onPath('flatc')) wanted.push('flatbuffers-compiler');
  if (wanted.length === 0) return;
  const sudo = process.getuid && process.getuid() === 0 ? [] : ['sudo'];
  const apt = (...args) => run(sudo[0] ?? 'apt-get', sudo.length ? ['apt-get', ...args] : args, {
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  log(`installing Debian packages: ${wanted.join(' ')}`);
  try {
    apt('install', '-y', '-q', ...wanted);
  } catch {
    apt('update', '-q');
    apt('install', '-y', '-q', ...wanted);
  }
}

function pinnedOpaVersion() {
  const gomod = readFileSync(join(root, 'tools/opa/go.mod'), 'utf8');
  const match = gomod.match(/github\.com\/open-policy-agent\/opa (v[\w.\-]+)/);
  if (!match) throw new Error('tools/opa/go.mod does not pin github.com/open-policy-agent/opa');
  return match[1];
}

function ensureOpa() {
  if (process.env.OPA_PATH && existsSync(process.env.OPA_PATH)) return;
  const bin = join(root, '.local/bin/opa');
  const stampFile = join(root, '.local/bin/opa.version');
  const version = pinnedOpaVersion();
  if (existsSync(bin) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === version) return;
  if (!onPath('go')) throw new Error('Go is needed to build opa (tools/opa); install Go 1.26+');
  log(`building opa ${version} from the Go module proxy (first time only, a few minutes)`);
  mkdirSync(dirname(bin), { recursive: true });
  run('go', ['build', '-o', bin, '.'], { cwd: join(root, 'tools/opa') });
  writeFileSync(stampFile, `${version}\n`);
}

function pinnedVaultVersion() {
  const gomod = readFileSync(join(root, 'tools/vault/go.mod'), 'utf8');
  const match = gomod.match(/github\.com\/hashicorp\/vault (v[\w.\-]+)/);
  if (!match) throw new Error('tools/vault/go.mod does not pin github.com/hashicorp/vault');
  return match[1];
}

function ensureVault() {
  if (process.env.VAULT_BINARY && existsSync(process.env.VAULT_BINARY)) return;
  const bin = join(root, '.local/bin/vault');
  const stampFile = join(root, '.local/bin/vault.version');
  const version = pinnedVaultVersion();
  if (existsSync(bin) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === version) return;
  if (!onPath('go')) throw new Error('Go is needed to build vault (tools/vault); install Go 1.26+');
  log(`building vault ${version} from the Go module proxy (first time only, 10+ minutes on 2 cores)`);
  mkdirSync(dirname(bin), { recursive: true });
  // Not a bare `go build`: the sdk Vault 1.14 needs is prepared first (tools/vault/build.mjs).
  run(process.execPath, [join(root, 'tools/vault/build.mjs'), bin]);
  writeFileSync(stampFile, `${version}\n`);
}

try {
  ensureNodeModules();
  ensureDebianPackages();
  ensureOpa();
  ensureVault();
} catch (err) {
  log(`failed: ${err.message}`);
  process.exit(1);
}
