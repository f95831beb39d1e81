import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { matchRoute, parseRoutes, loadRoutesFile, RouteConfigError, type Route } from '../../tools/apisix-standin/routes.js';
import {
  parseGatewayConfig,
  loadGatewayConfig,
  resolveRunnerCmd,
  runnerEnvironment,
} from '../../tools/apisix-standin/gateway-config.js';

const repoRoot = join(import.meta.dirname, '..', '..');

const upstream = `
    upstream:
      nodes:
        "127.0.0.1:8081": 1`;

function routes(yamlRoutes: string): Route[] {
  return parseRoutes(`routes:\n${yamlRoutes}\n#END\n`);
}

describe('standalone apisix.yaml loading', () => {
  it('requires the #END line', () => {
    expect(() => parseRoutes(`routes: []\n`)).toThrow(/#END/);
    expect(() => parseRoutes(`routes: []\n#END\n\n`)).not.toThrow();
  });

  it('reads uri/uris, prefixes, methods, host, priority and upstream fields', () => {
    const [route] = routes(`
  - id: r1
    uris: [/exact, /prefix/*]
    methods: [GET, POST]
    host: Example.COM
    priority: 7
    upstream:
      type: roundrobin
      scheme: https
      pass_host: rewrite
      upstream_host: backend.internal
      timeout: {connect: 2, read: 5}
      nodes:
        "10.0.0.1:8443": 3
        "10.0.0.2": 1`);
    expect(route).toMatchObject({
      id: 'r1',
      exactUris: ['/exact'],
      prefixUris: ['/prefix/'],
      methods: ['GET', 'POST'],
      hosts: ['example.com'],
      priority: 7,
      upstream: {
        scheme: 'https',
        passHost: 'rewrite',
        upstreamHost: 'backend.internal',
        timeout: { connect: 2, send: 60, read: 5 },
        nodes: [
          { host: '10.0.0.1', port: 8443, weight: 3 },
          { host: '10.0.0.2', port: 443, weight: 1 },
        ],
      },
    });
  });

  it('resolves upstream_id against the top-level upstreams', () => {
    const [route] = parseRoutes(`
routes:
  - id: 1
    uri: /x
    upstream_id: up
upstreams:
  - id: up
    nodes:
      "127.0.0.1:9": 1
#END
`);
    expect(route!.id).toBe('1');
    expect(route!.upstream.nodes).toEqual([{ host: '127.0.0.1', port: 9, weight: 1 }]);
    expect(() => parseRoutes(`routes:\n  - id: a\n    uri: /x\n    upstream_id: missing\n#END\n`)).toThrow(/missing/);
  });

  it('validates ext-plugin confs as APISIX schema does', () => {
    const plugin = (body: string) => `
  - id: p
    uri: /p
    plugins:
      ext-plugin-pre-req:
${body}${upstream}`;
    const ok = routes(plugin(`        conf:\n          - name: example\n            value: '{}'\n        allow_degradation: true`));
    expect(ok[0]!.plugins['ext-plugin-pre-req']).toEqual({ conf: [{ name: 'example', value: '{}' }], allow_degradation: true });
    // allow_degradation defaults to false
    expect(routes(plugin(`        conf:\n          - {name: a, value: '1'}`))[0]!.plugins['ext-plugin-pre-req']!.allow_degradation).toBe(false);

    expect(() => routes(plugin(`        conf: []`))).toThrow(/at least one/);
    expect(() => routes(plugin(`        conf:\n          - {name: '', value: '{}'}`))).toThrow(/1 to 128/);
    expect(() => routes(plugin(`        conf:\n          - {name: ${'n'.repeat(129)}, value: '{}'}`))).toThrow(/1 to 128/);
    expect(() => routes(plugin(`        conf:\n          - {name: ${'n'.repeat(128)}, value: '{}'}`))).not.toThrow();
    expect(() => routes(plugin(`        conf:\n          - {name: a, value: {x: 1}}`))).toThrow(/value must be a string/);
    expect(() => routes(plugin(`        conf:\n          - {name: a}`))).toThrow(/value must be a string/);
    expect(() => routes(plugin(`        conf:\n          - {name: a, value: '1'}\n        allow_degradation: "yes"`))).toThrow(
      /allow_degradation/,
    );
  });

  it('refuses plugins the stand-in does not implement rather than ignoring them', () => {
    expect(() => routes(`
  - id: k
    uri: /k
    plugins:
      key-auth: {}${upstream}`)).toThrow(RouteConfigError);
  });

  it('refuses routes without id, uri or upstream, and duplicate ids', () => {
    expect(() => routes(`  - uri: /x${upstream}`)).toThrow(/id/);
    expect(() => routes(`  - id: a${upstream}`)).toThrow(/uri/);
    expect(() => routes(`  - id: a\n    uri: /a`)).toThrow(/upstream/);
    expect(() => routes(`  - id: a\n    uri: /a${upstream}\n  - id: a\n    uri: /b${upstream}`)).toThrow(/duplicate/);
  });

  it('loads the repository apisix.yaml: cms, decision API and RAG routes with jwt then opa', () => {
    const loaded = loadRoutesFile(join(repoRoot, 'apisix-conf', 'apisix.yaml'));
    const query = (path: string, method = 'GET') => matchRoute(loaded, { method, host: 'localhost', path })?.id ?? null;
    expect(query('/policies')).toBe('cms');
    expect(query('/policies/a/history')).toBe('cms');
    // POST reaches the CMS (rollback, check); a method no route lists reaches nothing.
    expect(query('/policies/a/rollback', 'POST')).toBe('cms');
    expect(query('/gateways')).toBe('cms');
    expect(query('/policies/a', 'PATCH')).toBeNull();
    expect(query('/v1/data/team-a/project/authz', 'POST')).toBe('decision-api');
    expect(query('/rag/ask', 'POST')).toBe('rag');
    expect(query('/policiesX')).toBeNull();
    const cms = loaded.find((r) => r.id === 'cms')!;
    expect(cms.upstream.nodes).toEqual([{ host: '127.0.0.1', port: 8081, weight: 1 }]);
    const chain = (id: string) => loaded.find((r) => r.id === id)!.plugins['ext-plugin-pre-req']!.conf.map((c) => c.name);
    expect(chain('cms')).toEqual(['jwt', 'opa']);
    expect(chain('rag')).toEqual(['jwt', 'opa']);
    expect(JSON.parse(cms.plugins['ext-plugin-pre-req']!.conf[1]!.value)).toEqual({ policies: ['cms-access'] });
  });
});

describe('route matching like the radixtree router', () => {
  const table = routes(`
  - id: prefix-short
    uri: /api/*${upstream}
  - id: prefix-long
    uri: /api/v1/*${upstream}
  - id: exact
    uri: /api/v1/items${upstream}
  - id: low
    uri: /tie/*${upstream}
  - id: high
    uri: /tie/*
    priority: 10${upstream}
  - id: post-only
    uri: /method
    methods: [POST]${upstream}
  - id: any-method
    uri: /method${upstream}
  - id: hosted
    uri: /host/*
    host: "*.example.com"${upstream}
  - id: hostless
    uri: /host/*${upstream}`);
  const match = (path: string, method = 'GET', host = 'localhost') => matchRoute(table, { method, host, path })?.id ?? null;

  it('prefers an exact uri over any prefix, and a longer prefix over a shorter one', () => {
    expect(match('/api/v1/items')).toBe('exact');
    expect(match('/api/v1/items/1')).toBe('prefix-long');
    expect(match('/api/v2')).toBe('prefix-short');
    expect(match('/api')).toBeNull();
    expect(match('/api/')).toBe('prefix-short');
  });

  it('breaks ties with priority, then file order', () => {
    expect(match('/tie/x')).toBe('high');
  });

  it('passes over routes whose methods do not fit', () => {
    expect(match('/method', 'POST')).toBe('post-only');
    expect(match('/method', 'GET')).toBe('any-method');
  });

  it('tries host-specific routes first, with wildcard hosts', () => {
    expect(match('/host/a', 'GET', 'api.example.com')).toBe('hosted');
    expect(match('/host/a', 'GET', 'example.com')).toBe('hostless');
    expect(match('/host/a', 'GET', 'other.org')).toBe('hostless');
  });

  it('finds nothing for an unknown path', () => {
    expect(match('/nothing')).toBeNull();
  });
});

describe('config.yaml', () => {
  it('reads the repository config: the runner command and the envs nginx passes', () => {
    const config = loadGatewayConfig(join(repoRoot, 'apisix-conf', 'config.yaml'));
    expect(config.runnerCmd).toEqual(['node', 'dist/plugins/runner/main.js']);
    expect(config.pathForTest).toBeNull();
    expect(config.nodeListen).toBe(9080);
    // Everything the runner reads must be let through, or nginx hides it.
    expect(config.envs).toEqual(
      expect.arrayContaining([
        'ETCD_ENDPOINTS',
        'JWT_JWKS_FILE',
        'JWT_JWKS_URL',
        'JWT_ISSUER',
        'JWT_AUDIENCE',
        'JWT_ALGORITHMS',
        'JWT_CLOCK_TOLERANCE_SECONDS',
        'LOG_LEVEL',
        'RUNNER_METRICS_PORT',
        'RUNNER_STATE_DIR',
      ]),
    );
  });

  it('reads path_for_test and refuses a unix: prefix there', () => {
    expect(parseGatewayConfig(`ext-plugin:\n  path_for_test: /tmp/x.sock\n`).pathForTest).toBe('/tmp/x.sock');
    expect(() => parseGatewayConfig(`ext-plugin:\n  path_for_test: unix:/tmp/x.sock\n`)).toThrow(/without "unix:"/);
    expect(() => parseGatewayConfig(`ext-plugin:\n  cmd: node\n`)).toThrow(/list/);
  });

  it('hides every variable not listed in nginx_config.envs, keeping PATH and TZ', () => {
    const env = runnerEnvironment(['KEEP', 'SET=fixed', 'ABSENT'], { KEEP: 'k', SECRET: 's', PATH: '/bin', HOME: '/root' }, {
      APISIX_LISTEN_ADDRESS: 'unix:/x.sock',
    });
    expect(env).toEqual({ PATH: '/bin', KEEP: 'k', SET: 'fixed', APISIX_LISTEN_ADDRESS: 'unix:/x.sock' });
  });

  it('resolves relative script paths of ext-plugin.cmd against the repository root', () => {
    expect(resolveRunnerCmd(['node', 'dist/plugins/runner/main.js', '--flag'], '/repo')).toEqual([
      'node',
      '/repo/dist/plugins/runner/main.js',
      '--flag',
    ]);
    expect(resolveRunnerCmd(['/usr/bin/node', '/abs/main.js'], '/repo')).toEqual(['/usr/bin/node', '/abs/main.js']);
    expect(resolveRunnerCmd(['./bin/runner'], '/repo')).toEqual(['/repo/bin/runner']);
  });
});
