/**
 * Outages and restarts: etcd stopped mid-test gives 503 and leaves no
 * partial state; a CMS restart loses nothing (ETags included).
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePolicyKey, renderPolicyObject, type PolicyMetadata } from '../../policy/store/index.js';
import { policyBody, SEED_EXAMPLE_BODY, startHarness, V1_POLICY, type Cms, type Harness, type EtcdSnapshot } from './harness.js';

let harness: Harness;
let cms: Cms;

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
});
afterAll(async () => {
  await harness?.close();
});

const admin = () => ({ token: harness.tokens.admin });

describe('etcd unreachable', () => {
  let before: EtcdSnapshot;

  it('answers 503 problem+json for reads, writes, deletes and /readyz, without hanging', async () => {
    expect((await cms.request('PUT', '/policies/steady', { ...admin(), body: policyBody(V1_POLICY, { n: 1 }) })).status).toBe(201);
    before = await harness.snapshot();
    await harness.etcd.stop();

    const started = Date.now();
    const attempts = [
      cms.request('PUT', '/policies/steady', { ...admin(), body: policyBody(V1_POLICY, { n: 2 }) }),
      cms.request('PUT', '/policies/brand-new', { ...admin(), body: SEED_EXAMPLE_BODY }),
      cms.request('GET', '/policies/steady', admin()),
      cms.request('GET', '/policies', admin()),
      cms.request('DELETE', '/policies/steady', admin()),
      cms.request('GET', '/policies/steady/history', admin()),
      cms.request('GET', '/readyz'),
    ];
    for (const response of await Promise.all(attempts)) {
      expect(response.status).toBe(503);
      expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
    }
    // The etcd call timeout is 1 s; nothing should wait for the 30 s dial default.
    expect(Date.now() - started).toBeLessThan(15_000);
    // Identity and permission are still answered without etcd.
    expect((await cms.request('GET', '/policies/steady')).status).toBe(401);
    expect((await cms.request('GET', '/healthz')).status).toBe(200);
  });

  it('after etcd is back, the store holds exactly what it held before the outage', async () => {
    await harness.etcd.restart();
    expect(await harness.snapshot()).toEqual(before);
    const get = await cms.request('GET', '/policies/steady', admin());
    expect(get.status).toBe(200);
    expect(get.headers.etag).toBe('"1"');
    expect(get.json()).toEqual({ rego: V1_POLICY, data: { n: 1 } });
    expect((await cms.request('GET', '/policies/brand-new', admin())).status).toBe(404);
    expect((await cms.request('GET', '/readyz')).status).toBe(200);
    expect((await cms.request('PUT', '/policies/steady', { ...admin(), headers: { 'if-match': '"1"' }, body: policyBody(V1_POLICY, { n: 2 }) })).status).toBe(
      200,
    );
  });
});

/** Every current policy in the snapshot is whole: its parts exist and match its metadata. */
function expectWholePolicies(snapshot: EtcdSnapshot): number {
  const text = (key: string) => Buffer.from(snapshot.keys[key] ?? '', 'hex');
  let count = 0;
  for (const key of Object.keys(snapshot.keys)) {
    const parsed = parsePolicyKey(key);
    if (parsed?.kind !== 'current' || parsed.part !== 'meta') continue;
    count++;
    const prefix = `/policies/${parsed.name}/`;
    const meta = JSON.parse(text(key).toString()) as PolicyMetadata;
    for (const part of ['source', 'data', 'wasm']) expect(snapshot.keys[prefix + part], `${prefix}${part}`).toBeDefined();
    const body = renderPolicyObject(text(`${prefix}source`).toString(), text(`${prefix}data`).toString());
    expect(createHash('sha256').update(body).digest('hex')).toBe(meta.sha256);
    expect(
      createHash('sha256')
        .update(text(`${prefix}wasm`))
        .digest('hex'),
    ).toBe(meta.wasmSha256);
    const versionKey = `${prefix}history/meta/${String(meta.version).padStart(12, '0')}`;
    expect(text(versionKey).toString()).toBe(text(key).toString());
  }
  return count;
}

describe('etcd stopped while writes are in flight', () => {
  it('each write either completes whole or answers 503, and nothing is half-written', async () => {
    const writes = Array.from({ length: 8 }, (_, n) =>
      cms.request('PUT', `/policies/${n % 2 ? 'steady' : `inflight-${n}`}`, { ...admin(), body: policyBody(V1_POLICY, { n }) }),
    );
    // Compiles take tens of milliseconds: stop etcd while they run.
    await new Promise((resolve) => setTimeout(resolve, 60));
    await harness.etcd.stop();
    const statuses = (await Promise.all(writes)).map((response) => response.status);
    for (const status of statuses) expect([200, 201, 503]).toContain(status);
    await harness.etcd.restart();
    const snapshot = await harness.snapshot();
    expect(expectWholePolicies(snapshot)).toBeGreaterThanOrEqual(1);
    // A write that was answered with success is there.
    const created = statuses.flatMap((status, n) => (status === 201 ? [`inflight-${n}`] : []));
    for (const name of created) expect(snapshot.keys[`/policies/${name}/meta`]).toBeDefined();
  });
});

describe('CMS restart', () => {
  it('loses nothing: bodies, ETags, history and If-Match all survive', async () => {
    const put = await cms.request('PUT', '/policies/durable', { ...admin(), body: SEED_EXAMPLE_BODY });
    expect(put.status).toBe(201);
    const beforeGet = await cms.request('GET', '/policies/durable', admin());
    const beforeSnapshot = await harness.snapshot();
    await cms.stop();

    cms = await harness.startCms();
    expect(await harness.snapshot()).toEqual(beforeSnapshot);
    const afterGet = await cms.request('GET', '/policies/durable', admin());
    expect(afterGet.status).toBe(200);
    expect(afterGet.text).toBe(beforeGet.text);
    expect(afterGet.headers.etag).toBe(beforeGet.headers.etag);
    expect(afterGet.headers['last-modified']).toBe(beforeGet.headers['last-modified']);
    const list = await cms.request('GET', '/policies', admin());
    expect(list.json().policies.map((p: { name: string }) => p.name)).toEqual(expect.arrayContaining(['durable', 'steady']));
    const replace = await cms.request('PUT', '/policies/durable', {
      ...admin(),
      headers: { 'if-match': String(beforeGet.headers.etag) },
      body: SEED_EXAMPLE_BODY,
    });
    expect(replace.status).toBe(200);
    expect(replace.headers.etag).toBe('"2"');
  });
});
