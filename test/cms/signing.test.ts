// The CMS signs every version it writes (policy/signing): a PUT and a
// rollback (a new version, signed anew); the signature travels in the
// metadata, so history keeps it. Without a key it writes unsigned, and says so.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newSigningKey } from '../../dev/signing-keys.js';
import { cmsConfigFromEnv } from '../../cms/config.js';
import { parseVerifyKeys, verifySignature } from '../../policy/signing/index.js';
import { PolicyStore, sha256Hex, type PolicyMetadata } from '../../policy/store/index.js';
import { policyBody, startHarness, V1_POLICY, type Harness } from './harness.js';

let harness: Harness;
let keyFile: string;
let verifyKeys: ReturnType<typeof parseVerifyKeys>;

beforeAll(async () => {
  harness = await startHarness();
  const dir = mkdtempSync(join(tmpdir(), 'gh-cms-signing-'));
  const key = newSigningKey('cms-1');
  keyFile = join(dir, 'cms-1.pem');
  writeFileSync(keyFile, key.privatePem, { mode: 0o600 });
  verifyKeys = parseVerifyKeys(JSON.stringify({ keys: [key.jwk] }));
});

afterAll(async () => {
  await harness?.close();
});

describe('the CMS signs what it writes', () => {
  it('every version, a rollback signed anew; history keeps the signatures', async () => {
    const cms = await harness.startCms({ policySigning: { kind: 'file', keyFile, kid: 'cms-1' } });
    expect(cms.logLines.some((line) => line.includes('policy versions are signed'))).toBe(true);
    const body = (role: string) => policyBody(V1_POLICY, { valid_roles: [role] });
    expect((await cms.request('PUT', '/policies/team-s', { token: harness.tokens.admin, body: body('admin') })).status).toBe(201);
    expect((await cms.request('PUT', '/policies/team-s', { token: harness.tokens.admin, body: body('viewer') })).status).toBe(200);
    expect((await cms.request('POST', '/policies/team-s/rollback', { token: harness.tokens.admin, body: '{"version":1}' })).status).toBe(200);

    const store = new PolicyStore(harness.etcdClient);
    const history = await store.history('team-s');
    expect(history.map((meta) => meta.version)).toEqual([3, 2, 1]);
    for (const meta of history) {
      const stored = (await store.historyVersion('team-s', meta.version))!;
      expect(meta.signature).toMatchObject({ alg: 'EdDSA', kid: 'cms-1' });
      expect(verifySignature(verifyKeys, meta, sha256Hex(stored.dataText))).toEqual({ ok: true, kid: 'cms-1' });
    }
    // The rollback is version 3 with version 1's content, its own signature (the version is signed).
    expect(history[0]!.signature!.sig).not.toBe(history[2]!.signature!.sig);
    // What the gateways read: the current metadata, signed.
    const current = (await store.get('team-s'))!;
    expect(verifySignature(verifyKeys, current.meta, sha256Hex(current.dataText)).ok).toBe(true);
    // The parts of the input the policy is shown are signed with it: other refs do not verify.
    expect(current.meta.inputRefs).toEqual([['user', 'role']]);
    const otherRefs: PolicyMetadata = { ...current.meta, inputRefs: [['user']] };
    expect(verifySignature(verifyKeys, otherRefs, sha256Hex(current.dataText))).toMatchObject({ ok: false, problem: 'bad signature' });
    const noRefs: PolicyMetadata = { ...current.meta, inputRefs: undefined };
    expect(verifySignature(verifyKeys, noRefs, sha256Hex(current.dataText))).toMatchObject({ ok: false, problem: 'bad signature' });
    // Over the data the gateway holds: other data does not verify.
    expect(verifySignature(verifyKeys, current.meta, sha256Hex('{}'))).toMatchObject({ ok: false, problem: 'bad signature' });
    const unsigned: PolicyMetadata = { ...current.meta, signature: undefined };
    expect(verifySignature(verifyKeys, unsigned, sha256Hex(current.dataText))).toMatchObject({ ok: false, problem: 'unsigned' });
    await cms.stop();
  });

  it('without a key: unsigned versions, and a warning at start', async () => {
    const cms = await harness.startCms();
    expect(cms.logLines.some((line) => line.includes('UNSIGNED'))).toBe(true);
    expect((await cms.request('PUT', '/policies/team-u', { token: harness.tokens.admin, body: policyBody(V1_POLICY, { valid_roles: [] }) })).status).toBe(201);
    expect((await new PolicyStore(harness.etcdClient).get('team-u'))!.meta.signature).toBeUndefined();
    await cms.stop();
  });

  it('configuration: the key file needs its kid; a key that is not Ed25519 stops the start', async () => {
    const base = { ...harness.keys.env };
    expect(cmsConfigFromEnv(base).policySigning).toBeNull();
    expect(cmsConfigFromEnv({ ...base, POLICY_SIGNING_KEY_FILE: keyFile, POLICY_SIGNING_KEY_ID: 'cms-1' }).policySigning).toEqual({
      kind: 'file',
      keyFile,
      kid: 'cms-1',
    });
    expect(() => cmsConfigFromEnv({ ...base, POLICY_SIGNING_KEY_FILE: keyFile })).toThrow(/POLICY_SIGNING_KEY_ID/);
    const notAKey = join(mkdtempSync(join(tmpdir(), 'gh-cms-signing-')), 'x.pem');
    writeFileSync(notAKey, 'not a key');
    await expect(harness.startCms({ policySigning: { kind: 'file', keyFile: notAKey, kid: 'x' } })).rejects.toThrow(/cannot be read as a PEM private key/);
  });
});
