#!/usr/bin/env node
// gatehouse-decision: the decision API (OPA's Data API) on Gatehouse's
// engine, kept current by the same etcd watch the gateway uses.
//
//   DECISION_PORT (default 8181, OPA's), DECISION_HOST (default 0.0.0.0),
//   ETCD_ENDPOINTS, ETCD_CACERT/ETCD_CERT/ETCD_KEY (TLS to etcd), JWT_* (as
//   everywhere), DECISION_STATE_DIR (snapshot).
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { createLogger } from '../plugins/runner/logger.js';
import { createIdentityVerifier, identityConfigFromEnv } from '../identity/index.js';
import { createEtcdClient, etcdClientOptionsFromEnv } from '../etcd/index.js';
import { PolicyWatcher } from '../policy/watcher/watcher.js';
import { GatewayReporter } from '../policy/fleet/report.js';
import { decisionLogFromEnv } from '../policy/decision-log/index.js';
import { snapshotDir } from '../policy/watcher/snapshot.js';
import { EngineCache, policyCacheBytesFromEnv } from '../policy/engine/cache.js';
import { evaluatorFromEnv } from '../policy/engine/evaluator.js';
import { policyMemoryMaxBytes } from '../policy/engine/index.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../policy/access/index.js';
import { buildDecisionApp } from './app.js';

const log = createLogger('gatehouse-decision');

async function main() {
  const endpoints = (process.env.ETCD_ENDPOINTS ?? 'http://127.0.0.1:2379').split(',').map((s) => s.trim()).filter(Boolean);
  const port = Number(process.env.DECISION_PORT ?? 8181);
  // Loopback unless told otherwise, like the CMS: only APISIX (on the same node) should reach it.
  const host = process.env.DECISION_HOST?.trim() || '127.0.0.1';
  const stateDir = process.env.DECISION_STATE_DIR || join(tmpdir(), 'gatehouse-decision-state');

  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'gatehouse_decision_' });
  const decisions = new Counter({ name: 'gatehouse_decision_api_decisions_total', help: 'Decisions by policy and outcome', labelNames: ['policy', 'outcome'] as const, registers: [registry] });
  const latency = new Histogram({ name: 'gatehouse_decision_api_evaluation_seconds', help: 'Policy evaluation time', buckets: [0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01], registers: [registry] });

  const etcd = createEtcdClient(endpoints, etcdClientOptionsFromEnv());
  const cacheBytes = policyCacheBytesFromEnv('DECISION_POLICY_CACHE_MB');
  const aborted = new Counter({ name: 'gatehouse_decision_api_evaluations_aborted_total', help: 'Evaluations stopped at their deadline or when their fuel was burned, or failed (memory ceiling, abort)', labelNames: ['reason'] as const, registers: [registry] });
  const engines = new EngineCache({ budgetBytes: cacheBytes });
  const pool = evaluatorFromEnv({ engines, cacheBytes, memoryMaxBytes: policyMemoryMaxBytes(), onAbort: (reason) => aborted.inc({ reason }) });
  const watcher = new PolicyWatcher({ client: etcd, log: log.child({ component: 'policy-watcher' }), snapshotDir: snapshotDir(stateDir),
    engines,
    ...(pool ? { pool } : {}),
  });
  await watcher.start();
  // Tells etcd what this decision API enforces (policy/fleet), for the CMS's status.
  const reporter = new GatewayReporter({ client: etcd, watcher, kind: 'decision-api', datacenter: process.env.GATEHOUSE_DATACENTER || null, log });
  reporter.start();
  const decisionLogEvents = new Counter({ name: 'gatehouse_decision_log_events_total', help: 'Decision log events written to the sink, or dropped because the sink did not keep up', labelNames: ['outcome'] as const, registers: [registry] });
  const decisionLog = decisionLogFromEnv(process.env, {
    onWritten: (n) => decisionLogEvents.inc({ outcome: 'written' }, n),
    onDropped: (n) => decisionLogEvents.inc({ outcome: 'dropped' }, n),
  });
  const app = await buildDecisionApp({
    watcher,
    decisionLog: { log: decisionLog, gateway: reporter.id },
    verifier: createIdentityVerifier(identityConfigFromEnv()),
    access: await loadAccessPolicy(defaultAccessPolicyWasmPath()),
    log,
    registry,
    onDecision(policy, outcome, seconds) {
      decisions.inc({ policy, outcome });
      latency.observe(seconds);
    },
  });
  await app.listen({ host, port });

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    await app.close();
    await reporter.stop();
    await decisionLog?.close();
    await watcher.stop();
    await pool?.close();
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
