// An evaluation cannot hold more memory than POLICY_MEMORY_MAX_MB: past it,
// that decision fails closed, the instance is replaced, and the next
// decision of the same project runs in a fresh one.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { PolicyWriter } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { ApisixClient, request } from '../support/apisix-client.js';
import { createEtcdClient } from '../../etcd/index.js';
import { loadPolicyEngine } from '../../policy/engine/index.js';
import type { RewriteAction, StopAction } from '../../plugins/protocol/index.js';

// The size of the range comes from the request: a client picks how much the evaluation allocates.
const RUNAWAY = `package project.authz
import rego.v1
default allow := false
allow if count(numbers.range(1, to_number(input.request.query.n))) > 0
`;

let etcd: TestEtcd;
let admin: Etcd3;
let writer: PolicyWriter;
let keys: TestKeys;
let runner: RunnerProcess;

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcdClient(etcd.endpoints);
  writer = new PolicyWriter(admin);
  keys = await createTestKeys();
  await writer.put('runaway', RUNAWAY);
  runner = await startRunner({
    env: {
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      JWT_JWKS_FILE: keys.jwksFile,
      JWT_ISSUER: keys.issuer,
      JWT_AUDIENCE: keys.audience,
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-memory-')),
      POLICY_MEMORY_MAX_MB: '16',
    },
  });
});

afterAll(async () => {
  await runner?.stop();
  admin?.close();
  await etcd?.cleanup();
  await keys?.cleanup();
});

async function decide(n: number): Promise<number | 'pass'> {
  const client = await ApisixClient.open(runner.socketPath);
  try {
    const token = await client.prepare([
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: JSON.stringify({ policies: ['caller-project'] }) },
    ]);
    const bearer = await keys.token({ sub: 'u', role: 'r', project: 'runaway' });
    const answer = await client.call(
      request({ confToken: token, args: [{ name: 'n', value: String(n) }], headers: [{ name: 'authorization', value: `Bearer ${bearer}` }] }),
    );
    const action = answer.action as StopAction | RewriteAction | null;
    return action?.type === 'stop' ? action.status : 'pass';
  } finally {
    client.close();
  }
}

describe('evaluation memory', () => {
  it('an engine never grows past its ceiling: the evaluation that would is an error', async () => {
    const compiled = await writer.compiler.compile(RUNAWAY);
    const engine = await loadPolicyEngine(compiled.wasm, { data: '{}', maxMemoryBytes: 16 * 1024 * 1024 });
    const input = (n: number) => ({ request: { query: { n: String(n) } } });
    expect(engine.evaluate(input(1000), 'project/authz')).toMatchObject({ allow: true });
    expect(() => engine.evaluate(input(50_000_000), 'project/authz')).toThrow();
    expect(engine.memoryBytes).toBeLessThanOrEqual(16 * 1024 * 1024);
  });

  it('in the runner: the runaway request is denied (500), the next one of the same project is served by a fresh instance', async () => {
    const deadline = Date.now() + 10_000;
    while ((await decide(10)) !== 'pass') {
      if (Date.now() > deadline) throw new Error('policies did not load');
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(await decide(50_000_000)).toBe(500);
    expect(await decide(10)).toBe('pass');
    expect(await decide(50_000_000)).toBe(500);
    expect(await decide(1000)).toBe('pass');
  });
});
