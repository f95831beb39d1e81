/**
 * CMS configuration from the environment.
 *
 *   PORT                    listen port (default 8081)
 *   HOST                    listen address (default 127.0.0.1)
 *   ETCD_ENDPOINTS          comma-separated etcd URLs (default http://127.0.0.1:2379)
 *   ETCD_CALL_TIMEOUT_MS    deadline of each etcd call attempt; past it the request gets 503 (default 2000)
 *   ETCD_CACERT, ETCD_CERT, ETCD_KEY  TLS to etcd (https:// endpoints): CA, client certificate and key (PEM files)
 *   ETCD_USERNAME, ETCD_PASSWORD (or ETCD_PASSWORD_FILE)  etcd user, when auth is on and the certificate does not name it
 *   OPA_PATH                the opa binary (default <package>/.local/bin/opa)
 *   PATH                    where prlimit (and opa, named without a folder) are found; opa's processes get it and HOME, nothing else
 *   OPA_COMPILE_TIMEOUT_MS  deadline of each opa process (default 30000)
 *   OPA_MEMORY_MAX_MB       memory each opa process may commit (its data segment, prlimit --data), and
 *                           GOMEMLIMIT at 3/4 of it; a test run that needs more is stopped, 422 (default 256)
 *   CMS_TEST_CONCURRENCY    policy test runs (opa test) at once; others wait for one to end (default 2)
 *   CMS_CHECK_WORKERS       worker threads the load check (a compiled policy evaluated once on an empty
 *                           input) runs in, off the request thread (default 2, at least 2)
 *   POLICY_EVAL_TIMEOUT_MS  the load check's deadline, the gateways' (default 500)
 *   POLICY_MEMORY_MAX_MB    the load check's memory ceiling per instance, the gateways' (default 64)
 *   POLICY_EVAL_FUEL        the load check's fuel per evaluation, the gateways' (default 10000000; off: modules
 *                           stored and checked unmetered)
 *   CMS_BODY_LIMIT_BYTES    largest accepted PUT body; larger is 413 (default 262144)
 *   CMS_HISTORY_RETENTION   versions kept per policy (default 50)
 *   CMS_COMPILE_CONCURRENCY compiles running at once (default: the number of cores)
 *   CMS_COMPILE_QUEUE       compiles waiting for a slot; past it a PUT gets 503 with Retry-After (default 4 per core)
 *   ETCD_MAX_REQUEST_BYTES  the etcd members' --max-request-bytes; a policy whose write is larger gets 413 (default 1572864)
 *   CMS_ACCESS_POLICY_WASM  compiled access policy (default <package>/dist/policy/access/access.wasm)
 *   POLICY_SIGNING_KEY_FILE an Ed25519 private key (PEM, PKCS#8) the CMS signs every policy version with
 *                           (policy/signing); gateways verify it (POLICY_VERIFY_KEYS_FILE). Unset: versions
 *                           are written unsigned, which the start log says
 *   POLICY_SIGNING_KEY_ID   the key's kid, as the gateways' JWKS names its public key (required with the file)
 *   POLICY_SIGNING_VAULT_KEY  instead of the file: <mount>/<key> of an ed25519 key of Vault's transit engine,
 *                           which signs without the key leaving Vault (kids <key>-v<version>); Vault from
 *                           VAULT_ADDR and VAULT_TOKEN or VAULT_ROLE_ID + VAULT_SECRET_ID, VAULT_CACERT,
 *                           VAULT_NAMESPACE, VAULT_TIMEOUT_MS (as the runner's)
 *   LOG_LEVEL               pino level (default info)
 *   OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_SERVICE_NAME,
 *   OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_SDK_DISABLED  traces (runtime/tracing.ts); no endpoint: none
 *                           (service name default gatehouse-cms)
 *   JWT_*                   token verification, see identity/config.ts
 */
import { opaPath } from '../runtime/paths.js';
import { vaultConfigFromEnv, type VaultConfig } from '../plugins/vault/config.js';
import { tracingConfigFromEnv, type TracingConfig } from '../runtime/tracing.js';
import { identityConfigFromEnv, type IdentityConfig } from '../identity/index.js';
import { availableParallelism } from 'node:os';
import { DEFAULT_ETCD_MAX_REQUEST_BYTES, DEFAULT_HISTORY_RETENTION } from '../policy/store/index.js';
import { defaultAccessPolicyWasmPath } from '../policy/access/index.js';
import { evaluationFuel, policyMemoryMaxBytes } from '../policy/engine/index.js';
import { evaluationTimeoutMs } from '../policy/engine/pool.js';
import { DEFAULT_ETCD_CALL_TIMEOUT_MS, etcdClientOptionsFromEnv, etcdEndpoints, type EtcdTlsFiles } from '../etcd/index.js';

export const DEFAULT_BODY_LIMIT_BYTES = 256 * 1024;
export const DEFAULT_COMPILE_TIMEOUT_MS = 30_000;
export const DEFAULT_OPA_MEMORY_MAX_MB = 256;
export const DEFAULT_TEST_CONCURRENCY = 2;
export const DEFAULT_CHECK_WORKERS = 2;

export interface CmsConfig {
  port: number;
  host: string;
  etcdEndpoints: string[];
  etcdCallTimeoutMs: number;
  /** TLS to etcd, from ETCD_CACERT, ETCD_CERT, ETCD_KEY. */
  etcdTls?: EtcdTlsFiles;
  /** etcd user, from ETCD_USERNAME and ETCD_PASSWORD (or ETCD_PASSWORD_FILE). */
  etcdAuth?: { username: string; password: string };
  identity: IdentityConfig;
  opaPath: string;
  /** PATH of the compiler's processes. */
  searchPath: string;
  compileTimeoutMs: number;
  /** The most memory each opa process may commit (hard), bytes. */
  opaMemoryMaxBytes: number;
  /** Policy test runs at once. */
  testConcurrency: number;
  /** The load check's worker threads, deadline and memory ceiling (the gateways' bounds). */
  checkWorkers: number;
  evalTimeoutMs: number;
  policyMemoryMaxBytes: number;
  /** null: modules not metered (POLICY_EVAL_FUEL=off). */
  evalFuel: number | null;
  bodyLimitBytes: number;
  historyRetention: number;
  /** Compiles running at once, and how many may wait before a PUT is refused with 503. */
  compileConcurrency: number;
  compileQueue: number;
  /** etcd's --max-request-bytes: a policy whose write would be larger is refused with 413. */
  etcdMaxRequestBytes: number;
  accessPolicyWasmPath: string;
  /** How policy versions are signed; null: unsigned. */
  policySigning: PolicySigningConfig | null;
  logLevel: string;
  /** Where spans are exported (OTEL_*); null: traces are off. */
  tracing: TracingConfig | null;
}

/** The key the CMS signs policy versions with: a PEM file (POLICY_SIGNING_KEY_FILE, POLICY_SIGNING_KEY_ID) or a Vault transit key (POLICY_SIGNING_VAULT_KEY). */
export type PolicySigningConfig = { kind: 'file'; keyFile: string; kid: string } | { kind: 'vault-transit'; vault: VaultConfig; mount: string; key: string };

function policySigningFromEnv(env: NodeJS.ProcessEnv): PolicySigningConfig | null {
  const keyFile = env.POLICY_SIGNING_KEY_FILE?.trim();
  const kid = env.POLICY_SIGNING_KEY_ID?.trim();
  const vaultKey = env.POLICY_SIGNING_VAULT_KEY?.trim();
  if (vaultKey) {
    if (keyFile || kid) throw new Error('POLICY_SIGNING_VAULT_KEY and POLICY_SIGNING_KEY_FILE/_ID are two ways to sign: set one');
    const match = /^([A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+)*)\/([A-Za-z0-9_.-]+)$/.exec(vaultKey);
    if (!match) throw new Error('POLICY_SIGNING_VAULT_KEY must be <transit mount>/<key name>, e.g. transit/gatehouse-policy');
    const vault = vaultConfigFromEnv(env);
    if (!vault) throw new Error('POLICY_SIGNING_VAULT_KEY needs VAULT_ADDR (and VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID)');
    return { kind: 'vault-transit', vault, mount: match[1]!, key: match[2]! };
  }
  if (!keyFile) {
    if (kid) throw new Error('POLICY_SIGNING_KEY_ID is set without POLICY_SIGNING_KEY_FILE');
    return null;
  }
  if (!kid) throw new Error('POLICY_SIGNING_KEY_FILE needs POLICY_SIGNING_KEY_ID, the kid gateways know its public key by');
  return { kind: 'file', keyFile, kid };
}

/** PATH, for the compiler's processes (prlimit, opa); the default of a RegoCompiler not given one. */
export function compilerSearchPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.PATH ?? '';
}

function positiveInteger(env: NodeJS.ProcessEnv, name: string, fallback: number): number {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value <= 0) throw new Error(`${name} must be a positive integer`);
  return value;
}

export function cmsConfigFromEnv(env: NodeJS.ProcessEnv = process.env): CmsConfig {
  const endpoints = etcdEndpoints(env);
  if (endpoints.length === 0) throw new Error('ETCD_ENDPOINTS lists no endpoint');
  const { tls: etcdTls, auth: etcdAuth } = etcdClientOptionsFromEnv(env);
  return {
    port: positiveInteger(env, 'PORT', 8081),
    host: env.HOST?.trim() || '127.0.0.1',
    etcdEndpoints: endpoints,
    etcdCallTimeoutMs: positiveInteger(env, 'ETCD_CALL_TIMEOUT_MS', DEFAULT_ETCD_CALL_TIMEOUT_MS),
    ...(etcdTls ? { etcdTls } : {}),
    ...(etcdAuth ? { etcdAuth } : {}),
    identity: identityConfigFromEnv(env),
    opaPath: opaPath(env.OPA_PATH),
    searchPath: compilerSearchPath(env),
    compileTimeoutMs: positiveInteger(env, 'OPA_COMPILE_TIMEOUT_MS', DEFAULT_COMPILE_TIMEOUT_MS),
    opaMemoryMaxBytes: positiveInteger(env, 'OPA_MEMORY_MAX_MB', DEFAULT_OPA_MEMORY_MAX_MB) * 1024 * 1024,
    testConcurrency: positiveInteger(env, 'CMS_TEST_CONCURRENCY', DEFAULT_TEST_CONCURRENCY),
    checkWorkers: Math.max(2, positiveInteger(env, 'CMS_CHECK_WORKERS', DEFAULT_CHECK_WORKERS)),
    evalTimeoutMs: evaluationTimeoutMs(env),
    policyMemoryMaxBytes: policyMemoryMaxBytes(env),
    evalFuel: evaluationFuel(env),
    bodyLimitBytes: positiveInteger(env, 'CMS_BODY_LIMIT_BYTES', DEFAULT_BODY_LIMIT_BYTES),
    historyRetention: positiveInteger(env, 'CMS_HISTORY_RETENTION', DEFAULT_HISTORY_RETENTION),
    compileConcurrency: positiveInteger(env, 'CMS_COMPILE_CONCURRENCY', availableParallelism()),
    compileQueue: positiveInteger(env, 'CMS_COMPILE_QUEUE', 4 * availableParallelism()),
    etcdMaxRequestBytes: positiveInteger(env, 'ETCD_MAX_REQUEST_BYTES', DEFAULT_ETCD_MAX_REQUEST_BYTES),
    accessPolicyWasmPath: env.CMS_ACCESS_POLICY_WASM?.trim() || defaultAccessPolicyWasmPath(),
    policySigning: policySigningFromEnv(env),
    logLevel: env.LOG_LEVEL?.trim() || 'info',
    tracing: tracingConfigFromEnv(env, 'gatehouse-cms'),
  };
}
