// Signed policies on the read side: a gateway with verify keys loads only
// versions signed by a listed key (policy/signing). A version written into
// etcd past the CMS is denied and reported; keys rotate without a restart;
// the snapshot is checked again when it is loaded from disk.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { chainStatus } from '../support/apisix-client.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { newSigningKey } from '../../dev/signing-keys.js';
import { createEtcdClient } from '../../etcd/index.js';
import { policySubmission } from '../../cms/rego-compiler.js';
import { PolicyStore, sha256Hex } from '../../policy/store/index.js';
import { FileSignatureVerifier, pemFileSigner } from '../../policy/signing/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';

const ALLOW_ALL = `package project.authz
import rego.v1
default allow := true
`;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;
let keys: TestKeys;
let dir: string;
const runners: RunnerProcess[] = [];
const signingKeys: Record<'k1' | 'k2' | 'stranger', { file: string; jwk: Record<string, string> }> = {} as never;
let jwksFile: string;

function listKeys(...kids: ('k1' | 'k2' | 'stranger')[]): void {
  writeFileSync(jwksFile, JSON.stringify({ keys: kids.map((kid) => signingKeys[kid].jwk) }));
}

/** Writes `rego` as the next version of `name`, signed by `kid`'s key (as the CMS signs), or unsigned (past the CMS). */
async function write(name: string, kid: 'k1' | 'k2' | 'stranger' | null, rego = ALLOW_ALL, data: unknown = {}): Promise<number> {
  if (kid === null) return writer.put(name, rego, data);
  const compiled = await writer.compiler.compile(rego, JSON.stringify(data));
  // The stranger's key claims a listed kid: a forged signature.
  const store = new PolicyStore(admin, { signer: pemFileSigner(signingKeys[kid].file, kid === 'stranger' ? 'k1' : kid) });
  return (await store.put(name, policySubmission(rego, JSON.stringify(data), compiled, 'test'))).meta.version;
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
  keys = await createTestKeys();
  dir = mkdtempSync(join(tmpdir(), 'gh-signed-'));
  for (const kid of ['k1', 'k2', 'stranger'] as const) {
    const key = newSigningKey(kid);
    const file = join(dir, `${kid}.pem`);
    writeFileSync(file, key.privatePem, { mode: 0o600 });
    signingKeys[kid] = { file, jwk: key.jwk };
  }
  jwksFile = join(dir, 'verify-keys.json');
  listKeys('k1');
});

afterAll(async () => {
  await Promise.all(runners.map((r) => r.stop()));
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

async function launch(): Promise<{ runner: RunnerProcess; metricsUrl: string }> {
  const port = await freePort();
  const runner = await startRunner({
    env: {
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      ...keys.env,
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-signed-runner-')),
      RUNNER_METRICS_PORT: String(port),
      POLICY_VERIFY_KEYS_FILE: jwksFile,
    },
  });
  runners.push(runner);
  return { runner, metricsUrl: `http://127.0.0.1:${port}` };
}

/** A request of a user of `project` through the runner: its stop status, or 'pass'. */
async function decide(runner: RunnerProcess, project: string): Promise<number | 'pass'> {
  const conf = [
    { name: 'jwt', value: '{}' },
    { name: 'opa', value: JSON.stringify({ policies: ['caller-project'] }) },
  ];
  return chainStatus(runner.socketPath, conf, { bearer: await keys.token({ sub: 'ada', role: 'viewer', project }) });
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

type Readyz = { policies: { unloadable: { name: string; signature?: string }[]; signatures: { checked: boolean; kids: string[] } } };

describe('a gateway with verify keys', () => {
  it('denies versions written past the CMS, unsigned or forged; keys rotate without a restart', async () => {
    await write('team-a', 'k1');
    await write('team-b', 'k1');
    const { runner, metricsUrl } = await launch();
    const readyz = async () => (await (await fetch(`${metricsUrl}/readyz`)).json()) as Readyz;
    await until(async () => (await decide(runner, 'team-a')) === 'pass' && (await decide(runner, 'team-b')) === 'pass', 'the signed policies enforced');
    expect((await readyz()).policies.signatures).toEqual({ checked: true, kids: ['k1'] });

    // Past the CMS: unsigned, then signed by a key that is not the listed k1 (claiming its kid).
    await write('team-c', 'k1');
    await until(async () => (await decide(runner, 'team-c')) === 'pass', 'team-c enforced');
    await write('team-c', null);
    await until(async () => (await decide(runner, 'team-c')) === 500, 'the unsigned version denied');
    expect((await readyz()).policies.unloadable).toEqual([{ name: 'team-c', reason: expect.stringMatching(/^unsigned/), signature: 'unsigned' }]);
    expect(await (await fetch(`${metricsUrl}/metrics`)).text()).toMatch(/^gatehouse_policies_refused_signature\{problem="unsigned"\} 1$/m);
    await write('team-d', 'stranger');
    await until(async () => (await decide(runner, 'team-d')) === 500, 'the forged version denied');
    expect((await readyz()).policies.unloadable).toContainEqual({
      name: 'team-d',
      reason: expect.stringMatching(/^bad signature/),
      signature: 'bad signature',
    });
    // Data altered in etcd under a valid signature: the signature no longer matches.
    await write('team-e', 'k1');
    await until(async () => (await decide(runner, 'team-e')) === 'pass', 'team-e enforced');
    await admin.put('/policies/team-e/data').value('{"altered":true}');
    await admin.put('/policies/team-e/meta').value((await admin.get('/policies/team-e/meta').string())!);
    await until(async () => (await decide(runner, 'team-e')) === 500, 'the altered version denied');
    // The parts of the input the policy is shown, altered under a valid signature: denied too.
    await write('team-f', 'k1');
    await until(async () => (await decide(runner, 'team-f')) === 'pass', 'team-f enforced');
    const meta = JSON.parse((await admin.get('/policies/team-f/meta').string())!) as { inputRefs?: string[][] };
    expect(meta.inputRefs).toEqual([]); // allow-all reads nothing
    await admin.put('/policies/team-f/meta').value(JSON.stringify({ ...meta, inputRefs: [['user']] }));
    await until(async () => (await decide(runner, 'team-f')) === 500, 'the version with other input refs denied');

    // Rotation: k2 added beside k1, team-b re-signed by k2; everything signed stays loaded.
    listKeys('k1', 'k2');
    await until(async () => (await readyz()).policies.signatures.kids.length === 2, 'the new key read');
    await write('team-b', 'k2');
    await until(async () => (await decide(runner, 'team-b')) === 'pass' && (await decide(runner, 'team-a')) === 'pass', 'both keys verifying');

    // k1 removed: only its versions become unloadable, without a restart.
    listKeys('k2');
    await until(async () => (await decide(runner, 'team-a')) === 500, "k1's versions denied");
    expect(await decide(runner, 'team-b')).toBe('pass');
    const unloadable = (await readyz()).policies.unloadable;
    expect(unloadable.find((u) => u.name === 'team-a')).toMatchObject({ signature: 'bad signature', reason: expect.stringContaining('"k1"') });
    expect(unloadable.map((u) => u.name)).not.toContain('team-b');

    // k1 listed again: its versions load again.
    listKeys('k1', 'k2');
    await until(async () => (await decide(runner, 'team-a')) === 'pass', "k1's versions enforced again");
  });
});

describe('the snapshot', () => {
  it('is checked again when loaded from disk: a tampered or unsigned entry is refused', async () => {
    await write('snap-signed', 'k1', ALLOW_ALL, { n: 1 });
    await write('snap-tampered', 'k1', ALLOW_ALL, { n: 2 });
    await write('snap-unsigned', null, ALLOW_ALL, { n: 3 });
    listKeys('k1');
    const snapshotDir = mkdtempSync(join(tmpdir(), 'gh-signed-snapshot-'));
    // Written by a gateway that checks nothing: every entry as it is in etcd.
    const client = createEtcdClient(etcd.endpoints);
    const first = new PolicyWatcher({ client, log: pino({ level: 'silent' }), snapshotDir });
    const written = new Promise((resolve) => first.once('snapshot', resolve));
    await first.start();
    await written;
    await first.stop();
    client.close();
    // The entry's signature is kept on disk.
    const file = (name: string) => join(snapshotDir, 'policies', `${name}.json`);
    expect(JSON.parse(readFileSync(file('snap-signed'), 'utf8').split('\n')[0]!).meta.signature).toMatchObject({ alg: 'EdDSA', kid: 'k1' });

    // Tampered: other data, and the file's own checksum made to match (it is no MAC).
    const [body] = readFileSync(file('snap-tampered'), 'utf8').split('\n');
    const entry = JSON.parse(body!) as { dataSha256: string };
    const data = '{"n":2,"admin":true}';
    writeFileSync(join(snapshotDir, 'data', `${sha256Hex(data)}.json`), data);
    const tampered = JSON.stringify({ ...entry, dataSha256: sha256Hex(data) });
    writeFileSync(file('snap-tampered'), `${tampered}\n${sha256Hex(tampered)}\n`);
    expect(readdirSync(join(snapshotDir, 'data')).length).toBeGreaterThan(1);

    // Started while etcd cannot be reached: the snapshot is enforced, each entry checked.
    const away = createEtcdClient([`http://127.0.0.1:${await freePort()}`]);
    const verifier = new FileSignatureVerifier(jwksFile);
    const second = new PolicyWatcher({ client: away, log: pino({ level: 'silent' }), snapshotDir, verifier, retryMs: 60_000 });
    try {
      await second.start();
      expect(second.current.source).toBe('snapshot');
      expect(second.current.get('snap-signed')?.broken).toBeUndefined();
      expect(second.current.get('snap-tampered')).toMatchObject({ signature: 'bad signature' });
      expect(second.current.get('snap-unsigned')).toMatchObject({ signature: 'unsigned' });
      await expect(second.current.get('snap-tampered')!.evaluate('t', {})).rejects.toThrow(/cannot be loaded: bad signature/);
    } finally {
      await second.stop();
      verifier.close();
      away.close();
    }
  });
});
