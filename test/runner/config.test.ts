// Configuration is read in one module per service: the runner's
// (plugins/runner/config.ts), the decision API's (decision-api/config.ts) and
// the CMS's (cms/config.ts) are the only readers of process.env among the
// shipped libraries; ETCD_ENDPOINTS is parsed by one function (etcd/config.ts);
// the package root is found in one place (runtime/paths.ts).
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultWorkerCount, runnerConfigFromEnv } from '../../plugins/runner/config.js';
import { decisionConfigFromEnv } from '../../decision-api/config.js';
import { cmsConfigFromEnv } from '../../cms/config.js';
import { DEFAULT_ETCD_ENDPOINT, etcdEndpoints } from '../../etcd/index.js';
import { DEFAULT_EVAL_FUEL } from '../../policy/engine/index.js';
import { opaPath, packageRoot } from '../../runtime/paths.js';
import { repoRoot } from '../support/runner-process.js';

const MiB = 1024 * 1024;
const JWT = { JWT_JWKS_FILE: '/nonexistent/jwks.json', JWT_ISSUER: 'https://idp.test', JWT_AUDIENCE: 'gatehouse' };

describe('ETCD_ENDPOINTS', () => {
  it('is parsed by one function with one default: the local etcd, or none for a service that may run without it', () => {
    expect(etcdEndpoints({})).toEqual([DEFAULT_ETCD_ENDPOINT]);
    expect(etcdEndpoints({}, { optional: true })).toEqual([]);
    expect(etcdEndpoints({ ETCD_ENDPOINTS: ' http://a:2379, ,https://b:2379 ' })).toEqual(['http://a:2379', 'https://b:2379']);
    expect(etcdEndpoints({ ETCD_ENDPOINTS: '' })).toEqual([]);
  });

  it('means the same to the runner, the decision API and the CMS', () => {
    const env = { ...JWT, ETCD_ENDPOINTS: 'http://e1:2379,http://e2:2379' };
    expect(runnerConfigFromEnv(env).etcdEndpoints).toEqual(['http://e1:2379', 'http://e2:2379']);
    expect(decisionConfigFromEnv(env).etcdEndpoints).toEqual(['http://e1:2379', 'http://e2:2379']);
    expect(cmsConfigFromEnv(env).etcdEndpoints).toEqual(['http://e1:2379', 'http://e2:2379']);
    // Unset: the decision API and the CMS use the local etcd; the runner enforces no policies.
    expect(decisionConfigFromEnv(JWT).etcdEndpoints).toEqual([DEFAULT_ETCD_ENDPOINT]);
    expect(cmsConfigFromEnv(JWT).etcdEndpoints).toEqual([DEFAULT_ETCD_ENDPOINT]);
    expect(runnerConfigFromEnv(JWT).etcdEndpoints).toEqual([]);
  });
});

describe('the runner configuration', () => {
  it('holds every setting the runner honours, with its default', () => {
    const config = runnerConfigFromEnv({ ETCD_ENDPOINTS: 'http://e:2379' });
    expect(config).toMatchObject({
      logLevel: 'info',
      worker: { slot: 0, respawned: false },
      gatewayId: null,
      datacenter: null,
      reportTtlSeconds: 10,
      policyCacheBytes: 256 * MiB,
      evaluation: { workers: 0, fuel: DEFAULT_EVAL_FUEL, memoryMaxBytes: 64 * MiB, timeoutMs: 500 },
      decisionLog: null,
      budgets: { settleTimeoutMs: 900_000, holderTtlSeconds: 10 },
      etcdClient: {},
      settlePort: 9092,
      workers: defaultWorkerCount(),
    });
    // Half the cores, rounded up: the runner shares them with an nginx worker on each.
    expect([1, 2, 3, 4, 16].map((cores) => defaultWorkerCount(cores))).toEqual([1, 1, 2, 2, 8]);
    // Not configured is not fatal: the plugins that need them refuse their confs.
    expect(config.identity).toEqual({ error: 'set exactly one of JWT_JWKS_FILE and JWT_JWKS_URL' });
    expect(config.vault).toEqual({ config: null });
  });

  it('reads what the environment sets', () => {
    const config = runnerConfigFromEnv({
      ...JWT,
      ETCD_ENDPOINTS: 'http://e:2379',
      LOG_LEVEL: 'debug',
      RUNNER_WORKER_INDEX: '3',
      RUNNER_WORKER_RESPAWN: '1',
      GATEWAY_ID: 'gw-1',
      GATEHOUSE_DATACENTER: 'dc2',
      GATEWAY_REPORT_TTL_SECONDS: '30',
      RUNNER_POLICY_CACHE_MB: '8',
      POLICY_EVAL_WORKERS: '2',
      POLICY_EVAL_FUEL: 'off',
      POLICY_MEMORY_MAX_MB: '16',
      POLICY_EVAL_TIMEOUT_MS: '250',
      DECISION_LOG: 'file:/var/log/decisions.jsonl',
      DECISION_LOG_BUFFER: '50',
      BUDGET_SETTLE_TIMEOUT_SECONDS: '60',
      BUDGET_HOLDER_TTL_SECONDS: '4',
      JWT_VERIFY_CACHE_SECONDS: '0',
      VAULT_ADDR: 'https://vault.test:8200/',
      VAULT_TOKEN: 't',
    });
    expect(config).toMatchObject({
      logLevel: 'debug',
      worker: { slot: 3, respawned: true },
      gatewayId: 'gw-1',
      datacenter: 'dc2',
      reportTtlSeconds: 30,
      policyCacheBytes: 8 * MiB,
      evaluation: { workers: 2, fuel: null, memoryMaxBytes: 16 * MiB, timeoutMs: 250 },
      decisionLog: { target: { kind: 'file', path: '/var/log/decisions.jsonl' }, maxBuffered: 50 },
      budgets: { settleTimeoutMs: 60_000, holderTtlSeconds: 4 },
      identity: { config: { issuer: 'https://idp.test', audience: ['gatehouse'] }, verifyCacheSeconds: 0 },
      vault: { config: { addr: 'https://vault.test:8200', auth: { kind: 'token', token: 't' } } },
    });
  });

  it('refuses nonsense at start, and keeps identity and Vault problems for the plugins that need them', () => {
    const etcd = { ETCD_ENDPOINTS: 'http://e:2379' };
    expect(() => runnerConfigFromEnv({ ...etcd, POLICY_EVAL_FUEL: 'lots' })).toThrow(/POLICY_EVAL_FUEL/);
    expect(() => runnerConfigFromEnv({ ...etcd, GATEWAY_REPORT_TTL_SECONDS: '1' })).toThrow(/GATEWAY_REPORT_TTL_SECONDS/);
    expect(() => runnerConfigFromEnv({ ...etcd, BUDGET_HOLDER_TTL_SECONDS: '-1' })).toThrow(/BUDGET_HOLDER_TTL_SECONDS/);
    expect(() => runnerConfigFromEnv({ DECISION_LOG: 'syslog' })).toThrow(/DECISION_LOG/);
    expect(runnerConfigFromEnv({ ...JWT, JWT_VERIFY_CACHE_SECONDS: 'x' }).identity).toEqual({
      error: 'JWT_VERIFY_CACHE_SECONDS must be a number of seconds (0 disables)',
    });
    expect(runnerConfigFromEnv({ VAULT_ADDR: 'https://v' }).vault).toEqual({ error: 'set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID' });
    // Without etcd, what only matters with it is not read.
    expect(runnerConfigFromEnv({ POLICY_EVAL_FUEL: 'lots', BUDGET_HOLDER_TTL_SECONDS: '-1' }).evaluation.fuel).toBe(DEFAULT_EVAL_FUEL);
  });
});

describe('the decision API configuration', () => {
  it('holds its settings with their defaults, and what the environment sets', () => {
    expect(decisionConfigFromEnv(JWT)).toMatchObject({
      port: 8181,
      host: '127.0.0.1',
      logLevel: 'info',
      policyCacheBytes: 256 * MiB,
      evaluation: { workers: 0, fuel: DEFAULT_EVAL_FUEL, memoryMaxBytes: 64 * MiB, timeoutMs: 500 },
      decisionLog: null,
      gatewayId: null,
      datacenter: null,
      reportTtlSeconds: 10,
      verifyCacheSeconds: 30,
    });
    expect(
      decisionConfigFromEnv({
        ...JWT,
        DECISION_PORT: '9000',
        DECISION_HOST: '0.0.0.0',
        DECISION_STATE_DIR: '/s',
        DECISION_POLICY_CACHE_MB: '4',
        POLICY_EVAL_WORKERS: '3',
        DECISION_LOG: 'stdout',
        GATEWAY_ID: 'd1',
        GATEHOUSE_DATACENTER: 'dc1',
        JWT_VERIFY_CACHE_SECONDS: '0',
      }),
    ).toMatchObject({
      port: 9000,
      host: '0.0.0.0',
      stateDir: '/s',
      policyCacheBytes: 4 * MiB,
      evaluation: { workers: 3 },
      decisionLog: { target: { kind: 'stdout' }, maxBuffered: 10_000 },
      gatewayId: 'd1',
      datacenter: 'dc1',
      verifyCacheSeconds: 0,
    });
    // Token verification is not optional for the decision API.
    expect(() => decisionConfigFromEnv({})).toThrow(/JWT_JWKS_FILE/);
    expect(() => decisionConfigFromEnv({ ...JWT, JWT_VERIFY_CACHE_SECONDS: '-5' })).toThrow(/JWT_VERIFY_CACHE_SECONDS must be a number of seconds/);
  });
});

describe('the CMS configuration', () => {
  it('gives the load check the gateways fuel (POLICY_EVAL_FUEL)', () => {
    expect(cmsConfigFromEnv(JWT).evalFuel).toBe(DEFAULT_EVAL_FUEL);
    expect(cmsConfigFromEnv({ ...JWT, POLICY_EVAL_FUEL: '50000' }).evalFuel).toBe(50_000);
    expect(cmsConfigFromEnv({ ...JWT, POLICY_EVAL_FUEL: 'off' }).evalFuel).toBeNull();
  });
});

describe('the package root', () => {
  it('is found in one place, the folder holding package.json, with the opa binary under it unless OPA_PATH names one', () => {
    expect(packageRoot()).toBe(resolve(repoRoot));
    expect(existsSync(join(packageRoot(), 'package.json'))).toBe(true);
    expect(opaPath()).toBe(join(repoRoot, '.local', 'bin', 'opa'));
    expect(opaPath(' /usr/local/bin/opa ')).toBe('/usr/local/bin/opa');
    expect(opaPath('')).toBe(join(repoRoot, '.local', 'bin', 'opa'));
    expect(cmsConfigFromEnv({ ...JWT, OPA_PATH: '/opt/opa' }).opaPath).toBe('/opt/opa');
  });
});

describe('who reads process.env', () => {
  function sources(dir: string): string[] {
    return readdirSync(dir).flatMap((name) => {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) return name === 'node_modules' || name === 'console' ? [] : sources(path);
      return path.endsWith('.ts') ? [path] : [];
    });
  }

  it('only the services configuration modules, among the shipped libraries', () => {
    const folders = ['cms', 'plugins', 'policy', 'budget', 'identity', 'etcd', 'http', 'decision-api', 'runtime'];
    const readers = folders
      .flatMap((folder) => sources(join(repoRoot, folder)))
      .filter((file) => /process\.env/.test(readFileSync(file, 'utf8')))
      .map((file) => relative(repoRoot, file));
    expect(readers.sort()).toEqual(['cms/config.ts', 'decision-api/config.ts', 'plugins/runner/config.ts']);
  });
});
