import { describe, expect, it } from 'vitest';
import {
  applyRespCallAnswer,
  applyRewrite,
  nginxErrorPage,
  stopToClientResponse,
  EXCLUDED_RESPONSE_HEADERS,
} from '../../tools/apisix-standin/answers.js';
import { argsForRunner, binaryAddress, headersForRunner } from '../../tools/apisix-standin/ext-plugin-client.js';
import { RequestState, type HeaderLine } from '../../tools/apisix-standin/request-state.js';
import { UpstreamProxy } from '../../tools/apisix-standin/upstream-proxy.js';
import type { RewriteAction, TextEntry } from '../../plugins/protocol/index.js';

const bytes = (text: string) => new TextEncoder().encode(text);

function state(overrides: { query?: string | null; headers?: HeaderLine[]; uri?: string; body?: string } = {}): RequestState {
  return new RequestState({
    method: 'GET',
    requestUri: '/orig',
    uri: overrides.uri ?? '/orig',
    query: overrides.query === undefined ? 'a=1&a=2&keep=k&flag' : overrides.query,
    headers: overrides.headers ?? [
      { name: 'Host', value: 'client.example:9080' },
      { name: 'X-Multi', value: 'one' },
      { name: 'x-multi', value: 'two' },
    ],
    body: Buffer.from(overrides.body ?? ''),
    remoteAddr: '127.0.0.1',
    remotePort: 5555,
    serverAddr: '127.0.0.1',
    serverPort: 9080,
    scheme: 'http',
    routeId: 'r1',
    startedAt: Date.now(),
  });
}

function rewrite(fields: Partial<RewriteAction>): RewriteAction {
  return { type: 'rewrite', path: null, headers: [], args: [], respHeaders: [], body: null, ...fields };
}

const options = { keepQueryOnPathRewrite: false };

describe('Stop', () => {
  it('status 0 means 200; first header of a name set, later appended, names lower-cased', () => {
    const response = stopToClientResponse({
      type: 'stop',
      status: 0,
      headers: [
        { name: 'X-A', value: '1' },
        { name: 'x-a', value: '2' },
        { name: 'Set-Cookie', value: 'c=1' },
      ],
      body: bytes('stopped'),
    });
    expect(response.status).toBe(200);
    expect(response.headers.lines).toEqual([
      { name: 'x-a', value: '1' },
      { name: 'x-a', value: '2' },
      { name: 'set-cookie', value: 'c=1' },
    ]);
    expect(response.body?.toString()).toBe('stopped');
  });

  it('does not filter Stop headers (unlike resp_headers)', () => {
    const response = stopToClientResponse({ type: 'stop', status: 302, headers: [{ name: 'Location', value: '/x' }], body: null });
    expect(response.headers.get('location')).toEqual(['/x']);
  });

  it('treats an empty body as no body, for which nginx has its own page on 4xx/5xx', () => {
    const response = stopToClientResponse({ type: 'stop', status: 401, headers: [], body: new Uint8Array(0) });
    expect(response.body).toBeNull();
    expect(nginxErrorPage(401)?.toString()).toContain('401 Authorization Required');
    expect(nginxErrorPage(503)?.toString()).toContain('503 Service Temporarily Unavailable');
    // nginx has no page for 418: it goes out empty.
    expect(nginxErrorPage(418)).toBeNull();
  });
});

describe('Rewrite', () => {
  it('encodes the path and, without args, sets it as the whole upstream URI (query dropped, as APISIX before #13080)', () => {
    const s = state();
    applyRewrite(s, rewrite({ path: '/new path/é' }), s.args, options);
    expect(s.upstreamUri).toBe('/new%20path/%C3%A9');
    expect(UpstreamProxy.upstreamTarget(s)).toBe('/new%20path/%C3%A9');
  });

  it('keeps the query on a path-only rewrite when modelling APISIX with #13080', () => {
    const s = state();
    applyRewrite(s, rewrite({ path: '/n' }), s.args, { keepQueryOnPathRewrite: true });
    expect(UpstreamProxy.upstreamTarget(s)).toBe('/n?a=1&a=2&keep=k&flag');
  });

  it('without a rewrite, the upstream gets the encoded $uri and the original args', () => {
    const s = state({ uri: '/d e', query: 'x=%20' });
    expect(UpstreamProxy.upstreamTarget(s)).toBe('/d%20e?x=%20');
    expect(UpstreamProxy.upstreamTarget(state({ query: null }))).toBe('/orig');
  });

  it('sets headers, deletes value-less ones, last entry of a name wins, host changes the upstream host', () => {
    const s = state();
    applyRewrite(
      s,
      rewrite({
        headers: [
          { name: 'X-New', value: 'first' },
          { name: 'x-new', value: 'second' },
          { name: 'x-multi', value: null },
          { name: 'never-sent', value: null },
          { name: 'Host', value: 'upstream.example' },
        ],
      }),
      s.args,
      options,
    );
    expect(s.headers).toEqual([
      { name: 'x-new', value: 'second' },
      { name: 'host', value: 'upstream.example' },
    ]);
    expect(s.upstreamHost).toBe('upstream.example');
  });

  it('args: first entry of a name replaces all values, later ones append, value-less deletes', () => {
    const s = state();
    const entries: TextEntry[] = [
      { name: 'a', value: 'x' },
      { name: 'a', value: 'y' },
      { name: 'flag', value: null },
      { name: 'new', value: 'n' },
    ];
    applyRewrite(s, rewrite({ args: entries }), s.args, options);
    expect(s.query).toBe('a=x&a=y&keep=k&new=n');
    expect(s.upstreamUri).toBe('');
    expect(UpstreamProxy.upstreamTarget(s)).toBe('/orig?a=x&a=y&keep=k&new=n');
  });

  it('path and args together give path?args, even when no args remain', () => {
    const s = state({ query: 'only=1' });
    applyRewrite(s, rewrite({ path: '/p', args: [{ name: 'only', value: null }] }), s.args, options);
    expect(s.upstreamUri).toBe('/p?');
  });

  it('replaces the body only with a non-empty one', () => {
    const s = state({ body: 'original' });
    applyRewrite(s, rewrite({ body: new Uint8Array(0) }), s.args, options);
    expect(s.body.toString()).toBe('original');
    applyRewrite(s, rewrite({ body: bytes('replaced') }), s.args, options);
    expect(s.body.toString()).toBe('replaced');
  });

  it('adds resp_headers except the excluded ones; repeated names append', () => {
    const s = state();
    const excluded = [...EXCLUDED_RESPONSE_HEADERS].map((name) => ({ name, value: 'x' }));
    applyRewrite(
      s,
      rewrite({
        respHeaders: [...excluded, { name: 'X-Resp', value: '1' }, { name: 'x-resp', value: '2' }, { name: 'Content-Type', value: 'a/b' }],
      }),
      s.args,
      options,
    );
    expect(s.responseHeaderAdditions.lines).toEqual([
      { name: 'x-resp', value: '1' },
      { name: 'x-resp', value: '2' },
    ]);
  });
});

describe('HTTPReqCall contents', () => {
  it('sends every header line (APISIX 3.9: get_headers(0)), grouped by name, host replaced by the upstream host', () => {
    const lines: HeaderLine[] = [{ name: 'host', value: 'client' }];
    for (let i = 0; i < 120; i++) lines.push({ name: `x-h${i}`, value: String(i) });
    const sent = headersForRunner(lines, 'upstream-host');
    expect(sent).toHaveLength(121);
    expect(sent[0]).toEqual({ name: 'host', value: 'upstream-host' });
    expect(sent.at(-1)).toEqual({ name: 'x-h119', value: '119' });

    const grouped = headersForRunner(
      [
        { name: 'a', value: '1' },
        { name: 'b', value: '2' },
        { name: 'a', value: '3' },
      ],
      'h',
    );
    expect(grouped).toEqual([
      { name: 'a', value: '1' },
      { name: 'a', value: '3' },
      { name: 'b', value: '2' },
    ]);
  });

  it('sends flag args without value and repeated args as several entries', () => {
    expect(argsForRunner(state().args)).toEqual([
      { name: 'a', value: '1' },
      { name: 'a', value: '2' },
      { name: 'keep', value: 'k' },
      { name: 'flag', value: null },
    ]);
  });

  it('encodes src_ip as 4 or 16 bytes', () => {
    expect([...binaryAddress('10.1.2.3')]).toEqual([10, 1, 2, 3]);
    expect([...binaryAddress('::ffff:10.1.2.3')]).toEqual([10, 1, 2, 3]);
    expect([...binaryAddress('::1')]).toEqual([...new Array(15).fill(0), 1]);
    expect([...binaryAddress('2001:db8::8:800:200c:417a')]).toEqual([
      0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0x08, 0x08, 0, 0x20, 0x0c, 0x41, 0x7a,
    ]);
  });

  it('answers ExtraInfo variables from the request, unknown ones unset', () => {
    const s = state();
    expect(s.variable('remote_addr')).toBe('127.0.0.1');
    expect(s.variable('remote_port')).toBe('5555');
    expect(s.variable('server_port')).toBe('9080');
    expect(s.variable('route_id')).toBe('r1');
    expect(s.variable('request_method')).toBe('GET');
    expect(s.variable('host')).toBe('client.example');
    expect(s.variable('http_x_multi')).toBe('one');
    expect(s.variable('arg_keep')).toBe('k');
    expect(s.variable('request_time')).toMatch(/^\d+\.\d{3}$/);
    expect(s.variable('no_such_variable')).toBeNull();
  });
});

describe('HTTPRespCall answer', () => {
  const upstream = {
    status: 201,
    headers: [
      { name: 'content-type', value: 'application/json' },
      { name: 'x-up', value: '1' },
      { name: 'server', value: 'upstream' },
    ],
    body: Buffer.from('{"a":1}'),
  };

  it('headers given replace all of the upstream headers, without exclusion', () => {
    const out = applyRespCallAnswer(upstream, {
      id: 0,
      status: 0,
      headers: [
        { name: 'Content-Type', value: 'text/plain' },
        { name: 'x-new', value: 'a' },
        { name: 'x-new', value: 'b' },
      ],
      body: null,
    });
    expect(out.headers.lines).toEqual([
      { name: 'content-type', value: 'text/plain' },
      { name: 'x-new', value: 'a' },
      { name: 'x-new', value: 'b' },
    ]);
    expect(out.status).toBe(201);
    expect(out.body?.toString()).toBe('{"a":1}');
  });

  it('no headers keeps the upstream ones minus the exclusion list', () => {
    const out = applyRespCallAnswer(upstream, { id: 0, status: 299, headers: [], body: null });
    expect(out.headers.lines).toEqual([{ name: 'x-up', value: '1' }]);
    expect(out.status).toBe(299);
  });

  it('a body replaces the upstream body, keeping the upstream status when status is 0', () => {
    const out = applyRespCallAnswer(upstream, { id: 0, status: 0, headers: [], body: bytes('new') });
    expect(out.status).toBe(201);
    expect(out.body?.toString()).toBe('new');
  });
});
