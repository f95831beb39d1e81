// The stand-in's APISIX side of the protocol, driven against a scripted
// fake runner: token handling, the second-connection PrepareConf, retries,
// failure statuses, ExtraInfo and how answers reach the client and upstream.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { request } from 'undici';
import { startStandin, type StandinHandle, type StandinOptions } from '../../tools/apisix-standin/index.js';
import { RpcType } from '../../plugins/protocol/index.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';
import { FakeRunner, reply } from './fake-runner.js';

const silent = pino({ level: 'silent' });
const text = (s: string) => new TextEncoder().encode(s);
const decode = (b: Uint8Array | null) => (b === null ? null : Buffer.from(b).toString());

let dir: string;
let fake: FakeRunner;
let upstream: RecordingUpstream;
let standin: StandinHandle | null = null;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'standin-client-'));
  fake = await FakeRunner.start();
  upstream = await startRecordingUpstream({ status: 200, body: 'from upstream', headers: { 'x-up': 'u', 'content-type': 'text/plain' } });
});

afterEach(async () => {
  await standin?.stop();
  standin = null;
  await fake.close();
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

interface RouteSpec {
  id?: string;
  uri?: string;
  phases?: Partial<Record<'ext-plugin-pre-req' | 'ext-plugin-post-req' | 'ext-plugin-post-resp', { value?: string; degrade?: boolean }>>;
}

function routesYaml(specs: RouteSpec[]): string {
  const lines = ['routes:'];
  for (const spec of specs) {
    lines.push(`  - id: ${spec.id ?? 'r1'}`, `    uri: ${spec.uri ?? '/*'}`);
    const phases = Object.entries(spec.phases ?? {});
    if (phases.length > 0) lines.push('    plugins:');
    for (const [phase, conf] of phases) {
      lines.push(
        `      ${phase}:`,
        '        conf:',
        '          - name: fake',
        `            value: '${conf.value ?? '{}'}'`,
        `        allow_degradation: ${conf.degrade ?? false}`,
      );
    }
    lines.push('    upstream:', '      nodes:', `        "127.0.0.1:${upstream.port}": 1`);
  }
  lines.push('#END', '');
  return lines.join('\n');
}

async function start(specs: RouteSpec[], options: StandinOptions = {}): Promise<StandinHandle> {
  const routesPath = join(dir, 'apisix.yaml');
  writeFileSync(routesPath, routesYaml(specs));
  standin = await startStandin({
    routesPath,
    runnerSocketPath: fake.socketPath,
    reloadIntervalMs: null,
    readTimeoutMs: 400,
    logger: silent,
    ...options,
  });
  return standin;
}

const preReq = (degrade = false): RouteSpec => ({ phases: { 'ext-plugin-pre-req': { degrade } } });

async function get(path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  const res = await request(`${standin!.url}${path}`, {
    method: (init.method ?? 'GET') as 'GET',
    headers: init.headers,
    body: init.body,
  });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

describe('HTTPReqCall as APISIX builds it', () => {
  it('sends the normalised path, args, lower-cased headers with the upstream host, method, src_ip and the token; first id is 0', async () => {
    await start([preReq()]);
    const res = await get('/a//b/./c/../d%20e?x=1&x=2&flag', { headers: { 'X-Custom': 'v', Host: 'client.example' } });
    expect(res.status).toBe(200);
    expect(res.body).toBe('from upstream');
    const call = fake.reqCalls[0]!;
    expect(call.id).toBe(0);
    expect(call.path).toBe('/a/b/d e');
    expect(call.method).toBe('GET');
    expect([...call.srcIp]).toEqual([127, 0, 0, 1]);
    expect(call.args).toEqual([
      { name: 'x', value: '1' },
      { name: 'x', value: '2' },
      { name: 'flag', value: null },
    ]);
    expect(call.headers).toContainEqual({ name: 'x-custom', value: 'v' });
    expect(call.headers).toContainEqual({ name: 'host', value: 'client.example' });
    expect(call.confToken).toBe(1000);
    expect(fake.prepared[0]).toEqual({ conf: [{ name: 'fake', value: '{}' }], key: 'route#r1#ext-plugin-pre-req#1' });
    // The upstream got the encoded normalised path and the query as sent.
    expect(upstream.last().url).toBe('/a/b/d%20e?x=1&x=2&flag');

    await get('/next');
    expect(fake.reqCalls[1]!.id).toBe(1);
  });

  it('opens the call connection first and sends PrepareConf on a second one, then reuses both', async () => {
    await start([preReq()]);
    await get('/one');
    expect(fake.frames.map((f) => [f.type, f.connection])).toEqual([
      [RpcType.PrepareConf, 2],
      [RpcType.HTTPReqCall, 1],
    ]);
    // The call's connection was already open, idle, while PrepareConf arrived.
    expect(fake.frames[0]!.openConnections).toEqual([1, 2]);

    await get('/two');
    expect(fake.prepared).toHaveLength(1);
    expect(fake.connectionsOpened).toBe(2);
    expect(fake.reqCalls[1]!.confToken).toBe(1000);
  });

  it('a runner serving one connection at a time deadlocks until the read timeout, then 503', async () => {
    await fake.close();
    // Serves connections strictly one after another: the second is not read until the first closes.
    const sockDir = mkdtempSync(join(tmpdir(), 'serial-runner-'));
    const socketPath = join(sockDir, 's.sock');
    const queue: Socket[] = [];
    const server = createServer((socket) => {
      socket.pause();
      queue.push(socket);
    });
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    try {
      const started = Date.now();
      await start([preReq()], { runnerSocketPath: socketPath, readTimeoutMs: 500 });
      const res = await get('/x');
      expect(res.status).toBe(503);
      expect(Date.now() - started).toBeGreaterThanOrEqual(500);
      expect(queue.length).toBe(2);
      expect(upstream.requests).toHaveLength(0);
    } finally {
      await standin?.stop();
      standin = null;
      for (const s of queue) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(sockDir, { recursive: true, force: true });
      fake = await FakeRunner.start();
    }
  });

  it('answers 500 for a method outside the enum, without sending HTTPReqCall', async () => {
    await start([preReq()]);
    const res = await get('/x', { method: 'PURGE' });
    expect(res.status).toBe(500);
    expect(fake.reqCalls).toHaveLength(0);
    expect(upstream.requests).toHaveLength(0);
  });
});

describe('CONF_TOKEN_NOT_FOUND', () => {
  it('flushes the cache, re-prepares and retries: 3 attempts in all, then 503', async () => {
    fake.onReqCall = () => reply.error('CONF_TOKEN_NOT_FOUND');
    await start([preReq()]);
    const res = await get('/x');
    expect(res.status).toBe(503);
    expect(fake.reqCalls).toHaveLength(3);
    expect(fake.prepared).toHaveLength(3);
    expect(standin!.stats().tokenFlushes).toBe(3);
    expect(upstream.requests).toHaveLength(0);
  });

  it('succeeds on the retry with the new token', async () => {
    fake.onReqCall = (req) => (req.confToken === 1000 ? reply.error('CONF_TOKEN_NOT_FOUND') : reply.reqCall({ id: req.id, action: null }));
    await start([preReq()]);
    const res = await get('/x');
    expect(res.status).toBe(200);
    expect(fake.reqCalls.map((c) => c.confToken)).toEqual([1000, 1001]);
  });

  it('lets the request through after 3 attempts when allow_degradation is set', async () => {
    fake.onReqCall = () => reply.error('CONF_TOKEN_NOT_FOUND');
    await start([preReq(true)]);
    expect((await get('/x')).status).toBe(200);
    expect(fake.reqCalls).toHaveLength(3);
    expect(upstream.requests).toHaveLength(1);
  });
});

describe('runner failures', () => {
  const failures: [string, () => void][] = [
    ['Err BAD_REQUEST', () => (fake.onReqCall = () => reply.error('BAD_REQUEST'))],
    ['Err SERVICE_UNAVAILABLE', () => (fake.onReqCall = () => reply.error('SERVICE_UNAVAILABLE'))],
    ['a PrepareConf Err (unknown plugin)', () => (fake.onPrepare = () => reply.error('BAD_REQUEST'))],
    ['the connection closed mid-call', () => (fake.onReqCall = () => 'close')],
    ['no answer within the read timeout', () => (fake.onReqCall = () => 'silent')],
    ['a frame of the wrong type', () => (fake.onReqCall = () => reply.token(5))],
    ['an unknown frame type', () => (fake.onReqCall = () => reply.raw(9, text('x')))],
  ];

  it.each(failures)('%s: 503, nothing proxied', async (_name, arrange) => {
    arrange();
    await start([preReq()]);
    const res = await get('/x');
    expect(res.status).toBe(503);
    expect(res.body).toContain('503 Service Temporarily Unavailable');
    expect(upstream.requests).toHaveLength(0);
  });

  it.each(failures)('%s with allow_degradation: the request goes through', async (_name, arrange) => {
    arrange();
    await start([preReq(true)]);
    const res = await get('/x');
    expect(res.status).toBe(200);
    expect(upstream.requests).toHaveLength(1);
  });

  it('connection refused: 503, or through with allow_degradation', async () => {
    await fake.close();
    const missing = join(dir, 'nobody-listens.sock');
    await start([{ id: 'strict', uri: '/strict', ...preReq() }, { id: 'lenient', uri: '/lenient', ...preReq(true) }], {
      runnerSocketPath: missing,
      waitForRunnerMs: 0,
    });
    expect((await get('/strict')).status).toBe(503);
    expect((await get('/lenient')).status).toBe(200);
    expect(upstream.requests.map((r) => r.url)).toEqual(['/lenient']);
    fake = await FakeRunner.start();
  });

  it.each([
    ['a garbage HTTPReqCall payload', () => reply.raw(RpcType.HTTPReqCall, text('garbage!'))],
    ['an empty HTTPReqCall payload', () => reply.raw(RpcType.HTTPReqCall, new Uint8Array(0))],
    ['an empty Err payload', () => reply.raw(RpcType.Error, new Uint8Array(0))],
  ])('%s is a 500 that allow_degradation does not catch', async (_name, answer) => {
    fake.onReqCall = answer;
    await start([{ id: 'strict', uri: '/strict', ...preReq() }, { id: 'lenient', uri: '/lenient', ...preReq(true) }]);
    expect((await get('/strict')).status).toBe(500);
    expect((await get('/lenient')).status).toBe(500);
    expect(upstream.requests).toHaveLength(0);
  });
});

describe('ExtraInfo', () => {
  it('answers variables, unknown ones without result, and the request body', async () => {
    const seen: Record<string, string | null> = {};
    fake.onReqCall = async (req, ctx) => {
      for (const name of ['remote_addr', 'server_port', 'route_id', 'request_method', 'request_uri', 'uri', 'host', 'scheme', 'nope']) {
        seen[name] = decode(await ctx.ask({ type: 'var', name }));
      }
      seen.body = decode(await ctx.ask({ type: 'reqBody' }));
      seen.respBody = decode(await ctx.ask({ type: 'respBody' }));
      return reply.reqCall({ id: req.id, action: null });
    };
    await start([preReq()]);
    const res = await get('/v//w?q=1', { method: 'POST', body: 'the body', headers: { host: 'Some.Host:81' } });
    expect(res.status).toBe(200);
    expect(seen).toEqual({
      remote_addr: '127.0.0.1',
      server_port: String(standin!.port),
      route_id: 'r1',
      request_method: 'POST',
      request_uri: '/v//w?q=1',
      uri: '/v/w',
      host: 'some.host',
      scheme: 'http',
      nope: null,
      body: 'the body',
      respBody: null,
    });
  });

  it('gives no result for an empty request body', async () => {
    let body: string | null = 'unset';
    fake.onReqCall = async (req, ctx) => {
      body = decode(await ctx.ask({ type: 'reqBody' }));
      return reply.reqCall({ id: req.id, action: null });
    };
    await start([preReq()]);
    await get('/x');
    expect(body).toBeNull();
  });
});

describe('answers applied', () => {
  it('Stop answers the client without the upstream; status 0 is 200', async () => {
    fake.onReqCall = (req) =>
      reply.reqCall({
        id: req.id,
        action: { type: 'stop', status: 0, headers: [{ name: 'X-Stop', value: '1' }, { name: 'x-stop', value: '2' }], body: text('stopped') },
      });
    await start([preReq()]);
    const res = await get('/x');
    expect(res.status).toBe(200);
    expect(res.body).toBe('stopped');
    expect(res.headers['x-stop']).toEqual(['1', '2']);
    expect(upstream.requests).toHaveLength(0);
  });

  it("a Stop without body gets nginx's error page", async () => {
    fake.onReqCall = (req) => reply.reqCall({ id: req.id, action: { type: 'stop', status: 403, headers: [], body: null } });
    await start([preReq()]);
    const res = await get('/x');
    expect(res.status).toBe(403);
    expect(res.headers['content-type']).toMatch(/text\/html/);
    expect(res.body).toContain('<h1>403 Forbidden</h1>');
  });

  it('Rewrite changes path, headers, args, host, body and the client response headers', async () => {
    fake.onReqCall = (req) =>
      reply.reqCall({
        id: req.id,
        action: {
          type: 'rewrite',
          path: '/new place',
          headers: [
            { name: 'x-added', value: 'v' },
            { name: 'x-removed', value: null },
            { name: 'host', value: 'rewritten.host' },
          ],
          args: [
            { name: 'a', value: 'A' },
            { name: 'b', value: null },
          ],
          respHeaders: [
            { name: 'x-resp', value: '1' },
            { name: 'content-type', value: 'ignored/type' },
          ],
          body: text('new body'),
        },
      });
    await start([preReq()]);
    const res = await get('/old?a=1&b=2&c=3', { method: 'POST', body: 'old body', headers: { 'x-removed': 'spoofed' } });
    expect(res.status).toBe(200);
    expect(res.headers['x-resp']).toBe('1');
    expect(res.headers['content-type']).toBe('text/plain');
    const seen = upstream.last();
    expect(seen.url).toBe('/new%20place?a=A&c=3');
    expect(seen.headers['x-added']).toBe('v');
    expect(seen.headers['x-removed']).toBeUndefined();
    expect(seen.headers.host).toBe('rewritten.host');
    expect(seen.body.toString()).toBe('new body');
    expect(seen.headers['content-length']).toBe('8');
  });

  it('a path-only Rewrite drops the query (APISIX before #13080) unless configured otherwise', async () => {
    fake.onReqCall = (req) =>
      reply.reqCall({ id: req.id, action: { type: 'rewrite', path: '/p', headers: [], args: [], respHeaders: [], body: null } });
    await start([preReq()]);
    await get('/x?keep=1');
    expect(upstream.last().url).toBe('/p');
    await standin!.stop();
    standin = null;
    await start([preReq()], { keepQueryOnPathRewrite: true });
    await get('/x?keep=1');
    expect(upstream.last().url).toBe('/p?keep=1');
  });

  it('post-req sees the path pre-req set (still encoded) and has its own token', async () => {
    fake.onReqCall = (req) =>
      req.confToken === 1000
        ? reply.reqCall({ id: req.id, action: { type: 'rewrite', path: '/a b', headers: [], args: [{ name: 'z', value: '1' }], respHeaders: [], body: null } })
        : reply.reqCall({ id: req.id, action: null });
    await start([{ phases: { 'ext-plugin-pre-req': {}, 'ext-plugin-post-req': { value: '{"second":true}' } } }]);
    await get('/x');
    expect(fake.prepared.map((p) => p.key)).toEqual(['route#r1#ext-plugin-pre-req#1', 'route#r1#ext-plugin-post-req#1']);
    expect(fake.reqCalls[1]!.path).toBe('/a%20b');
    expect(fake.reqCalls[1]!.args).toEqual([{ name: 'z', value: '1' }]);
    expect(upstream.last().url).toBe('/a%20b?z=1');
  });
});

describe('ext-plugin-post-resp', () => {
  const postResp: RouteSpec = { phases: { 'ext-plugin-post-resp': {} } };

  it('sends the upstream status and headers, serves RespBody once, and applies the answer', async () => {
    const bodies: (string | null)[] = [];
    fake.onRespCall = async (req, ctx) => {
      bodies.push(decode(await ctx.ask({ type: 'respBody' })));
      bodies.push(decode(await ctx.ask({ type: 'respBody' })));
      return reply.respCall({ id: req.id, status: 299, headers: [{ name: 'X-Post', value: '1' }], body: text('changed') });
    };
    await start([postResp]);
    const res = await get('/x');
    expect(fake.respCalls[0]!.status).toBe(200);
    expect(fake.respCalls[0]!.headers).toContainEqual({ name: 'x-up', value: 'u' });
    expect(bodies).toEqual(['from upstream', null]);
    expect(res.status).toBe(299);
    expect(res.body).toBe('changed');
    expect(res.headers['x-post']).toBe('1');
    // Returned headers replace all of the upstream's.
    expect(res.headers['x-up']).toBeUndefined();
  });

  it('status 0 and no body keeps the response; no headers keeps the upstream ones minus the exclusion list', async () => {
    await start([postResp]);
    const res = await get('/x');
    expect(res.status).toBe(200);
    expect(res.body).toBe('from upstream');
    expect(res.headers['x-up']).toBe('u');
    // content-type is on APISIX's exclusion list: nginx's default type replaces it.
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
  });

  it('a runner failure gives 503 (with the upstream body, as APISIX sends it)', async () => {
    fake.onRespCall = () => reply.error('SERVICE_UNAVAILABLE');
    await start([postResp]);
    const res = await get('/x');
    expect(res.status).toBe(503);
    expect(res.body).toBe('from upstream');
  });
});

describe('gateway behaviour around the runner', () => {
  it('answers 404 with APISIX error_msg when no route matches', async () => {
    await start([{ uri: '/only' }]);
    const res = await get('/other');
    expect(res.status).toBe(404);
    expect(JSON.parse(res.body)).toEqual({ error_msg: '404 Route Not Found' });
  });

  it('answers 413 above the body limit', async () => {
    await start([preReq()], { bodyLimitBytes: 10 });
    const res = await get('/x', { method: 'POST', body: 'x'.repeat(11) });
    expect(res.status).toBe(413);
    expect(fake.reqCalls).toHaveLength(0);
  });

  it('a changed routes file gives new conf versions, hence a new PrepareConf', async () => {
    await start([preReq()]);
    await get('/x');
    writeFileSync(join(dir, 'apisix.yaml'), routesYaml([{ phases: { 'ext-plugin-pre-req': { value: '{"v":2}' } } }]));
    standin!.reloadRoutes();
    await get('/x');
    expect(fake.prepared.map((p) => [p.key, p.conf[0]!.value])).toEqual([
      ['route#r1#ext-plugin-pre-req#1', '{}'],
      ['route#r1#ext-plugin-pre-req#2', '{"v":2}'],
    ]);
  });

  it('re-reads the routes file every interval, ignoring a file without #END', async () => {
    await start([{ uri: '/first' }], { reloadIntervalMs: 50 });
    const routesPath = join(dir, 'apisix.yaml');
    writeFileSync(routesPath, routesYaml([{ uri: '/second' }]).replace('#END', ''));
    await new Promise((r) => setTimeout(r, 300));
    expect((await get('/first')).status).toBe(200);
    writeFileSync(routesPath, routesYaml([{ uri: '/second' }]));
    const deadline = Date.now() + 3000;
    while ((await get('/second')).status !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect((await get('/second')).status).toBe(200);
    expect((await get('/first')).status).toBe(404);
  });
});
