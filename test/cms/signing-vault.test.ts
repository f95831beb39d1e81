// The CMS signs with a key of Vault's transit engine (POLICY_SIGNING_VAULT_KEY),
// against a real Vault: the private key never leaves Vault, each signature
// names the key version Vault used, the gateways' keys file is made from
// Vault's public keys, and a rotation in Vault needs nothing of the CMS. With
// Vault away a write is refused and nothing is written.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { startLocalVault, type LocalVault } from '../../dev/local-vault/index.js';
import { cmsConfigFromEnv } from '../../cms/config.js';
import { vaultConfigFromEnv } from '../../plugins/vault/config.js';
import { VaultSession } from '../../plugins/vault/session.js';
import { parseVerifyKeys, transitVerifyKeys, verifySignature } from '../../policy/signing/index.js';
import { PolicyStore, sha256Hex } from '../../policy/store/index.js';
import { policyBody, startHarness, V1_POLICY, type Harness } from './harness.js';

let harness: Harness;
let vault: LocalVault;
let session: VaultSession;

const KEY = 'gatehouse-policy';
const body = (role: string) => policyBody(V1_POLICY, { valid_roles: [role] });

beforeAll(async () => {
  harness = await startHarness();
  vault = await startLocalVault();
  expect((await vault.request('POST', 'sys/mounts/transit', { body: { type: 'transit' } })).status).toBe(204);
  expect((await vault.request('POST', `transit/keys/${KEY}`, { body: { type: 'ed25519' } })).status).toBeLessThan(300);
  session = new VaultSession(vaultConfigFromEnv({ VAULT_ADDR: vault.addr, VAULT_TOKEN: vault.rootToken })!, pino({ level: 'silent' }));
}, 60_000);

afterAll(async () => {
  session?.stop();
  await vault?.stop();
  await harness?.close();
});

async function verdict(name: string, keys: Awaited<ReturnType<typeof transitVerifyKeys>>) {
  const stored = (await new PolicyStore(harness.etcdClient).get(name))!;
  return verifySignature(parseVerifyKeys(JSON.stringify(keys)), stored.meta, sha256Hex(stored.dataText));
}

describe('signing with a Vault transit key', () => {
  it('signs with the key version Vault used; the gateways verify with its public keys; a rotation needs no CMS change', async () => {
    const config = cmsConfigFromEnv({ ...harness.keys.env, VAULT_ADDR: vault.addr, VAULT_TOKEN: vault.rootToken, POLICY_SIGNING_VAULT_KEY: `transit/${KEY}` });
    expect(config.policySigning).toMatchObject({ kind: 'vault-transit', mount: 'transit', key: KEY });
    const cms = await harness.startCms({ policySigning: config.policySigning });
    expect(cms.logLines.some((line) => line.includes('policy versions are signed') && line.includes(`Vault transit key transit/${KEY}`))).toBe(true);

    expect((await cms.request('PUT', '/policies/team-v', { token: harness.tokens.admin, body: body('admin') })).status).toBe(201);
    const before = await transitVerifyKeys(session, 'transit', KEY);
    expect(await verdict('team-v', before)).toEqual({ ok: true, kid: `${KEY}-v1` });

    // Rotated in Vault: the next version is signed by v2, which only a keys file that lists it accepts.
    expect((await vault.request('POST', `transit/keys/${KEY}/rotate`)).status).toBeLessThan(300);
    expect((await cms.request('PUT', '/policies/team-v', { token: harness.tokens.admin, body: body('viewer') })).status).toBe(200);
    expect(await verdict('team-v', before)).toMatchObject({ ok: false, problem: 'bad signature' });
    expect(await verdict('team-v', await transitVerifyKeys(session, 'transit', KEY))).toEqual({ ok: true, kid: `${KEY}-v2` });
    await cms.stop();
  });

  it('refuses the two ways at once, and a key name it cannot read', () => {
    const env = { ...harness.keys.env, VAULT_ADDR: vault.addr, VAULT_TOKEN: vault.rootToken };
    expect(() => cmsConfigFromEnv({ ...env, POLICY_SIGNING_VAULT_KEY: `transit/${KEY}`, POLICY_SIGNING_KEY_FILE: '/k.pem' })).toThrow(/set one/);
    expect(() => cmsConfigFromEnv({ ...env, POLICY_SIGNING_VAULT_KEY: KEY })).toThrow(/<transit mount>\/<key name>/);
    expect(() => cmsConfigFromEnv({ ...harness.keys.env, POLICY_SIGNING_VAULT_KEY: `transit/${KEY}` })).toThrow(/VAULT_ADDR/);
  });

  it('with Vault away, a write is refused (503 signing-unavailable) and nothing is written', async () => {
    const cms = await harness.startCms({
      policySigning: cmsConfigFromEnv({ ...harness.keys.env, VAULT_ADDR: vault.addr, VAULT_TOKEN: vault.rootToken, POLICY_SIGNING_VAULT_KEY: `transit/${KEY}` })
        .policySigning,
    });
    await vault.stop();
    const snapshot = await harness.snapshot();
    const refused = await cms.request('PUT', '/policies/team-w', { token: harness.tokens.admin, body: body('admin') });
    expect(refused.status).toBe(503);
    expect(refused.json().type).toBe('urn:gatehouse:problem:signing-unavailable');
    expect(refused.text).not.toContain(vault.rootToken);
    expect(await harness.snapshot()).toEqual(snapshot);
    await cms.stop();
  });
});
