// The jwt and opa plugins in real runner processes, driven over the socket as
// APISIX would, against a real etcd holding policies compiled by the real opa.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { ApisixClient, request, text } from '../support/apisix-client.js';
import { startTcpProxy, hostPort } from '../support/tcp-proxy.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { pino } from 'pino';
import { createEtcdClient } from '../../etcd/index.js';
import { buildCmsApp } from '../../cms/app.js';
import type { RewriteAction, StopAction, TextEntry } from '../../plugins/protocol/index.js';

// The seed's example policy, exactly as printed there (Rego v0 syntax).
const SEED_POLICY = 'package project.authz\n\ndefault allow = false\n\nallow {\n  input.user.role == "admin"\n}';

const BODY_AWARE = `package llm.authz
import rego.v1
default allow := false
allow if {
  input.body.model in data.models
  input.body.max_tokens <= data.max_tokens
}
`;

const PLATFORM = `package platform
import rego.v1
default allow := true
# The platform policy only restricts: no DELETE through the gateway, ever.
allow := false if input.request.method == "DELETE"
reason := "DELETE is disabled platform-wide" if input.request.method == "DELETE"
`;

const OBJECT_DECISION = `package quota
import rego.v1
default allow := false
allow if input.user.role == "admin"
status_code := 429 if not allow
reason := {"error": "quota", "limit": data.limit} if not allow
headers := {"Retry-After": "30", "X-Quota": "exceeded"} if not allow
`;

const NO_CREDENTIALS_IN_INPUT = `package strict
import rego.v1
default allow := false
allow if {
  not input.request.headers.authorization
  input.user.sub == "alice"
  input.project == "strict"
  input.var.remote_addr == "10.1.2.3"
  input.request.query.tag == ["a", "b"]
  input.request.query.debug == true
}
`;

// Reads one header and one query parameter, after a platform policy that reads neither: the runner
// builds the input's headers and query only for a policy that reads them, so this one must see them.
const HEADER_AND_QUERY = `package headerwise
import rego.v1
default allow := false
allow if {
  input.request.headers["x-colour"] == "blue"
  input.request.query.size == "l"
}
`;

// Allows a request whose body was withheld (the route must say allow_truncated), or a small one with ok: true.
const TRUNCATION_AWARE = `package sizes
import rego.v1
default allow := false
allow if input.truncated.body
allow if input.body.ok == true
`;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: EtcdPolicyWriter;
let keys: TestKeys;
const runners: RunnerProcess[] = [];

function runnerEnv(endpoints: string[], stateDir = mkdtempSync(join(tmpdir(), 'gh-state-'))): Record<string, string> {
  return {
    ETCD_ENDPOINTS: endpoints.join(','),
    ...keys.env,
    RUNNER_STATE_DIR: stateDir,
  };
}

async function launch(env: Record<string, string>): Promise<RunnerProcess> {
  const runner = await startRunner({ env });
  runners.push(runner);
  return runner;
}

const conf = (...plugins: [string, object][]) => plugins.map(([name, value]) => ({ name, value: JSON.stringify(value) }));
const bearer = (token: string): TextEntry => ({ name: 'authorization', value: `Bearer ${token}` });

async function decide(
  runner: RunnerProcess,
  chain: { name: string; value: string }[],
  overrides: Parameters<typeof request>[0] extends infer R ? Partial<R> : never,
  body?: string,
) {
  const client = await ApisixClient.open(runner.socketPath);
  try {
    const token = await client.prepare(chain);
    return await client.call(request({ confToken: token, ...overrides }), (info) => (info.type === 'reqBody' && body !== undefined ? Buffer.from(body) : null));
  } finally {
    client.close();
  }
}

const statusOf = (answer: { action: StopAction | RewriteAction | null }) => (answer.action?.type === 'stop' ? answer.action.status : 'pass');

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new EtcdPolicyWriter(admin);
  keys = await createTestKeys();
  await writer.put('demo', SEED_POLICY, { valid_roles: ['admin', 'viewer'] });
  await writer.put('llm', BODY_AWARE, { models: ['gpt-4o-mini', 'llama-3'], max_tokens: 1024 });
  await writer.put('quota', OBJECT_DECISION, { limit: 10 });
  await writer.put('strict', NO_CREDENTIALS_IN_INPUT, {});
  await writer.put('sizes', TRUNCATION_AWARE, {});
  await writer.put('headerwise', HEADER_AND_QUERY, {});
});

afterAll(async () => {
  await Promise.all(runners.map((r) => r.stop()));
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

describe('jwt + opa in the runner', () => {
  let runner: RunnerProcess;
  beforeAll(async () => {
    runner = await launch(runnerEnv(etcd.endpoints));
  });
  const callerChain = conf(['jwt', {}], ['opa', { policies: ['platform', 'caller-project'] }]);

  it("the seed's example policy decides as written", async () => {
    const adminUser = await keys.token({ sub: 'ada', role: 'admin', project: 'demo' });
    const viewer = await keys.token({ sub: 'vic', role: 'viewer', project: 'demo' });
    await until(async () => statusOf(await decide(runner, callerChain, { headers: [bearer(adminUser)] })) === 'pass', 'policies to load');
    expect(statusOf(await decide(runner, callerChain, { headers: [bearer(viewer)] }))).toBe(403);
  });

  it('a missing, forged or expired token gets 401 with WWW-Authenticate and a problem body', async () => {
    for (const headers of [
      [],
      [bearer(await keys.badSignatureToken({ sub: 'x', role: 'admin', project: 'demo' }))],
      [bearer(await keys.expiredToken({ sub: 'x', role: 'admin', project: 'demo' }))],
      [bearer(await keys.algNoneToken({ sub: 'x', role: 'admin', project: 'demo' }))],
      [bearer('not.a.jwt')],
    ]) {
      const answer = await decide(runner, callerChain, { headers });
      const stop = answer.action as StopAction;
      expect(stop.status).toBe(401);
      expect(stop.headers.find((h) => h.name === 'www-authenticate')?.value).toMatch(/^Bearer realm="gatehouse"/);
      expect(JSON.parse(text(stop.body)!)).toMatchObject({ status: 401 });
    }
  });

  it('a project without a policy, and a caller without a project, are denied', async () => {
    const orphan = await keys.token({ sub: 'o', role: 'admin', project: 'no-such-project' });
    const projectless = await keys.token({ sub: 'p', role: 'admin' });
    expect(statusOf(await decide(runner, callerChain, { headers: [bearer(orphan)] }))).toBe(403);
    expect(statusOf(await decide(runner, callerChain, { headers: [bearer(projectless)] }))).toBe(403);
  });

  it('the platform policy, when present, restricts every project', async () => {
    const adminUser = await keys.token({ sub: 'ada', role: 'admin', project: 'demo' });
    expect(statusOf(await decide(runner, callerChain, { method: 'DELETE', headers: [bearer(adminUser)] }))).toBe('pass');
    await writer.put('platform', PLATFORM);
    await until(async () => statusOf(await decide(runner, callerChain, { method: 'DELETE', headers: [bearer(adminUser)] })) === 403, 'the platform policy');
    const answer = await decide(runner, callerChain, { method: 'DELETE', headers: [bearer(adminUser)] });
    expect(JSON.parse(text((answer.action as StopAction).body)!).detail).toBe('DELETE is disabled platform-wide');
    expect(statusOf(await decide(runner, callerChain, { method: 'GET', headers: [bearer(adminUser)] }))).toBe('pass');
    await writer.store.delete('platform');
  });

  it('spoofed identity headers are deleted, verified ones set, whether or not they were seen', async () => {
    const adminUser = await keys.token({ sub: 'ada', role: 'admin', project: 'demo' });
    const answer = await decide(runner, callerChain, {
      headers: [bearer(adminUser), { name: 'x-gatehouse-sub', value: 'mallory' }, { name: 'x-gatehouse-extra', value: 'x' }],
    });
    const rewrite = answer.action as RewriteAction;
    expect(rewrite.type).toBe('rewrite');
    expect(rewrite.headers).toEqual(
      expect.arrayContaining([
        { name: 'x-gatehouse-sub', value: 'ada' },
        { name: 'x-gatehouse-role', value: 'admin' },
        { name: 'x-gatehouse-project', value: 'demo' },
        { name: 'x-gatehouse-extra', value: null },
      ]),
    );
    // Not sent by this client, deleted anyway (APISIX shows only 100 headers).
    const quiet = await decide(runner, callerChain, { headers: [bearer(await keys.token({ sub: 'q', role: 'admin', project: 'demo' }))] });
    expect((quiet.action as RewriteAction).headers).toContainEqual({ name: 'x-gatehouse-sub', value: 'q' });
    const noProject = await decide(runner, conf(['jwt', {}]), { headers: [bearer(await keys.token({ sub: 'n', role: 'viewer' }))] });
    expect((noProject.action as RewriteAction).headers).toContainEqual({ name: 'x-gatehouse-project', value: null });
  });

  it('the input is APISIX-shaped, carries the identity, never the Authorization header', async () => {
    const alice = await keys.token({ sub: 'alice', role: 'dev', project: 'strict' });
    const overrides = {
      srcIp: new Uint8Array([10, 1, 2, 3]),
      args: [
        { name: 'tag', value: 'a' },
        { name: 'tag', value: 'b' },
        { name: 'debug', value: null },
      ],
    };
    expect(statusOf(await decide(runner, callerChain, { ...overrides, headers: [bearer(alice)] }))).toBe('pass');
    expect(statusOf(await decide(runner, callerChain, { ...overrides, args: [], headers: [bearer(alice)] }))).toBe(403);
  });

  it('a policy reading headers and query sees them after a platform policy that reads neither', async () => {
    const token = bearer(await keys.token({ sub: 'hue', role: 'dev', project: 'headerwise' }));
    const colour = (value: string) => ({ name: 'x-colour', value });
    const size = [{ name: 'size', value: 'l' }];
    expect(statusOf(await decide(runner, callerChain, { headers: [token, colour('blue')], args: size }))).toBe('pass');
    expect(statusOf(await decide(runner, callerChain, { headers: [token, colour('red')], args: size }))).toBe(403);
    expect(statusOf(await decide(runner, callerChain, { headers: [token], args: size }))).toBe(403);
    expect(statusOf(await decide(runner, callerChain, { headers: [token, colour('blue')], args: [] }))).toBe(403);
    // The platform policy alone reads neither: the route with it alone still decides.
    expect(statusOf(await decide(runner, conf(['jwt', {}], ['opa', { policies: ['platform'] }]), { headers: [token] }))).toBe('pass');
  });

  it('reads the JSON body when the route asks for it', async () => {
    const user = await keys.token({ sub: 'rag', role: 'service', project: 'llm' });
    const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'], with_body: true }]);
    const headers = [bearer(user), { name: 'content-type', value: 'application/json' }];
    const ok = JSON.stringify({ model: 'llama-3', max_tokens: 256, messages: [] });
    const wrongModel = JSON.stringify({ model: 'gpt-5-giant', max_tokens: 256 });
    const tooLong = JSON.stringify({ model: 'llama-3', max_tokens: 100000 });
    expect(statusOf(await decide(runner, chain, { method: 'POST', headers }, ok))).toBe('pass');
    expect(statusOf(await decide(runner, chain, { method: 'POST', headers }, wrongModel))).toBe(403);
    expect(statusOf(await decide(runner, chain, { method: 'POST', headers }, tooLong))).toBe(403);
    // Without with_body the body is never fetched, so the policy cannot allow.
    const blind = await decide(runner, conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]), { method: 'POST', headers }, ok);
    expect(statusOf(blind)).toBe(403);
    expect(blind.extraInfo).toEqual([]);
  });

  it('a body over max_body_bytes is denied (413) unless the route allows it, and is not fetched when Content-Length says so', async () => {
    const user = await keys.token({ sub: 'rag', role: 'service', project: 'sizes' });
    const chain = (extra: object) => conf(['jwt', {}], ['opa', { policies: ['caller-project'], with_body: true, max_body_bytes: 64, ...extra }]);
    const json = { name: 'content-type', value: 'application/json' };
    const small = JSON.stringify({ ok: true });
    const big = JSON.stringify({ ok: true, padding: 'x'.repeat(200) });
    const declared = (body: string) => [bearer(user), json, { name: 'content-length', value: String(Buffer.byteLength(body)) }];

    await until(async () => statusOf(await decide(runner, chain({}), { method: 'POST', headers: declared(small) }, small)) === 'pass', 'a small body to pass');
    const refused = await decide(runner, chain({}), { method: 'POST', headers: declared(big) }, big);
    expect(statusOf(refused)).toBe(413);
    expect(refused.extraInfo).toEqual([]); // Content-Length was enough: the body was never fetched
    // Without Content-Length (chunked) the body is fetched, found too large, and refused all the same.
    expect(statusOf(await decide(runner, chain({}), { method: 'POST', headers: [bearer(user), json] }, big))).toBe(413);
    // A route that allows it lets the policy decide, knowing the body was withheld.
    const allowed = await decide(runner, chain({ allow_truncated: true }), { method: 'POST', headers: declared(big) }, big);
    expect(statusOf(allowed)).toBe('pass');
  });

  it('object decisions set status, reason and headers as APISIX reads them', async () => {
    const user = await keys.token({ sub: 'u', role: 'viewer', project: 'quota' });
    const answer = await decide(runner, callerChain, { headers: [bearer(user)] });
    const stop = answer.action as StopAction;
    expect(stop.status).toBe(429);
    expect(stop.headers).toContainEqual({ name: 'retry-after', value: '30' });
    expect(stop.headers).toContainEqual({ name: 'x-quota', value: 'exceeded' });
    expect(JSON.parse(text(stop.body)!)).toMatchObject({ status: 429, reason: { error: 'quota', limit: 10 } });
  });

  it('the CMS access policy follows the seed table', async () => {
    const chain = conf(['jwt', {}], ['opa', { policies: ['cms-access'] }]);
    const platformAdmin = await keys.token({ sub: 'root', role: 'platform_admin' });
    const teamA = await keys.token({ sub: 'tom', role: 'project_user', project: 'team-a' });
    const cases: [string, string, string, number | 'pass'][] = [
      [platformAdmin, 'GET', '/policies/team-b', 'pass'],
      [platformAdmin, 'PUT', '/policies/platform', 'pass'],
      [teamA, 'GET', '/policies/team-a', 'pass'],
      [teamA, 'GET', '/policies/team-b', 403],
      [teamA, 'GET', '/policies/platform', 403],
      [teamA, 'PUT', '/policies/team-a', 403],
    ];
    for (const [token, method, path, expected] of cases) {
      const answer = await decide(runner, chain, { method: method as 'GET', path, headers: [bearer(token)] });
      expect([method, path, statusOf(answer)]).toEqual([method, path, expected]);
    }
  });

  it('unknown options in the opa conf fail PrepareConf (the route then answers 503)', async () => {
    const client = await ApisixClient.open(runner.socketPath);
    await expect(client.prepare(conf(['opa', { policies: ['project:platform'] }]))).rejects.toThrow(/BAD_REQUEST/);
    client.close();
  });
});

describe('propagation and resilience', () => {
  it('a PUT through the CMS flips decisions in three runners, which stay in step', async () => {
    const cms = await buildCmsApp({
      etcdEndpoints: etcd.endpoints,
      identity: keys.identityConfig,
      opaPath,
      logger: pino({ level: 'silent' }),
    });
    const admin = await keys.token({ sub: 'root', role: 'platform_admin' });
    const put = async (rego: string) => {
      const res = await cms.inject({
        method: 'PUT',
        url: '/policies/flip',
        headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
        payload: JSON.stringify({ rego, data: {} }),
      });
      expect(res.statusCode).toBeLessThan(300);
    };
    try {
      const three = await Promise.all([0, 1, 2].map(() => launch(runnerEnv(etcd.endpoints))));
      const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]);
      const viewer = await keys.token({ sub: 'v', role: 'viewer', project: 'flip' });
      const viewerDecision = (r: RunnerProcess) => decide(r, chain, { headers: [bearer(viewer)] }).then(statusOf);
      await put(SEED_POLICY);
      for (const r of three) await until(async () => (await viewerDecision(r)) === 403, 'the first version');

      await put(SEED_POLICY.replace('"admin"', '"viewer"'));
      const returned = Date.now();
      const delays = await Promise.all(
        three.map(async (r) => {
          await until(async () => (await viewerDecision(r)) === 'pass', 'the flip');
          return Date.now() - returned;
        }),
      );
      // Reported, not asserted: speed is measured by npm run bench:decide.
      console.log(`CMS PUT returned -> enforced in each of 3 runners (ms, including polling): ${delays.join(', ')}`);
      // In step: every runner decides alike on both sides of the new rule.
      const admins = await keys.token({ sub: 'a', role: 'admin', project: 'flip' });
      const verdicts = await Promise.all(three.map((r) => decide(r, chain, { headers: [bearer(admins)] }).then(statusOf)));
      expect(verdicts).toEqual([403, 403, 403]);
      await Promise.all(three.map((r) => r.stop()));
    } finally {
      await cms.close();
    }
  });

  it('restarted with etcd down: enforces its snapshot; without a snapshot it denies with 503', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'gh-state-'));
    const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]);
    const adminUser = await keys.token({ sub: 'ada', role: 'admin', project: 'demo' });
    const viewer = await keys.token({ sub: 'vic', role: 'viewer', project: 'demo' });

    const first = await launch(runnerEnv(etcd.endpoints, stateDir));
    await until(async () => statusOf(await decide(first, chain, { headers: [bearer(adminUser)] })) === 'pass', 'policies');
    await new Promise((r) => setTimeout(r, 300)); // the snapshot is written in the background
    await first.stop();

    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    proxy.cut();
    const fromSnapshot = await launch(runnerEnv([proxy.url], stateDir));
    await until(async () => statusOf(await decide(fromSnapshot, chain, { headers: [bearer(adminUser)] })) === 'pass', 'the snapshot');
    expect(statusOf(await decide(fromSnapshot, chain, { headers: [bearer(viewer)] }))).toBe(403);

    const blank = await launch(runnerEnv([proxy.url]));
    const answer = await decide(blank, chain, { headers: [bearer(adminUser)] });
    expect(statusOf(answer)).toBe(503);
    expect((answer.action as StopAction).headers).toContainEqual({ name: 'retry-after', value: '1' });

    proxy.restore();
    await until(async () => statusOf(await decide(blank, chain, { headers: [bearer(adminUser)] })) === 'pass', 'etcd to come back');
    await Promise.all([fromSnapshot.stop(), blank.stop()]);
    await proxy.close();
  });

  it('the runner reports readiness, staleness and decisions on its own port', async () => {
    const metricsPort = await freePort();
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    const runner = await launch({ ...runnerEnv([proxy.url]), RUNNER_METRICS_PORT: String(metricsPort) });
    const admin = (path: string) => fetch(`http://127.0.0.1:${metricsPort}${path}`);
    const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]);
    const adminUser = await keys.token({ sub: 'ada', role: 'admin', project: 'demo' });
    // The metrics port opens just after the socket.
    await until(
      () =>
        admin('/readyz').then(
          (r) => r.status === 200,
          () => false,
        ),
      'readiness',
    );
    // It says whether the LLM budgets are read (budgeted routes answer 503 until they are).
    expect(((await (await admin('/readyz')).json()) as { budgets: string }).budgets).toBe('loaded');
    // demo's policy is v0, so it is shown the whole input and never remembered.
    await decide(runner, chain, { headers: [bearer(adminUser)] });
    // A v1 policy of another project: the same caller four times. Each worker evaluates its first
    // decision and answers the rest from its decision memo.
    await writer.put('memo', SEED_POLICY.replace('\n\ndefault allow = false\n\nallow {', '\nimport rego.v1\ndefault allow := false\nallow if {'));
    const memoUser = await keys.token({ sub: 'mo', role: 'admin', project: 'memo' });
    await until(async () => statusOf(await decide(runner, chain, { headers: [bearer(memoUser)] })) === 'pass', 'the v1 policy');
    for (let i = 0; i < 4; i++) expect(statusOf(await decide(runner, chain, { headers: [bearer(memoUser)] }))).toBe('pass');
    const metrics = await (await admin('/metrics')).text();
    expect(metrics).toMatch(/gatehouse_policy_loaded_version\{policy="demo"\} 1/);
    expect(metrics).toMatch(/gatehouse_decisions_total\{policy="caller-project",outcome="allow"\} 6/);
    const lookups = (outcome: string) => Number(new RegExp(`gatehouse_decision_memo_lookups_total\\{outcome="${outcome}"\\} (\\d+)`).exec(metrics)?.[1]);
    expect(lookups('hit')).toBeGreaterThanOrEqual(3);
    expect(lookups('hit') + lookups('miss')).toBe(5);
    expect(metrics).toMatch(/gatehouse_policy_watch_up 1/);
    expect((await admin('/healthz')).status).toBe(200);

    proxy.cut();
    await until(async () => /gatehouse_policy_watch_up 0/.test(await (await admin('/metrics')).text()), 'the watch to drop');
    await new Promise((r) => setTimeout(r, 1100));
    const ready = await admin('/readyz');
    // Still ready: it enforces the loaded policies, and says how stale they are.
    expect(ready.status).toBe(200);
    const status = (await ready.json()) as { policies: { state: string; staleSeconds: number } };
    expect(status.policies.state).not.toBe('watching');
    expect(status.policies.staleSeconds).toBeGreaterThan(1);
    await runner.stop();
    await proxy.close();
  });

  it('a runner whose watch resumes from a compacted revision reads everything again and enforces the latest', async () => {
    const proxy = await startTcpProxy(hostPort(etcd.endpoints[0]!));
    const runner = await launch(runnerEnv([proxy.url]));
    const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]);
    const viewer = await keys.token({ sub: 'v', role: 'viewer', project: 'compacted' });
    await writer.put('compacted', SEED_POLICY);
    await until(async () => statusOf(await decide(runner, chain, { headers: [bearer(viewer)] })) === 403, 'the first version');

    proxy.cut();
    await writer.put('compacted', SEED_POLICY.replace('"admin"', '"viewer"'));
    const head = await admin.get('/policies/compacted/meta').exec();
    await admin.kv.compact({ revision: head.header.revision, physical: true });
    proxy.restore();
    await until(async () => statusOf(await decide(runner, chain, { headers: [bearer(viewer)] })) === 'pass', 'the version written while cut off');
    await runner.stop();
    await proxy.close();
  });

  it('etcd restarted: the loaded policies keep deciding, and later writes arrive', async () => {
    const runner = await launch({ ...runnerEnv(etcd.endpoints), RUNNER_METRICS_PORT: '0' });
    const chain = conf(['jwt', {}], ['opa', { policies: ['caller-project'] }]);
    const viewer = await keys.token({ sub: 'v', role: 'viewer', project: 'restart' });
    await writer.put('restart', SEED_POLICY);
    await until(async () => statusOf(await decide(runner, chain, { headers: [bearer(viewer)] })) === 403, 'the policy');

    await etcd.stop();
    expect(statusOf(await decide(runner, chain, { headers: [bearer(viewer)] }))).toBe(403);
    await etcd.restart();
    admin.close();
    admin = createEtcdClient(etcd.endpoints);
    writer = new EtcdPolicyWriter(admin);
    await writer.put('restart', SEED_POLICY.replace('"admin"', '"viewer"'));
    await until(async () => statusOf(await decide(runner, chain, { headers: [bearer(viewer)] })) === 'pass', 'the write after the restart');
    await runner.stop();
  });
});
