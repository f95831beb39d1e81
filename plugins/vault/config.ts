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
import { readFileSync } from 'node:fs';

export interface VaultConfig {
  addr: string;
  auth: { kind: 'token'; token: string } | { kind: 'approle'; roleId: string; secretId: string; mount: string };
  namespace: string | null;
  caCert: Buffer | null;
  timeoutMs: number;
  secretTtlMs: number;
  maxStalenessMs: number;
}

function seconds(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined || raw === '') return fallback * 1000;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a number of seconds`);
  return value * 1000;
}

/** null when VAULT_ADDR is unset: the vault plugin then refuses its confs. */
export function vaultConfigFromEnv(env: NodeJS.ProcessEnv = process.env): VaultConfig | null {
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
  };
}
