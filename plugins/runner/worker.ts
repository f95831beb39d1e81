// One runner process serving calls: the plugins, the policy watcher, the
// fleet report, metrics. Alone (RUNNER_WORKERS=1), or as one worker of a
// cluster (cluster.ts), in which case the primary issues its conf tokens and
// serves the metrics port.
import cluster from 'node:cluster';
import { AggregatorRegistry } from 'prom-client';
import { createLogger } from '../../runtime/logger.js';
import { WorkerLink, type WorkerReadiness } from './cluster.js';
import type { RunnerConfig } from './config.js';
import { PluginRegistry } from './registry.js';
import { Runner } from './server.js';
import { builtinPlugins } from './builtin.js';
import { createRunnerMetrics } from './metrics.js';
import { startAdminServer } from './admin-server.js';
import { cachingVerifier, createIdentityVerifier, type IdentityVerifier } from '../../identity/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { type SwapEvent } from '../../policy/watcher/watcher.js';
import { PolicySet } from '../../policy/watcher/policy-set.js';
import { gatewayId } from '../../policy/fleet/report.js';
import { openDecisionLog } from '../../policy/decision-log/index.js';
import { createEnforcer } from '../../policy/enforcer.js';
import { loadAccessPolicy, type AccessPolicy, defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import type { VaultConfig } from '../vault/config.js';
import { VaultSession } from '../vault/session.js';
import { GatewayBudgets } from '../../budget/gateway.js';
import { startSettleServer, type SettleEntry } from './budget-settle.js';
import { RunnerTraces } from './tracing.js';
import { startTracing } from '../../runtime/tracing.js';
import type { Logger } from 'pino';

const ACCESS_POLICY_WASM = defaultAccessPolicyWasmPath();

function identityVerifier(identity: RunnerConfig['identity'], log: Logger): { verifier: IdentityVerifier | null; error?: string } {
  try {
    if ('error' in identity) throw new Error(identity.error);
    const verifier = createIdentityVerifier(identity.config);
    const cacheSeconds = identity.verifyCacheSeconds;
    return { verifier: cacheSeconds > 0 ? cachingVerifier(verifier, { maxAgeMs: cacheSeconds * 1000 }) : verifier };
  } catch (err) {
    const error = (err as Error).message;
    log.warn({ reason: error }, 'JWT verification not configured; routes using the jwt plugin will fail');
    return { verifier: null, error };
  }
}

function vaultSession(vault: RunnerConfig['vault'], log: Logger): { session: VaultSession | null; config: VaultConfig | null; error?: string } {
  try {
    if ('error' in vault) throw new Error(vault.error);
    if (!vault.config) return { session: null, config: null, error: 'VAULT_ADDR is not set' };
    return { session: new VaultSession(vault.config, log.child({ component: 'vault' })), config: vault.config };
  } catch (err) {
    const error = (err as Error).message;
    log.warn({ reason: error }, 'Vault not configured; routes using the vault plugin will fail');
    return { session: null, config: null, error };
  }
}

export async function runWorker(config: RunnerConfig): Promise<void> {
  const log = createLogger('gatehouse-runner', config.logLevel);
  // As one worker of several: its slot, and whether it replaces one that died.
  const clustered = cluster.isWorker;
  const { slot, respawned } = config.worker;
  const metrics = createRunnerMetrics();
  if (clustered) {
    // The primary's /metrics asks every worker for these (constructing an
    // AggregatorRegistry is what makes prom-client answer it in a worker).
    AggregatorRegistry.setRegistries([metrics.registry]);
    new AggregatorRegistry();
  }

  // This process's name as a gateway: in its fleet report and its decision log events.
  // A GATEWAY_ID names the runner; its workers are that name and their slot.
  const gateway = clustered && config.gatewayId ? `${gatewayId('runner', config.gatewayId)}-w${slot}` : gatewayId('runner', config.gatewayId);
  const decisionLogHooks = { onDecisionLogWritten: metrics.decisionLog.written, onDecisionLogDropped: metrics.decisionLog.dropped };
  const etcd = config.etcdEndpoints.length > 0 ? createEtcdClient(config.etcdEndpoints, config.etcdClient) : null;
  // The policy pipeline (policy/enforcer.ts); each worker is a gateway of its own in the fleet report.
  const enforcer = etcd
    ? createEnforcer({
        client: etcd,
        log,
        kind: 'runner',
        gateway,
        datacenter: config.datacenter,
        reportTtlSeconds: config.reportTtlSeconds,
        verifyKeysFile: config.policyVerifyKeysFile,
        stateDir: config.stateDir,
        // One writer for the shared directory; the others read it when etcd is away at their start.
        snapshotReadOnly: clustered && slot !== 0,
        // The engine budget is the runner's, shared out among its workers.
        cacheBytes: Math.floor(config.policyCacheBytes / (clustered ? config.workers : 1)),
        evaluation: config.evaluation,
        decisionLog: config.decisionLog,
        onAbort: (reason) => metrics.evaluationAborted(reason),
        onShadow: (policy, outcome) => metrics.candidateShadowed(policy, outcome),
        ...decisionLogHooks,
      })
    : null;
  const watcher = enforcer?.watcher ?? null;
  if (watcher) {
    metrics.watch(watcher);
    watcher.on('swap', (swap: SwapEvent) => {
      // One line per policy change reaching this gateway: what, which version,
      // how fast. Not for the policies of a full read (the watcher logs one
      // line for those, however many there are).
      if (swap.policy !== null && swap.propagationMs === null) return;
      log.info(
        {
          policy: swap.name,
          version: swap.policy?.meta.version ?? null,
          revision: swap.policy?.modRevision ?? null,
          propagationMs: swap.propagationMs,
          receivedMs: swap.receivedMs,
          swappedAt: Date.now(),
        },
        swap.policy ? 'policy version enforced' : 'policy removed',
      );
    });
  } else log.warn('ETCD_ENDPOINTS is not set: no policies are loaded and the opa plugin denies with 503');

  let accessPolicy: AccessPolicy | null = null;
  try {
    accessPolicy = await loadAccessPolicy(ACCESS_POLICY_WASM);
  } catch (err) {
    log.warn({ reason: (err as Error).message }, 'CMS access policy unavailable; routes using it will fail');
  }

  const { verifier, error } = identityVerifier(config.identity, log);
  const vault = vaultSession(config.vault, log);
  // Without etcd there is no enforcer, but decisions the opa plugin refuses are still logged.
  const decisionLog = enforcer
    ? enforcer.decisionLog
    : config.decisionLog &&
      openDecisionLog(config.decisionLog, { onWritten: decisionLogHooks.onDecisionLogWritten, onDropped: decisionLogHooks.onDecisionLogDropped });
  if (decisionLog && config.decisionLog) {
    const { target } = config.decisionLog;
    log.info({ target: target.kind === 'stdout' ? 'stdout' : `file:${target.path}` }, 'decision log on');
  }
  // LLM budgets: this process is one holder of the shared ledger (budget/ledger.ts).
  const budgets = etcd
    ? new GatewayBudgets({
        client: etcd,
        gateway,
        log: log.child({ component: 'budgets' }),
        events: metrics.budgets,
        settleTimeoutMs: config.budgets.settleTimeoutMs,
        leaseTtlSeconds: config.budgets.holderTtlSeconds,
      })
    : null;
  // Ready when decisions can be made: policies loaded from etcd or from the
  // last-known-good snapshot (staleness is reported, not fatal). Whether the
  // LLM budgets are read is reported, not required: they have no snapshot,
  // and a node restarted while etcd is away still enforces every other route.
  function readiness(): WorkerReadiness {
    const policies = watcher?.status ?? null;
    const ready = policies === null || policies.source !== 'none';
    return budgets ? { ready, policies, budgets: budgets.isLoaded ? 'loaded' : 'not loaded' } : { ready, policies };
  }
  // Traces only with OTEL_*: otherwise no SDK is started and requests make no span objects.
  const traces = config.tracing ? new RunnerTraces(await startTracing(config.tracing), config.budgets.settleTimeoutMs) : null;
  if (config.tracing) log.info({ endpoint: config.tracing.url, protocol: config.tracing.protocol }, 'traces exported');
  let link: WorkerLink | null = null;
  const runner: Runner = new Runner({
    listenAddress: config.listenAddress,
    confExpireSeconds: config.confExpireSeconds,
    shutdownGraceMs: config.shutdownGraceMs,
    stallTimeoutMs: config.stallTimeoutMs,
    registry: new PluginRegistry(
      builtinPlugins({
        verifier,
        ...(error ? { verifierError: error } : {}),
        policies: {
          current: () => watcher?.current ?? PolicySet.empty,
          whenLoaded: (timeoutMs) => watcher?.whenLoaded(timeoutMs) ?? Promise.resolve(false),
          cmsAccess: accessPolicy ? (input) => accessPolicy.decide(input) : null,
        },
        decisions: metrics.decisions,
        decisionLog: { log: decisionLog, gateway },
        ...(enforcer ? { candidates: enforcer.candidates } : {}),
        vault: {
          session: vault.session,
          ttlMs: vault.config?.secretTtlMs ?? 60_000,
          maxStalenessMs: vault.config?.maxStalenessMs ?? 300_000,
          events: metrics.vault,
          allowedPaths: vault.config?.allowedPaths ?? [],
          ...(vault.error ? { configError: vault.error } : {}),
        },
        budgets,
      }),
    ),
    log,
    traces,
    ...(clustered ? { issueToken: (entries, key) => link!.issueToken(entries, key), removeStaleSocket: false } : {}),
  });
  if (clustered) {
    link = new WorkerLink({
      adopt: (token, entries, key) => runner.adoptConf(token, entries, key),
      status: readiness,
      settle: settleCalls,
      log,
    });
    // Hold every conf the other workers prepared before taking connections.
    await link.hello();
  }
  // Policies load and the fleet report starts (the enforcer tells etcd what this process enforces).
  const watching = enforcer?.start();
  // Budgets load in the background (retried while etcd is away); budgeted calls wait briefly for them, then answer 503.
  void budgets?.start();
  // A worker replacing one that died waits (briefly) for its policies: its
  // siblings serve meanwhile. Otherwise listen first: PrepareConf must be
  // answered at once; decisions wait for policies (503 until then).
  if (respawned && watching) await Promise.race([watching, new Promise((r) => setTimeout(r, 10_000).unref())]);
  await runner.listen();
  // Log in to Vault now rather than on the first request (which would pay for it).
  vault.session?.ensureLoggedIn().catch((err: Error) => log.warn({ reason: err.message }, 'Vault login failed; retrying on demand'));

  let admin: Awaited<ReturnType<typeof startAdminServer>> | null = null;
  // A cluster's primary serves the metrics and health port for all its workers.
  if (config.metricsPort !== null && !clustered) {
    admin = await startAdminServer({
      host: config.metricsHost,
      port: config.metricsPort,
      registry: metrics.registry,
      readiness,
      log,
    }).catch((err) => {
      log.error({ err: (err as Error).message, port: config.metricsPort }, 'metrics port unavailable; serving without it');
      return null;
    });
    if (admin) log.info({ address: admin.server.address() }, 'metrics and health listening');
  }

  function settleCalls(entries: SettleEntry[]): void {
    for (const entry of entries) {
      const settled = budgets?.settleCall(entry.reservation, entry);
      if (settled && traces) traces.settled(entry.reservation, entry.status, settled);
    }
  }

  // Alone, this process takes the settle port; in a cluster the primary does.
  const settleServer = budgets && config.settlePort !== null && !clustered ? await startSettleServer(config.settlePort, settleCalls, log) : null;

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    runner
      .stop()
      .then(async () => {
        await admin?.close();
        await settleServer?.close();
        await watching;
        await budgets?.stop().catch((err: Error) => log.warn({ err: err.message }, 'budgets not stopped cleanly'));
        // Stops reporting, watching and evaluating, and flushes the decision log.
        if (enforcer) await enforcer.close();
        else await decisionLog?.close();
        vault.session?.stop();
        etcd?.close();
        await traces?.shutdown().catch((err: Error) => log.warn({ err: err.message }, 'spans not all exported'));
      })
      .catch((err) => log.error({ err }, 'error while stopping'))
      .finally(() => {
        log.flush();
        process.exit(0);
      });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // A primary that is gone (killed) leaves nobody to issue tokens: stop too.
  if (clustered) process.on('disconnect', () => stop('primary gone'));
}
