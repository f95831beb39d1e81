#!/usr/bin/env node
// Installs whatever this machine is missing for `npm start` and `npm test`,
// and does nothing the second time. Plain JavaScript: it runs before the build.
//
//   node modules  -> npm ci, when node_modules is older than package-lock.json
//   etcd, haproxy, keepalived, flatc, chromium -> Debian packages, when missing from PATH
//   opa           -> built once from the pinned Go module in dev/opa
//   vault         -> built once from the pinned Go module in dev/vault
//   otelcol       -> the OpenTelemetry Collector's core components, built once from dev/otelcol
//   apisix        -> APISIX 3.9.1 built once from the APISIX kit (dev/apisix/kit/README.md),
//                    unless APISIX_HOME names an installed one
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
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
  // chromium: the web console's tests drive it with playwright-core (whose own browser download cannot work here).
  if (!onPath('chromium')) wanted.push('chromium');
  if (wanted.length === 0) return;
  const sudo = process.getuid && process.getuid() === 0 ? [] : ['sudo'];
  const apt = (...args) =>
    run(sudo[0] ?? 'apt-get', sudo.length ? ['apt-get', ...args] : args, {
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
  const gomod = readFileSync(join(root, 'dev/opa/go.mod'), 'utf8');
  const match = gomod.match(/github\.com\/open-policy-agent\/opa (v[\w.\-]+)/);
  if (!match) throw new Error('dev/opa/go.mod does not pin github.com/open-policy-agent/opa');
  return match[1];
}

function ensureOpa() {
  if (process.env.OPA_PATH && existsSync(process.env.OPA_PATH)) return;
  const bin = join(root, '.local/bin/opa');
  const stampFile = join(root, '.local/bin/opa.version');
  const version = pinnedOpaVersion();
  if (existsSync(bin) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === version) return;
  if (!onPath('go')) throw new Error('Go is needed to build opa (dev/opa); install Go 1.26+');
  log(`building opa ${version} from the Go module proxy (first time only, a few minutes)`);
  mkdirSync(dirname(bin), { recursive: true });
  run('go', ['build', '-o', bin, '.'], { cwd: join(root, 'dev/opa') });
  writeFileSync(stampFile, `${version}\n`);
}

function pinnedVaultVersion() {
  const gomod = readFileSync(join(root, 'dev/vault/go.mod'), 'utf8');
  const match = gomod.match(/github\.com\/hashicorp\/vault (v[\w.\-]+)/);
  if (!match) throw new Error('dev/vault/go.mod does not pin github.com/hashicorp/vault');
  return match[1];
}

function ensureVault() {
  if (process.env.VAULT_BINARY && existsSync(process.env.VAULT_BINARY)) return;
  const bin = join(root, '.local/bin/vault');
  const stampFile = join(root, '.local/bin/vault.version');
  const version = pinnedVaultVersion();
  if (existsSync(bin) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === version) return;
  if (!onPath('go')) throw new Error('Go is needed to build vault (dev/vault); install Go 1.26+');
  log(`building vault ${version} from the Go module proxy (first time only, 10+ minutes on 2 cores)`);
  mkdirSync(dirname(bin), { recursive: true });
  // Not a bare `go build`: the sdk Vault 1.14 needs is prepared first (dev/vault/build.mjs).
  run(process.execPath, [join(root, 'dev/vault/build.mjs'), bin]);
  writeFileSync(stampFile, `${version}\n`);
}

function pinnedOtelcolVersion() {
  const gomod = readFileSync(join(root, 'dev/otelcol/go.mod'), 'utf8');
  const match = gomod.match(/go\.opentelemetry\.io\/collector\/otelcol (v[\w.\-]+)/);
  if (!match) throw new Error('dev/otelcol/go.mod does not pin go.opentelemetry.io/collector/otelcol');
  return match[1];
}

// The traces tests' collector (dev/otelcol/index.ts): OTLP receiver, otlphttp and debug exporters.
function ensureOtelcol() {
  if (process.env.OTELCOL_BINARY && existsSync(process.env.OTELCOL_BINARY)) return;
  const bin = join(root, '.local/bin/otelcol');
  const stampFile = join(root, '.local/bin/otelcol.version');
  const version = pinnedOtelcolVersion();
  if (existsSync(bin) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === version) return;
  if (!onPath('go')) throw new Error('Go is needed to build otelcol (dev/otelcol); install Go 1.26+');
  log(`building otelcol ${version} from the Go module proxy (first time only, a minute or two)`);
  mkdirSync(dirname(bin), { recursive: true });
  run('go', ['build', '-o', bin, '.'], { cwd: join(root, 'dev/otelcol') });
  writeFileSync(stampFile, `${version}\n`);
}

// The kit lives beside the checkout (../shared/apisix-kit), or beside the
// repository a clone was made from; APISIX_KIT names it explicitly.
function findApisixKit() {
  const candidates = [];
  if (process.env.APISIX_KIT) candidates.push(resolve(process.env.APISIX_KIT));
  candidates.push(join(root, '..', 'shared', 'apisix-kit'));
  const origin = spawnSync('git', ['config', 'remote.origin.url'], { cwd: root, encoding: 'utf8' }).stdout?.trim();
  if (origin && isAbsolute(origin)) candidates.push(join(origin, '..', 'shared', 'apisix-kit'));
  return candidates.find((dir) => existsSync(join(dir, 'build.sh'))) ?? null;
}

function apisixBuildId(kit) {
  const hash = createHash('sha256');
  hash.update(readFileSync(join(kit, 'build.sh')));
  hash.update(readFileSync(join(root, 'dev/apisix/kit/jit-uuid.lua')));
  return `apisix-3.9.1 ${hash.digest('hex').slice(0, 16)}`;
}

function ensureApisix() {
  if (process.env.APISIX_HOME) {
    if (!existsSync(join(process.env.APISIX_HOME, 'apisix', 'cli', 'apisix.lua'))) {
      throw new Error(`APISIX_HOME=${process.env.APISIX_HOME} holds no APISIX (apisix/cli/apisix.lua is missing)`);
    }
    if (!onPath('openresty')) throw new Error('APISIX_HOME is set but no `openresty` is on PATH');
    return;
  }
  const kit = findApisixKit();
  if (!kit) {
    throw new Error('no APISIX kit (../shared/apisix-kit) and no APISIX_HOME: the gateway tests and `npm start` run on APISIX 3.9.1');
  }
  const target = join(root, '.local', 'apisix');
  const stampFile = join(target, 'build.id');
  const id = apisixBuildId(kit);
  if (existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === id) return ensureApisixLogDeps(target);
  log(`building APISIX 3.9.1 from ${kit} into .local/apisix (first time only, about two minutes)`);
  // The kit is read-only and its lua-resty-jit-uuid tree lacks lib/: build from
  // a copy with the module APISIX needs added (dev/apisix/kit/README.md).
  const staging = join(root, '.local', 'apisix-kit');
  rmSync(staging, { recursive: true, force: true });
  cpSync(kit, staging, { recursive: true });
  run('chmod', ['-R', 'u+w', staging]);
  const uuidModule = join(staging, 'src/lua-resty-jit-uuid/lib/resty/jit-uuid.lua');
  if (!existsSync(uuidModule)) {
    mkdirSync(dirname(uuidModule), { recursive: true });
    cpSync(join(root, 'dev/apisix/kit/jit-uuid.lua'), uuidModule);
  }
  // Its last line pipes `nginx -V` into `head -1` under pipefail: when head
  // closes the pipe before nginx has written the rest, nginx dies of SIGPIPE
  // and the finished build is reported failed (status 141). `nginx -v`
  // prints the one line wanted.
  const script = join(staging, 'build.sh');
  writeFileSync(script, readFileSync(script, 'utf8').replace('/nginx/sbin/nginx" -V 2>&1 | head -1', '/nginx/sbin/nginx" -v 2>&1'));
  rmSync(target, { recursive: true, force: true });
  run('bash', [join(staging, 'build.sh'), target]);
  rmSync(staging, { recursive: true, force: true });
  ensureApisixLogDeps(target);
  writeFileSync(stampFile, `${id}\n`);
}

// APISIX's loggers (http-logger, on the LLM route) load two libraries the kit
// does not carry: nginx-lua-prometheus (a placeholder: nothing calls it) and
// lua-ffi-zlib (the one function APISIX calls). Each is added when missing
// (dev/apisix/kit/README.md).
function ensureApisixLogDeps(target) {
  const luaDir = join(target, 'apisix', 'deps', 'share', 'lua', '5.1');
  if (!existsSync(luaDir)) return;
  for (const name of ['prometheus.lua', 'ffi-zlib.lua']) {
    const module = join(luaDir, name);
    if (!existsSync(module)) cpSync(join(root, 'dev/apisix/kit', name), module);
  }
}

try {
  ensureNodeModules();
  ensureDebianPackages();
  ensureOpa();
  ensureVault();
  ensureOtelcol();
  ensureApisix();
} catch (err) {
  log(`failed: ${err.message}`);
  process.exit(1);
}
