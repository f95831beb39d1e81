/**
 * A real Vault on loopback for tests, benchmarks and `npm start`: HashiCorp
 * Vault built from the Go module proxy by `npm run setup` (dev/vault,
 * binary in .local/bin/vault, or VAULT_BINARY), run as `vault server -dev` on
 * a free loopback port.
 *
 *   const vault = await startLocalVault();
 *   vault.addr                 // 'http://127.0.0.1:<port>'
 *   vault.rootToken            // root token of the dev server (no TTL)
 *   await vault.kvPut('secret', 'llm/alpha', { api_key: 'sk-…' });
 *   const { roleId, secretId } = await vault.createAppRole('gateway', policyHcl);
 *   await vault.stop();        // kill it (to test Vault being away)
 *   await vault.restart();     // same port and root token, but EMPTY (see below)
 *
 * Dev mode keeps everything in memory: restart() brings back a fresh server on
 * the same address with the same root token and KV v2 mounted at `secret/`,
 * but every secret, policy, AppRole role and issued token is gone. A client
 * holding an old token gets 403 after a restart and has to log in again.
 *
 * Requests go through plain `fetch` against the HTTP API, not node-vault, so
 * that a bug in the gateway's client cannot hide behind the same client here.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../local-etcd/index.js';
import { packageRoot } from '../../runtime/paths.js';
import { localServerProcess } from '../child-process.js';

export const vaultBinary = process.env.VAULT_BINARY || join(packageRoot(), '.local/bin/vault');

export interface VaultResponse<T = any> {
  status: number;
  body: T;
}

export interface RequestOptions {
  body?: unknown;
  /** Defaults to the root token; pass null to send no token. */
  token?: string | null;
  namespace?: string;
}

export interface AppRoleOptions {
  /** token_ttl of the role, e.g. '30s' or 30 (seconds); Vault's default is the mount's (768h in dev). */
  tokenTtl?: string | number;
  tokenMaxTtl?: string | number;
  /** secret_id_ttl of the role; unset means secret IDs never expire. */
  secretIdTtl?: string | number;
}

export interface LocalVault {
  addr: string;
  rootToken: string;
  binary: string;
  /** One call to the HTTP API: `path` starts after /v1/, e.g. 'sys/health'. */
  request<T = any>(method: string, path: string, options?: RequestOptions): Promise<VaultResponse<T>>;
  /** Writes a new version of a KV v2 secret (POST /v1/<mount>/data/<path>); returns the version. */
  kvPut(mount: string, path: string, data: Record<string, unknown>): Promise<number>;
  /**
   * Writes ACL policy `name`, enables AppRole at auth/approle/ if needed, creates role `name`
   * with that policy and returns its role_id and a fresh secret_id.
   */
  createAppRole(name: string, policyHcl: string, options?: AppRoleOptions): Promise<{ roleId: string; secretId: string }>;
  stop(): Promise<void>;
  restart(): Promise<void>;
}

async function waitForHealth(addr: string, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`vault server exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    }
    try {
      // 200 only once the dev server is initialised, unsealed and active; its
      // `secret/` mount is set up before the listener reports active.
      const response = await fetch(`${addr}/v1/sys/health`, { signal: AbortSignal.timeout(1_000) });
      await response.arrayBuffer();
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`vault server did not become healthy on ${addr}:\n${output()}`);
}

export async function startLocalVault(options: { port?: number } = {}): Promise<LocalVault> {
  if (!existsSync(vaultBinary)) {
    throw new Error(`no vault binary at ${vaultBinary}: run \`npm run setup\` (builds dev/vault) or set VAULT_BINARY`);
  }
  const port = options.port ?? (await freePort());
  const addr = `http://127.0.0.1:${port}`;
  const rootToken = `root-${randomBytes(8).toString('hex')}`;
  const args = [
    'server',
    '-dev',
    `-dev-listen-address=127.0.0.1:${port}`,
    `-dev-root-token-id=${rootToken}`,
    // Otherwise the dev server writes the token to ~/.vault-token.
    '-dev-no-store-token',
    '-log-level=warn',
  ];
  // A developer's own VAULT_* variables (VAULT_ADDR, VAULT_TOKEN, VAULT_DEV_*) must not
  // change the test server, so it gets a minimal environment.
  const env = { PATH: process.env.PATH ?? '', HOME: tmpdir() };
  const { launch, stop } = localServerProcess({ command: vaultBinary, args, env, ready: (child, output) => waitForHealth(addr, child, output) });

  async function request<T = any>(method: string, path: string, options: RequestOptions = {}): Promise<VaultResponse<T>> {
    const headers: Record<string, string> = {};
    const token = options.token === undefined ? rootToken : options.token;
    if (token !== null) headers['X-Vault-Token'] = token;
    if (options.namespace) headers['X-Vault-Namespace'] = options.namespace;
    let body: string | undefined;
    if (options.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(options.body);
    }
    const response = await fetch(`${addr}/v1/${path.replace(/^\/+/, '')}`, { method, headers, body });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  }

  async function ok<T = any>(method: string, path: string, options?: RequestOptions): Promise<T> {
    const response = await request<T>(method, path, options);
    if (response.status >= 300) {
      throw new Error(`vault ${method} /v1/${path}: HTTP ${response.status} ${JSON.stringify(response.body)}`);
    }
    return response.body;
  }

  async function kvPut(mount: string, path: string, data: Record<string, unknown>): Promise<number> {
    const body = await ok<{ data: { version: number } }>('POST', `${mount}/data/${path}`, { body: { data } });
    return body.data.version;
  }

  async function createAppRole(name: string, policyHcl: string, options: AppRoleOptions = {}) {
    const mounts = await ok<{ data: Record<string, unknown> }>('GET', 'sys/auth');
    if (!('approle/' in mounts.data)) await ok('POST', 'sys/auth/approle', { body: { type: 'approle' } });
    await ok('PUT', `sys/policies/acl/${name}`, { body: { policy: policyHcl } });
    const role: Record<string, unknown> = { token_policies: [name] };
    if (options.tokenTtl !== undefined) role.token_ttl = options.tokenTtl;
    if (options.tokenMaxTtl !== undefined) role.token_max_ttl = options.tokenMaxTtl;
    if (options.secretIdTtl !== undefined) role.secret_id_ttl = options.secretIdTtl;
    await ok('POST', `auth/approle/role/${name}`, { body: role });
    const roleId = (await ok<{ data: { role_id: string } }>('GET', `auth/approle/role/${name}/role-id`)).data.role_id;
    const secretId = (await ok<{ data: { secret_id: string } }>('POST', `auth/approle/role/${name}/secret-id`)).data.secret_id;
    return { roleId, secretId };
  }

  await launch();
  return {
    addr,
    rootToken,
    binary: vaultBinary,
    request,
    kvPut,
    createAppRole,
    stop,
    async restart() {
      await stop();
      await launch();
    },
  };
}
