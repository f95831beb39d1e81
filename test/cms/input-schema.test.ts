// Policies are type-checked against the input document the gateway sends
// (plugins/opa/input.schema.json): a misspelt field or a comparison of the
// wrong type is refused at write time, 400 with OPA's row and column, on PUT
// and on POST .../check alike, and nothing reaches etcd.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SEED_EXAMPLE_BODY, startHarness, type Cms, type Harness } from './harness.js';

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
const body = (rego: string, tests?: Record<string, string>) => JSON.stringify({ rego, data: {}, ...(tests ? { tests } : {}) });

/** Both write paths refuse the body with a rego-compile-error whose errors are `expected`; etcd is untouched. */
async function expectRefused(requestBody: string, expected: Record<string, unknown>[]): Promise<void> {
  const before = await harness.snapshot();
  for (const [method, path] of [
    ['PUT', '/policies/team-a'],
    ['POST', '/policies/team-a/check'],
  ] as const) {
    const response = await cms.request(method, path, { ...admin(), body: requestBody });
    expect(response.status, `${method} ${path}`).toBe(400);
    expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
    const problem = response.json();
    expect(problem).toMatchObject({ status: 400, type: 'urn:gatehouse:problem:rego-compile-error', title: 'Rego does not compile' });
    expect(problem.errors).toEqual(expected);
  }
  expect(await harness.snapshot()).toEqual(before);
}

describe('policies are type-checked against the gateway input schema', () => {
  it('a misspelt field (input.usr.role) is refused at its row and column, naming the fields the input has', async () => {
    await expectRefused(body('package project.authz\n\ndefault allow := false\n\nallow if input.usr.role == "admin"\n'), [
      {
        code: 'rego_type_error',
        message: expect.stringMatching(/^undefined ref: input\.usr\.role \(have "usr", want one of: .*\bproject, request, .*\buser, var\)$/),
        file: 'policy.rego',
        row: 5,
        col: 10,
      },
    ]);
  });

  it('a misspelt field of a fixed-shape object (input.user.rol) is refused too', async () => {
    await expectRefused(body('package project.authz\n\nallow if {\n  input.user.rol == "admin"\n}\n'), [
      expect.objectContaining({ code: 'rego_type_error', message: expect.stringMatching(/^undefined ref: input\.user\.rol \(have "rol"/), row: 4, col: 3 }),
    ]);
  });

  it('a comparison of a field with a value of another type (method == 3) is refused', async () => {
    await expectRefused(body('package project.authz\n\nallow if input.request.method == 3\n'), [
      { code: 'rego_type_error', message: 'match error: string against number', file: 'policy.rego', row: 3, col: 10 },
    ]);
  });

  it("the policy's test modules are checked too, naming their file", async () => {
    const tests = {
      'authz_test.rego':
        'package project.authz_test\n\nimport data.project.authz\n\nvip if input.user.vip\n\ntest_admin if authz.allow with input as {"user": {"role": "admin"}}\n',
    };
    await expectRefused(body('package project.authz\n\nallow if input.user.role == "admin"\n', tests), [
      expect.objectContaining({ code: 'rego_type_error', message: expect.stringMatching(/^undefined ref: input\.user\.vip/), file: 'authz_test.rego', row: 5 }),
    ]);
  });

  it("the seed's example and a policy reading what the gateway sends are written", async () => {
    expect((await cms.request('PUT', '/policies/seed-example', { ...admin(), body: SEED_EXAMPLE_BODY })).status).toBe(201);
    const gatewayFields = [
      'package project.authz',
      'allow if {',
      '  input.user.role == "admin"',
      '  input.request.method in {"GET", "POST"}',
      '  startswith(input.request.path, "/llm/")',
      '  input.request.headers["content-type"] == "application/json"',
      '  not input.request.query.debug',
      '  input.body.model in {"llama-3"}',
      '  input.budget != null',
      '  input.budget.remaining_tokens > 1000',
      '  not input.truncated.body',
      '  input.project == input.user.project',
      '  input.var.timestamp > 0',
      '}',
    ].join('\n');
    const check = await cms.request('POST', '/policies/team-a/check', { ...admin(), body: body(gatewayFields) });
    expect(check.status, check.text).toBe(200);
  });

  it("a policy for the decision API's own callers declares its input with OPA's schemas annotation", async () => {
    const rego = 'package rag.docs\n\nallow if input.action == "read"\n';
    await expectRefused(body(rego), [expect.objectContaining({ code: 'rego_type_error', message: expect.stringMatching(/^undefined ref: input\.action/) })]);
    const annotated = [
      '# METADATA',
      '# schemas:',
      '#   - input: {"type": "object", "properties": {"action": {"type": "string"}, "user": {"type": "object", "properties": {"role": {"type": "string"}}}}}',
      rego.replace('\n\n', '\n\nallow if input.user.role == "admin"\n\n'),
    ].join('\n');
    const written = await cms.request('PUT', '/policies/rag', { ...admin(), body: body(annotated) });
    expect(written.status, written.text).toBe(201);
    // Its own schema is checked as the gateway's would be.
    await expectRefused(body(annotated.replace('input.action ==', 'input.acton ==')), [
      expect.objectContaining({
        code: 'rego_type_error',
        message: expect.stringMatching(/^undefined ref: input\.acton \(have "acton", want one of: action, user\)/),
      }),
    ]);
  });
});
