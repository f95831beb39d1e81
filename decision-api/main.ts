#!/usr/bin/env node
// gatehouse-decision: the decision API (OPA's Data API) on Gatehouse's
// engine, kept current by the same etcd watch the gateway uses, through the
// same policy pipeline (policy/enforcer.ts). Configuration: decision-api/config.ts.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { createLogger } from '../runtime/logger.js';
import { cachingVerifier, createIdentityVerifier } from '../identity/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { gatewayId } from '../policy/fleet/report.js';
import { createEnforcer } from '../policy/enforcer.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../policy/access/index.js';
import { buildDecisionApp } from './app.js';
import { decisionConfigFromEnv, logLevelFromEnv } from './config.js';

const log = createLogger('gatehouse-decision', logLevelFromEnv());

async function main() {
  const config = decisionConfigFromEnv();

  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'gatehouse_decision_' });
  const decisions = new Counter({
    name: 'gatehouse_decision_api_decisions_total',
    help: 'Decisions by policy and outcome',
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'gatehouse_decision_api_evaluation_seconds',
    help: 'Policy evaluation time',
    buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01],
    registers: [registry],
  });
  const aborted = new Counter({
    name: 'gatehouse_decision_api_evaluations_aborted_total',
    help: 'Evaluations stopped at their deadline or when their fuel was burned, or failed (memory ceiling, abort)',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const decisionLogEvents = new Counter({
    name: 'gatehouse_decision_log_events_total',
    help: 'Decision log events written to the sink, or dropped because the sink did not keep up',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });

  const candidateEvaluations = new Counter({
    name: 'gatehouse_candidate_evaluations_total',
    help: "Decisions a policy's candidate was evaluated for in the shadow of the live version: agreed, diverged, error, dropped (too many pending)",
    labelNames: ['policy', 'outcome'] as const,
    registers: [registry],
  });

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
    onAbort: (reason) => aborted.inc({ reason }),
    onShadow: (policy, outcome) => candidateEvaluations.inc({ policy, outcome }),
    onDecisionLogWritten: (n) => decisionLogEvents.inc({ outcome: 'written' }, n),
    onDecisionLogDropped: (n) => decisionLogEvents.inc({ outcome: 'dropped' }, n),
  });
  await enforcer.start();
  const { watcher, reporter, decisionLog } = enforcer;
  new Gauge({
    name: 'gatehouse_policies_refused_signature',
    help: 'Policies refused for their signature (unsigned, or a bad signature: none by a listed key over these bytes); every decision that needs one is denied',
    labelNames: ['problem'] as const,
    registers: [registry],
    collect() {
      const unloadable = watcher.unloadable();
      for (const problem of ['unsigned', 'bad signature'] as const) this.set({ problem }, unloadable.filter((u) => u.signature === problem).length);
    },
  });
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
    registry,
    onDecision(policy, outcome, seconds) {
      decisions.inc({ policy, outcome });
      latency.observe(seconds);
    },
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
