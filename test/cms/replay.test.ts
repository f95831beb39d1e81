// Replay before publish: POST /policies/{name}/check with `replay`, decision
// inputs as the decision logs record them, evaluated with the live version
// and the draft in the gateways' engine; the answer lists exactly the inputs
// whose decision document changed. Bounded (inputs, bytes, the whole
// replay's time), typed (400 with a JSON pointer), never a write.
// Real etcd, real opa.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_REPLAY_BYTES, MAX_REPLAY_INPUTS } from '../../cms/replay.js';
import { openApiDocument } from '../../cms/routes/openapi.js';
import { startHarness, type Cms, type Harness } from './harness.js';

let harness: Harness;
let cms: Cms;

const ROLES = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles\n';
/** The same decisions, and a reason beside a denial: a different document for every denied input. */
const WITH_REASON = `${ROLES}\nreason := "role not allowed" if not allow\n`;
const RANGE = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if count(numbers.range(1, input.request.port)) > 0\n';

/** Decision inputs as a runner's decision log writes them (masked headers and all). */
const input = (role: string, sub = role) => ({
  request: { method: 'GET', path: '/orders', headers: { accept: '*/*', authorization: '[masked]' }, query: {} },
  user: { sub, role, project: 'team-a' },
  project: 'team-a',
});
const INPUTS = [input('admin'), input('viewer'), input('analyst', 'ann'), input('admin', 'ada'), input('analyst', 'al'), input('guest')];

const check = (name: string, body: object, target = cms) =>
  target.request('POST', `/policies/${name}/check`, { token: harness.tokens.admin, body: JSON.stringify(body) });

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  const put = await cms.request('PUT', '/policies/team-a', {
    token: harness.tokens.admin,
    body: JSON.stringify({ rego: ROLES, data: { valid_roles: ['admin'] } }),
  });
  expect(put.status).toBe(201);
}, 60_000);

afterAll(async () => {
  await harness?.close();
});

describe('check with replay', () => {
  it("a draft that allows one more role: exactly that role's inputs, with the live and the draft document", async () => {
    const before = await harness.snapshot();
    const res = await check('team-a', { rego: ROLES, data: { valid_roles: ['admin', 'analyst'] }, replay: INPUTS });
    expect(res.status, res.text).toBe(200);
    expect(res.json()).toMatchObject({ ok: true, entrypoint: 'team/authz' });
    expect(res.json().replay).toEqual({
      evaluated: 6,
      liveVersion: 1,
      changed: [
        { index: 2, live: { allow: false }, draft: { allow: true } },
        { index: 4, live: { allow: false }, draft: { allow: true } },
      ],
    });
    expect(await harness.snapshot()).toEqual(before);
  });

  it('nothing changes: none reported; a check without replay answers as before', async () => {
    const same = await check('team-a', { rego: ROLES, data: { valid_roles: ['admin'] }, replay: INPUTS });
    expect(same.status, same.text).toBe(200);
    expect(same.json().replay).toEqual({ evaluated: 6, liveVersion: 1, changed: [] });
    const plain = await check('team-a', { rego: ROLES, data: { valid_roles: ['admin'] } });
    expect(plain.status).toBe(200);
    expect(plain.json()).not.toHaveProperty('replay');
  });

  it('whole documents are compared: the same allow with a new reason is a change', async () => {
    const res = await check('team-a', { rego: WITH_REASON, data: { valid_roles: ['admin'] }, replay: INPUTS });
    expect(res.status, res.text).toBe(200);
    const denied = [1, 2, 4, 5];
    expect(res.json().replay.changed).toEqual(denied.map((index) => ({ index, live: { allow: false }, draft: { allow: false, reason: 'role not allowed' } })));
  });

  it('no live version: every input the draft defines is a change, `live` absent (undefined); a failed evaluation is draftError', async () => {
    const before = await harness.snapshot();
    const res = await check('team-new', { rego: RANGE, data: {}, replay: [{ request: { port: 3 } }, {}, { request: { port: 1e8 } }] });
    expect(res.status, res.text).toBe(200);
    const { replay } = res.json();
    expect(replay.liveVersion).toBeNull();
    expect(replay.evaluated).toBe(3);
    expect(replay.changed.slice(0, 2)).toEqual([
      { index: 0, draft: { allow: true } },
      { index: 1, draft: { allow: false } },
    ]);
    // A hundred million numbers: past the gateways' memory ceiling or fuel, the gateway would deny with 500.
    expect(replay.changed[2]).toEqual({ index: 2, draftError: { kind: expect.stringMatching(/^(memory|fuel)$/), message: expect.any(String) } });
    expect(replay.changed[2]).not.toHaveProperty('live');
    expect(await harness.snapshot()).toEqual(before);
  });
});

describe('replay limits and bad input: clear 4xx problem+json, nothing written', () => {
  const policy = { rego: ROLES, data: { valid_roles: ['admin', 'analyst'] } };

  it('too many inputs, too many bytes: 413 naming the limit', async () => {
    const before = await harness.snapshot();
    const many = await check('team-a', { ...policy, replay: Array.from({ length: MAX_REPLAY_INPUTS + 1 }, () => ({})) });
    expect(many.status).toBe(413);
    expect(many.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(many.json()).toMatchObject({ type: 'urn:gatehouse:problem:replay-too-large', limits: { inputs: MAX_REPLAY_INPUTS, bytes: MAX_REPLAY_BYTES } });
    expect(many.json().detail).toContain(`at most ${MAX_REPLAY_INPUTS}`);
    const pad = 'x'.repeat(600 * 1024);
    const big = await check('team-a', { ...policy, replay: [{ pad }, { pad }] });
    expect(big.status).toBe(413);
    expect(big.json()).toMatchObject({ type: 'urn:gatehouse:problem:replay-too-large' });
    expect(big.json().detail).toContain(String(MAX_REPLAY_BYTES));
    // The replay's room is its own: the policy object stays within the body limit, as on a PUT.
    const fat = await check('team-a', { rego: ROLES, data: { pad: 'x'.repeat(300 * 1024) }, replay: [{}] });
    expect(fat.status).toBe(413);
    expect(fat.json().type).toBe('urn:gatehouse:problem:policy-too-large');
    expect(await harness.snapshot()).toEqual(before);
  });

  it('wrong types: 400 with the JSON pointer; replay on a PUT is an unexpected member', async () => {
    const before = await harness.snapshot();
    for (const [replay, pointer] of [
      [{}, '/replay'],
      ['inputs', '/replay'],
      [[{}, 3], '/replay/1'],
      [[{}, {}, null], '/replay/2'],
      [[[]], '/replay/0'],
    ] as const) {
      const res = await check('team-a', { ...policy, replay });
      expect(res.status, JSON.stringify(replay)).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.json()).toMatchObject({ type: 'urn:gatehouse:problem:invalid-replay', errors: [{ pointer }] });
      expect(res.json().detail).toMatch(new RegExp(`^${pointer}: `));
    }
    const put = await cms.request('PUT', '/policies/team-a', { token: harness.tokens.admin, body: JSON.stringify({ ...policy, replay: [] }) });
    expect(put.status).toBe(400);
    expect(put.json().detail).toContain('replay');
    expect(await harness.snapshot()).toEqual(before);
  });

  it('a replay that runs past its time budget: 422 replay-stopped, soon, and the CMS answers meanwhile', async () => {
    const bounded = await harness.startCms({ replayTimeoutMs: 300 });
    const inputs = Array.from({ length: MAX_REPLAY_INPUTS }, () => ({ request: { port: 200_000 } }));
    const started = Date.now();
    const pending = check('team-slow', { rego: RANGE, data: {}, replay: inputs }, bounded);
    const health = await bounded.request('GET', '/healthz');
    expect(health.status).toBe(200);
    const res = await pending;
    expect(res.status, res.text).toBe(422);
    expect(res.json()).toMatchObject({ type: 'urn:gatehouse:problem:replay-stopped', bound: 'time', limitMs: 300, total: MAX_REPLAY_INPUTS });
    expect(res.json().evaluated).toBeLessThan(MAX_REPLAY_INPUTS);
    // Stopped at its budget (and the compile before it), not after a thousand evaluations.
    expect(Date.now() - started).toBeLessThan(15_000);
    await bounded.stop();
  });
});

describe('the OpenAPI document', () => {
  it('documents replay on the check, and every $ref in it resolves', () => {
    const check = (openApiDocument.paths as Record<string, any>)['/policies/{name}/check'].post;
    expect(check.requestBody.content['application/json'].schema.properties.replay).toMatchObject({ type: 'array', maxItems: MAX_REPLAY_INPUTS });
    expect(check.responses['200'].content['application/json'].schema.properties.replay).toEqual({ $ref: '#/components/schemas/ReplayReport' });
    const refs: string[] = [];
    const walk = (node: unknown): void => {
      if (Array.isArray(node)) node.forEach(walk);
      else if (node && typeof node === 'object') {
        for (const [key, value] of Object.entries(node)) {
          if (key === '$ref' && typeof value === 'string') refs.push(value);
          else walk(value);
        }
      }
    };
    walk(openApiDocument);
    expect(refs).toContain('#/components/schemas/PolicyObject/properties/tests');
    for (const ref of refs) {
      const target = ref
        .slice(2)
        .split('/')
        .reduce<any>((node, part) => node?.[part], openApiDocument);
      expect(target, ref).toBeTypeOf('object');
    }
  });
});
