// The runner's protocol answers as the gateway applies them: client -> APISIX
// (apisix-conf/config.yaml, which starts the real runner from dist/) -> a
// recording upstream on loopback. Uses the runner's `example` plugin.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { startTestGateway, type TestGatewayHandle } from '../support/gateway.js';
import { runnerBin, waitForSocket } from '../support/runner-process.js';
import { startRecordingUpstream, type RecordingUpstream } from '../support/upstream.js';

interface RouteDef {
  id: string;
  uri: string;
  phase?: 'ext-plugin-pre-req' | 'ext-plugin-post-req' | 'ext-plugin-post-resp';
  plugin?: string;
  conf: unknown;
  degrade?: boolean;
}

const routeDefs: RouteDef[] = [
  { id: 'stop', uri: '/stop', conf: { stop: { status: 418, body: 'teapot', headers: { 'x-a': '1' } } } },
  { id: 'require', uri: '/require', conf: { require_header: 'x-api-key' } },
  { id: 'headers', uri: '/headers', conf: { set_headers: { 'x-added': 'v', 'x-removed': null } } },
  { id: 'args', uri: '/args', conf: { set_args: { a: '1', b: null } } },
  { id: 'path', uri: '/path/*', conf: { path: '/new/path' } },
  { id: 'body', uri: '/body', conf: { body: 'new body' } },
  { id: 'resp', uri: '/resp', conf: { resp_headers: { 'x-resp': '1', server: 'ignored' } } },
  { id: 'var', uri: '/var', conf: { echo_var: 'remote_addr' } },
  { id: 'var-route', uri: '/var-route', phase: 'ext-plugin-post-req', conf: { echo_var: 'route_id' } },
  { id: 'var-unset', uri: '/var-unset', conf: { echo_var: 'no_such_variable' } },
  { id: 'echo-body', uri: '/echo-body', conf: { echo_body: true } },
  {
    id: 'post',
    uri: '/post',
    phase: 'ext-plugin-post-resp',
    conf: { response: { status: 299, set_headers: { 'x-post': '1' }, append_body: '!' } },
  },
  { id: 'post-keep', uri: '/post-keep', phase: 'ext-plugin-post-resp', conf: {} },
  { id: 'unknown', uri: '/unknown', plugin: 'no-such-plugin', conf: {} },
  { id: 'invalid', uri: '/invalid', conf: { stop: { status: 'not a number' } } },
  { id: 'degrade', uri: '/degrade', plugin: 'no-such-plugin', conf: {}, degrade: true },
];

function routesYaml(upstreamPort: number): string {
  const lines = ['routes:'];
  for (const def of routeDefs) {
    lines.push(
      `  - id: ${def.id}`,
      `    uri: ${def.uri}`,
      '    plugins:',
      `      ${def.phase ?? 'ext-plugin-pre-req'}:`,
      '        conf:',
      `          - name: ${def.plugin ?? 'example'}`,
      `            value: '${JSON.stringify(def.conf)}'`,
      `        allow_degradation: ${def.degrade ?? false}`,
      '    upstream:',
      '      nodes:',
      `        "127.0.0.1:${upstreamPort}": 1`,
    );
  }
  lines.push('#END', '');
  return lines.join('\n');
}

let dir: string;
let routesPath: string;
let upstream: RecordingUpstream;
let gateway: TestGatewayHandle;

async function call(gatewayUrl: string, path: string, init: { method?: string; headers?: Record<string, string>; body?: string } = {}) {
  const res = await request(`${gatewayUrl}${path}`, { method: (init.method ?? 'GET') as 'GET', headers: init.headers, body: init.body });
  return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
}

beforeAll(async () => {
  if (!existsSync(runnerBin)) throw new Error(`${runnerBin} is missing: run \`npm run build\` first`);
  dir = mkdtempSync(join(tmpdir(), 'gateway-e2e-'));
  upstream = await startRecordingUpstream({
    status: 200,
    body: 'upstream body',
    headers: { 'content-type': 'text/plain', 'content-language': 'en', 'x-up': 'u' },
  });
  routesPath = join(dir, 'apisix.yaml');
  writeFileSync(routesPath, routesYaml(upstream.port));
  // The runner comes from apisix-conf/config.yaml's ext-plugin.cmd.
  gateway = await startTestGateway({ routesPath });
});

afterAll(async () => {
  await gateway?.stop();
  await upstream?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('through the gateway and the real runner', () => {
  it('Stop: the runner answers, the upstream is not called', async () => {
    upstream.reset();
    const res = await call(gateway.url, '/stop');
    expect(res.status).toBe(418);
    expect(res.body).toBe('teapot');
    expect(res.headers['x-a']).toBe('1');
    expect(upstream.requests).toHaveLength(0);
  });

  it('Stop 401 problem+json when a required header is missing; through when present', async () => {
    upstream.reset();
    const denied = await call(gateway.url, '/require');
    expect(denied.status).toBe(401);
    expect(denied.headers['content-type']).toBe('application/problem+json');
    expect(JSON.parse(denied.body)).toMatchObject({ status: 401 });
    const allowed = await call(gateway.url, '/require', { headers: { 'x-api-key': 'k' } });
    expect(allowed.status).toBe(200);
    expect(upstream.requests).toHaveLength(1);
  });

  it('Rewrite headers: set and delete (even a header the runner was not asked about)', async () => {
    const res = await call(gateway.url, '/headers', { headers: { 'x-removed': 'spoofed', 'x-kept': 'k' } });
    expect(res.status).toBe(200);
    expect(res.body).toBe('upstream body');
    const seen = upstream.last();
    expect(seen.headers['x-added']).toBe('v');
    expect(seen.headers['x-removed']).toBeUndefined();
    expect(seen.headers['x-kept']).toBe('k');
  });

  it('Rewrite args: set and delete', async () => {
    await call(gateway.url, '/args?a=0&a=9&b=2&c=3');
    const url = new URL(upstream.last().url, 'http://x');
    expect(url.pathname).toBe('/args');
    expect(url.searchParams.getAll('a')).toEqual(['1']);
    expect(url.searchParams.has('b')).toBe(false);
    expect(url.searchParams.get('c')).toBe('3');
  });

  it('Rewrite path', async () => {
    await call(gateway.url, '/path/old');
    expect(upstream.last().url).toBe('/new/path');
  });

  it('Rewrite body', async () => {
    await call(gateway.url, '/body', { method: 'POST', body: 'old' });
    expect(upstream.last().body.toString()).toBe('new body');
    expect(upstream.last().headers['content-length']).toBe(String('new body'.length));
  });

  it('Rewrite resp_headers reach the client, excluded names do not', async () => {
    const res = await call(gateway.url, '/resp');
    expect(res.headers['x-resp']).toBe('1');
    expect(res.headers.server).not.toBe('ignored');
    expect(res.headers['x-up']).toBe('u');
  });

  it('ExtraInfo Var: remote_addr, route_id (post-req), unset variable deletes the header', async () => {
    await call(gateway.url, '/var');
    expect(upstream.last().headers['x-var-remote_addr']).toBe('127.0.0.1');
    await call(gateway.url, '/var-route');
    expect(upstream.last().headers['x-var-route_id']).toBe('var-route');
    await call(gateway.url, '/var-unset', { headers: { 'x-var-no_such_variable': 'spoofed' } });
    expect(upstream.last().headers['x-var-no_such_variable']).toBeUndefined();
  });

  it('ExtraInfo ReqBody: the runner hashes the body it fetched', async () => {
    const body = 'hash me please';
    await call(gateway.url, '/echo-body', { method: 'POST', body });
    expect(upstream.last().headers['x-body-sha256']).toBe(createHash('sha256').update(body).digest('hex'));
    expect(upstream.last().body.toString()).toBe(body);
  });

  it('ext-plugin-post-resp: status, headers and body changed after the upstream answered', async () => {
    upstream.reset();
    const res = await call(gateway.url, '/post');
    expect(upstream.requests).toHaveLength(1);
    expect(res.status).toBe(299);
    expect(res.headers['x-post']).toBe('1');
    expect(res.body).toBe('upstream body!');
  });

  it('ext-plugin-post-resp changing nothing: the upstream status, headers and body reach the client', async () => {
    const res = await call(gateway.url, '/post-keep');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    // On APISIX's exclusion list, so it arrives only because the runner sends the headers back.
    expect(res.headers['content-language']).toBe('en');
    expect(res.headers['x-up']).toBe('u');
    expect(res.body).toBe('upstream body');
  });

  it('an unknown runner plugin or an invalid conf fails PrepareConf: 503', async () => {
    upstream.reset();
    expect((await call(gateway.url, '/unknown')).status).toBe(503);
    expect((await call(gateway.url, '/invalid')).status).toBe(503);
    expect(upstream.requests).toHaveLength(0);
    // The runner logs asynchronously, and APISIX writes its output to the error log after it: wait for the line.
    await expect.poll(() => gateway.runnerOutput().join('\n'), { timeout: 5_000 }).toMatch(/no-such-plugin/);
  });

  it('allow_degradation lets the request through when PrepareConf fails', async () => {
    upstream.reset();
    expect((await call(gateway.url, '/degrade')).status).toBe(200);
    expect(upstream.requests).toHaveLength(1);
  });

  it('a killed runner is respawned 3 s later, the tokens are flushed, and it serves again', async () => {
    expect((await call(gateway.url, '/headers')).status).toBe(200);
    const pid = gateway.runnerPid();
    expect(pid).not.toBeNull();
    process.kill(pid!, 'SIGKILL');
    const killedAt = Date.now();
    while (gateway.runnerPid() === pid) await new Promise((resolve) => setTimeout(resolve, 20));

    // Meanwhile the runner is gone: 503.
    expect((await call(gateway.url, '/headers')).status).toBe(503);

    let respawned: number | null = null;
    while ((respawned = gateway.runnerPid()) === null) await new Promise((resolve) => setTimeout(resolve, 50));
    expect(Date.now() - killedAt).toBeGreaterThanOrEqual(2900);
    expect(respawned).not.toBe(pid);
    await gateway.waitForRunner(10_000);

    // The new runner knows none of the old tokens: the gateway prepared the conf again.
    upstream.reset();
    const res = await call(gateway.url, '/headers');
    expect(res.status).toBe(200);
    expect(upstream.last().headers['x-added']).toBe('v');
  }, 20_000);
});

describe('a runner restarted outside the gateway (path_for_test)', () => {
  let runner: ChildProcess | null = null;
  let external: TestGatewayHandle | null = null;
  let socketDir: string;

  const startRunner = async (socketPath: string) => {
    const child = spawn(process.execPath, [runnerBin], {
      env: { PATH: process.env.PATH, APISIX_LISTEN_ADDRESS: `unix:${socketPath}`, APISIX_CONF_EXPIRE_TIME: '3600' },
      stdio: 'ignore',
    });
    await waitForSocket(socketPath, 10_000);
    return child;
  };
  const stopRunner = async (child: ChildProcess | null) => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  };

  afterAll(async () => {
    await external?.stop();
    await stopRunner(runner);
    if (socketDir) rmSync(socketDir, { recursive: true, force: true });
  });

  it('a token from before the restart gets CONF_TOKEN_NOT_FOUND and the gateway prepares again', async () => {
    socketDir = mkdtempSync(join(tmpdir(), 'ext-runner-'));
    // nginx's workers (nobody, under a root master) connect to the socket.
    chmodSync(socketDir, 0o755);
    const socketPath = join(socketDir, 'runner.sock');
    runner = await startRunner(socketPath);
    external = await startTestGateway({ routesPath, externalRunnerSocket: socketPath });
    expect(external.runnerPid()).toBeNull();

    expect((await call(external.url, '/headers')).status).toBe(200);

    // The gateway is not told: its cached token now means nothing to the new runner.
    await stopRunner(runner);
    runner = await startRunner(socketPath);

    upstream.reset();
    const res = await call(external.url, '/headers');
    expect(res.status).toBe(200);
    expect(upstream.last().headers['x-added']).toBe('v');
  }, 30_000);
});
