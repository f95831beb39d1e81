/**
 * The decision API's configuration: the only part of it that reads its
 * environment. Everything else takes what it needs from DecisionConfig.
 *
 *   DECISION_PORT              listen port (default 8181, OPA's)
 *   DECISION_HOST              listen address (default 127.0.0.1: only APISIX on the same node should reach it)
 *   DECISION_STATE_DIR         where the last-known-good policy snapshot is kept (default <tmp>/gatehouse-decision-state)
 *   DECISION_POLICY_CACHE_MB   memory for built policy engines (default 256, as the runner's)
 *   LOG_LEVEL                  pino level (default info)
 *   ETCD_ENDPOINTS             comma-separated etcd URLs (default http://127.0.0.1:2379)
 *   ETCD_CACERT, ETCD_CERT, ETCD_KEY, ETCD_USERNAME, ETCD_PASSWORD, ETCD_PASSWORD_FILE  TLS and user towards etcd (etcd/config.ts)
 *   JWT_*                      token verification, as everywhere (identity/config.ts); required;
 *                              JWT_VERIFY_CACHE_SECONDS remembers a verified token as the gateway does (default 30)
 *   POLICY_EVAL_WORKERS, POLICY_EVAL_FUEL, POLICY_MEMORY_MAX_MB, POLICY_EVAL_TIMEOUT_MS
 *                              how decisions are evaluated, as the runner's (defaults 0, 10000000, 64, 500)
 *   DECISION_LOG               stdout, file:<path> or off (default off); DECISION_LOG_BUFFER events may wait (default 10000)
 *   GATEWAY_ID                 its name in the fleet report and decision logs (default host-decision-api-pid)
 *   GATEHOUSE_DATACENTER       the datacenter named in the fleet report (default none)
 *   GATEWAY_REPORT_TTL_SECONDS how long a dead decision API's fleet report outlives it (default 10, 2 to 3600)
 *   POLICY_VERIFY_KEYS_FILE    a JWKS of Ed25519 public keys: a policy version loads only when signed by one of them
 *                              (policy/signing), re-read when it changes; unset: signatures are not checked
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { etcdClientOptionsFromEnv, etcdEndpoints, type EtcdClientOptions } from '../etcd/index.js';
import { identityConfigFromEnv, verifyCacheSecondsFromEnv, type IdentityConfig } from '../identity/index.js';
import { policyCacheBytesFromEnv } from '../policy/engine/cache.js';
import { evaluationSettings, type EvaluationSettings } from '../policy/engine/evaluator.js';
import { decisionLogSettings, type DecisionLogSettings } from '../policy/decision-log/index.js';
import { reportTtlSeconds } from '../policy/fleet/report.js';
import { verifyKeysFileFromEnv } from '../policy/signing/index.js';

export interface DecisionConfig {
  port: number;
  host: string;
  stateDir: string;
  logLevel: string;
  etcdEndpoints: string[];
  etcdClient: EtcdClientOptions;
  identity: IdentityConfig;
  /** How long a verified token is remembered (0: not at all). */
  verifyCacheSeconds: number;
  policyCacheBytes: number;
  evaluation: EvaluationSettings;
  decisionLog: DecisionLogSettings | null;
  /** GATEWAY_ID, when set. */
  gatewayId: string | null;
  datacenter: string | null;
  reportTtlSeconds: number;
  /** POLICY_VERIFY_KEYS_FILE; null: policy signatures are not checked. */
  policyVerifyKeysFile: string | null;
}

/** LOG_LEVEL (default info), for the logger made before the rest is read. */
export function logLevelFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOG_LEVEL ?? 'info';
}

export function decisionConfigFromEnv(env: NodeJS.ProcessEnv = process.env): DecisionConfig {
  return {
    port: Number(env.DECISION_PORT ?? 8181),
    host: env.DECISION_HOST?.trim() || '127.0.0.1',
    stateDir: env.DECISION_STATE_DIR || join(tmpdir(), 'gatehouse-decision-state'),
    logLevel: logLevelFromEnv(env),
    etcdEndpoints: etcdEndpoints(env),
    etcdClient: etcdClientOptionsFromEnv(env),
    identity: identityConfigFromEnv(env),
    verifyCacheSeconds: verifyCacheSecondsFromEnv(env),
    policyCacheBytes: policyCacheBytesFromEnv('DECISION_POLICY_CACHE_MB', env),
    evaluation: evaluationSettings(env),
    decisionLog: decisionLogSettings(env),
    gatewayId: env.GATEWAY_ID || null,
    datacenter: env.GATEHOUSE_DATACENTER || null,
    reportTtlSeconds: reportTtlSeconds(env),
    policyVerifyKeysFile: verifyKeysFileFromEnv(env),
  };
}
