// The real Vault dev server (dev/vault) does what the gateway's `vault`
// plugin will rely on: KV v2 reads at <mount>/data/<path>, AppRole login,
// token lookup and renewal with the role's TTLs, a policy limiting a role to
// secret/data/llm/*, 403 for unknown tokens, and a restart that forgets
// everything (dev mode is in memory), which is what forces a re-login.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startVault, type TestVault } from '../support/vault.js';

const llmReadPolicy = `
path "secret/data/llm/*" {
  capabilities = ["read"]
}
`;

let vault: TestVault;

beforeAll(async () => {
  vault = await startVault();
});

afterAll(async () => {
  await vault?.stop();
});

async function login(roleId: string, secretId: string) {
  return vault.request('POST', 'auth/approle/login', { token: null, body: { role_id: roleId, secret_id: secretId } });
}

describe('vault server -dev', () => {
  it('is initialised, unsealed and active, and is Vault 1.14', async () => {
    const health = await vault.request('GET', 'sys/health', { token: null });
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ initialized: true, sealed: false, standby: false });
    expect(health.body.version).toMatch(/^1\.14\./);
  });

  it('has KV version 2 mounted at secret/', async () => {
    const mounts = await vault.request('GET', 'sys/mounts');
    expect(mounts.status).toBe(200);
    expect(mounts.body.data['secret/']).toMatchObject({ type: 'kv', options: { version: '2' } });
  });

  it('writes and reads KV v2 secrets with versions and metadata', async () => {
    expect(await vault.kvPut('secret', 'llm/alpha', { api_key: 'sk-alpha-1' })).toBe(1);
    expect(await vault.kvPut('secret', 'llm/alpha', { api_key: 'sk-alpha-2', org: 'org-a' })).toBe(2);

    const latest = await vault.request('GET', 'secret/data/llm/alpha');
    expect(latest.status).toBe(200);
    expect(latest.body.data.data).toEqual({ api_key: 'sk-alpha-2', org: 'org-a' });
    expect(latest.body.data.metadata).toMatchObject({ version: 2, destroyed: false, deletion_time: '' });
    // KV v2 reads are not leases: nothing to renew, the cache TTL is the client's own choice.
    expect(latest.body.lease_duration).toBe(0);
    expect(latest.body.renewable).toBe(false);

    const first = await vault.request('GET', 'secret/data/llm/alpha?version=1');
    expect(first.body.data.data).toEqual({ api_key: 'sk-alpha-1' });

    const missing = await vault.request('GET', 'secret/data/llm/nobody');
    expect(missing.status).toBe(404);
    expect(missing.body).toEqual({ errors: [] });
  });

  it('answers 403 permission denied for an unknown or missing token', async () => {
    const forged = await vault.request('GET', 'secret/data/llm/alpha', { token: 'hvs.not-a-real-token' });
    expect(forged.status).toBe(403);
    expect(forged.body).toEqual({ errors: ['permission denied'] });
    const none = await vault.request('GET', 'secret/data/llm/alpha', { token: null });
    expect(none.status).toBe(403);
  });

  it('logs in with AppRole and issues a renewable token with the role TTLs', async () => {
    const { roleId, secretId } = await vault.createAppRole('gateway', llmReadPolicy, { tokenTtl: '60s', tokenMaxTtl: '300s' });
    const response = await login(roleId, secretId);
    expect(response.status).toBe(200);
    const auth = response.body.auth;
    expect(auth.client_token).toMatch(/^hvs\./);
    expect(auth.lease_duration).toBe(60);
    expect(auth.renewable).toBe(true);
    expect(auth.policies).toEqual(['default', 'gateway']);
    expect(auth.metadata).toEqual({ role_name: 'gateway' });

    const wrong = await login(roleId, 'not-the-secret-id');
    expect(wrong.status).toBe(400);
    expect(wrong.body).toEqual({ errors: ['invalid secret id'] });
  });

  it('looks up and renews its own token, capped at the max TTL', async () => {
    const { roleId, secretId } = await vault.createAppRole('renewer', llmReadPolicy, { tokenTtl: '60s', tokenMaxTtl: '90s' });
    const token = (await login(roleId, secretId)).body.auth.client_token as string;

    const self = await vault.request('GET', 'auth/token/lookup-self', { token });
    expect(self.status).toBe(200);
    expect(self.body.data).toMatchObject({ renewable: true, policies: ['default', 'renewer'], creation_ttl: 60 });
    expect(self.body.data.ttl).toBeGreaterThan(55);
    expect(self.body.data.ttl).toBeLessThanOrEqual(60);
    expect(Date.parse(self.body.data.expire_time)).toBeGreaterThan(Date.now());

    const renewed = await vault.request('POST', 'auth/token/renew-self', { token, body: {} });
    expect(renewed.status).toBe(200);
    expect(renewed.body.auth.client_token).toBe(token);
    expect(renewed.body.auth.lease_duration).toBe(60);

    // Asking past token_max_ttl is not an error: the TTL is cut and a warning says so.
    const capped = await vault.request('POST', 'auth/token/renew-self', { token, body: { increment: '1h' } });
    expect(capped.status).toBe(200);
    expect(capped.body.auth.lease_duration).toBeGreaterThan(80);
    expect(capped.body.auth.lease_duration).toBeLessThanOrEqual(90);
    expect(capped.body.warnings.join(' ')).toMatch(/max.?TTL/i);

    // The root token of the dev server never expires.
    const root = await vault.request('GET', 'auth/token/lookup-self');
    expect(root.body.data).toMatchObject({ ttl: 0, policies: ['root'] });
  });

  it('stops accepting a token once its TTL has passed', async () => {
    const { roleId, secretId } = await vault.createAppRole('short', llmReadPolicy, { tokenTtl: '2s', tokenMaxTtl: '2s' });
    const token = (await login(roleId, secretId)).body.auth.client_token as string;
    expect((await vault.request('GET', 'secret/data/llm/alpha', { token })).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect((await vault.request('GET', 'secret/data/llm/alpha', { token })).status).toBe(403);
    expect((await vault.request('POST', 'auth/token/renew-self', { token, body: {} })).status).toBe(403);
  });

  it('limits an AppRole token to read secret/data/llm/*', async () => {
    await vault.kvPut('secret', 'other/db', { password: 'hunter2' });
    await vault.kvPut('secret', 'llm/beta', { api_key: 'sk-beta' });
    const { roleId, secretId } = await vault.createAppRole('llm-reader', llmReadPolicy);
    const token = (await login(roleId, secretId)).body.auth.client_token as string;

    const allowed = await vault.request('GET', 'secret/data/llm/beta', { token });
    expect(allowed.status).toBe(200);
    expect(allowed.body.data.data).toEqual({ api_key: 'sk-beta' });

    const elsewhere = await vault.request('GET', 'secret/data/other/db', { token });
    expect(elsewhere.status).toBe(403);
    expect(elsewhere.body).toEqual({ errors: ['1 error occurred:\n\t* permission denied\n\n'] });

    const write = await vault.request('POST', 'secret/data/llm/beta', { token, body: { data: { api_key: 'stolen' } } });
    expect(write.status).toBe(403);

    // The policy names data/, not metadata/: listing and metadata stay closed.
    const metadata = await vault.request('GET', 'secret/metadata/llm/beta', { token });
    expect(metadata.status).toBe(403);
    // An absent secret under an allowed path is a 404, not a 403.
    expect((await vault.request('GET', 'secret/data/llm/none', { token })).status).toBe(404);
    // Vault without Enterprise has no namespaces and ignores X-Vault-Namespace: sending
    // VAULT_NAMESPACE is harmless here, and namespace separation cannot be shown against it.
    const namespaced = await vault.request('GET', 'secret/data/llm/beta', { token, namespace: 'team-a' });
    expect(namespaced.status).toBe(200);
  });

  it('forgets everything on restart: same address and root token, old tokens and secrets gone', async () => {
    await vault.kvPut('secret', 'llm/gamma', { api_key: 'sk-gamma' });
    const { roleId, secretId } = await vault.createAppRole('restart', llmReadPolicy);
    const token = (await login(roleId, secretId)).body.auth.client_token as string;
    const addr = vault.addr;

    await vault.stop();
    await expect(fetch(`${addr}/v1/sys/health`)).rejects.toThrow();
    await vault.restart();
    expect(vault.addr).toBe(addr);

    expect((await vault.request('GET', 'sys/health', { token: null })).status).toBe(200);
    expect((await vault.request('GET', 'secret/data/llm/gamma', { token })).status).toBe(403);
    expect((await vault.request('GET', 'secret/data/llm/gamma')).status).toBe(404);
    // With auth/approle/ no longer mounted, login is an unauthenticated request to an
    // unknown path: 403 permission denied, the same answer as a bad token.
    const relogin = await login(roleId, secretId);
    expect(relogin.status).toBe(403);
    expect(relogin.body).toEqual({ errors: ['permission denied'] });
  });
});
