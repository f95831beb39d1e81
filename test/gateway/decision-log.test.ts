// Decision logs: one event per decision with every field, credentials and
// routed masks applied, per-route off and sampling; a sink that does not keep
// up drops and counts events instead of holding decisions up.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../../etcd/index.js';
import { freePort } from '../../dev/apisix/index.js';
import { DecisionLog, maskInput, type DecisionEvent } from '../../policy/decision-log/index.js';
import { isCredentialHeader } from '../../http/credentials.js';
import { ALWAYS_STRIPPED } from '../../plugins/vault/index.js';
import type { StopAction } from '../../plugins/protocol/index.js';
import { ApisixClient, request } from '../support/apisix-client.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';

const event = (n: number): DecisionEvent => ({
  time: new Date().toISOString(),
  gateway: 'g',
  route: 'r',
  policies: [],
  result: 'allow',
  status: 200,
  latencyUs: n,
  input: { request: { headers: { authorization: 'Bearer secret' } } },
});

describe('the decision log itself', () => {
  it('masks credential headers always and the pointers a route names, leaving the rest', () => {
    const input = {
      request: { headers: { authorization: 'Bearer t', cookie: 'sid=1', 'x-api-key': 'k', accept: '*/*' }, query: { card: '4111', q: 'x' } },
      body: { password: 'p', user: 'u' },
    };
    const masked = maskInput(input, ['/request/query/card', '/body/password', '/not/there']) as typeof input;
    expect(masked.request.headers).toEqual({ authorization: '[masked]', cookie: '[masked]', 'x-api-key': '[masked]', accept: '*/*' });
    expect(masked.request.query).toEqual({ card: '[masked]', q: 'x' });
    expect(masked.body).toEqual({ password: '[masked]', user: 'u' });
    expect(input.body.password).toBe('p'); // the decision's own input is untouched
  });

  it('masks every credential shape: header names in any case, api-key, credential query parameters, a query string in the path', () => {
    const input = {
      request: {
        path: '/deployments/x?api-version=2024&key=PATH-KEY-1&Access_Token=PATH-TOKEN-1',
        headers: {
          Authorization: 'Bearer CALLER-TOKEN-1',
          'Proxy-Authorization': 'Basic PROXY-1',
          Cookie: 'sid=COOKIE-1',
          'Set-Cookie': 'sid=COOKIE-2',
          'api-key': 'AZURE-KEY-SECRET-1',
          'X-API-KEY': 'ANTHROPIC-KEY-1',
          'X-Gatehouse-Token': 'GH-TOKEN-1',
          Accept: '*/*',
        },
        query: { key: 'QUERY-KEY-1', API_KEY: 'QUERY-KEY-2', token: ['QUERY-TOKEN-1', 'QUERY-TOKEN-2'], access_token: 'QUERY-TOKEN-3', q: 'x' },
      },
    };
    const masked = maskInput(input, []) as typeof input;
    expect(masked.request.headers).toEqual({
      Authorization: '[masked]',
      'Proxy-Authorization': '[masked]',
      Cookie: '[masked]',
      'Set-Cookie': '[masked]',
      'api-key': '[masked]',
      'X-API-KEY': '[masked]',
      'X-Gatehouse-Token': '[masked]',
      Accept: '*/*',
    });
    expect(masked.request.query).toEqual({ key: '[masked]', API_KEY: '[masked]', token: '[masked]', access_token: '[masked]', q: 'x' });
    expect(masked.request.path).toBe('/deployments/x?api-version=2024&key=[masked]&Access_Token=[masked]');
    expect(JSON.stringify(masked)).not.toMatch(/CALLER-TOKEN|PROXY-1|COOKIE-|AZURE-KEY|ANTHROPIC-KEY|GH-TOKEN|QUERY-KEY|QUERY-TOKEN|PATH-KEY|PATH-TOKEN/);
    // Every header the vault plugin always strips, and the one it injects by default, is a credential.
    for (const name of [...ALWAYS_STRIPPED, 'authorization']) expect([name, isCredentialHeader(name)]).toEqual([name, true]);
  });

  it('a sink that never drains: emit returns at once, the buffer stays bounded, the rest is dropped and counted', async () => {
    const stalled = new Writable({ highWaterMark: 1024, write: () => undefined }); // never calls back
    let dropped = 0;
    const log = new DecisionLog(stalled, { maxBuffered: 100, onDropped: (n) => (dropped += n) });
    const started = performance.now();
    for (let i = 0; i < 10_000; i++) log.emit(event(i));
    const emitMs = performance.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 50));
    for (let i = 0; i < 1_000; i++) log.emit(event(i));
    expect(log.stats.buffered).toBeLessThanOrEqual(100);
    expect(dropped).toBeGreaterThan(10_000);
    expect(log.stats.dropped).toBe(dropped);
    console.log(`10,000 events into a stalled sink: ${emitMs.toFixed(1)} ms in emit() (${((emitMs * 1000) / 10_000).toFixed(2)} µs each), ${dropped} dropped`);
  });
});

/** Waits until the runner decides (its policies loaded), asking on a route whose decisions are not logged. */
async function untilDecided(runner: RunnerProcess, token: string): Promise<void> {
  const client = await ApisixClient.open(runner.socketPath);
  try {
    const confToken = await client.prepare([
      { name: 'jwt', value: '{}' },
      { name: 'opa', value: '{"policies":["project:team"],"decision_log":false}' },
    ]);
    const deadline = Date.now() + 15_000;
    for (;;) {
      const answer = await client.call(request({ confToken, headers: [{ name: 'authorization', value: `Bearer ${token}` }] }));
      if (answer.action?.type !== 'stop' || (answer.action as StopAction).status !== 503) return;
      if (Date.now() > deadline) throw new Error('the runner did not load its policies');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    client.close();
  }
}

describe('decision logs from a runner', () => {
  let etcd: TestEtcd;
  let admin: Etcd3;
  let keys: TestKeys;
  let runner: RunnerProcess;
  let logFile: string;

  beforeAll(async () => {
    etcd = await startEtcd();
    admin = createEtcdClient(etcd.endpoints);
    keys = await createTestKeys();
    await new EtcdPolicyWriter(admin).put('team', 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "admin"\n');
    logFile = join(mkdtempSync(join(tmpdir(), 'gh-dlog-')), 'decisions.log');
    runner = await startRunner({ env: runnerEnv({ DECISION_LOG: `file:${logFile}`, GATEWAY_ID: 'gw-test' }) });
  });

  /** A runner on the test etcd, trusting the test keys, with its decision log set by `extra`. */
  const runnerEnv = (extra: Record<string, string>) => ({
    ETCD_ENDPOINTS: etcd.endpoints.join(','),
    RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-state-')),
    ...keys.env,
    // The vault plugin needs a Vault configured to take a conf; none is reached (the tests read only decisions).
    VAULT_ADDR: 'http://127.0.0.1:1',
    VAULT_TOKEN: 'unused',
    ...extra,
  });

  afterAll(async () => {
    await runner?.stop();
    admin?.close();
    await etcd?.cleanup();
    await keys?.cleanup();
  });

  async function calls(opaConf: object, token: string, count: number, key = 'route#orders#ext-plugin-pre-req#1') {
    const client = await ApisixClient.open(runner.socketPath);
    try {
      const confToken = await client.prepare(
        [
          { name: 'jwt', value: '{}' },
          { name: 'opa', value: JSON.stringify({ policies: ['project:team'], ...opaConf }) },
        ],
        key,
      );
      const statuses: (number | 'pass')[] = [];
      for (let i = 0; i < count; i++) {
        const answer = await client.call(
          request({
            confToken,
            path: '/orders',
            args: [{ name: 'card', value: '4111' }],
            headers: [
              { name: 'authorization', value: `Bearer ${token}` },
              { name: 'cookie', value: 'sid=42' },
              { name: 'x-api-key', value: 'k-123' },
            ],
          }),
        );
        statuses.push(answer.action?.type === 'stop' ? (answer.action as StopAction).status : 'pass');
      }
      return statuses;
    } finally {
      client.close();
    }
  }

  const lines = () =>
    readFileSync(logFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, any>);
  async function linesAfter(count: number) {
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline) {
      try {
        if (lines().length >= count) return lines();
      } catch {
        // not written yet
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return lines();
  }

  it('one event per decision, with every field; the token, cookies and the route-masked input never written', async () => {
    const adminToken = await keys.token({ sub: 'ada', role: 'admin', project: 'team' });
    // Policies load after the socket opens: wait for the first real decision (on a route that logs nothing).
    await untilDecided(runner, adminToken);
    const viewerToken = await keys.token({ sub: 'val', role: 'viewer', project: 'team' });
    expect(await calls({ decision_log: { mask: ['/request/query/card'] } }, adminToken, 1)).toEqual(['pass']);
    expect(await calls({ decision_log: { mask: ['/request/query/card'] } }, viewerToken, 1)).toEqual([403]);
    const [allowed, denied] = await linesAfter(2);
    for (const line of [allowed!, denied!]) {
      expect(Object.keys(line).sort()).toEqual(['gateway', 'input', 'latencyUs', 'policies', 'result', 'route', 'status', 'time']);
      expect(line.gateway).toBe('gw-test');
      expect(line.route).toBe('orders');
      expect(line.policies).toEqual([{ name: 'team', version: 1, revision: expect.any(Number), result: line.result }]);
      expect(line.policies[0].revision).toBeGreaterThan(0);
      expect(typeof line.latencyUs).toBe('number');
      expect(new Date(line.time).getTime()).toBeGreaterThan(Date.now() - 60_000);
      // The policy input never holds the token, cookies or API keys.
      expect(line.input.request.headers).not.toHaveProperty('authorization');
      expect(line.input.request.headers).not.toHaveProperty('cookie');
      expect(line.input.request.headers).not.toHaveProperty('x-api-key');
      expect(JSON.stringify(line)).not.toContain('k-123');
      expect(JSON.stringify(line)).not.toContain('sid=42');
      expect(line.input.request.query.card).toBe('[masked]');
      expect(line.input.request.path).toBe('/orders');
      expect(JSON.stringify(line)).not.toContain(adminToken.split('.')[2]);
    }
    expect(allowed).toMatchObject({ result: 'allow', status: 200, input: { user: { sub: 'ada', role: 'admin' } } });
    expect(denied).toMatchObject({ result: 'deny', status: 403, input: { user: { sub: 'val' } } });
  });

  it("credentials in any shape never reach the policy input nor the log: api-key, query keys and tokens, the route's vault headers", async () => {
    const adminToken = await keys.token({ sub: 'ada', role: 'admin', project: 'team' });
    await untilDecided(runner, adminToken);
    const client = await ApisixClient.open(runner.socketPath);
    let answer;
    try {
      const confToken = await client.prepare(
        [
          { name: 'jwt', value: '{"forward_identity":false}' },
          { name: 'opa', value: '{"policies":["project:team"]}' },
          // Strips the client's x-llm-key and x-upstream-secret, injects x-llm-key (its Vault is not reached here).
          {
            name: 'vault',
            value: JSON.stringify({ path: 'llm/{project}', field: 'api_key', header: 'X-LLM-Key', format: '{value}', strip_headers: ['x-upstream-secret'] }),
          },
        ],
        'route#creds#ext-plugin-pre-req#1',
      );
      answer = await client.call(
        request({
          confToken,
          path: '/openai/deployments/gpt/chat/completions',
          args: [
            { name: 'api-version', value: '2024-06-01' },
            { name: 'key', value: 'QUERY-KEY-1' },
            { name: 'API_KEY', value: 'QUERY-KEY-2' },
            { name: 'access_token', value: 'QUERY-TOKEN-1' },
            { name: 'Token', value: 'QUERY-TOKEN-2' },
          ],
          headers: [
            { name: 'Authorization', value: `Bearer ${adminToken}` },
            { name: 'api-key', value: 'AZURE-KEY-SECRET-1' },
            { name: 'Set-Cookie', value: 'sid=COOKIE-1' },
            { name: 'x-gatehouse-token', value: 'GH-TOKEN-1' },
            { name: 'X-LLM-Key', value: 'CLIENT-LLM-KEY-1' },
            { name: 'x-upstream-secret', value: 'UPSTREAM-SECRET-1' },
            { name: 'accept', value: 'application/json' },
          ],
        }),
      );
    } finally {
      client.close();
    }
    // The policy allowed; the unreachable Vault then refused.
    expect((answer.action as StopAction).status).toBe(503);
    const deadline = Date.now() + 5_000;
    let line: Record<string, any> | undefined;
    while (!(line = lines().find((l) => l.route === 'creds')) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    expect(line).toMatchObject({ result: 'allow', status: 200 });
    expect(line!.input.request.headers).toEqual({ accept: 'application/json' });
    expect(line!.input.request.query).toEqual({ 'api-version': '2024-06-01' });
    expect(JSON.stringify(line)).not.toMatch(/QUERY-KEY|QUERY-TOKEN|AZURE-KEY|COOKIE-1|GH-TOKEN|CLIENT-LLM-KEY|UPSTREAM-SECRET/);
    expect(JSON.stringify(line)).not.toContain(adminToken.split('.')[2]);
  });

  it('a route can turn its log off, or sample it', async () => {
    const adminToken = await keys.token({ sub: 'ada', role: 'admin', project: 'team' });
    const before = lines().length;
    await calls({ decision_log: false }, adminToken, 20, 'route#quiet#ext-plugin-pre-req#1');
    await calls({ decision_log: { sample: 0.5 } }, adminToken, 200, 'route#sampled#ext-plugin-pre-req#1');
    await new Promise((resolve) => setTimeout(resolve, 300));
    const added = lines().slice(before);
    expect(added.filter((line) => line.route === 'quiet')).toHaveLength(0);
    const sampled = added.filter((line) => line.route === 'sampled').length;
    expect(sampled).toBeGreaterThan(50);
    expect(sampled).toBeLessThan(150);
  });

  it('a sink that does not read (a pipe whose reader never reads): every decision is still made, the events are dropped and counted', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'gh-dlog-fifo-'));
    const fifo = join(dir, 'decisions.fifo');
    execFileSync('mkfifo', [fifo]);
    // A reader that opens the pipe and never reads: once the pipe's buffer is full, every write waits.
    const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const metricsPort = await freePort();
    const stuck = await startRunner({ env: runnerEnv({ DECISION_LOG: `file:${fifo}`, DECISION_LOG_BUFFER: '50', RUNNER_METRICS_PORT: String(metricsPort) }) });
    try {
      const adminToken = await keys.token({ sub: 'ada', role: 'admin', project: 'team' });
      const client = await ApisixClient.open(stuck.socketPath);
      const confToken = await client.prepare([
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"policies":["project:team"]}' },
      ]);
      await untilDecided(stuck, adminToken);
      let passed = 0;
      for (let i = 0; i < 2_000; i++) {
        // Big inputs, so the pipe's buffer fills quickly.
        const answer = await client.call(
          request({ confToken, path: `/${'x'.repeat(2_000)}`, headers: [{ name: 'authorization', value: `Bearer ${adminToken}` }] }),
        );
        if (answer.action?.type !== 'stop') passed++;
      }
      client.close();
      expect(passed).toBe(2_000);
      const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const dropped = Number(/gatehouse_decision_log_events_total\{outcome="dropped"\} (\d+)/.exec(metrics)?.[1] ?? 0);
      // At most what the buffer and the stream's own buffer hold got through; the rest is counted.
      expect(dropped).toBeGreaterThan(1_000);
    } finally {
      // Closing the reader ends the runner's stuck write (EPIPE), so it can stop.
      closeSync(reader);
      await stuck.stop();
    }
  }, 60_000);
});
