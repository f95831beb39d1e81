/**
 * Budgets on the CMS API against a real etcd and the real CMS app: create,
 * replace, read, delete and history; ETags and preconditions; concurrent
 * writers; the permission matrix (identity, then access, then validation);
 * every validation problem with its pointer; nothing written on any failure;
 * etcd away; audit lines and metrics.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { budgetHistoryKey, budgetKey, ledgerKey, type StoredBudget } from '../../budget/keys.js';
import { ADMIN, startHarness, type Cms, type Harness, type Response } from './harness.js';
import { pino } from 'pino';
import { BudgetLedger } from '../../budget/ledger.js';
import { windowBounds } from '../../budget/definition.js';
import { createEtcdClient } from '../../etcd/index.js';

let harness: Harness;
let cms: Cms;

const BUDGET = {
  windows: [
    { per: 'minute', tokens: 20000 },
    { per: 'day', tokens: 1000000 },
  ],
  models: { 'gpt-4o': { windows: [{ per: 'minute', tokens: 5000 }] } },
  default_max_tokens: 512,
  block_tokens: 2000,
};
const budgetText = (tokens: number) => JSON.stringify({ windows: [{ per: 'hour', tokens }] });

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms({ bodyLimitBytes: 16 * 1024 });
});
afterAll(async () => {
  await harness?.close();
});

const admin = () => ({ token: harness.tokens.admin });

function expectProblem(response: Response, status: number, type?: string) {
  expect(response.status, response.text).toBe(status);
  expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
  const problem = response.json();
  expect(problem).toMatchObject({ status, type: type ?? expect.any(String), title: expect.any(String) });
  return problem;
}

async function historyOf(project: string): Promise<number[]> {
  const response = await cms.request('GET', `/budgets/${project}/history`, admin());
  if (response.status === 404) return [];
  return response.json().versions.map((v: { version: number }) => v.version);
}

describe('create, read, replace, delete', () => {
  it('PUT creates (201) with ETag, Location and a summary; etcd holds the budget and history version 1 from one transaction', async () => {
    const response = await cms.request('PUT', '/budgets/team-a', { ...admin(), body: JSON.stringify(BUDGET) });
    expect(response.status).toBe(201);
    expect(response.headers.etag).toBe('"1"');
    expect(response.headers.location).toBe('/budgets/team-a');
    expect(new Date(String(response.headers['last-modified'])).getTime()).toBeGreaterThan(Date.now() - 60_000);
    expect(response.json()).toMatchObject({
      project: 'team-a',
      version: 1,
      deleted: false,
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      updatedBy: ADMIN.sub,
    });

    const current = (await harness.etcdClient.get(budgetKey('team-a')).exec()).kvs[0]!;
    const history = (await harness.etcdClient.get(budgetHistoryKey('team-a', 1)).exec()).kvs[0]!;
    expect(current.mod_revision).toBe(history.mod_revision);
    expect(current.value.toString()).toBe(history.value.toString());
    expect(JSON.parse(current.value.toString())).toMatchObject({ project: 'team-a', version: 1, budget: BUDGET, updatedBy: ADMIN.sub });
  });

  it('GET returns the document as PUT took it, with ETag and Last-Modified; a matching If-None-Match is 304', async () => {
    const response = await cms.request('GET', '/budgets/team-a', admin());
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(response.headers.etag).toBe('"1"');
    expect(response.text).toBe(JSON.stringify(BUDGET));
    expect((await cms.request('GET', '/budgets/team-a', { ...admin(), headers: { 'if-none-match': '"1"' } })).status).toBe(304);
    expect((await cms.request('GET', '/budgets/team-a', { ...admin(), headers: { 'if-none-match': '"7"' } })).status).toBe(200);
    const head = await cms.request('HEAD', '/budgets/team-a', admin());
    expect(head.status).toBe(200);
    expect(head.headers.etag).toBe('"1"');
  });

  it('PUT again replaces (200) as version 2; history lists both, newest first; each version is served with its ETag', async () => {
    const response = await cms.request('PUT', '/budgets/team-a', { ...admin(), body: budgetText(100) });
    expect(response.status).toBe(200);
    expect(response.headers.etag).toBe('"2"');
    expect(response.headers.location).toBeUndefined();
    expect((await cms.request('GET', '/budgets/team-a', admin())).text).toBe(budgetText(100));

    const history = await cms.request('GET', '/budgets/team-a/history', admin());
    expect(history.status).toBe(200);
    expect(history.json()).toMatchObject({
      project: 'team-a',
      retention: 50,
      versions: [
        { version: 2, deleted: false },
        { version: 1, deleted: false },
      ],
    });
    const first = await cms.request('GET', '/budgets/team-a/history/1', admin());
    expect(first.status).toBe(200);
    expect(first.headers.etag).toBe('"1"');
    expect(first.json()).toMatchObject({ project: 'team-a', version: 1, budget: BUDGET, updatedBy: ADMIN.sub });
    expectProblem(await cms.request('GET', '/budgets/team-a/history/9', admin()), 404, 'urn:gatehouse:problem:budget-not-found');
  });

  it('DELETE honours If-Match (412 when stale, nothing written), then 204; history keeps the deletion as a version', async () => {
    const before = await harness.budgetSnapshot();
    expectProblem(
      await cms.request('DELETE', '/budgets/team-a', { ...admin(), headers: { 'if-match': '"1"' } }),
      412,
      'urn:gatehouse:problem:precondition-failed',
    );
    expect(await harness.budgetSnapshot()).toEqual(before);

    const deleted = await cms.request('DELETE', '/budgets/team-a', { ...admin(), headers: { 'if-match': '"2"' } });
    expect(deleted.status).toBe(204);
    expect(deleted.text).toBe('');
    expectProblem(await cms.request('GET', '/budgets/team-a', admin()), 404, 'urn:gatehouse:problem:budget-not-found');
    expect(await harness.etcdClient.get(budgetKey('team-a')).string()).toBeNull();
    expect(await historyOf('team-a')).toEqual([3, 2, 1]);
    const deletion = await cms.request('GET', '/budgets/team-a/history/3', admin());
    expect(deletion.json()).toMatchObject({ project: 'team-a', version: 3, budget: null, updatedBy: ADMIN.sub });
    expect((await cms.request('GET', '/budgets/team-a/history', admin())).json().versions[0]).toMatchObject({ version: 3, deleted: true, sha256: null });
  });

  it('DELETE of a budget that does not exist is 404 (412 with If-Match); PUT after a delete creates the next version', async () => {
    const before = await harness.budgetSnapshot();
    expectProblem(await cms.request('DELETE', '/budgets/team-a', admin()), 404, 'urn:gatehouse:problem:budget-not-found');
    expectProblem(await cms.request('DELETE', '/budgets/team-a', { ...admin(), headers: { 'if-match': '*' } }), 412);
    expectProblem(await cms.request('DELETE', '/budgets/never', admin()), 404);
    expect(await harness.budgetSnapshot()).toEqual(before);
    const again = await cms.request('PUT', '/budgets/team-a', { ...admin(), body: JSON.stringify(BUDGET) });
    expect(again.status).toBe(201);
    expect(again.headers.etag).toBe('"4"');
  });

  it('history of a project that never had a budget is 404', async () => {
    expectProblem(await cms.request('GET', '/budgets/never/history', admin()), 404, 'urn:gatehouse:problem:budget-not-found');
    expectProblem(await cms.request('GET', '/budgets/never/history/1', admin()), 404);
  });
});

describe('where each limit stands now', () => {
  it("GET .../remaining reads each window from the gateways' ledger: consumed, held by a gateway, available; the project's users only", async () => {
    const project = 'team-remaining';
    expect((await cms.request('PUT', `/budgets/${project}`, { ...admin(), body: JSON.stringify(BUDGET) })).status).toBe(201);
    const untouched = await cms.request('GET', `/budgets/${project}/remaining`, admin());
    expect(untouched.status, untouched.text).toBe(200);
    expect(untouched.json().limits).toEqual([
      expect.objectContaining({ scope: '*', per: 'minute', limit: 20000, consumed: 0, held: 0, available: 20000 }),
      expect.objectContaining({ scope: '*', per: 'day', limit: 1000000, consumed: 0, held: 0, available: 1000000 }),
      expect.objectContaining({ scope: 'gpt-4o', per: 'minute', limit: 5000, consumed: 0, held: 0, available: 5000 }),
    ]);
    // A gateway leases a block for a call: held until it gives back what it does not use.
    const client = createEtcdClient(harness.etcd.endpoints);
    const ledger = new BudgetLedger({ client, gateway: 'gw-remaining', log: pino({ level: 'silent' }), idleReturnMs: 60_000 });
    const projectUser = { token: await harness.keys.token({ sub: 'r', role: 'viewer', project }) };
    const dayWindow = async () => (await cms.request('GET', `/budgets/${project}/remaining`, projectUser)).json().limits[1];
    await ledger.start();
    try {
      const reserved = await ledger.reserve(project, [{ limit: { scope: '*', per: 'day', tokens: 1000000 }, block: 2000 }], 700);
      expect(reserved.ok).toBe(true);
      expect(await dayWindow()).toMatchObject({ consumed: 0, held: 2000, available: 1000000 - 2000 });
      // Settled to what the call used; the gateway folds it into consumed and gives the rest back when it stops.
      if (reserved.ok) ledger.settle(reserved.hold, 300);
    } finally {
      await ledger.stop();
      client.close();
    }
    const settled = await dayWindow();
    expect(settled).toMatchObject({ consumed: 300, held: 0, available: 1000000 - 300 });
    expect(Date.parse(settled.resets_at)).toBe(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate() + 1));
    // A record whose consumed count is damaged is read as the ledger reads it: the window spent.
    const dayStart = windowBounds('day', Date.now()).start;
    await harness.etcdClient.put(ledgerKey(project, '*', 'day', dayStart)).value(JSON.stringify({ limit: 1000000, consumed: null, held: {} }));
    expect(await dayWindow()).toMatchObject({ consumed: 1000000, held: 0, available: 0 });
    expect((await cms.request('GET', `/budgets/${project}/remaining`, { token: harness.tokens.teamA })).status).toBe(403);
    expect((await cms.request('GET', '/budgets/team-none/remaining', admin())).status).toBe(404);
  });
});

describe('preconditions', () => {
  it('If-Match: a stale ETag is 412 and nothing is written; the current one (or one of a list, or *) writes', async () => {
    await cms.request('PUT', '/budgets/pre', { ...admin(), body: budgetText(1) });
    const before = await harness.budgetSnapshot();
    for (const ifMatch of ['"99"', '"0"', 'W/"1"', 'garbage', '"1']) {
      expectProblem(await cms.request('PUT', '/budgets/pre', { ...admin(), headers: { 'if-match': ifMatch }, body: budgetText(2) }), 412);
    }
    expect(await harness.budgetSnapshot()).toEqual(before);
    expect((await cms.request('PUT', '/budgets/pre', { ...admin(), headers: { 'if-match': '"7", "1"' }, body: budgetText(2) })).headers.etag).toBe('"2"');
    expect((await cms.request('PUT', '/budgets/pre', { ...admin(), headers: { 'if-match': '*' }, body: budgetText(3) })).headers.etag).toBe('"3"');
  });

  it('If-Match: * on a project without a budget is 412; If-None-Match: * creates only', async () => {
    const before = await harness.budgetSnapshot();
    expectProblem(await cms.request('PUT', '/budgets/pre-new', { ...admin(), headers: { 'if-match': '*' }, body: budgetText(1) }), 412);
    expectProblem(await cms.request('PUT', '/budgets/pre', { ...admin(), headers: { 'if-none-match': '*' }, body: budgetText(1) }), 412);
    expect(await harness.budgetSnapshot()).toEqual(before);
    expect((await cms.request('PUT', '/budgets/pre-new', { ...admin(), headers: { 'if-none-match': '*' }, body: budgetText(1) })).status).toBe(201);
  });
});

describe('concurrent writers', () => {
  it('concurrent PUTs with the same If-Match: exactly one wins, the others are 412, history stays linear', async () => {
    await cms.request('PUT', '/budgets/race', { ...admin(), body: budgetText(1) });
    const responses = await Promise.all(
      Array.from({ length: 10 }, (_, n) => cms.request('PUT', '/budgets/race', { ...admin(), headers: { 'if-match': '"1"' }, body: budgetText(100 + n) })),
    );
    const statuses = responses.map((r) => r.status).sort();
    expect(statuses).toEqual([200, ...Array(9).fill(412)]);
    const winner = responses.find((r) => r.status === 200)!;
    expect(winner.headers.etag).toBe('"2"');
    expect(await historyOf('race')).toEqual([2, 1]);
    const current = await cms.request('GET', '/budgets/race', admin());
    expect(current.headers.etag).toBe('"2"');
    expect((await cms.request('GET', '/budgets/race/history/2', admin())).json().budget).toEqual(JSON.parse(current.text));
  });

  it('concurrent creates with If-None-Match: *: exactly one 201', async () => {
    const responses = await Promise.all(
      Array.from({ length: 8 }, (_, n) =>
        cms.request('PUT', '/budgets/race-create', { ...admin(), headers: { 'if-none-match': '*' }, body: budgetText(n + 1) }),
      ),
    );
    expect(responses.map((r) => r.status).sort()).toEqual([201, ...Array(7).fill(412)]);
    expect(await historyOf('race-create')).toEqual([1]);
  });

  it('unconditional concurrent PUTs all land, each as its own version, and each answer names the version that holds its document', async () => {
    const responses = await Promise.all(
      Array.from({ length: 8 }, (_, n) => cms.request('PUT', '/budgets/race-all', { ...admin(), body: budgetText(1000 + n) })),
    );
    expect(responses.filter((r) => r.status === 201)).toHaveLength(1);
    expect(responses.filter((r) => r.status === 200)).toHaveLength(7);
    const versions = responses.map((r) => Number(JSON.parse(String(r.headers.etag))));
    expect([...versions].sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    for (const [n, version] of versions.entries()) {
      const stored = (await cms.request('GET', `/budgets/race-all/history/${version}`, admin())).json() as StoredBudget;
      expect(stored.budget).toEqual(JSON.parse(budgetText(1000 + n)));
    }
  });
});

describe('listing', () => {
  it('GET /budgets lists the projects with a budget in force, in pages', async () => {
    const all: string[] = [];
    let token: string | undefined;
    for (let pages = 0; pages < 50; pages++) {
      const response = await cms.request('GET', `/budgets?limit=2${token ? `&page_token=${token}` : ''}`, admin());
      expect(response.status).toBe(200);
      const body = response.json();
      expect(body.budgets.length).toBeLessThanOrEqual(2);
      all.push(...body.budgets.map((b: { project: string }) => b.project));
      token = body.next_page_token;
      if (!token) break;
    }
    const expected = (await harness.etcdClient.getAll().prefix('/budgets/').keys()).map((key) => key.slice('/budgets/'.length)).sort();
    expect(expected.length).toBeGreaterThanOrEqual(5);
    expect(all).toEqual(expected);
    const one = (await cms.request('GET', '/budgets', admin())).json().budgets.find((b: { project: string }) => b.project === 'race');
    expect(one).toMatchObject({ project: 'race', version: 2, deleted: false });
  });

  it('refuses unknown query parameters, a bad limit and a page token it did not give out', async () => {
    expectProblem(await cms.request('GET', '/budgets?colour=red', admin()), 400);
    for (const limit of ['0', '1001', 'x', '-1', '1.5']) expectProblem(await cms.request('GET', `/budgets?limit=${limit}`, admin()), 400);
    expectProblem(await cms.request('GET', '/budgets?page_token=nope!', admin()), 400);
    expectProblem(await cms.request('GET', `/budgets?page_token=${Buffer.from('after:Not_Valid').toString('base64url')}`, admin()), 400);
  });
});

describe('validation: nothing written, a problem for each invalid member', () => {
  const valid = { windows: [{ per: 'day', tokens: 10 }] };
  const cases: Array<{ what: string; body: unknown; pointers: string[] }> = [
    { what: 'an empty object', body: {}, pointers: ['/windows'] },
    { what: 'an array', body: [], pointers: [''] },
    { what: 'null', body: null, pointers: [''] },
    { what: 'a string', body: 'budget', pointers: [''] },
    { what: 'no windows', body: { windows: [] }, pointers: ['/windows'] },
    { what: 'windows not an array', body: { windows: { per: 'day', tokens: 1 } }, pointers: ['/windows'] },
    { what: 'too many windows', body: { windows: ['minute', 'hour', 'day', 'month', 'minute'].map((per) => ({ per, tokens: 1 })) }, pointers: ['/windows'] },
    { what: 'an unknown window kind', body: { windows: [{ per: 'week', tokens: 1 }] }, pointers: ['/windows/0/per'] },
    { what: 'a window without tokens', body: { windows: [{ per: 'day' }] }, pointers: ['/windows/0/tokens'] },
    { what: 'zero tokens', body: { windows: [{ per: 'day', tokens: 0 }] }, pointers: ['/windows/0/tokens'] },
    { what: 'fractional tokens', body: { windows: [{ per: 'day', tokens: 1.5 }] }, pointers: ['/windows/0/tokens'] },
    { what: 'tokens as a string', body: { windows: [{ per: 'day', tokens: '100' }] }, pointers: ['/windows/0/tokens'] },
    { what: 'tokens past the maximum', body: { windows: [{ per: 'day', tokens: 1e13 }] }, pointers: ['/windows/0/tokens'] },
    { what: 'an unknown member of a window', body: { windows: [{ per: 'day', tokens: 1, burst: 2 }] }, pointers: ['/windows/0/burst'] },
    { what: 'an unknown member', body: { ...valid, colour: 'red' }, pointers: ['/colour'] },
    {
      what: 'a second window of one kind',
      body: {
        windows: [
          { per: 'day', tokens: 1 },
          { per: 'day', tokens: 2 },
        ],
      },
      pointers: ['/windows/1/per'],
    },
    { what: 'a model name with a space', body: { ...valid, models: { 'gpt 4': { windows: [{ per: 'day', tokens: 1 }] } } }, pointers: ['/models/gpt 4'] },
    {
      what: "a model's negative tokens",
      body: { ...valid, models: { 'gpt-4o': { windows: [{ per: 'minute', tokens: -5 }] } } },
      pointers: ['/models/gpt-4o/windows/0/tokens'],
    },
    {
      what: "a model's second window of one kind (a slash in its name escaped)",
      body: {
        ...valid,
        models: {
          'org/model': {
            windows: [
              { per: 'hour', tokens: 1 },
              { per: 'hour', tokens: 1 },
            ],
          },
        },
      },
      pointers: ['/models/org~1model/windows/1/per'],
    },
    { what: 'a model without windows', body: { ...valid, models: { 'gpt-4o': {} } }, pointers: ['/models/gpt-4o/windows'] },
    { what: 'models not an object', body: { ...valid, models: ['gpt-4o'] }, pointers: ['/models'] },
    { what: 'default_max_tokens zero', body: { ...valid, default_max_tokens: 0 }, pointers: ['/default_max_tokens'] },
    { what: 'default_max_tokens as a string', body: { ...valid, default_max_tokens: '512' }, pointers: ['/default_max_tokens'] },
    { what: 'block_tokens fractional', body: { ...valid, block_tokens: 0.5 }, pointers: ['/block_tokens'] },
    {
      what: 'several problems at once',
      body: { windows: [{ per: 'fortnight', tokens: 0 }], default_max_tokens: -1, extra: true },
      pointers: ['/extra', '/windows/0/per', '/windows/0/tokens', '/default_max_tokens'],
    },
  ];
  for (const { what, body, pointers } of cases) {
    it(`${what}: 400 invalid-budget pointing at ${pointers.map((p) => JSON.stringify(p)).join(', ')}`, async () => {
      const before = await harness.budgetSnapshot();
      const response = await cms.request('PUT', '/budgets/team-v', { ...admin(), body: JSON.stringify(body) });
      const problem = expectProblem(response, 400, 'urn:gatehouse:problem:invalid-budget');
      const seen = (problem.errors as Array<{ pointer: string; message: string }>).map((e) => e.pointer);
      expect([...new Set(seen)].sort()).toEqual([...pointers].sort());
      for (const error of problem.errors) expect(error.message).toEqual(expect.any(String));
      expect(problem.detail).toContain(pointers[0] === '' ? 'the document' : pointers[0]);
      expect(await harness.budgetSnapshot()).toEqual(before);
    });
  }

  const raw: Array<{ what: string; body?: string; headers?: Record<string, string>; status: number; json?: boolean }> = [
    { what: 'malformed JSON', body: '{"windows": [', status: 400 },
    { what: 'a duplicate member', body: '{"windows":[{"per":"day","tokens":1}],"windows":[{"per":"day","tokens":9}]}', status: 400 },
    { what: 'trailing garbage', body: `${budgetText(1)} x`, status: 400 },
    { what: 'a number too large for any budget', body: '{"windows":[{"per":"day","tokens":1e400}]}', status: 400 },
    { what: 'an empty body', body: '', status: 400 },
    { what: 'no body', status: 415 },
    { what: 'text/plain', body: budgetText(1), headers: { 'content-type': 'text/plain' }, status: 415 },
    { what: 'form data', body: 'windows=1', headers: { 'content-type': 'application/x-www-form-urlencoded' }, status: 415 },
    { what: 'a body over the limit', body: JSON.stringify({ windows: [{ per: 'day', tokens: 1 }], pad: 'x'.repeat(20_000) }), status: 413 },
  ];
  for (const { what, body, headers, status } of raw) {
    it(`${what}: ${status}, nothing written`, async () => {
      const before = await harness.budgetSnapshot();
      const response = await cms.request('PUT', '/budgets/team-v', { ...admin(), ...(headers ? { headers } : {}), ...(body === undefined ? {} : { body }) });
      expectProblem(response, status);
      expect(await harness.budgetSnapshot()).toEqual(before);
    });
  }

  it('invalid project names and "platform" are 400, for every method', async () => {
    const before = await harness.budgetSnapshot();
    for (const path of ['/budgets/Team-A', '/budgets/platform', '/budgets/a_b', `/budgets/${'a'.repeat(64)}`, '/budgets/-a', '/budgets/%2E%2E']) {
      expectProblem(await cms.request('PUT', path, { ...admin(), body: budgetText(1) }), 400, 'urn:gatehouse:problem:invalid-project-name');
      expectProblem(await cms.request('GET', path, admin()), 400, 'urn:gatehouse:problem:invalid-project-name');
      expectProblem(await cms.request('DELETE', path, admin()), 400, 'urn:gatehouse:problem:invalid-project-name');
      expectProblem(await cms.request('GET', `${path}/history`, admin()), 400, 'urn:gatehouse:problem:invalid-project-name');
    }
    expect(await harness.budgetSnapshot()).toEqual(before);
  });

  it('bad versions and paths are 400, unimplemented methods 405 with Allow', async () => {
    for (const version of ['0', '-1', 'x', '01', '1.0', '9999999999999'])
      expectProblem(await cms.request('GET', `/budgets/team-a/history/${version}`, admin()), 400);
    for (const path of ['/budgets/team-a/x', '/budgets/team-a/history/1/x', '/budgets/', '/budgets/team-a/'])
      expectProblem(await cms.request('GET', path, admin()), 400);
    const post = await cms.request('POST', '/budgets/team-a', { ...admin(), body: budgetText(1) });
    expectProblem(post, 405);
    expect(post.headers.allow).toBe('GET, PUT, DELETE, HEAD');
    expect((await cms.request('PUT', '/budgets', { ...admin(), body: budgetText(1) })).headers.allow).toBe('GET, HEAD');
    expect((await cms.request('DELETE', '/budgets/team-a/history', admin())).status).toBe(405);
  });
});

describe('permissions: identity first (401), then access (403), then validation', () => {
  type Caller = 'admin' | 'teamA' | 'teamB';
  const endpoints: Array<{ method: string; path: string; body?: string; expected: Record<Caller, number> }> = [
    { method: 'GET', path: '/budgets', expected: { admin: 200, teamA: 403, teamB: 403 } },
    { method: 'GET', path: '/budgets/team-a', expected: { admin: 200, teamA: 200, teamB: 403 } },
    { method: 'HEAD', path: '/budgets/team-a', expected: { admin: 200, teamA: 200, teamB: 403 } },
    { method: 'PUT', path: '/budgets/team-a', body: JSON.stringify(BUDGET), expected: { admin: 200, teamA: 403, teamB: 403 } },
    { method: 'DELETE', path: '/budgets/team-a', expected: { admin: 204, teamA: 403, teamB: 403 } },
    { method: 'GET', path: '/budgets/team-a/history', expected: { admin: 200, teamA: 200, teamB: 403 } },
    { method: 'GET', path: '/budgets/team-a/history/1', expected: { admin: 200, teamA: 200, teamB: 403 } },
    { method: 'GET', path: '/usage/team-a', expected: { admin: 200, teamA: 200, teamB: 403 } },
    { method: 'GET', path: '/budgets/platform', expected: { admin: 400, teamA: 403, teamB: 403 } },
    { method: 'GET', path: '/usage/platform', expected: { admin: 400, teamA: 403, teamB: 403 } },
  ];

  async function ensureBudget(): Promise<void> {
    const existing = await cms.request('GET', '/budgets/team-a', admin());
    if (existing.status === 404) expect((await cms.request('PUT', '/budgets/team-a', { ...admin(), body: JSON.stringify(BUDGET) })).status).toBe(201);
  }

  for (const endpoint of endpoints) {
    for (const caller of ['admin', 'teamA', 'teamB'] as const) {
      const expected = endpoint.expected[caller];
      it(`${endpoint.method} ${endpoint.path} as ${caller}: ${expected}`, async () => {
        await ensureBudget();
        const before = await harness.budgetSnapshot();
        const response = await cms.request(endpoint.method, endpoint.path, {
          token: harness.tokens[caller],
          ...(endpoint.body ? { body: endpoint.body } : {}),
        });
        expect(response.status).toBe(expected);
        if (expected === 403) {
          expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
          if (endpoint.method !== 'HEAD') expect(response.json()).toMatchObject({ status: 403, type: 'urn:gatehouse:problem:forbidden' });
          expect(await harness.budgetSnapshot()).toEqual(before);
        }
      });
    }

    const badCredentials: Array<{ what: string; header: () => Promise<string | undefined> }> = [
      { what: 'no token', header: async () => undefined },
      { what: 'a garbage token', header: async () => 'Bearer not-a-jwt' },
      { what: 'an expired token', header: async () => `Bearer ${await harness.keys.expiredToken(ADMIN)}` },
      { what: 'a forged signature', header: async () => `Bearer ${await harness.keys.badSignatureToken(ADMIN)}` },
      { what: 'alg none', header: async () => `Bearer ${await harness.keys.algNoneToken(ADMIN)}` },
      { what: 'another issuer', header: async () => `Bearer ${await harness.keys.wrongIssuerToken(ADMIN)}` },
    ];
    for (const credentials of badCredentials) {
      it(`${endpoint.method} ${endpoint.path} with ${credentials.what}: 401, nothing written`, async () => {
        const before = await harness.budgetSnapshot();
        const header = await credentials.header();
        const response = await cms.request(endpoint.method, endpoint.path, {
          headers: header === undefined ? {} : { authorization: header },
          ...(endpoint.body ? { body: endpoint.body } : {}),
        });
        expect(response.status).toBe(401);
        expect(String(response.headers['www-authenticate'])).toMatch(/^Bearer realm="gatehouse"/);
        if (endpoint.method !== 'HEAD') expectProblem(response, 401, 'urn:gatehouse:problem:unauthenticated');
        expect(await harness.budgetSnapshot()).toEqual(before);
      });
    }
  }

  it('a project user whose claim is "platform", or who has no project, reads no budget', async () => {
    const platformUser = await harness.keys.token({ sub: 'pat', role: 'project_user', project: 'platform' });
    expect((await cms.request('GET', '/budgets/platform', { token: platformUser })).status).toBe(403);
    const nobody = await harness.keys.token({ sub: 'vic', role: 'viewer' });
    expect((await cms.request('GET', '/budgets/team-a', { token: nobody })).status).toBe(403);
    expect((await cms.request('GET', '/usage/team-a', { token: nobody })).status).toBe(403);
  });

  const invalid: Array<{ what: string; method: string; path: string; body?: string; headers?: Record<string, string>; adminStatus: number }> = [
    { what: 'invalid name', method: 'PUT', path: '/budgets/Not_Valid', body: budgetText(1), adminStatus: 400 },
    { what: 'malformed JSON', method: 'PUT', path: '/budgets/team-a', body: '{"windows":', adminStatus: 400 },
    { what: 'invalid budget', method: 'PUT', path: '/budgets/team-a', body: '{"windows":[]}', adminStatus: 400 },
    { what: 'wrong media type', method: 'PUT', path: '/budgets/team-a', body: budgetText(1), headers: { 'content-type': 'text/plain' }, adminStatus: 415 },
    { what: 'oversized body', method: 'PUT', path: '/budgets/team-a', body: JSON.stringify({ pad: 'x'.repeat(20_000) }), adminStatus: 413 },
    { what: 'stale If-Match', method: 'PUT', path: '/budgets/team-a', body: budgetText(1), headers: { 'if-match': '"999"' }, adminStatus: 412 },
    { what: 'unknown budget', method: 'GET', path: '/budgets/team-zz', adminStatus: 404 },
    { what: 'method not allowed', method: 'POST', path: '/budgets/team-a', body: budgetText(1), adminStatus: 405 },
    { what: 'bad path', method: 'GET', path: '/budgets/team-a/x/y', adminStatus: 400 },
    { what: 'bad usage query', method: 'GET', path: '/usage/team-a?from=yesterday', adminStatus: 400 },
  ];
  for (const request of invalid) {
    it(`${request.what}: 401 without a token, 403 for another project's user, ${request.adminStatus} for an admin`, async () => {
      const before = await harness.budgetSnapshot();
      const options = { headers: request.headers ?? {}, ...(request.body ? { body: request.body } : {}) };
      expect((await cms.request(request.method, request.path, options)).status).toBe(401);
      const otherUser = await harness.keys.token({ sub: 'oz', role: 'project_user', project: 'team-other' });
      expect((await cms.request(request.method, request.path, { ...options, token: otherUser })).status).toBe(403);
      expect(await harness.budgetSnapshot()).toEqual(before);
      expect((await cms.request(request.method, request.path, { ...options, token: harness.tokens.admin })).status).toBe(request.adminStatus);
    });
  }

  it('the routed path decides: an encoded spelling reaches neither another project nor a write', async () => {
    await ensureBudget();
    const before = await harness.budgetSnapshot();
    for (const path of ['/%62udgets/team-a', '/budgets/team-%61', '/budget%73/team-a/history']) {
      expect((await cms.request('GET', path, { token: harness.tokens.teamB })).status, path).toBe(403);
      expect((await cms.request('PUT', path, { token: harness.tokens.teamA, body: budgetText(1) })).status, path).toBe(403);
      expect((await cms.request('DELETE', path, {})).status, path).toBe(401);
    }
    expect(await harness.budgetSnapshot()).toEqual(before);
    expect((await cms.request('GET', '/%62udgets/team-%61', { token: harness.tokens.teamA })).status).toBe(200);
  });
});

describe('audit and metrics', () => {
  it('one audit line per write with who, what, version and hash, never the token', async () => {
    const created = (await cms.request('PUT', '/budgets/audited', { ...admin(), body: budgetText(5) })).json();
    await cms.request('PUT', '/budgets/audited', { ...admin(), body: budgetText(6) });
    await cms.request('DELETE', '/budgets/audited', admin());
    await cms.request('PUT', '/budgets/audited', { ...admin(), headers: { 'if-match': '"1"' }, body: budgetText(7) }); // refused: no audit line
    const audits = cms.logLines
      .map((line) => JSON.parse(line))
      .filter((entry) => entry.audit?.budget === 'audited')
      .map((entry) => entry.audit);
    expect(audits).toEqual([
      { operation: 'create', budget: 'audited', version: 1, sha256: created.sha256, by: ADMIN.sub },
      { operation: 'replace', budget: 'audited', version: 2, sha256: expect.stringMatching(/^[0-9a-f]{64}$/), by: ADMIN.sub },
      { operation: 'delete', budget: 'audited', version: 3, sha256: null, by: ADMIN.sub, deletedVersion: 2 },
    ]);
    expect(cms.logLines.join('\n')).not.toContain(harness.tokens.admin.split('.')[2]);
  });

  it('/metrics counts budget writes by operation and outcome', async () => {
    const metrics = (await cms.request('GET', '/metrics')).text;
    expect(metrics).toMatch(/gatehouse_cms_budget_writes_total\{operation="put",outcome="created"\} [1-9]/);
    expect(metrics).toMatch(/gatehouse_cms_budget_writes_total\{operation="put",outcome="replaced"\} [1-9]/);
    expect(metrics).toMatch(/gatehouse_cms_budget_writes_total\{operation="delete",outcome="deleted"\} [1-9]/);
    expect(metrics).toMatch(/gatehouse_cms_http_requests_total\{method="PUT",route="\/budgets\/:project",status="201"\} [1-9]/);
  });
});

// Last: it stops etcd.
describe('etcd away', () => {
  it('every budget and usage request is 503 problem+json with Retry-After, answered within seconds; nothing written', async () => {
    await cms.request('PUT', '/budgets/steady', { ...admin(), body: budgetText(1) });
    const steadyUser = await harness.keys.token({ sub: 'sue', role: 'project_user', project: 'steady' });
    const before = await harness.budgetSnapshot();
    await harness.etcd.stop();
    try {
      const started = Date.now();
      const attempts = await Promise.all([
        cms.request('PUT', '/budgets/steady', { ...admin(), body: budgetText(2) }),
        cms.request('PUT', '/budgets/brand-new', { ...admin(), body: budgetText(2) }),
        cms.request('DELETE', '/budgets/steady', admin()),
        cms.request('GET', '/budgets/steady', admin()),
        cms.request('GET', '/budgets/steady', { token: steadyUser }),
        cms.request('GET', '/budgets/steady/history', admin()),
        cms.request('GET', '/budgets/steady/history/1', admin()),
        cms.request('GET', '/budgets', admin()),
        cms.request('GET', '/usage/steady', admin()),
      ]);
      for (const response of attempts) {
        const problem = expectProblem(response, 503, 'urn:gatehouse:problem:store-unavailable');
        expect(problem.title).toBe('Budget store unavailable');
        expect(response.headers['retry-after']).toBe('1');
      }
      expect(Date.now() - started).toBeLessThan(15_000);
      // Identity and access are still answered without etcd.
      expect((await cms.request('GET', '/budgets/steady')).status).toBe(401);
      expect((await cms.request('PUT', '/budgets/steady', { token: harness.tokens.teamA, body: budgetText(3) })).status).toBe(403);
    } finally {
      await harness.etcd.restart();
    }
    expect(await harness.budgetSnapshot()).toEqual(before);
    const after = await cms.request('PUT', '/budgets/steady', { ...admin(), headers: { 'if-match': '"1"' }, body: budgetText(2) });
    expect(after.status).toBe(200);
    expect(after.headers.etag).toBe('"2"');
  });
});
