// The stand-in's http-logger, against what APISIX 3.9.1's does (checked on
// the real one: test/e2e/streaming.test.ts runs the same plugin through
// both): one entry per response from log_format, sent after the response,
// the body collected while it streams, variables as ctx.var had them, the
// batch processor's sizes, timers and retries, and the conf checks.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parseRoutes, RouteConfigError, startStandin, type StandinHandle } from '../../tools/apisix-standin/index.js';
import { encodeBatch, parseHttpLoggerConf } from '../../tools/apisix-standin/http-logger.js';
import { startLogReceiver, type LogReceiver } from '../support/http-logger.js';
import { FakeRunner, reply } from './fake-runner.js';
import { startSlowUpstream, timedRead, type SlowUpstream } from './slow-upstream.js';

const PIECES = ['data: {"n":0}\n\n', 'data: {"n":1}\n\n', 'data: {"n":2}\n\n', 'data: [DONE]\n\n'];
const DELAY_MS = 80;
const text = (s: string) => new TextEncoder().encode(s);

let dir: string;
let fake: FakeRunner;
let upstream: SlowUpstream;
let logs: LogReceiver;
let standin: StandinHandle | null = null;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'standin-http-logger-'));
  fake = await FakeRunner.start();
  upstream = await startSlowUpstream({ headers: { 'content-type': 'text/event-stream' }, pieces: PIECES, delayMs: DELAY_MS });
  logs = await startLogReceiver();
});

afterEach(async () => {
  await standin?.stop();
  standin = null;
  await fake.close();
  await upstream.close();
  await logs.close();
  rmSync(dir, { recursive: true, force: true });
});

const FORMAT = {
  status: '$status',
  route: '$route_id',
  request_uri: '$request_uri',
  body: '$resp_body',
  project: '$http_x_project',
  absent: '$http_x_not_sent',
  kind: 'llm-call',
  route_id: 'overwritten by the route id',
  service_id: 'removed: the route has no service',
};

interface LoggerSpec {
  preReq?: boolean;
  logger?: Record<string, unknown>;
  pluginsListed?: string[];
}

function routesYaml(spec: LoggerSpec): string {
  const logger = { uri: `${logs.url}/logs?source=gw`, batch_max_size: 1, include_resp_body: true, log_format: FORMAT, ...spec.logger };
  const lines = ['routes:', '  - id: llm', '    uri: /llm/*', '    plugins:'];
  if (spec.preReq !== false) lines.push('      ext-plugin-pre-req:', '        conf:', '          - name: fake', `            value: '{}'`);
  // JSON is YAML: the conf as one flow mapping.
  lines.push(`      http-logger: ${JSON.stringify(logger)}`);
  lines.push('    upstream:', '      nodes:', `        "127.0.0.1:${upstream.port}": 1`, '#END', '');
  return lines.join('\n');
}

async function start(spec: LoggerSpec = {}): Promise<StandinHandle> {
  const routesPath = join(dir, 'apisix.yaml');
  writeFileSync(routesPath, routesYaml(spec));
  const configPath = join(dir, 'config.yaml');
  const plugins = spec.pluginsListed ?? ['ext-plugin-pre-req', 'ext-plugin-post-req', 'ext-plugin-post-resp', 'http-logger'];
  writeFileSync(configPath, `plugins:\n${plugins.map((p) => `  - ${p}\n`).join('')}`);
  standin = await startStandin({ routesPath, configPath, runnerSocketPath: fake.socketPath, reloadIntervalMs: null, readTimeoutMs: 2000, logger: pino({ level: 'silent' }) });
  return standin;
}

const setHeader = (name: string, value: string) => (req: { id: number }) =>
  reply.reqCall({ id: req.id, action: { type: 'rewrite', path: null, headers: [{ name, value }], args: [], respHeaders: [], body: null } });

describe('http-logger in the stand-in', () => {
  it('POSTs one entry per response, after it, built from log_format with the request as the upstream got it', async () => {
    fake.onReqCall = setHeader('x-project', 'team-a');
    await start();
    const res = await fetch(`${standin!.url}/llm/v1/chat?stream=1`, { headers: { 'x-project': 'spoofed' } });
    const { text: body, reads } = await timedRead(res.body!);
    // The client read the stream piece by piece: the logger held nothing back.
    expect(reads[0]!).toBeLessThan(upstream.writes[0]!.at(-1)!);
    expect(upstream.writes[0]!).toHaveLength(PIECES.length);
    const [log] = await logs.waitFor(1);
    expect(log!.at).toBeGreaterThanOrEqual(reads.at(-1)!);
    expect(log!.method).toBe('POST');
    expect(log!.url).toBe('/logs?source=gw');
    expect(log!.headers['content-type']).toBe('application/json');
    expect(log!.headers.host).toBe('127.0.0.1');
    expect(log!.headers.authorization).toBeUndefined();
    expect(JSON.parse(log!.body)).toEqual({
      status: '200',
      route: 'llm',
      request_uri: '/llm/v1/chat?stream=1',
      body,
      project: 'team-a',
      kind: 'llm-call',
      route_id: 'llm',
    });
    expect(body).toBe(PIECES.join(''));
    await new Promise((r) => setTimeout(r, 100));
    expect(logs.received).toHaveLength(1);
  });

  it('never holds the client up: a slow log server is answered after the client has its response', async () => {
    logs.setDelay(1500);
    await start({ preReq: false });
    const started = Date.now();
    const res = await fetch(`${standin!.url}/llm/x`);
    await timedRead(res.body!);
    const elapsed = Date.now() - started;
    expect(elapsed).toBeLessThan(PIECES.length * DELAY_MS + 1000);
    await logs.waitFor(1);
  });

  it('$resp_body is empty without include_resp_body; auth_header goes as Authorization', async () => {
    await start({ preReq: false, logger: { include_resp_body: false, auth_header: 'Bearer log-token', uri: `${logs.url}/logs` } });
    await (await fetch(`${standin!.url}/llm/x`)).text();
    const [log] = await logs.waitFor(1);
    expect(JSON.parse(log!.body).body).toBe('');
    expect(log!.headers.authorization).toBe('Bearer log-token');
    // As lua-resty-http sends it: the `?` of an empty query included.
    expect(log!.url).toBe('/logs?');
  });

  it('logs what the runner answered when it stopped the request', async () => {
    fake.onReqCall = (req) =>
      reply.reqCall({ id: req.id, action: { type: 'stop', status: 403, headers: [{ name: 'content-type', value: 'application/json' }], body: text('{"denied":true}') } });
    await start();
    expect((await fetch(`${standin!.url}/llm/x`)).status).toBe(403);
    const [log] = await logs.waitFor(1);
    expect(JSON.parse(log!.body)).toMatchObject({ status: '403', body: '{"denied":true}' });
    expect(upstream.writes).toHaveLength(0);
  });

  it("a client gone before the response began is logged with nginx's 499", async () => {
    fake.onReqCall = async (req) => {
      await new Promise((r) => setTimeout(r, 300));
      return reply.reqCall({ id: req.id, action: null });
    };
    await start();
    const controller = new AbortController();
    const pending = fetch(`${standin!.url}/llm/x`, { signal: controller.signal }).catch(() => null);
    setTimeout(() => controller.abort(), 50);
    await pending;
    const [log] = await logs.waitFor(1);
    expect(JSON.parse(log!.body)).toMatchObject({ status: '499', body: '' });
  });

  it('a variable the runner read keeps that value in the log, as ctx.var caches it, even after a Rewrite', async () => {
    let requestId: string | null = null;
    fake.onReqCall = async (req, ctx) => {
      const asked = await ctx.ask({ type: 'var', name: 'http_x_project' });
      requestId = Buffer.from((await ctx.ask({ type: 'var', name: 'request_id' }))!).toString();
      expect(asked === null ? null : Buffer.from(asked).toString()).toBe('from-client');
      return setHeader('x-project', 'team-a')(req);
    };
    await start({ logger: { log_format: { project: '$http_x_project', id: '$request_id' } } });
    await (await fetch(`${standin!.url}/llm/x`, { headers: { 'x-project': 'from-client' } })).text();
    const [log] = await logs.waitFor(1);
    const entry = JSON.parse(log!.body);
    expect(entry.project).toBe('from-client');
    expect(entry.id).toBe(requestId);
    expect(entry.id).toMatch(/^[0-9a-f]{32}$/);
  });

  it('batches: entries wait for batch_max_size or inactive_timeout and go as a JSON array; new_line joins lines', async () => {
    upstream.answer = { pieces: ['ok'], delayMs: 0 };
    await start({ preReq: false, logger: { batch_max_size: 3, inactive_timeout: 1, log_format: { uri: '$request_uri' } } });
    for (const n of [1, 2, 3, 4]) await (await fetch(`${standin!.url}/llm/${n}`)).text();
    const [full] = await logs.waitFor(1, 2000);
    expect(JSON.parse(full!.body)).toEqual([1, 2, 3].map((n) => ({ uri: `/llm/${n}`, route_id: 'llm' })));
    const sentAt = Date.now();
    const [, rest] = await logs.waitFor(2, 4000);
    // The fourth waited for the inactivity timer (checked every inactive_timeout).
    expect(rest!.at - sentAt).toBeGreaterThanOrEqual(500);
    expect(JSON.parse(rest!.body)).toEqual([{ uri: '/llm/4', route_id: 'llm' }]);

    const conf = parseHttpLoggerConf({ uri: 'http://h', batch_max_size: 2, concat_method: 'new_line', log_format: {} });
    expect(encodeBatch([{ a: 1 }, { b: 2 }], conf)).toBe('{"a":1}\n{"b":2}');
  });

  it('retries a refused batch max_retry_count times, retry_delay apart, then drops it', async () => {
    upstream.answer = { pieces: ['ok'], delayMs: 0 };
    logs.failNext(500, 500, 500);
    await start({ preReq: false, logger: { max_retry_count: 1, retry_delay: 0, log_format: { uri: '$request_uri' } } });
    await (await fetch(`${standin!.url}/llm/a`)).text();
    await logs.waitFor(2);
    await new Promise((r) => setTimeout(r, 300));
    expect(logs.received.map((l) => l.body)).toEqual(['{"uri":"/llm/a","route_id":"llm"}', '{"uri":"/llm/a","route_id":"llm"}']);
  });

  it('refuses a route whose http-logger config.yaml does not load (APISIX would skip it silently)', async () => {
    await expect(start({ pluginsListed: ['ext-plugin-pre-req'] })).rejects.toThrow(/not in config.yaml's plugins/);
  });
});

describe('http-logger conf', () => {
  const route = (logger: string) => `routes:\n  - id: r\n    uri: /r\n    plugins:\n      http-logger: ${logger}\n    upstream:\n      nodes:\n        "127.0.0.1:1": 1\n#END\n`;

  it("takes APISIX's schema and defaults", () => {
    const conf = parseHttpLoggerConf({ uri: 'http://127.0.0.1:9/x', log_format: { a: '$status' } });
    expect(conf).toMatchObject({
      timeout: 3,
      includeRespBody: false,
      concatMethod: 'json',
      authHeader: null,
      batch: { name: 'http logger', batchMaxSize: 1000, inactiveTimeout: 5, bufferDuration: 60, maxRetryCount: 0, retryDelay: 1 },
    });
  });

  it('refuses what it cannot honour rather than ignoring it', () => {
    const bad = [
      '{"log_format": {}}',
      '{"uri": "no-scheme", "log_format": {}}',
      '{"uri": "http://h", "log_format": {}, "include_resp_body_expr": [["status", "==", 200]]}',
      '{"uri": "http://h", "log_format": {"a": "$no_such_variable"}}',
      '{"uri": "http://h", "log_format": {"a": 1}}',
      '{"uri": "http://h"}',
      '{"uri": "http://h", "log_format": {}, "batch_max_size": 0}',
      '{"uri": "http://h", "log_format": {}, "include_resp_bdy": true}',
    ];
    for (const logger of bad) expect(() => parseRoutes(route(logger)), logger).toThrow(RouteConfigError);
    expect(parseRoutes(route('{"uri": "http://h", "log_format": {"a": "$http_x_y", "b": "$arg_q", "c": "$request_id"}}'))[0]!.httpLogger).not.toBeNull();
  });

  it('resolves ${{NAME}} and ${{NAME:=default}} as APISIX does, from the environment its workers see', () => {
    const text = route('{"uri": "http://127.0.0.1:${{LOG_PORT:=9092}}/u", "batch_max_size": "${{BATCH}}", "log_format": {}}');
    expect(parseRoutes(text, 1, 'x', { env: { BATCH: '5' } })[0]!.httpLogger).toMatchObject({ uri: 'http://127.0.0.1:9092/u', batch: { batchMaxSize: 5 } });
    expect(parseRoutes(text, 1, 'x', { env: { BATCH: '1', LOG_PORT: '7000' } })[0]!.httpLogger!.uri).toBe('http://127.0.0.1:7000/u');
    expect(() => parseRoutes(text, 1, 'x', { env: {} })).toThrow(/can't find environment variable BATCH/);
  });
});
