#!/usr/bin/env node
// gatehouse-decision: the decision API (OPA's Data API) on Gatehouse's
// engine, kept current by the same etcd watch the gateway uses, through the
// same policy pipeline (policy/enforcer.ts). Configuration: decision-api/config.ts.
import { createLogger } from '../runtime/logger.js';
import { cachingVerifier, createIdentityVerifier } from '../identity/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { gatewayId } from '../policy/fleet/report.js';
import { createEnforcer } from '../policy/enforcer.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../policy/access/index.js';
import { buildDecisionApp } from './app.js';
import { createDecisionApiMetrics } from './metrics.js';
import { decisionConfigFromEnv, logLevelFromEnv } from './config.js';

const log = createLogger('gatehouse-decision', logLevelFromEnv());

async function main() {
  const config = decisionConfigFromEnv();

  const metrics = createDecisionApiMetrics();

  const etcd = createEtcdClient(config.etcdEndpoints, config.etcdClient);
  const enforcer = createEnforcer({
    client: etcd,
    log,
    kind: 'decision-api',
    gateway: gatewayId('decision-api', config.gatewayId),
    datacenter: config.datacenter,
    reportTtlSeconds: config.reportTtlSeconds,
    verifyKeysFile: config.policyVerifyKeysFile,
    stateDir: config.stateDir,
    cacheBytes: config.policyCacheBytes,
    evaluation: config.evaluation,
    decisionLog: config.decisionLog,
    ...metrics.enforcer,
  });
  await enforcer.start();
  const { watcher, reporter, decisionLog } = enforcer;
  metrics.watch(watcher);
  // The plugin sends the same client token with every request: an ES256 check per request was most of
  // this API's CPU (BENCHMARKS.md, "The gateway end to end").
  const verifier = () => {
    const inner = createIdentityVerifier(config.identity);
    return config.verifyCacheSeconds > 0 ? cachingVerifier(inner, { maxAgeMs: config.verifyCacheSeconds * 1000 }) : inner;
  };
  const app = await buildDecisionApp({
    watcher,
    decisionLog: { log: decisionLog, gateway: reporter.id },
    verifier: verifier(),
    candidates: enforcer.candidates,
    access: await loadAccessPolicy(defaultAccessPolicyWasmPath()),
    log,
    registry: metrics.registry,
    onDecision: metrics.onDecision,
  });
  await app.listen({ host: config.host, port: config.port });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    await app.close();
    await enforcer.close();
    etcd.close();
    log.flush();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((err) => {
  log.fatal({ err }, 'decision API failed to start');
  log.flush();
  process.exit(1);
});
