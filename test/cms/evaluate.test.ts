// POST /policies/{name}/evaluate: one input evaluated with the live version
// of a policy, or with a draft compiled as a check compiles it, in the
// gateways' engine under their bounds. Real etcd, real opa; nothing is ever
// written (the etcd snapshot is the same after every request).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_BODY_LIMIT_BYTES } from '../../cms/config.js';
import { startHarness, type Cms, type Harness, type Response } from './harness.js';

const REGO = `package team.authz
import rego.v1

default allow := false

allow if input.user.role in data.roles

# Calm unless an input asks for n * n steps.
busy if {
  every a in numbers.range(1, input.body.n) {
    every b in numbers.range(1, input.body.n) {
      a + b > 0
    }
  }
}
`;
const DRAFT = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role == data.role\n';
// An undefined function on row 5.
const BROKEN = 'package team.authz\nimport rego.v1\n\ndefault allow := false\nallow if no_such_function(input.user)\n';
// Runs away on any input: n * n steps.
const RUNAWAY = `package team.authz
import rego.v1
default allow := false
r := numbers.range(1, 20000)
allow if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;

let harness: Harness;
let cms: Cms;

const ADMIN_ROLE = { user: { role: 'admin' } };
const VIEWER_ROLE = { user: { role: 'viewer' } };

/** POST .../evaluate, as a platform admin unless a token (null: none) is given. */
function evaluate(name: string, body: unknown, token: string | null = harness.tokens.admin): Promise<Response> {
  return cms.request('POST', `/policies/${name}/evaluate`, {
    ...(token === null ? {} : { token }),
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

function expectProblem(res: Response, status: number, type?: string): Record<string, unknown> {
  expect(res.status, res.text).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const problem = res.json() as Record<string, unknown>;
  expect(problem.status).toBe(status);
  if (type) expect(problem.type).toBe(type);
  return problem;
}

/** Runs `work` and checks that etcd holds exactly what it held before. */
async function writesNothing(work: () => Promise<void>): Promise<void> {
  const before = await harness.snapshot();
  await work();
  expect(await harness.snapshot()).toEqual(before);
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  for (const name of ['team-a', 'team-b']) {
    const put = await cms.request('PUT', `/policies/${name}`, {
      token: harness.tokens.admin,
      body: JSON.stringify({ rego: REGO, data: { roles: ['admin'] } }),
    });
    expect(put.status, put.text).toBe(201);
  }
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

describe('POST /policies/{name}/evaluate', () => {
  it('evaluates the live version: allow for one input, deny for another; an entrypoint selects a rule; undefined is absent', async () => {
    await writesNothing(async () => {
      const allowed = evaluate('team-a', { input: ADMIN_ROLE });
      const denied = evaluate('team-a', { input: VIEWER_ROLE });
      const [yes, no] = await Promise.all([allowed, denied]);
      expect(yes.status, yes.text).toBe(200);
      expect(yes.json()).toMatchObject({ result: { allow: true }, version: 1 });
      expect(yes.json().evaluation_ms).toBeGreaterThan(0);
      expect(no.json()).toMatchObject({ result: { allow: false }, version: 1 });

      expect((await evaluate('team-a', { input: ADMIN_ROLE, entrypoint: 'allow' })).json()).toMatchObject({ result: true, version: 1 });
      const undefinedRule = await evaluate('team-a', { input: ADMIN_ROLE, entrypoint: 'busy' });
      expect(undefinedRule.status).toBe(200);
      expect(undefinedRule.json()).not.toHaveProperty('result');
      expect(undefinedRule.json().version).toBe(1);
      // Any JSON value is an input.
      expect((await evaluate('team-a', { input: [1, 2], entrypoint: 'allow' })).json().result).toBe(false);
    });
  });

  it('evaluates a draft (data defaults to {}), marks a compile error at its row, and stops a runaway draft at the bounds', async () => {
    await writesNothing(async () => {
      const draft = await evaluate('team-a', { input: VIEWER_ROLE, rego: DRAFT, data: { role: 'viewer' }, entrypoint: 'allow' });
      expect(draft.status, draft.text).toBe(200);
      expect(draft.json()).toMatchObject({ result: true, version: null });
      expect((await evaluate('team-a', { input: VIEWER_ROLE, rego: DRAFT, entrypoint: 'allow' })).json().result).toBe(false);
      // A draft needs no live version.
      expect((await evaluate('team-new', { input: { user: { role: 'x' } }, rego: DRAFT, data: { role: 'x' } })).json()).toMatchObject({
        result: { allow: true },
        version: null,
      });

      const broken = expectProblem(await evaluate('team-a', { input: {}, rego: BROKEN }), 400, 'urn:gatehouse:problem:rego-compile-error');
      expect(broken.errors).toEqual([expect.objectContaining({ row: 5, message: expect.stringMatching(/no_such_function/) })]);

      const started = performance.now();
      const runaway = expectProblem(await evaluate('team-a', { input: {}, rego: RUNAWAY }), 422, 'urn:gatehouse:problem:policy-evaluation-bound');
      expect(runaway.bound).toBe('fuel');
      expect(runaway.detail).toMatch(/evaluated on this input, the policy exceeded the gateways' fuel bound/);
      expect(performance.now() - started).toBeLessThan(10_000);
    });
  }, 30_000);

  it('a live version that runs away on one input is stopped at the bounds (422), and answers the next input', async () => {
    await writesNothing(async () => {
      const res = await evaluate('team-a', { input: { body: { n: 20_000 } } }, harness.tokens.teamA);
      expect(expectProblem(res, 422, 'urn:gatehouse:problem:policy-evaluation-bound').bound).toBe('fuel');
      expect((await evaluate('team-a', { input: ADMIN_ROLE }, harness.tokens.teamA)).json()).toMatchObject({ result: { allow: true } });
    });
  });

  it('permissions: a project user evaluates the live version of their own project only, never a draft; no token is 401', async () => {
    await writesNothing(async () => {
      const own = await evaluate('team-a', { input: ADMIN_ROLE }, harness.tokens.teamA);
      expect(own.status, own.text).toBe(200);
      expect(own.json()).toMatchObject({ result: { allow: true }, version: 1 });

      const draft = expectProblem(await evaluate('team-a', { input: ADMIN_ROLE, rego: DRAFT }, harness.tokens.teamA), 403, 'urn:gatehouse:problem:forbidden');
      expect(draft.detail).toBe("only platform admins may evaluate a draft; project users may evaluate their own project's live policy");
      // Refused before compiling: a draft that does not compile is still a 403.
      expectProblem(await evaluate('team-a', { input: {}, rego: BROKEN }, harness.tokens.teamA), 403);

      expect(expectProblem(await evaluate('team-b', { input: ADMIN_ROLE }, harness.tokens.teamA), 403).detail).toBe(
        "project users may only read their own project's policy",
      );
      expectProblem(await evaluate('platform', { input: ADMIN_ROLE }, harness.tokens.teamA), 403);
      expectProblem(await evaluate('team-b', { input: ADMIN_ROLE, rego: DRAFT }, harness.tokens.teamA), 403);

      const anonymous = expectProblem(await evaluate('team-a', { input: ADMIN_ROLE }, null), 401);
      expect(anonymous).toMatchObject({ type: 'urn:gatehouse:problem:unauthenticated' });
    });
  });

  it('bad input: malformed JSON, a wrong shape, oversize (413), no live version (404), another method (405)', async () => {
    await writesNothing(async () => {
      expect(expectProblem(await evaluate('team-a', '{"input": '), 400).title).toBe('Malformed JSON');
      expectProblem(await evaluate('team-a', '{"input": {}, "input": 1}'), 400);
      expect(expectProblem(await evaluate('team-a', {}), 400).detail).toMatch(/"input" is required/);
      expect(expectProblem(await evaluate('team-a', []), 400).detail).toMatch(/must be a JSON object/);
      expect(expectProblem(await evaluate('team-a', { input: {}, tests: {} }), 400).detail).toMatch(/unexpected member\(s\): tests/);
      expect(expectProblem(await evaluate('team-a', { input: {}, data: {} }), 400).detail).toMatch(/"data" goes with "rego"/);
      expect(expectProblem(await evaluate('team-a', { input: {}, entrypoint: '../x' }), 400).detail).toMatch(/"entrypoint" must be a path/);
      expect(expectProblem(await evaluate('team-a', { input: {}, rego: '' }), 400).detail).toMatch(/"rego" must be a non-empty string/);
      expectProblem(await evaluate('team-a', { input: {}, rego: DRAFT, data: [] }), 400);
      expectProblem(await evaluate('Team_A', { input: {} }), 400, 'urn:gatehouse:problem:invalid-policy-name');

      // An input up to the body limit is evaluated; past it 413 (the route takes room for a draft beside it); a body past that too.
      const limit = DEFAULT_BODY_LIMIT_BYTES;
      const fits = await evaluate('team-a', { input: { big: 'x'.repeat(limit - 100) }, entrypoint: 'allow' });
      expect(fits.json()).toMatchObject({ result: false });
      expect(expectProblem(await evaluate('team-a', { input: { big: 'x'.repeat(limit) } }), 413).detail).toMatch(/the input is larger than the body limit/);
      expectProblem(await evaluate('team-a', { input: {}, rego: DRAFT, data: { big: 'x'.repeat(limit) } }), 413);
      expectProblem(await evaluate('team-a', { input: { big: 'x'.repeat(3 * limit) } }), 413);
      expectProblem(await evaluate('team-z', { input: {} }), 404, 'urn:gatehouse:problem:policy-not-found');
      const get = await cms.request('GET', '/policies/team-a/evaluate', { token: harness.tokens.admin });
      expect(get.status).toBe(405);
      expectProblem(
        await cms.request('POST', '/policies/team-a/evaluate', { token: harness.tokens.admin, body: '{}', headers: { 'content-type': 'text/plain' } }),
        415,
      );
    });
  });
});
