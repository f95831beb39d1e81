// The CMS's write path on its own, without HTTP: PolicyWriter against a real
// etcd, the real opa compiler and the load check's evaluation pool. A write
// that passes every check is stored, counted and audited; a Rego that does
// not compile, failing tests, a policy the gateways' engine refuses, or a
// stale If-Match write nothing (the etcd revision does not move), and a
// stale If-Match is refused before opa runs. The module is stored metered.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../etcd/index.js';
import { DEFAULT_POLICY_MEMORY_MAX_BYTES, isMeteredModule } from '../../policy/engine/index.js';
import { EvaluationPool } from '../../policy/engine/pool.js';
import { PolicyStore, PreconditionFailedError } from '../../policy/store/index.js';
import { createCmsMetrics, type CmsMetrics } from '../../cms/metrics.js';
import type { PolicyBody } from '../../cms/policy-body.js';
import { PolicyDoesNotLoadError, PolicyWriter, type PolicyAuthor } from '../../cms/policy-writer.js';
import { PolicyTestsFailedError, RegoCompileError, RegoCompiler } from '../../cms/rego-compiler.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { OPA_PATH } from './harness.js';

const REGO = 'package team.authz\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles\n';
const DATA = '{"valid_roles":["admin"]}';
const PASSING_TESTS = {
  'authz_test.rego': 'package team.authz_test\n\nimport data.team.authz\n\ntest_admin if authz.allow with input as {"user": {"role": "admin"}}\n',
};
const FAILING_TESTS = {
  'authz_test.rego': 'package team.authz_test\n\nimport data.team.authz\n\ntest_viewer if authz.allow with input as {"user": {"role": "viewer"}}\n',
};

let etcd: TestEtcd;
let client: Etcd3;
let checks: EvaluationPool;
let metrics: CmsMetrics;
let writer: PolicyWriter;
const audits: Array<{ object: object; message: string }> = [];
const author: PolicyAuthor = { sub: 'ada', log: { info: (object, message) => audits.push({ object, message }) } };

const policy = (rego: string, tests: Record<string, string> | null = null, dataText = DATA): PolicyBody => ({ rego, dataText, tests });

/** Every key under /policies/ and the store's revision: equal before and after means nothing was written. */
async function snapshot(): Promise<{ revision: string; keys: Record<string, string> }> {
  const revision = (await client.get('/policies/').exec()).header.revision;
  return { revision, keys: await client.getAll().prefix('/policies/').strings() };
}

async function counted(metric: 'policyWrites' | 'compileDuration', labels: Record<string, string>): Promise<number> {
  const { values } = await metrics[metric].get();
  const name = metric === 'compileDuration' ? 'gatehouse_cms_rego_compile_duration_seconds_count' : undefined;
  return values
    .filter((v) => name === undefined || (v as { metricName?: string }).metricName === name)
    .filter((v) => Object.entries(labels).every(([key, label]) => (v.labels as Record<string, unknown>)[key] === label))
    .reduce((sum, v) => sum + v.value, 0);
}

async function refusal(write: Promise<unknown>): Promise<unknown> {
  return write.then(
    () => {
      throw new Error('the write went through');
    },
    (error: unknown) => error,
  );
}

beforeAll(async () => {
  etcd = await startEtcd();
  client = createEtcdClient(etcd.endpoints);
  checks = new EvaluationPool({ workers: 2, memoryMaxBytes: DEFAULT_POLICY_MEMORY_MAX_BYTES, cacheBytes: 2 * DEFAULT_POLICY_MEMORY_MAX_BYTES });
  metrics = createCmsMetrics();
  writer = new PolicyWriter({ compiler: new RegoCompiler({ opaPath: OPA_PATH }), checks, store: new PolicyStore(client), etcd: client, metrics });
}, 60_000);

afterAll(async () => {
  await checks?.close();
  client?.close();
  await etcd?.cleanup();
});

describe('PolicyWriter', () => {
  it('writes a policy that compiles, passes its tests and loads: stored, counted, audited', async () => {
    const written = await writer.write('team-a', policy(REGO, PASSING_TESTS), {}, author);
    expect(written).toMatchObject({ created: true, meta: { name: 'team-a', version: 1, author: 'ada', entrypoint: 'team/authz', syntaxVersion: 'v1' } });
    expect(written.compileMs).toBeGreaterThan(0);
    const stored = await new PolicyStore(client).get('team-a', { withWasm: true });
    expect(stored).toMatchObject({ rego: REGO, dataText: DATA, testsText: JSON.stringify(PASSING_TESTS) });
    expect(stored?.wasm?.subarray(0, 4)).toEqual(Buffer.from([0, 0x61, 0x73, 0x6d]));
    // Stored as gateways run it: metered for fuel, so that no gateway meters it again.
    expect(isMeteredModule(await WebAssembly.compile(new Uint8Array(stored!.wasm!)))).toBe(true);
    expect(audits.at(-1)).toEqual({
      object: { audit: expect.objectContaining({ operation: 'create', policy: 'team-a', version: 1, by: 'ada', syntaxVersion: 'v1', testsPassed: 1 }) },
      message: 'audit: create team-a v1',
    });
    expect(await counted('policyWrites', { operation: 'put', outcome: 'created' })).toBe(1);

    // The next version under a matching If-Match replaces it.
    const replaced = await writer.write('team-a', policy(REGO), { ifVersion: [1] }, author);
    expect(replaced).toMatchObject({ created: false, meta: { version: 2 } });
    expect(audits.at(-1)?.message).toBe('audit: replace team-a v2');
  });

  it('a Rego that does not compile: RegoCompileError, nothing written, nothing audited', async () => {
    const before = await snapshot();
    const auditCount = audits.length;
    const error = await refusal(writer.write('team-a', policy('package team.authz\n\nallow if {\n'), {}, author));
    expect(error).toBeInstanceOf(RegoCompileError);
    expect(await snapshot()).toEqual(before);
    expect(audits).toHaveLength(auditCount);
    expect(await counted('policyWrites', { operation: 'put', outcome: 'compile_error' })).toBe(1);
  });

  it('failing tests (the test gate): PolicyTestsFailedError naming the test, nothing written', async () => {
    const before = await snapshot();
    const error = await refusal(writer.write('team-a', policy(REGO, FAILING_TESTS), {}, author));
    expect(error).toBeInstanceOf(PolicyTestsFailedError);
    expect((error as PolicyTestsFailedError).failures.map((f) => f.name)).toEqual(['test_viewer']);
    expect(await snapshot()).toEqual(before);
    expect(await counted('policyWrites', { operation: 'put', outcome: 'tests_failed' })).toBe(1);
  });

  it("a policy the gateways' engine refuses to load: PolicyDoesNotLoadError, nothing written", async () => {
    const before = await snapshot();
    // A lone surrogate: Go's JSON parser (opa build) takes it, the wasm engine's does not.
    const error = await refusal(writer.write('team-a', policy(REGO, null, '{"tag":"\\ud800"}'), {}, author));
    expect(error).toBeInstanceOf(PolicyDoesNotLoadError);
    expect(await snapshot()).toEqual(before);
  });

  it('a stale If-Match: PreconditionFailedError before opa runs, nothing written', async () => {
    const before = await snapshot();
    const compiles = await counted('compileDuration', {});
    const error = await refusal(writer.write('team-a', policy(REGO), { ifVersion: [1] }, author));
    expect(error).toBeInstanceOf(PreconditionFailedError);
    expect(await snapshot()).toEqual(before);
    expect(await counted('compileDuration', {})).toBe(compiles);
    // If-None-Match: * on a policy that exists, the same.
    expect(await refusal(writer.write('team-a', policy(REGO), { ifAbsent: true }, author))).toBeInstanceOf(PreconditionFailedError);
    expect(await snapshot()).toEqual(before);
  });

  it('check runs every check and writes nothing', async () => {
    const before = await snapshot();
    const compiled = await writer.check('team-b', policy(REGO, PASSING_TESTS));
    expect(compiled).toMatchObject({ entrypoint: 'team/authz', tests: { passed: 1 } });
    expect(await snapshot()).toEqual(before);
    expect(await refusal(writer.check('team-b', policy(REGO, FAILING_TESTS)))).toBeInstanceOf(PolicyTestsFailedError);
  });

  it('a rollback writes a version from the history as the next one, audited as a rollback; delete is audited too', async () => {
    const rolledBack = await writer.rollback('team-a', 1, { ifVersion: [2] }, author);
    expect(rolledBack).toMatchObject({ created: false, meta: { version: 3 } });
    expect((await new PolicyStore(client).get('team-a'))?.testsText).toBe(JSON.stringify(PASSING_TESTS));
    expect(audits.at(-1)?.object).toEqual({ audit: expect.objectContaining({ operation: 'rollback', version: 3, from: 1, testsPassed: 1 }) });
    expect(await writer.rollback('team-a', 99, {}, author)).toBeNull();

    const deleted = await writer.delete('team-a', { ifVersion: [3] }, author);
    expect(deleted.meta.version).toBe(3);
    expect(audits.at(-1)?.message).toBe('audit: delete team-a v3');
    expect(await new PolicyStore(client).get('team-a')).toBeNull();
    // No gateway reports to this etcd: the wait ends at once, enforced by none of none.
    expect(await writer.waitForGateways(deleted.revision ?? 0, 1)).toMatchObject({ enforcedBy: 0, gateways: [] });
  });
});
