// The runner's socket is not a door to Vault: a vault conf may name only the
// (mount, path) templates the runner's environment allows, and a template
// must carry {project} (tying each read to the verified token's project)
// unless shared secrets are explicitly allowed.
import { describe, expect, it } from 'vitest';
import { createVaultPlugin } from '../../plugins/vault/index.js';
import { parseAllowedPaths, vaultConfigFromEnv, DEFAULT_VAULT_ALLOWED_PATHS } from '../../plugins/vault/config.js';
import type { VaultSession } from '../../plugins/vault/session.js';
import { ConfError } from '../../plugins/api/plugin.js';

// parseConf never calls Vault: a stand-in session object is enough here.
const session = {} as VaultSession;
const plugin = createVaultPlugin({
  session,
  ttlMs: 60_000,
  maxStalenessMs: 300_000,
  allowedPaths: parseAllowedPaths(DEFAULT_VAULT_ALLOWED_PATHS, false),
});
const conf = (value: object) => JSON.stringify({ field: 'api_key', ...value });

describe('vault confs', () => {
  it('the shipped route (secret:llm/{project}) is allowed', () => {
    expect(plugin.parseConf(conf({ mount: 'secret', path: 'llm/{project}' }))).toMatchObject({ mount: 'secret', path: 'llm/{project}' });
  });

  it('any other mount or path is refused at PrepareConf', () => {
    for (const value of [
      { mount: 'secret', path: 'admin/root' },
      { mount: 'secret', path: 'llm/team-a' },
      { mount: 'secret', path: 'llm' },
      { mount: 'kv', path: 'llm/{project}' },
      { mount: 'secret', path: 'llm/{project}/extra' },
      { mount: 'secret', path: '{project}' },
    ]) {
      expect(() => plugin.parseConf(conf(value)), JSON.stringify(value)).toThrow(ConfError);
      expect(() => plugin.parseConf(conf(value))).toThrow(/VAULT_ALLOWED_PATHS/);
    }
  });

  it('the allow-list comes from the environment; a template without {project} needs an explicit yes', () => {
    const base = { VAULT_ADDR: 'https://vault.internal:8200', VAULT_TOKEN: 't' };
    expect(vaultConfigFromEnv(base)!.allowedPaths).toEqual([{ mount: 'secret', path: 'llm/{project}' }]);
    expect(vaultConfigFromEnv({ ...base, VAULT_ALLOWED_PATHS: 'secret:llm/{project}, kv/team:{project}/openai' })!.allowedPaths).toEqual([
      { mount: 'secret', path: 'llm/{project}' },
      { mount: 'kv/team', path: '{project}/openai' },
    ]);
    expect(() => vaultConfigFromEnv({ ...base, VAULT_ALLOWED_PATHS: 'secret:llm/shared' })).toThrow(/VAULT_ALLOW_SHARED_PATHS/);
    expect(vaultConfigFromEnv({ ...base, VAULT_ALLOWED_PATHS: 'secret:llm/shared', VAULT_ALLOW_SHARED_PATHS: 'true' })!.allowedPaths).toEqual([
      { mount: 'secret', path: 'llm/shared' },
    ]);
    for (const bad of ['', 'secret', ':llm/{project}', 'secret:../x', 'secret:llm/{project}/']) {
      expect(() => vaultConfigFromEnv({ ...base, VAULT_ALLOWED_PATHS: bad }), bad).toThrow(/VAULT_ALLOWED_PATHS/);
    }
  });
});
