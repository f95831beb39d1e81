// POST /policies/{name}/rollback: an old version written again as the next
// one, exactly (Rego and data), history linear, If-Match honoured, audited as
// a rollback, and enforced by a gateway like any other write.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { StopAction } from '../../plugins/protocol/index.js';
import { ApisixClient, request } from '../support/apisix-client.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;
let runner: RunnerProcess;

// v1 allows, v2 denies: a rollback to v1 must allow again.
const V1 = '{"rego":"package project.authz\\nimport rego.v1\\n\\ndefault allow := false\\n\\nallow if data.open\\n","data":{"open":true,"exact":1.50}}';
const V2 = '{"rego":"package project.authz\\nimport rego.v1\\n\\ndefault allow := false\\n","data":{"open":false}}';

const rollback = (version: unknown, headers: Record<string, string> = {}, token = harness.tokens.admin) =>
  cms.request('POST', '/policies/team-a/rollback', { token, headers, body: JSON.stringify({ version }) });

async function decision(): Promise<number | 'pass'> {
  const client = await ApisixClient.open(runner.socketPath);
  try {
    const token = await client.prepare([{ name: 'opa', value: '{"policies":["project:team-a"]}' }]);
    const answer = await client.call(request({ confToken: token }));
    return answer.action?.type === 'stop' ? (answer.action as StopAction).status : 'pass';
  } finally {
    client.close();
  }
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  runner = await startRunner({ env: { ETCD_ENDPOINTS: harness.etcd.endpoints.join(','), RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-rollback-')) } });
  expect((await cms.request('PUT', '/policies/team-a', { token: harness.tokens.admin, body: V1 })).status).toBe(201);
  expect((await cms.request('PUT', '/policies/team-a', { token: harness.tokens.admin, headers: { prefer: 'wait=10' }, body: V2 })).status).toBe(200);
}, 60_000);

afterAll(async () => {
  await runner?.stop();
  await harness?.close();
});

describe('rollback', () => {
  it('writes version 1 again as version 3: the same Rego and data, to the byte; the gateway enforces it', async () => {
    expect(await decision()).toBe(403);
    const res = await rollback(1, { prefer: 'wait=10' });
    expect(res.status).toBe(200);
    expect(res.headers.etag).toBe('"3"');
    expect(res.headers['gatehouse-enforced-by']).toBe('1/1');
    const current = await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin });
    expect(current.text).toBe(V1);
    expect(await decision()).toBe('pass');
    // History stays linear: 3 (the rollback), 2, 1.
    const history = (await cms.request('GET', '/policies/team-a/history', { token: harness.tokens.admin })).json() as { versions: { version: number }[] };
    expect(history.versions.map((v) => v.version)).toEqual([3, 2, 1]);
    expect(cms.logLines.some((line) => /"operation":"rollback".*"from":1/.test(line))).toBe(true);
  });

  it('honours If-Match, and writes nothing when it does not hold', async () => {
    expect((await rollback(2, { 'if-match': '"2"' })).status).toBe(412);
    const res = await rollback(2, { 'if-match': '"3"' });
    expect(res.status).toBe(200);
    expect(res.headers.etag).toBe('"4"');
    expect((await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin })).text).toBe(V2);
  });

  it('refuses what it cannot do: a version not in the history (404), a bad body (400), a project user (403)', async () => {
    expect((await rollback(99)).status).toBe(404);
    for (const bad of [0, -1, 1.5, '1', null]) expect((await rollback(bad)).status, String(bad)).toBe(400);
    const extra = await cms.request('POST', '/policies/team-a/rollback', { token: harness.tokens.admin, body: '{"version":1,"force":true}' });
    expect(extra.status).toBe(400);
    expect(extra.headers['content-type']).toMatch(/application\/problem\+json/);
    expect((await rollback(1, {}, harness.tokens.teamA)).status).toBe(403);
    expect((await cms.request('GET', '/policies/team-a/rollback', { token: harness.tokens.admin })).status).toBe(405);
    const current = await cms.request('GET', '/policies/team-a', { token: harness.tokens.admin });
    expect(current.headers.etag).toBe('"4"');
  });
});
