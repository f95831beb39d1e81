// apisix-conf/ checked by APISIX itself: `apisix test` renders nginx.conf from
// each config.yaml (APISIX's schema check) and runs `nginx -t` on it, so a
// config APISIX would refuse never lands.
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse } from 'yaml';
import { freePort, startApisix, testApisixConfig, ApisixStartError } from '../../dev/apisix/index.js';
import { startEtcd } from '../support/etcd.js';
import { apisixInstallation } from '../support/gateway.js';
import { createTestKeys } from '../support/jwt.js';
import { repoRoot } from '../support/runner-process.js';

const standalone = join(repoRoot, 'apisix-conf', 'config.yaml');
const traditional = join(repoRoot, 'apisix-conf', 'config-traditional.yaml');
const routes = join(repoRoot, 'apisix-conf', 'apisix.yaml');

/** The traditional config with its machine paths (/etc/gatehouse/tls) pointing at files made here. */
function traditionalHere(): string {
  const dir = mkdtempSync(join(tmpdir(), 'gh-apisix-conf-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      join(dir, 'apisix-etcd-client.key'),
      '-out',
      join(dir, 'apisix-etcd-client.crt'),
      '-days',
      '1',
      '-subj',
      '/CN=apisix',
    ],
    { stdio: 'ignore' },
  );
  copyFileSync('/etc/ssl/certs/ca-certificates.crt', join(dir, 'trusted.crt'));
  const path = join(dir, 'config.yaml');
  writeFileSync(path, readFileSync(traditional, 'utf8').replaceAll('/etc/gatehouse/tls/', `${dir}/`));
  return path;
}

function check(configPath: string, edit?: Parameters<typeof testApisixConfig>[0]['edit'], env: Record<string, string> = {}): string {
  return testApisixConfig({
    installation: apisixInstallation(),
    repoRoot,
    configPath,
    routesPath: routes,
    port: 9080,
    env: { PATH: process.env.PATH ?? '', ...env },
    ...(edit ? { edit } : {}),
  });
}

describe('APISIX accepts apisix-conf/', () => {
  it('config.yaml (standalone) with apisix.yaml: schema and nginx -t', () => {
    expect(check(standalone)).toMatch(/configuration test is successful/);
  });

  it('config-traditional.yaml (etcd, Admin API) with its admin key from the environment', () => {
    expect(check(traditionalHere(), undefined, { APISIX_ADMIN_KEY: 'a'.repeat(32) })).toMatch(/configuration test is successful/);
  });

  it('the traditional config without APISIX_ADMIN_KEY is refused (no default key)', () => {
    expect(() => check(traditionalHere())).toThrow(/APISIX_ADMIN_KEY/);
  });

  it('the check can fail: an unknown deployment role, a wrong type, an nginx snippet nginx refuses', () => {
    expect(() => check(standalone, (doc) => doc.setIn(['deployment', 'role'], 'gateway'))).toThrow(ApisixStartError);
    expect(() => check(standalone, (doc) => doc.setIn(['apisix', 'enable_admin'], 'yes'))).toThrow(/enable_admin/);
    expect(() => check(standalone, (doc) => doc.setIn(['nginx_config', 'http_server_configuration_snippet'], 'proxy_ssl_verify maybe;\n'))).toThrow(
      /proxy_ssl_verify/,
    );
  });

  it("refuses a prefix nginx's workers could not reach (under a root master they run as nobody)", () => {
    const closed = mkdtempSync(join(tmpdir(), 'gh-closed-')); // mode 0700
    const attempt = () =>
      testApisixConfig({
        installation: apisixInstallation(),
        repoRoot,
        prefix: join(closed, 'apisix'),
        routesPath: routes,
        port: 9080,
        env: { PATH: process.env.PATH ?? '' },
      });
    if (process.getuid?.() === 0) expect(attempt).toThrow(/workers \(nobody\) could not reach/);
    else expect(attempt()).toMatch(/configuration test is successful/);
  });

  // `apisix test` reads neither the routes nor the plugin list's contents: a
  // route APISIX refuses only shows at run time. Every route of apisix.yaml
  // answers through the runner (401 without a token, not 404), with no error logged.
  it('every route of apisix.yaml loads in a running APISIX', async () => {
    const etcd = await startEtcd();
    const keys = await createTestKeys();
    const gateway = await startApisix({
      installation: apisixInstallation(),
      repoRoot,
      routesPath: routes,
      port: await freePort(),
      workerProcesses: 1,
      env: {
        PATH: process.env.PATH ?? '',
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ...keys.env,
        RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-runner-')),
        LOG_LEVEL: 'warn',
        RUNNER_METRICS_PORT: 'off',
        // The llm route's vault plugin needs a Vault to be configured (not reachable: no token gets that far).
        VAULT_ADDR: 'http://127.0.0.1:1',
        VAULT_TOKEN: 'unused',
      },
      logger: pino({ level: 'silent' }),
    });
    try {
      const doc = parse(readFileSync(routes, 'utf8').replace(/#END\s*$/, '')) as {
        routes: { id: string; uri?: string; uris?: string[]; plugins?: Record<string, unknown> }[];
      };
      for (const route of doc.routes) {
        const path = (route.uris?.[0] ?? route.uri ?? '').replace('*', 'x');
        const response = await fetch(`${gateway.url}${path}`, { redirect: 'manual' });
        if (!route.plugins?.['ext-plugin-pre-req']) {
          // A route without the runner (the console's static files) goes straight to its upstream, absent here: 502.
          expect(response.status, route.id).toBe(502);
          continue;
        }
        expect(response.status, route.id).toBe(401);
        expect(response.headers.get('content-type'), route.id).toMatch(/application\/problem\+json/);
      }
      expect((await fetch(`${gateway.url}/no-route-here`)).status).toBe(404);
      // No error but the console route's absent upstream.
      expect(gateway.runnerOutput().filter((line) => / \[error\] /.test(line) && !/while connecting to upstream/.test(line))).toEqual([]);
    } finally {
      await gateway.stop();
      await etcd.cleanup();
      await keys.cleanup();
    }
  });
});
