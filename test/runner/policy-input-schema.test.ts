// The input schemas policies are compiled against (`opa check --schema`)
// describe the documents the code really builds: the gateway's input
// (plugins/opa/input.ts, with and without vars, body and budget) and the
// access policy's (accessInput), validated with ajv, so that neither side
// can change without the other.
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { GatewayRequest, toBytes, type ExtraInfoSource } from '../../plugins/api/http.js';
import { buildPolicyInput, type PolicyInput, type VerifiedUser } from '../../plugins/opa/input.js';
import { policyInputSchema } from '../../plugins/opa/input-schema.js';
import { accessInput } from '../../policy/access/index.js';
import { accessInputSchema } from '../../policy/access/input-schema.js';
import type { BudgetView } from '../../budget/gateway.js';
import type { Identity } from '../../identity/index.js';

const ajv = new Ajv({ allErrors: true, allowUnionTypes: true });
const validInput = ajv.compile(policyInputSchema().document);
const validAccessInput = ajv.compile(accessInputSchema().document);

function expectValid(validate: typeof validInput, document: unknown): void {
  const valid = validate(document);
  expect(validate.errors ?? [], JSON.stringify(document)).toEqual([]);
  expect(valid).toBe(true);
}

const VARS: Record<string, string> = { host: 'api.example.test', scheme: 'https', server_addr: '10.0.0.1', server_port: '9443', remote_port: '53211' };

type Field = { name: string; value: string | null };

function request(body = '', headers: Field[] = [], args: Field[] = []): GatewayRequest {
  const extra: ExtraInfoSource = {
    variable: (name) => Promise.resolve(VARS[name] ?? null),
    requestBody: () => Promise.resolve(toBytes(body)),
    responseBody: () => Promise.reject(new Error('no response here')),
  };
  return new GatewayRequest(
    {
      id: 1,
      method: 'POST',
      path: '/llm/v1/chat/completions',
      srcIp: '10.0.0.7',
      headers: [
        { name: 'Host', value: 'upstream.test' },
        { name: 'X-Tag', value: 'a' },
        { name: 'x-tag', value: 'b' },
        { name: 'Authorization', value: 'Bearer secret' },
        ...headers,
      ],
      args: [
        { name: 'tag', value: 'a' },
        { name: 'tag', value: null },
        { name: 'debug', value: null },
        { name: 'page', value: '2' },
        { name: 'access_token', value: 'secret' },
        ...args,
      ],
    },
    extra,
  );
}

const identity: Identity = {
  sub: 'rag',
  role: 'rag-service',
  project: 'team-a',
  claims: { iss: 'https://issuer.test', aud: ['gatehouse'], sub: 'rag', exp: 1795690000, iat: 1795680000, jti: 'x', email: 'rag@team-a.test' },
  isPlatformAdmin: false,
};
const user: VerifiedUser = { ...identity.claims, sub: identity.sub, role: identity.role, project: identity.project };
const anonymous = { user: null, project: null };
const OPTIONS = { withVars: false, withBody: false, maxBodyBytes: 1024 };

const budget: Required<BudgetView> = {
  model: 'gpt-4o',
  estimated_cost: 655,
  max_tokens: 512,
  remaining_tokens: 18200,
  limits: [{ scope: '*', per: 'minute', tokens: 20000, remaining: 18200, resets_at: '2026-06-01T00:01:00.000Z' }],
};

async function documents(): Promise<Record<string, PolicyInput>> {
  const json = [{ name: 'content-type', value: 'application/json' }];
  const withBudget = await buildPolicyInput(request('{"model":"gpt-4o"}', json), { user, project: 'team-a' }, { ...OPTIONS, withBody: true });
  withBudget.budget = budget;
  const noBudget = await buildPolicyInput(request('{}', json), { user, project: 'team-a' }, { ...OPTIONS, withBody: true });
  noBudget.budget = null;
  return {
    plain: await buildPolicyInput(request(), { user, project: 'team-a' }, OPTIONS),
    anonymous: await buildPolicyInput(request(), anonymous, OPTIONS),
    vars: await buildPolicyInput(request(), { user: { sub: 'x', role: null, project: null }, project: null }, { ...OPTIONS, withVars: true }),
    jsonBody: await buildPolicyInput(request('{"model":"llama-3","max_tokens":256}', json), { user, project: 'team-a' }, { ...OPTIONS, withBody: true }),
    textBody: await buildPolicyInput(request('plain text'), anonymous, { ...OPTIONS, withBody: true }),
    truncated: await buildPolicyInput(request('x'.repeat(2048)), anonymous, { ...OPTIONS, withBody: true }),
    withBudget,
    noBudget,
  };
}

describe('the policy input schema (plugins/opa/input.schema.json)', () => {
  it('every document the gateway builds is valid: with and without vars, body, truncation, budget and identity', async () => {
    const built = await documents();
    // The variants are what they say they are.
    expect(built.vars!.request).toMatchObject({ scheme: 'https', host: 'api.example.test', port: 9443 });
    expect(built.truncated).toMatchObject({ body: null, truncated: { body: true } });
    expect(built.plain!.request.query).toEqual({ tag: ['a', true], debug: true, page: '2' });
    // Repeated headers are a list, names are lower-case, the Authorization header is withheld.
    expect(built.plain!.request.headers).toEqual({ host: 'upstream.test', 'x-tag': ['a', 'b'] });
    for (const document of Object.values(built)) expectValid(validInput, JSON.parse(JSON.stringify(document)));
  });

  it('a header or query parameter named "__proto__", "toString" or "constructor" is a key of its map like any other', async () => {
    const withProto = request(
      '',
      [
        { name: '__proto__', value: 'a' },
        { name: '__proto__', value: 'b' },
      ],
      [
        { name: '__proto__', value: 'x' },
        { name: '__proto__', value: 'y' },
        { name: 'toString', value: 's' },
        { name: 'constructor', value: null },
      ],
    );
    const input = await buildPolicyInput(withProto, { user: null, project: null }, { withVars: false, withBody: false, maxBodyBytes: 0 });
    expect(Object.getPrototypeOf(input.request.headers)).toBe(Object.prototype);
    expect(Object.getPrototypeOf(input.request.query)).toBe(Object.prototype);
    expect(JSON.parse(JSON.stringify(input.request.headers))).toEqual({ host: 'upstream.test', 'x-tag': ['a', 'b'], ['__proto__']: ['a', 'b'] });
    expect(JSON.stringify(input.request.query)).toBe('{"tag":["a",true],"debug":true,"page":"2","__proto__":["x","y"],"toString":"s","constructor":true}');
  });

  it("names every field the gateway sends, and no other but the decision API's (route, service, consumer)", async () => {
    const built = Object.values(await documents());
    const keys = (pick: (d: PolicyInput) => object | null | undefined) => [...new Set(built.flatMap((d) => Object.keys(pick(d) ?? {})))].sort();
    const schema = policyInputSchema().document as { properties: Record<string, { properties?: Record<string, { properties?: object }> }> };
    const props = schema.properties;
    expect(Object.keys(props).sort()).toEqual([...keys((d) => d), 'consumer', 'route', 'service'].sort());
    expect(Object.keys(props.request!.properties!).sort()).toEqual(keys((d) => d.request));
    expect(Object.keys(props.var!.properties!).sort()).toEqual(keys((d) => d.var));
    expect(Object.keys(props.budget!.properties!).sort()).toEqual(Object.keys(budget).sort());
    expect(Object.keys(props.truncated!.properties!)).toEqual(keys((d) => d.truncated));
  });

  it('refuses what the gateway never sends: a misspelt field, a field of the wrong type, a missing one', async () => {
    const { plain } = await documents();
    const document = JSON.parse(JSON.stringify(plain)) as Record<string, any>;
    const variants: Record<string, unknown>[] = [
      { ...document, usr: document.user },
      { ...document, request: { ...document.request, method: 3 } },
      { ...document, request: { ...document.request, methd: 'GET' } },
      { ...document, var: { ...document.var, timestamp: '1795680000' } },
      { ...document, budget: { ...budget, remaining: 1 } },
      (({ project: _, ...rest }) => rest)(document),
    ];
    for (const variant of variants) expect(validInput(variant), JSON.stringify(variant)).toBe(false);
  });
});

describe('the access policy input schema (policy/access/input.schema.json)', () => {
  it('what accessInput builds is valid, with and without an identity; anything else is not', () => {
    expectValid(validAccessInput, accessInput('get', ['policies', 'team-a'], identity));
    expectValid(validAccessInput, accessInput('PUT', ['policies', 'team-a'], undefined));
    expectValid(validAccessInput, accessInput('GET', [], { ...identity, role: null, project: null }));
    expect(validAccessInput({ method: 'GET', path: '/policies' })).toBe(false);
    expect(validAccessInput({ method: 'GET', path: [], user: { sub: 'x', role: null, project: null, email: 'x' } })).toBe(false);
  });
});
