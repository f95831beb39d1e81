// Vault access for the gateway, from the environment (list every variable
// under nginx_config.envs in APISIX's config.yaml, or nginx hides it):
//
//   VAULT_ADDR                  e.g. https://vault.internal:8200 (required to use the vault plugin)
//   VAULT_TOKEN                 a token, or:
//   VAULT_ROLE_ID, VAULT_SECRET_ID   AppRole credentials (VAULT_APPROLE_MOUNT, default "approle")
//   VAULT_NAMESPACE             Vault Enterprise / HCP namespace
//   VAULT_CACERT                CA bundle for Vault's TLS certificate
//   VAULT_TIMEOUT_MS            per request (default 2000)
//   VAULT_SECRET_TTL_SECONDS    how long a secret is used before it is read again (default 60)
//   VAULT_MAX_STALENESS_SECONDS how long past that a cached secret is served while Vault is away (default 300)
//   VAULT_ALLOWED_PATHS         what vault confs may name: comma-separated <mount>:<path> templates
//                               (default secret:llm/{project}); a conf naming anything else is refused
//   VAULT_ALLOW_SHARED_PATHS    "true" lets an allowed template lack {project} (one secret for every project)
//
// Anyone who can reach the runner's socket can prepare a chain; the allow-list
// keeps such a chain to the secrets the routes are meant to read, and
// {project} ties each read to the verified token's project.
import { readFileSync } from 'node:fs';

export interface VaultConfig {
  addr: string;
  auth: { kind: 'token'; token: string } | { kind: 'approle'; roleId: string; secretId: string; mount: string };
  namespace: string | null;
  caCert: Buffer | null;
  timeoutMs: number;
  secretTtlMs: number;
  maxStalenessMs: number;
  /** The (mount, path template) pairs vault confs may name. */
  allowedPaths: VaultPathTemplate[];
}

export interface VaultPathTemplate {
  mount: string;
  /** Path as written in confs, {project} included. */
  path: string;
}

export const DEFAULT_VAULT_ALLOWED_PATHS = 'secret:llm/{project}';

const MOUNT = /^[A-Za-z0-9_-]+(\/[A-Za-z0-9_-]+)*$/;
const PATH = /^([A-Za-z0-9_-]+|\{project\})(\/([A-Za-z0-9_-]+|\{project\}))*$/;

/** Parses VAULT_ALLOWED_PATHS; a template without {project} needs `allowShared`. */
export function parseAllowedPaths(raw: string, allowShared: boolean): VaultPathTemplate[] {
  const templates = raw
    .split(',')
    .map((entry) => entry.trim())
    .filter(Boolean)
    .map((entry) => {
      const colon = entry.indexOf(':');
      const mount = entry.slice(0, colon);
      const path = entry.slice(colon + 1);
      if (colon < 1 || !MOUNT.test(mount) || !PATH.test(path)) throw new Error(`VAULT_ALLOWED_PATHS: "${entry}" is not <mount>:<path>`);
      if (!path.includes('{project}') && !allowShared) {
        throw new Error(
          `VAULT_ALLOWED_PATHS: "${entry}" has no {project}, so every project would read the same secret; set VAULT_ALLOW_SHARED_PATHS=true if that is meant`,
        );
      }
      return { mount, path };
    });
  if (templates.length === 0) throw new Error('VAULT_ALLOWED_PATHS lists nothing');
  return templates;
}

function seconds(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback * 1000;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number of seconds`);
  return value * 1000;
}

/** null when VAULT_ADDR is unset: the vault plugin then refuses its confs. */
export function vaultConfigFromEnv(env: NodeJS.ProcessEnv): VaultConfig | null {
  if (!env.VAULT_ADDR) return null;
  let auth: VaultConfig['auth'];
  if (env.VAULT_ROLE_ID) {
    if (!env.VAULT_SECRET_ID) throw new Error('VAULT_ROLE_ID is set but VAULT_SECRET_ID is not');
    auth = { kind: 'approle', roleId: env.VAULT_ROLE_ID, secretId: env.VAULT_SECRET_ID, mount: env.VAULT_APPROLE_MOUNT || 'approle' };
  } else if (env.VAULT_TOKEN) {
    auth = { kind: 'token', token: env.VAULT_TOKEN };
  } else {
    throw new Error('set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID');
  }
  return {
    addr: env.VAULT_ADDR.replace(/\/+$/, ''),
    auth,
    namespace: env.VAULT_NAMESPACE || null,
    caCert: env.VAULT_CACERT ? readFileSync(env.VAULT_CACERT) : null,
    timeoutMs: Number(env.VAULT_TIMEOUT_MS ?? 2000),
    secretTtlMs: seconds('VAULT_SECRET_TTL_SECONDS', env.VAULT_SECRET_TTL_SECONDS, 60),
    maxStalenessMs: seconds('VAULT_MAX_STALENESS_SECONDS', env.VAULT_MAX_STALENESS_SECONDS, 300),
    allowedPaths: parseAllowedPaths(env.VAULT_ALLOWED_PATHS ?? DEFAULT_VAULT_ALLOWED_PATHS, env.VAULT_ALLOW_SHARED_PATHS?.trim() === 'true'),
  };
}
