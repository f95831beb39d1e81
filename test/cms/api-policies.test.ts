import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPolicyEngine } from '../../policy/engine/index.js';
import { policyKeys } from '../../policy/store/index.js';
import { openApiDocument } from '../../cms/routes/openapi.js';
import { policyBody, SEED_EXAMPLE_BODY, startHarness, V1_POLICY, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms({ bodyLimitBytes: 16 * 1024 });
});
afterAll(async () => {
  await harness?.close();
});

const admin = () => ({ token: harness.tokens.admin });

function expectProblem(response: { status: number; headers: Record<string, unknown>; json(): any }, status: number) {
  expect(response.status).toBe(status);
  expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
  const problem = response.json();
  expect(problem).toMatchObject({ status, type: expect.any(String), title: expect.any(String) });
  return problem;
}

describe('PUT and GET of the seed example policy', () => {
  it('answers 201 Created, then 200 OK, for the verbatim seed example', async () => {
    const first = await cms.request('PUT', '/policies/seed-example', { ...admin(), body: SEED_EXAMPLE_BODY });
    expect(first.status).toBe(201);
    expect(first.headers.etag).toBe('"1"');
    expect(first.headers.location).toBe('/policies/seed-example');
    expect(first.json()).toMatchObject({ name: 'seed-example', version: 1, syntaxVersion: 'v0', entrypoint: 'project/authz', author: 'ada' });

    const second = await cms.request('PUT', '/policies/seed-example', { ...admin(), body: SEED_EXAMPLE_BODY });
    expect(second.status).toBe(200);
    expect(second.headers.etag).toBe('"2"');
  });

  it('GET returns the policy object as PUT took it, with ETag and Last-Modified', async () => {
    const response = await cms.request('GET', '/policies/seed-example', admin());
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(response.headers.etag).toBe('"2"');
    expect(new Date(String(response.headers['last-modified'])).getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(response.json()).toEqual(JSON.parse(SEED_EXAMPLE_BODY));
  });

  it('stores a wasm that decides like the Rego: allow only for role admin', async () => {
    const stored = await harness.etcdClient.get(policyKeys('seed-example').wasm).buffer();
    expect(stored).not.toBeNull();
    const engine = await loadPolicyEngine(stored!, { data: { valid_roles: ['admin', 'viewer'] } });
    expect(engine.evaluate({ user: { role: 'admin' } }, 'project/authz')).toEqual({ allow: true });
    expect(engine.evaluate({ user: { role: 'viewer' } }, 'project/authz')).toEqual({ allow: false });
  });

  it('answers 304 to a GET whose If-None-Match is the current ETag', async () => {
    const response = await cms.request('GET', '/policies/seed-example', { ...admin(), headers: { 'if-none-match': '"2"' } });
    expect(response.status).toBe(304);
  });

  it('accepts Rego v1 and records the syntax version', async () => {
    const response = await cms.request('PUT', '/policies/v1-team', { ...admin(), body: policyBody(V1_POLICY, { valid_roles: ['x'] }) });
    expect(response.status).toBe(201);
    expect(response.json()).toMatchObject({ syntaxVersion: 'v1', entrypoint: 'team/authz' });
  });
});

describe('numbers in data', () => {
  it('keep their exact value through PUT and GET', async () => {
    const body =
      '{"rego":"package exact\\n\\nbig := data.big\\n","data":{"big":12345678901234567890123,"small":-9007199254740993,"fraction":0.10000000000000000000001,"list":[18446744073709551616]}}';
    const put = await cms.request('PUT', '/policies/exact-numbers', { ...admin(), body });
    expect(put.status).toBe(201);
    const get = await cms.request('GET', '/policies/exact-numbers', admin());
    expect(get.text).toContain('"big":12345678901234567890123');
    expect(get.text).toContain('"small":-9007199254740993');
    expect(get.text).toContain('"fraction":0.10000000000000000000001');
    expect(get.text).toContain('[18446744073709551616]');
    const stored = await harness.etcdClient.get(policyKeys('exact-numbers').data).string();
    expect(stored).toBe('{"big":12345678901234567890123,"small":-9007199254740993,"fraction":0.10000000000000000000001,"list":[18446744073709551616]}');
  });
});

describe('validation failures leave etcd byte-for-byte unchanged', () => {
  const longName = 'a'.repeat(64);
  const cases: Array<{
    what: string;
    method?: string;
    path: string;
    body?: string;
    headers?: Record<string, string>;
    json?: boolean;
    status: number;
    type?: string;
  }> = [
    { what: 'uppercase name', path: '/policies/Team-A', body: SEED_EXAMPLE_BODY, status: 400, type: 'urn:gatehouse:problem:invalid-policy-name' },
    { what: 'name too long', path: `/policies/${longName}`, body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'leading hyphen', path: '/policies/-team', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'trailing hyphen', path: '/policies/team-', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'underscore', path: '/policies/team_a', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'encoded slash', path: '/policies/team%2Fa', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'dot segment', path: '/policies/..', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'encoded dot segment', path: '/policies/%2e%2e', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'dot segments inside the path', path: '/policies/team-a/../platform', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'empty name', path: '/policies/', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'extra path segment', path: '/policies/team-a/extra', body: SEED_EXAMPLE_BODY, status: 400 },
    { what: 'text/plain body', path: '/policies/valid-name', body: SEED_EXAMPLE_BODY, headers: { 'content-type': 'text/plain' }, status: 415 },
    { what: 'no content type', path: '/policies/valid-name', body: SEED_EXAMPLE_BODY, json: false, status: 415 },
    { what: 'no body', path: '/policies/valid-name', status: 415 },
    { what: 'malformed JSON', path: '/policies/valid-name', body: '{"rego": "package x",', status: 400 },
    { what: 'empty JSON body', path: '/policies/valid-name', body: '', status: 400 },
    { what: 'body too large', path: '/policies/valid-name', body: policyBody('package big\n', { pad: 'x'.repeat(20_000) }), status: 413 },
    { what: 'array body', path: '/policies/valid-name', body: '[]', status: 400 },
    { what: 'missing rego', path: '/policies/valid-name', body: '{"data":{}}', status: 400 },
    { what: 'empty rego', path: '/policies/valid-name', body: '{"rego":"  ","data":{}}', status: 400 },
    { what: 'rego not a string', path: '/policies/valid-name', body: '{"rego":42,"data":{}}', status: 400 },
    { what: 'missing data', path: '/policies/valid-name', body: '{"rego":"package x\\n"}', status: 400 },
    { what: 'data an array', path: '/policies/valid-name', body: '{"rego":"package x\\n","data":[]}', status: 400 },
    { what: 'data null', path: '/policies/valid-name', body: '{"rego":"package x\\n","data":null}', status: 400 },
    { what: 'data a string', path: '/policies/valid-name', body: '{"rego":"package x\\n","data":"{}"}', status: 400 },
    { what: 'unknown member', path: '/policies/valid-name', body: '{"rego":"package x\\n","data":{},"extra":1}', status: 400 },
    { what: 'duplicate key', path: '/policies/valid-name', body: '{"rego":"package x\\n","data":{},"data":{}}', status: 400 },
    {
      what: 'Rego syntax error',
      path: '/policies/valid-name',
      body: policyBody('package bad\n\nallow if {\n  x := 1\n  x == "a" +\n}\n'),
      status: 400,
      type: 'urn:gatehouse:problem:rego-compile-error',
    },
    {
      what: 'builtin the wasm SDK cannot run',
      path: '/policies/valid-name',
      body: policyBody('package net\n\nallow if http.send({"method": "get", "url": "http://example.test"}).status_code == 200\n'),
      status: 400,
      type: 'urn:gatehouse:problem:rego-compile-error',
    },
    { what: 'no package', path: '/policies/valid-name', body: policyBody('allow := true\n'), status: 400 },
    { what: 'If-Match on a policy that does not exist', path: '/policies/valid-name', body: SEED_EXAMPLE_BODY, headers: { 'if-match': '"1"' }, status: 412 },
    { what: 'stale If-Match', path: '/policies/seed-example', body: SEED_EXAMPLE_BODY, headers: { 'if-match': '"1"' }, status: 412 },
    { what: 'malformed If-Match', path: '/policies/seed-example', body: SEED_EXAMPLE_BODY, headers: { 'if-match': '2' }, status: 412 },
    { what: 'If-None-Match * on an existing policy', path: '/policies/seed-example', body: SEED_EXAMPLE_BODY, headers: { 'if-none-match': '*' }, status: 412 },
    { what: 'PATCH', method: 'PATCH', path: '/policies/seed-example', body: SEED_EXAMPLE_BODY, status: 405 },
    { what: 'POST', method: 'POST', path: '/policies', body: SEED_EXAMPLE_BODY, status: 405 },
    { what: 'PUT on history', method: 'PUT', path: '/policies/seed-example/history', body: SEED_EXAMPLE_BODY, status: 405 },
    { what: 'DELETE of a policy that does not exist', method: 'DELETE', path: '/policies/never-existed', status: 404 },
    { what: 'DELETE with a stale If-Match', method: 'DELETE', path: '/policies/seed-example', headers: { 'if-match': '"1"' }, status: 412 },
  ];

  for (const testCase of cases) {
    it(`${testCase.what}: ${testCase.status}`, async () => {
      const before = await harness.snapshot();
      const requestOptions = {
        ...admin(),
        headers: testCase.headers ?? {},
        ...(testCase.body === undefined ? {} : { body: testCase.body }),
        ...(testCase.json === false ? { json: false } : {}),
      };
      const response = await cms.request(testCase.method ?? 'PUT', testCase.path, requestOptions);
      const problem = expectProblem(response, testCase.status);
      if (testCase.type) expect(problem.type).toBe(testCase.type);
      expect(await harness.snapshot()).toEqual(before);
    });
  }

  it('compile errors carry OPA messages with row and column', async () => {
    const response = await cms.request('PUT', '/policies/valid-name', {
      ...admin(),
      body: policyBody('package typed\n\nallow if {\n  count(1) == "x"\n}\n'),
    });
    const problem = expectProblem(response, 400);
    expect(problem.errors).toEqual([expect.objectContaining({ code: 'rego_type_error', message: expect.stringContaining('count'), row: 4, col: 3 })]);
  });

  it('405 names the allowed methods', async () => {
    const response = await cms.request('PATCH', '/policies/seed-example', { ...admin(), body: '{}' });
    expect(response.headers.allow).toBe('GET, PUT, DELETE, HEAD');
  });
});

describe('optimistic concurrency', () => {
  it('of concurrent writes with the same If-Match, exactly one wins', async () => {
    const created = await cms.request('PUT', '/policies/contended', { ...admin(), body: policyBody(V1_POLICY, { n: 0 }) });
    expect(created.status).toBe(201);
    const writers = Array.from({ length: 6 }, (_, n) =>
      cms.request('PUT', '/policies/contended', { ...admin(), headers: { 'if-match': '"1"' }, body: policyBody(V1_POLICY, { n: n + 1 }) }),
    );
    const responses = await Promise.all(writers);
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 412, 412, 412, 412, 412]);
    const winner = responses.find((r) => r.status === 200)!;
    expect(winner.headers.etag).toBe('"2"');
    const current = await cms.request('GET', '/policies/contended', admin());
    expect(current.headers.etag).toBe('"2"');
    const winnerN = JSON.parse(String(winner.text)).version;
    expect(winnerN).toBe(2);
  });

  it('of concurrent creates with If-None-Match: *, exactly one wins', async () => {
    const responses = await Promise.all(
      Array.from({ length: 4 }, () =>
        cms.request('PUT', '/policies/created-once', { ...admin(), headers: { 'if-none-match': '*' }, body: policyBody(V1_POLICY) }),
      ),
    );
    expect(responses.map((r) => r.status).sort()).toEqual([201, 412, 412, 412]);
  });

  it('unconditional concurrent writes all land, each as its own version', async () => {
    const responses = await Promise.all(
      Array.from({ length: 4 }, (_, n) => cms.request('PUT', '/policies/last-writer', { ...admin(), body: policyBody(V1_POLICY, { n }) })),
    );
    expect(responses.map((r) => r.status).sort()).toEqual([200, 200, 200, 201]);
    expect(responses.map((r) => r.headers.etag).sort()).toEqual(['"1"', '"2"', '"3"', '"4"']);
  });
});

describe('history, delete and list', () => {
  it('keeps each version and serves it with its ETag', async () => {
    for (const n of [1, 2, 3]) {
      const response = await cms.request('PUT', '/policies/historic', { ...admin(), body: policyBody(V1_POLICY, { n }) });
      expect(response.status).toBe(n === 1 ? 201 : 200);
    }
    const history = await cms.request('GET', '/policies/historic/history', admin());
    expect(history.status).toBe(200);
    expect(history.json().versions.map((v: { version: number }) => v.version)).toEqual([3, 2, 1]);
    const second = await cms.request('GET', '/policies/historic/history/2', admin());
    expect(second.status).toBe(200);
    expect(second.headers.etag).toBe('"2"');
    expect(second.json()).toEqual({ rego: V1_POLICY, data: { n: 2 } });
    expectProblem(await cms.request('GET', '/policies/historic/history/9', admin()), 404);
    expectProblem(await cms.request('GET', '/policies/historic/history/0', admin()), 400);
    expectProblem(await cms.request('GET', '/policies/historic/history/x', admin()), 400);
  });

  it('DELETE removes the policy (404 after), keeps its history, and versions continue', async () => {
    const deleted = await cms.request('DELETE', '/policies/historic', { ...admin(), headers: { 'if-match': '"3"' } });
    expect(deleted.status).toBe(204);
    expectProblem(await cms.request('GET', '/policies/historic', admin()), 404);
    const keys = Object.keys((await harness.snapshot()).keys).filter((key) => key.startsWith('/policies/historic/'));
    expect(keys.filter((key) => !key.includes('/history/'))).toEqual([]);
    const history = await cms.request('GET', '/policies/historic/history', admin());
    expect(history.json().versions).toHaveLength(3);
    const recreated = await cms.request('PUT', '/policies/historic', { ...admin(), body: policyBody(V1_POLICY) });
    expect(recreated.status).toBe(201);
    expect(recreated.headers.etag).toBe('"4"');
  });

  it('GET /policies lists all for a platform admin and only their own for a project user', async () => {
    await cms.request('PUT', '/policies/team-a', { ...admin(), body: policyBody(V1_POLICY) });
    await cms.request('PUT', '/policies/platform', { ...admin(), body: policyBody(V1_POLICY) });
    const all = await cms.request('GET', '/policies', admin());
    const names = all.json().policies.map((p: { name: string }) => p.name);
    expect(names).toEqual(expect.arrayContaining(['team-a', 'platform', 'seed-example', 'historic']));
    const own = await cms.request('GET', '/policies', { token: harness.tokens.teamA });
    expect(own.json().policies.map((p: { name: string }) => p.name)).toEqual(['team-a']);
    const none = await cms.request('GET', '/policies', { token: harness.tokens.teamB });
    expect(none.json().policies).toEqual([]);
  });

  it('keeps at most the configured number of versions', async () => {
    const small = await harness.startCms({ historyRetention: 3 });
    try {
      for (let n = 1; n <= 5; n++) {
        expect((await small.request('PUT', '/policies/retained', { ...admin(), body: policyBody(V1_POLICY, { n }) })).status).toBe(n === 1 ? 201 : 200);
      }
      const history = await small.request('GET', '/policies/retained/history', admin());
      expect(history.json().versions.map((v: { version: number }) => v.version)).toEqual([5, 4, 3]);
      const historyKeys = Object.keys((await harness.snapshot()).keys).filter((key) => key.startsWith('/policies/retained/history/'));
      expect(historyKeys).toHaveLength(9);
    } finally {
      await small.stop();
    }
  });
});

describe('service endpoints', () => {
  it('every error is problem+json, including unknown routes', async () => {
    const problem = expectProblem(await cms.request('GET', '/nowhere'), 404);
    expect(problem.type).toBe('about:blank');
    expectProblem(await cms.request('GET', '/policies/not-there', admin()), 404);
  });

  it('/healthz, /readyz and /metrics answer without a token', async () => {
    expect((await cms.request('GET', '/healthz')).json()).toEqual({ status: 'ok' });
    expect((await cms.request('GET', '/readyz')).json()).toEqual({ status: 'ready' });
    const metrics = await cms.request('GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain('gatehouse_cms_http_requests_total');
    expect(metrics.text).toMatch(/gatehouse_cms_policy_writes_total\{operation="put",outcome="created"\} [1-9]/);
    expect(metrics.text).toContain('gatehouse_cms_rego_compile_duration_seconds_count');
  });

  it('/openapi.json documents exactly the registered routes', async () => {
    const served = (await cms.request('GET', '/openapi.json')).json();
    expect(served).toEqual(JSON.parse(JSON.stringify(openApiDocument)));
    const documented = new Set<string>();
    for (const [path, item] of Object.entries(served.paths as Record<string, Record<string, unknown>>)) {
      for (const method of Object.keys(item)) if (method !== 'parameters') documented.add(`${method.toUpperCase()} ${path}`);
    }
    const registered = new Set(
      cms.app.cmsRoutes
        .filter((route) => route.method !== 'HEAD') // fastify's automatic HEAD for each GET
        .map((route) => `${route.method} ${route.url.replace(/:(\w+)/g, '{$1}')}`),
    );
    expect([...registered].sort()).toEqual([...documented].sort());
  });

  it('writes one audit line per write with who, what, version and hash, and never the token', async () => {
    const response = await cms.request('PUT', '/policies/audited', { ...admin(), body: policyBody(V1_POLICY) });
    const sha256 = response.json().sha256;
    const audits = cms.logLines.map((line) => JSON.parse(line)).filter((entry) => entry.audit?.policy === 'audited');
    expect(audits).toEqual([
      expect.objectContaining({ audit: expect.objectContaining({ operation: 'create', policy: 'audited', version: 1, sha256, by: 'ada' }) }),
    ]);
    expect(cms.logLines.join('\n')).not.toContain(harness.tokens.admin);
    expect(cms.logLines.join('\n')).not.toContain(harness.tokens.admin.split('.')[2]);
  });
});
