// The vault plugin's Vault session against a real Vault: AppRole login, token
// renewal, a fresh login before the token's max TTL, and no timer overflow
// with Vault's default (768 h) TTLs.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { startVault, type TestVault } from '../support/vault.js';
import { VaultSession } from '../../plugins/vault/session.js';
import type { VaultConfig } from '../../plugins/vault/config.js';

let vault: TestVault;
const READ_POLICY = 'path "secret/data/llm/*" { capabilities = ["read"] }';

beforeAll(async () => {
  vault = await startVault();
  await vault.kvPut('secret', 'llm/team-a', { api_key: 'sk-a' });
});
afterAll(() => vault?.stop());

function session(roleId: string, secretId: string): VaultSession {
  const config: VaultConfig = {
    addr: vault.addr,
    auth: { kind: 'approle', roleId, secretId, mount: 'approle' },
    namespace: null,
    caCert: null,
    timeoutMs: 2000,
    secretTtlMs: 60_000,
    maxStalenessMs: 300_000,
    allowedPaths: [],
  };
  return new VaultSession(config, pino({ level: 'silent' }));
}

describe('Vault session', () => {
  it('keeps reading past the token max TTL: renews, then logs in again before it runs out', async () => {
    const { roleId, secretId } = await vault.createAppRole('short', READ_POLICY, { tokenTtl: 2, tokenMaxTtl: 5 });
    const s = session(roleId, secretId);
    try {
      const started = Date.now();
      while (Date.now() - started < 8_000) {
        expect(await s.readKv2('secret', 'llm/team-a')).toEqual({ api_key: 'sk-a' });
        await new Promise((r) => setTimeout(r, 500));
      }
    } finally {
      s.stop();
    }
  });

  it('with a 768 h token TTL, schedules renewal without overflowing timers', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    const { roleId, secretId } = await vault.createAppRole('long', READ_POLICY);
    const s = session(roleId, secretId);
    try {
      expect(await s.readKv2('secret', 'llm/team-a')).toEqual({ api_key: 'sk-a' });
      await new Promise((r) => setTimeout(r, 200));
      expect(warnings).not.toContain('TimeoutOverflowWarning');
    } finally {
      s.stop();
      process.off('warning', onWarning);
    }
  });

  it('refuses a path outside its policy with a sanitised error', async () => {
    const { roleId, secretId } = await vault.createAppRole('narrow', READ_POLICY);
    const s = session(roleId, secretId);
    try {
      await vault.kvPut('secret', 'other/x', { api_key: 'sk-other' });
      const error = (await s.readKv2('secret', 'other/x').catch((e: unknown) => e)) as { name: string; status: number; message: string };
      expect(error.name).toBe('VaultRequestError');
      expect(error.status).toBe(403);
      expect(JSON.stringify(error)).not.toContain(secretId);
    } finally {
      s.stop();
    }
  });
});
