// Conformance of the runner to APISIX's ext-plugin protocol, driven only
// through its socket, as APISIX would (../shared/reference/apisix-ext-plugin.md).
// One runner process here; conformance-workers.test.ts runs the same suite
// against a runner of several worker processes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as flatbuffers from 'flatbuffers';
import { Req as FbReqCallReq } from '../../plugins/protocol/generated/a6/httpreq-call/req.js';
import { TextEntry as FbTextEntry } from '../../plugins/protocol/generated/a6/text-entry.js';
import { existsSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { createHash } from 'node:crypto';
import {
  RpcType,
  decodeErrorResponse,
  encodeExtraInfoResponse,
  encodeFrame,
  encodeHttpReqCallRequest,
  encodePrepareConfRequest,
  MAX_PAYLOAD_SIZE,
  type RewriteAction,
  type StopAction,
} from '../../plugins/protocol/index.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { ApisixClient, RunnerError, openConnection, request, text } from '../support/apisix-client.js';

const example = (conf: object) => ({ name: 'example', value: JSON.stringify(conf) });
const json = (bytes: Uint8Array | null) => JSON.parse(text(bytes) ?? 'null');

let runner: RunnerProcess;
let client: ApisixClient;

beforeAll(async () => {
  runner = await startRunner({ env: { RUNNER_WORKERS: process.env.CONFORMANCE_RUNNER_WORKERS ?? '1' } });
  client = await ApisixClient.open(runner.socketPath);
});

afterAll(async () => {
  client?.close();
  await runner?.stop();
});

/** Logs are written asynchronously: wait for a line to appear. */
async function expectLog(pattern: RegExp) {
  const deadline = Date.now() + 3000;
  while (!pattern.test(runner.stderr()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(runner.stderr()).toMatch(pattern);
}

/** The runner still answers a fresh connection after whatever a test did. */
async function expectRunnerHealthy() {
  const c = await ApisixClient.open(runner.socketPath);
  const token = await c.prepare([example({ stop: { status: 204 } })]);
  const answer = await c.call(request({ confToken: token }));
  expect((answer.action as StopAction).status).toBe(204);
  c.close();
  expect(runner.child.exitCode).toBeNull();
}

describe('PrepareConf', () => {
  it('answers a non-zero token, a new one each time', async () => {
    const a = await client.prepare([example({})], 'route#1#ext-plugin-pre-req#1');
    const b = await client.prepare([example({})], 'route#1#ext-plugin-pre-req#1');
    expect(a).toBeGreaterThan(0);
    expect(b).not.toBe(a);
  });

  it('refuses an unknown plugin and names it in the log, never dropping it silently', async () => {
    const c = await ApisixClient.open(runner.socketPath);
    await expect(c.prepare([example({}), { name: 'no-such-plugin', value: '{}' }])).rejects.toEqual(new RunnerError('BAD_REQUEST'));
    c.close();
    await expectLog(/"plugin":"no-such-plugin".*unknown plugin/);
  });

  it('refuses a conf that is not JSON or does not validate, with the reason logged', async () => {
    for (const value of ['{not json', '{"stop":{"status":"teapot"}}', '{"unknown_key":1}']) {
      const c = await ApisixClient.open(runner.socketPath);
      await expect(c.prepare([{ name: 'example', value }])).rejects.toEqual(new RunnerError('BAD_REQUEST'));
      c.close();
    }
    await expectLog(/"plugin":"example".*"reason":"example: conf is not valid JSON/);
    await expectLog(/"reason":"example: invalid conf: \/stop\/status must be integer/);
  });

  it('a PrepareConf on a second connection while the call connection waits idle (APISIX token miss)', async () => {
    const callConn = await ApisixClient.open(runner.socketPath);
    const prepConn = await ApisixClient.open(runner.socketPath);
    const token = await prepConn.prepare([example({ stop: { status: 418, body: 'teapot' } })]);
    const answer = await callConn.call(request({ confToken: token }));
    expect(answer.action).toMatchObject({ type: 'stop', status: 418 });
    callConn.close();
    prepConn.close();
  });
});

describe('HTTPReqCall', () => {
  it('echoes the id and answers no action when nothing changes', async () => {
    const token = await client.prepare([example({})]);
    const id = (5 << 22) + 12345;
    const answer = await client.call(request({ confToken: token, id }));
    expect(answer).toMatchObject({ id, action: null });
  });

  it('unknown token gives CONF_TOKEN_NOT_FOUND', async () => {
    await expect(client.call(request({ confToken: 12345 }))).rejects.toEqual(new RunnerError('CONF_TOKEN_NOT_FOUND'));
    // APISIX closes the connection after an error frame; a fresh one works.
    client.close();
    client = await ApisixClient.open(runner.socketPath);
  });

  it('sees multi-valued headers, multi-valued and flag args, the method and path as sent', async () => {
    const token = await client.prepare([example({ echo_request: true })]);
    const answer = await client.call(
      request({
        confToken: token,
        id: 7,
        method: 'PROPFIND',
        path: '/a/b/d e',
        args: [
          { name: 'tag', value: 'x' },
          { name: 'tag', value: 'y' },
          { name: 'debug', value: null },
        ],
        headers: [
          { name: 'host', value: 'upstream:8080' },
          { name: 'accept', value: 'text/html' },
          { name: 'accept', value: 'application/json' },
        ],
      }),
    );
    const seen = json((answer.action as StopAction).body);
    expect(seen).toMatchObject({
      id: 7,
      method: 'PROPFIND',
      path: '/a/b/d e',
      headers: [
        ['host', 'upstream:8080'],
        ['accept', 'text/html'],
        ['accept', 'application/json'],
      ],
      args: [
        ['tag', 'x'],
        ['tag', 'y'],
        ['debug', ''],
      ],
    });
  });

  it('formats IPv4 and IPv6 source addresses', async () => {
    const token = await client.prepare([example({ echo_request: true })]);
    const cases: [number[], string][] = [
      [[10, 1, 2, 3], '10.1.2.3'],
      [[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '2001:db8::1'],
      [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '::1'],
    ];
    for (const [bytes, expected] of cases) {
      const answer = await client.call(request({ confToken: token, srcIp: new Uint8Array(bytes) }));
      expect(json((answer.action as StopAction).body).srcIp).toBe(expected);
    }
  });

  it('Stop carries status, headers and a body; a Stop without body gets a problem+json body', async () => {
    const token = await client.prepare([example({ stop: { status: 403, headers: { 'x-why': 'policy' } } })]);
    const answer = await client.call(request({ confToken: token }));
    const stop = answer.action as StopAction;
    expect(stop.status).toBe(403);
    expect(stop.headers).toContainEqual({ name: 'x-why', value: 'policy' });
    expect(stop.headers).toContainEqual({ name: 'content-type', value: 'application/problem+json' });
    expect(json(stop.body)).toMatchObject({ status: 403, title: 'Forbidden' });
  });

  it('rewrites accumulate across the chain; the shared context is seen by later plugins', async () => {
    const token = await client.prepare([
      example({ set_headers: { 'x-added': 'v', 'x-spoofed-identity': null } }),
      example({ set_args: { page: '2', drop: null }, path: '/v2/items', resp_headers: { 'x-served-by': 'gh' } }),
      example({ body: 'replaced' }),
    ]);
    const answer = await client.call(request({ confToken: token, args: [{ name: 'drop', value: '1' }] }));
    const rw = answer.action as RewriteAction;
    expect(rw.type).toBe('rewrite');
    expect(rw.path).toBe('/v2/items');
    // The delete is sent even though the header never arrived (APISIX shows only 100 headers).
    expect(rw.headers).toEqual([
      { name: 'x-added', value: 'v' },
      { name: 'x-spoofed-identity', value: null },
    ]);
    expect(rw.args).toEqual([
      { name: 'page', value: '2' },
      { name: 'drop', value: null },
    ]);
    expect(rw.respHeaders).toEqual([{ name: 'x-served-by', value: 'gh' }]);
    expect(text(rw.body)).toBe('replaced');

    const shared = await client.prepare([example({ set_headers: { a: 'b' } }), example({ echo_request: true })]);
    const echoed = await client.call(request({ confToken: shared }));
    expect(json((echoed.action as StopAction).body).sharedState).toEqual(['example']);
  });

  it('a path rewrite carries the current query along, so APISIX does not drop it', async () => {
    const token = await client.prepare([example({ path: '/v2' })]);
    const args = [
      { name: 'tag', value: 'x' },
      { name: 'tag', value: 'y' },
    ];
    const rw = (await client.call(request({ confToken: token, args }))).action as RewriteAction;
    expect(rw.path).toBe('/v2');
    expect(rw.args).toEqual(args);
  });

  it('the first plugin that stops ends the chain', async () => {
    const token = await client.prepare([example({ stop: { status: 401 } }), example({ fail: true })]);
    const answer = await client.call(request({ confToken: token }));
    expect((answer.action as StopAction).status).toBe(401);
  });

  it('a plugin that throws fails the call closed with a 500 problem, logged', async () => {
    const token = await client.prepare([example({ set_headers: { a: 'b' } }), example({ fail: true })]);
    const answer = await client.call(request({ confToken: token, id: 99 }));
    const stop = answer.action as StopAction;
    expect(stop.status).toBe(500);
    expect(json(stop.body)).toMatchObject({ status: 500, detail: 'plugin example failed' });
    await expectLog(/"plugin":"example","requestId":99.*plugin failed/);
  });
});

describe('ExtraInfo', () => {
  it('asks for a variable mid-call and uses the answer', async () => {
    const token = await client.prepare([example({ echo_var: 'route_id' })]);
    const answer = await client.call(request({ confToken: token }), (info) => (info.type === 'var' && info.name === 'route_id' ? Buffer.from('llm') : null));
    expect(answer.extraInfo).toEqual([{ type: 'var', name: 'route_id' }]);
    expect((answer.action as RewriteAction).headers).toEqual([{ name: 'x-var-route_id', value: 'llm' }]);
  });

  it('a missing variable (no result) reads as unset', async () => {
    const token = await client.prepare([example({ echo_var: 'no_such_var' })]);
    const answer = await client.call(request({ confToken: token }), () => null);
    expect((answer.action as RewriteAction).headers).toEqual([{ name: 'x-var-no_such_var', value: null }]);
  });

  it('asks for the request body', async () => {
    const body = Buffer.from('{"model":"gpt-4o"}');
    const token = await client.prepare([example({ echo_body: true })]);
    const answer = await client.call(request({ confToken: token, method: 'POST' }), (info) => (info.type === 'reqBody' ? body : null));
    expect(answer.extraInfo).toEqual([{ type: 'reqBody' }]);
    expect((answer.action as RewriteAction).headers).toEqual([{ name: 'x-body-sha256', value: createHash('sha256').update(body).digest('hex') }]);
  });

  it('a malformed ExtraInfo answer gives BAD_REQUEST and closes the connection', async () => {
    const conn = await openConnection(runner.socketPath);
    const c = new ApisixClient(conn);
    const token = await c.prepare([example({ echo_body: true })]);
    await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request({ confToken: token })));
    expect((await conn.next()).type).toBe(RpcType.ExtraInfo);
    await conn.send(RpcType.ExtraInfo, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    const frame = await conn.next();
    expect(frame.type).toBe(RpcType.Error);
    expect(decodeErrorResponse(frame.payload).code).toBe('BAD_REQUEST');
    await expect(conn.next()).rejects.toThrow(/closed/);
    await expectRunnerHealthy();
  });
});

describe('HTTPRespCall (ext-plugin-post-resp)', () => {
  it('changes status and headers (sent in full) and reads the response body', async () => {
    const token = await client.prepare([example({ response: { status: 299, set_headers: { 'x-post': '1' }, append_body: '!' } })]);
    const answer = await client.respCall({ id: 3, status: 200, headers: [{ name: 'content-type', value: 'text/plain' }], confToken: token }, (info) =>
      info.type === 'respBody' ? Buffer.from('hello') : null,
    );
    expect(answer.extraInfo).toEqual([{ type: 'respBody' }]);
    expect(answer.id).toBe(3);
    expect(answer.status).toBe(299);
    expect(answer.headers).toEqual([
      { name: 'content-type', value: 'text/plain' },
      { name: 'x-post', value: '1' },
    ]);
    expect(text(answer.body)).toBe('hello!');
  });

  it('leaves the response alone when no plugin changes it: status 0, no body, the headers as they came', async () => {
    const token = await client.prepare([example({ set_headers: { a: 'b' } })]);
    const headers = [
      { name: 'x', value: 'y' },
      { name: 'content-type', value: 'application/json' },
      { name: 'location', value: '/elsewhere' },
    ];
    const answer = await client.respCall({ id: 4, status: 502, headers, confToken: token });
    // Without headers in the answer APISIX would drop content-type and location (its exclusion list).
    expect(answer).toMatchObject({ id: 4, status: 0, headers, body: null });
  });

  it("never passes on the upstream's framing headers, nor the Date and Server nginx sets itself", async () => {
    const token = await client.prepare([example({ response: { append_body: '!' } })]);
    const framing = ['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'te', 'trailer', 'upgrade', 'date', 'server'];
    const answer = await client.respCall(
      { id: 5, status: 200, headers: [...framing.map((name) => ({ name, value: 'v' })), { name: 'content-type', value: 'text/plain' }], confToken: token },
      (info) => (info.type === 'respBody' ? Buffer.from('hello') : null),
    );
    expect(answer.headers).toEqual([{ name: 'content-type', value: 'text/plain' }]);
    expect(text(answer.body)).toBe('hello!');
  });

  it('unknown token gives CONF_TOKEN_NOT_FOUND', async () => {
    const c = await ApisixClient.open(runner.socketPath);
    await expect(c.respCall({ id: 1, status: 200, headers: [], confToken: 77 })).rejects.toEqual(new RunnerError('CONF_TOKEN_NOT_FOUND'));
    c.close();
  });
});

describe('bad frames never crash or wedge the runner', () => {
  async function rawExchange(bytes: Buffer): Promise<{ frames: Buffer; closed: boolean }> {
    const socket = connect(runner.socketPath);
    const chunks: Buffer[] = [];
    socket.on('data', (c) => chunks.push(c));
    await new Promise((r) => socket.once('connect', r));
    socket.write(bytes);
    const closed = await new Promise<boolean>((resolve) => {
      socket.once('close', () => resolve(true));
      setTimeout(() => resolve(false), 2000);
    });
    socket.destroy();
    return { frames: Buffer.concat(chunks), closed };
  }

  const badRequestFrame = () => {
    // The exact bytes the runner's own error encoding gives.
    return (frames: Buffer) => {
      expect(frames[0]).toBe(RpcType.Error);
      expect(decodeErrorResponse(frames.subarray(4, 4 + frames.readUIntBE(1, 3))).code).toBe('BAD_REQUEST');
    };
  };

  it('a garbage payload: BAD_REQUEST, connection closed', async () => {
    const { frames, closed } = await rawExchange(encodeFrame(RpcType.HTTPReqCall, Buffer.from('not a flatbuffer at all')));
    badRequestFrame()(frames);
    expect(closed).toBe(true);
    await expectRunnerHealthy();
  });

  it('unknown RPC types, an error frame from the peer, an unsolicited ExtraInfo: BAD_REQUEST', async () => {
    for (const type of [5, 200, RpcType.Error, RpcType.ExtraInfo]) {
      const frame = encodeFrame(RpcType.Error, encodeExtraInfoResponse({ result: null }));
      frame[0] = type;
      const { frames, closed } = await rawExchange(frame);
      badRequestFrame()(frames);
      expect(closed).toBe(true);
    }
    await expectRunnerHealthy();
  });

  it('a forged vector length is refused without reading it', async () => {
    const payload = Buffer.from(encodePrepareConfRequest({ conf: [example({})], key: null }));
    for (let at = 0; at + 4 <= payload.length; at += 4) {
      if (payload.readUInt32LE(at) === 1) {
        payload.writeUInt32LE(0x3fffffff, at);
        break;
      }
    }
    const { frames } = await rawExchange(encodeFrame(RpcType.PrepareConf, payload));
    badRequestFrame()(frames);
    await expectRunnerHealthy();
  });

  it('a small frame whose entries share one string (it would decode into 240 MB) is refused like any malformed frame', async () => {
    const builder = new flatbuffers.Builder(1024);
    const name = builder.createString('x-padding');
    const value = builder.createString('v'.repeat(12 * 1024));
    FbTextEntry.startTextEntry(builder);
    FbTextEntry.addName(builder, name);
    FbTextEntry.addValue(builder, value);
    const entry = FbTextEntry.endTextEntry(builder);
    const headers = FbReqCallReq.createHeadersVector(builder, new Array(20_000).fill(entry));
    FbReqCallReq.startReq(builder);
    FbReqCallReq.addHeaders(builder, headers);
    builder.finish(FbReqCallReq.endReq(builder));
    const { frames, closed } = await rawExchange(encodeFrame(RpcType.HTTPReqCall, builder.asUint8Array()));
    badRequestFrame()(frames);
    expect(closed).toBe(true);
    await expectRunnerHealthy();
  });

  it('a payload of the maximum size (16 MiB - 1) of garbage', async () => {
    const { frames, closed } = await rawExchange(encodeFrame(RpcType.PrepareConf, Buffer.alloc(MAX_PAYLOAD_SIZE, 0xff)));
    badRequestFrame()(frames);
    expect(closed).toBe(true);
    await expectRunnerHealthy();
  });

  it('a truncated frame that stalls is closed after the stall timeout; idle connections stay', async () => {
    const impatient = await startRunner({ env: { RUNNER_STALL_TIMEOUT_MS: '300' } });
    try {
      const idle = connect(impatient.socketPath);
      let idleClosed = false;
      idle.on('close', () => (idleClosed = true));
      const stalled = connect(impatient.socketPath);
      await Promise.all([idle, stalled].map((s) => new Promise((r) => s.once('connect', r))));
      const frame = encodeFrame(RpcType.PrepareConf, encodePrepareConfRequest({ conf: [example({})], key: null }));
      stalled.write(frame.subarray(0, frame.length - 3));
      const closed = await new Promise<boolean>((resolve) => {
        stalled.once('close', () => resolve(true));
        setTimeout(() => resolve(false), 2000);
      });
      expect(closed).toBe(true);
      expect(idleClosed).toBe(false);
      idle.destroy();
    } finally {
      await impatient.stop();
    }
  });

  it('a connection that leaves an ExtraInfo question unanswered is closed after the stall timeout, and one that answers is not', async () => {
    const impatient = await startRunner({ env: { RUNNER_STALL_TIMEOUT_MS: '300' } });
    try {
      const silent = await openConnection(impatient.socketPath);
      const token = await new ApisixClient(silent).prepare([example({ echo_body: true })]);
      await silent.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request({ confToken: token })));
      expect((await silent.next()).type).toBe(RpcType.ExtraInfo);
      const startedAt = Date.now();
      const closed = await new Promise<boolean>((resolve) => {
        silent.socket.once('close', () => resolve(true));
        setTimeout(() => resolve(false), 2000);
      });
      expect(closed).toBe(true);
      // Never before the stall timeout (a little slack for the timers' own granularity).
      expect(Date.now() - startedAt).toBeGreaterThanOrEqual(290);

      // A slow but live peer: it answers within the timeout and gets its answer.
      const slow = await ApisixClient.open(impatient.socketPath);
      const answer = await slow.call(request({ confToken: await slow.prepare([example({ echo_body: true })]) }), async () => {
        await new Promise((r) => setTimeout(r, 150));
        return Buffer.from('late but here');
      });
      expect(answer.action?.type).toBe('rewrite');
      slow.close();
    } finally {
      await impatient.stop();
    }
  });

  it('a truncated frame followed by a hang-up', async () => {
    const socket = connect(runner.socketPath);
    await new Promise((r) => socket.once('connect', r));
    socket.end(Buffer.from([RpcType.HTTPReqCall, 0, 1, 0, 1, 2]));
    await new Promise((r) => socket.once('close', r));
    await expectRunnerHealthy();
  });

  it('a client that vanishes while the runner waits for ExtraInfo', async () => {
    const conn = await openConnection(runner.socketPath);
    const c = new ApisixClient(conn);
    const token = await c.prepare([example({ echo_body: true })]);
    await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request({ confToken: token })));
    expect((await conn.next()).type).toBe(RpcType.ExtraInfo);
    conn.destroy();
    await expectRunnerHealthy();
  });
});

describe('load', () => {
  it('serves 1,000 concurrent connections, each with its own calls', async () => {
    const token = await client.prepare([example({ echo_var: 'remote_addr' })]);
    const clients = await Promise.all(Array.from({ length: 1000 }, () => ApisixClient.open(runner.socketPath)));
    const answers = await Promise.all(
      clients.map(async (c, i) => {
        const first = await c.call(request({ confToken: token, id: i }), () => Buffer.from(`10.0.${i >> 8}.${i & 255}`));
        const second = await c.call(request({ confToken: token, id: i + 1000 }), () => Buffer.from('x'));
        return [first, second] as const;
      }),
    );
    answers.forEach(([first, second], i) => {
      expect(first.id).toBe(i);
      expect((first.action as RewriteAction).headers).toEqual([{ name: 'x-var-remote_addr', value: `10.0.${i >> 8}.${i & 255}` }]);
      expect(second.id).toBe(i + 1000);
    });
    clients.forEach((c) => c.close());
    await expectRunnerHealthy();
  });
});

describe('process behaviour', () => {
  it('keeps stdout quiet and makes the socket connectable by other users', () => {
    expect((runner as unknown as { stdout: string }).stdout).toBe('');
    expect(statSync(runner.socketPath).mode & 0o777).toBe(0o766);
  });

  it('tokens expire after about twice APISIX_CONF_EXPIRE_TIME', async () => {
    // Expire time 2 s: a token must still work past 2 s (APISIX may use it that
    // late) and be gone after 4 s. Wide margins keep a loaded machine honest.
    const shortLived = await startRunner({ expireSeconds: 2 });
    const c = await ApisixClient.open(shortLived.socketPath);
    const prepared = Date.now();
    const token = await c.prepare([example({ stop: { status: 202 } })]);
    await new Promise((r) => setTimeout(r, 2500 - (Date.now() - prepared)));
    expect((await c.call(request({ confToken: token }))).action).toMatchObject({ status: 202 });
    expect(Date.now() - prepared).toBeLessThan(4000); // still inside twice the expire time
    await new Promise((r) => setTimeout(r, Math.max(0, 5000 - (Date.now() - prepared))));
    await expect(c.call(request({ confToken: token }))).rejects.toEqual(new RunnerError('CONF_TOKEN_NOT_FOUND'));
    c.close();
    await shortLived.stop();
  });

  it('after a restart, a token from before never selects another chain', async () => {
    const first = await startRunner();
    let c = await ApisixClient.open(first.socketPath);
    const oldTokens = [];
    for (let i = 0; i < 5; i++) oldTokens.push(await c.prepare([example({ stop: { status: 400 + i } })]));
    c.close();
    // A crash leaves the socket file behind; the next runner removes it.
    await first.stop('SIGKILL');
    expect(existsSync(first.socketPath)).toBe(true);
    const second = await startRunner({ socketPath: first.socketPath });
    c = await ApisixClient.open(second.socketPath);
    for (let i = 0; i < 5; i++) await c.prepare([example({ stop: { status: 500 + i } })]);
    for (const token of oldTokens) {
      await expect(c.call(request({ confToken: token }))).rejects.toEqual(new RunnerError('CONF_TOKEN_NOT_FOUND'));
      c.close();
      c = await ApisixClient.open(second.socketPath);
    }
    c.close();
    await second.stop();
  });

  it('SIGTERM: stops accepting, finishes the call in flight, removes the socket, exits 0', async () => {
    const r = await startRunner({ env: { RUNNER_SHUTDOWN_GRACE_MS: '3000' } });
    const conn = await openConnection(r.socketPath);
    const c = new ApisixClient(conn);
    const token = await c.prepare([example({ echo_body: true })]);
    await conn.send(RpcType.HTTPReqCall, encodeHttpReqCallRequest(request({ confToken: token, id: 11 })));
    expect((await conn.next()).type).toBe(RpcType.ExtraInfo);
    const exited = r.stop('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 200));
    // No new connections once stopping.
    await expect(openConnection(r.socketPath)).rejects.toThrow();
    await conn.send(RpcType.ExtraInfo, encodeExtraInfoResponse({ result: Buffer.from('late body') }));
    const answer = await conn.next();
    expect(answer.type).toBe(RpcType.HTTPReqCall);
    expect(await exited).toBe(0);
    expect(existsSync(r.socketPath)).toBe(false);
  });
});
