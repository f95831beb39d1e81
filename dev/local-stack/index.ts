// The whole Gatehouse stack on one machine, as `npm start` runs it and as the
// end-to-end tests use it: a real etcd, the CMS, the decision API, and the
// gateway: the real APISIX (dev/apisix) with apisix-conf/config.yaml, which
// starts the real runner through ext-plugin.cmd, serving the routes of
// apisix-conf/apisix.yaml pointed at the local upstreams.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { parseDocument, Scalar, YAMLMap, type Document } from 'yaml';
import { buildCmsApp } from '../../cms/app.js';
import { loadAccessPolicy, defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import type { IdentityConfig } from '../../identity/index.js';
import { createIdentityVerifier } from '../../identity/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { createEnforcer } from '../../policy/enforcer.js';
import { evaluationSettings } from '../../policy/engine/evaluator.js';
import { gatewayId } from '../../policy/fleet/report.js';
import { buildDecisionApp } from '../../decision-api/app.js';
import { createDecisionApiMetrics } from '../../decision-api/metrics.js';
import { packageRoot } from '../../runtime/paths.js';
import { findApisix, freePort, reachableByWorkers, startApisix } from '../apisix/index.js';
import { startLocalEtcd, type LocalEtcd } from '../local-etcd/index.js';
import { ensureSigningKeys, type SigningKeyFiles } from '../signing-keys.js';

export interface LocalStackOptions {
  identity: IdentityConfig;
  /** Use this etcd; otherwise one is started (data kept under .local/<etcdDataRoot>/<etcdName>). */
  etcdEndpoints?: string[];
  etcdDataRoot?: string;
  etcdName?: string;
  etcdClientPort?: number;
  /** Ports; 0 picks a free one. */
  ports?: { gateway?: number; cms?: number; decision?: number; runnerMetrics?: number | 'off'; runnerSettle?: number; apisixMetrics?: number };
  /** Upstreams of routes other than the CMS and the decision API, by upstream id (e.g. rag, llm). */
  upstreams?: Record<string, string>;
  /** Routes template (default apisix-conf/apisix.yaml). */
  routesTemplate?: string;
  /** Where generated files and runner state go (default .local/stack). */
  workDir?: string;
  opaPath: string;
  /** Extra environment for the runner (it passes nginx's envs filter only if listed in config.yaml). */
  runnerEnv?: Record<string, string>;
  logger: Logger;
  /**
   * APISIX's prefix directory (conf/, logs/, the runner's socket); default a
   * new one under the system's temp directory. nginx's workers (nobody, when
   * started by root) must be able to pass through every directory above it.
   */
  apisixPrefix?: string;
  /** Identities the web console offers at one click (the local stack's demo only). */
  consoleDemoTokens?: { label: string; token: string }[];
  /**
   * Signed policies (policy/signing): a key pair kept in the work directory,
   * the CMS signing with it, the decision API and the runner loading only
   * versions it signed. npm start turns it on; tests that write policies
   * past the CMS leave it off.
   */
  policySigning?: boolean;
}

/** What the stack's users need of the gateway. */
export interface StackGateway {
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Recent lines of the runner's output (from APISIX's error.log, where it writes them). */
  runnerOutput(): string[];
  /** APISIX's logs/ directory. */
  logDir: string;
  /** APISIX's prometheus plugin's metrics (/apisix/prometheus/metrics on its own port), or null without the plugin. */
  prometheusUrl: string | null;
}

export interface LocalStack {
  gateway: StackGateway;
  cmsUrl: string;
  decisionUrl: string;
  etcdEndpoints: string[];
  etcd: LocalEtcd | null;
  routesPath: string;
  /** The policy signing key pair, when signing is on. */
  signingKeys: SigningKeyFiles | null;
  stop(): Promise<void>;
}

type RoutesDocument = { upstreams?: { id: string; nodes: Record<string, number>; scheme?: string; pass_host?: string }[] };

/**
 * The routes file with each upstream's nodes replaced by the given address
 * (`host:port` or a URL). The rest of the file is kept as written: APISIX
 * reads it with its own small YAML parser, which takes what apisix.yaml holds
 * but not every rendering of it (a long string folded over lines, say).
 */
export function pointRoutesAt(template: string, addresses: Record<string, string>): string {
  const doc = parseDocument(template);
  const upstreams = (doc.toJS() as RoutesDocument).upstreams ?? [];
  upstreams.forEach((upstream, index) => {
    const address = addresses[upstream.id];
    if (!address) return;
    const scheme = /^(https?):\/\//.exec(address)?.[1] ?? 'http';
    const hostPort = new Scalar(address.replace(/^https?:\/\//, '').replace(/\/.*$/, ''));
    hostPort.type = Scalar.QUOTE_DOUBLE; // as written in apisix.yaml: a key with colons, quoted
    const node = new YAMLMap();
    node.set(hostPort, 1);
    doc.setIn(['upstreams', index, 'nodes'], node);
    doc.setIn(['upstreams', index, 'scheme'], scheme);
  });
  return standaloneRoutesText(doc);
}

/**
 * A routes document as APISIX's standalone mode reads it: never folded (its
 * YAML parser refuses a long string split over lines), the #END line last
 * (it reads only a file that ends with one).
 */
export function standaloneRoutesText(doc: Document): string {
  return `${doc
    .toString({ lineWidth: 0 })
    .replace(/\n#END\s*$/, '')
    .trimEnd()}\n#END\n`;
}

function address(app: FastifyInstance): string {
  const info = app.server.address();
  if (!info || typeof info === 'string') throw new Error('server is not listening on TCP');
  return `127.0.0.1:${info.port}`;
}

export async function startLocalStack(options: LocalStackOptions): Promise<LocalStack> {
  const root = packageRoot();
  const workDir = options.workDir ?? join(root, '.local', 'stack');
  mkdirSync(workDir, { recursive: true });
  const log = options.logger;
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  const stop = async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => undefined);
  };

  try {
    let etcd: LocalEtcd | null = null;
    let etcdEndpoints = options.etcdEndpoints;
    if (!etcdEndpoints) {
      etcd = await startLocalEtcd({
        dataRoot: options.etcdDataRoot ?? 'stack-etcd',
        ...(options.etcdName ? { name: options.etcdName } : {}),
        ...(options.etcdClientPort ? { clientPort: options.etcdClientPort } : {}),
      });
      etcdEndpoints = etcd.endpoints;
      const started = etcd;
      cleanups.push(() => started.stop());
    }

    const signingKeys = options.policySigning ? ensureSigningKeys(workDir) : null;
    const cms = await buildCmsApp({
      ...(options.consoleDemoTokens ? { consoleDemoTokens: options.consoleDemoTokens } : {}),
      ...(signingKeys ? { policySigning: { kind: 'file' as const, keyFile: signingKeys.privateKeyFile, kid: signingKeys.kid } } : {}),
      etcdEndpoints,
      identity: options.identity,
      opaPath: options.opaPath,
      logger: log.child({ component: 'cms' }),
    });
    await cms.listen({ host: '127.0.0.1', port: options.ports?.cms ?? 0 });
    cleanups.push(() => cms.close());

    // The decision API's policy pipeline, as gatehouse-decision assembles it (policy/enforcer.ts): a
    // gateway of the fleet, shadowing candidates, checking signatures when the stack signs.
    const decisionEtcd = createEtcdClient(etcdEndpoints);
    // The metrics gatehouse-decision exports (decision-api/metrics.ts), on its /metrics.
    const decisionMetrics = createDecisionApiMetrics();
    const decisionEnforcer = createEnforcer({
      client: decisionEtcd,
      log: log.child({ component: 'decision-api' }),
      kind: 'decision-api',
      gateway: gatewayId('decision-api'),
      datacenter: null,
      stateDir: join(workDir, 'decision-state'),
      cacheBytes: 64 * 1024 * 1024,
      evaluation: evaluationSettings({}),
      decisionLog: null,
      verifyKeysFile: signingKeys?.jwksFile ?? null,
      ...decisionMetrics.enforcer,
    });
    await decisionEnforcer.start();
    const watcher = decisionEnforcer.watcher;
    decisionMetrics.watch(watcher);
    cleanups.push(async () => {
      await decisionEnforcer.close();
      decisionEtcd.close();
    });
    const decision = await buildDecisionApp({
      watcher,
      candidates: decisionEnforcer.candidates,
      decisionLog: { log: null, gateway: decisionEnforcer.reporter.id },
      verifier: createIdentityVerifier(options.identity),
      access: await loadAccessPolicy(defaultAccessPolicyWasmPath()),
      log: log.child({ component: 'decision-api' }),
      registry: decisionMetrics.registry,
      onDecision: decisionMetrics.onDecision,
    });
    await decision.listen({ host: '127.0.0.1', port: options.ports?.decision ?? 0 });
    cleanups.push(() => decision.close());

    const routesPath = join(workDir, 'apisix.yaml');
    const template = readFileSync(options.routesTemplate ?? join(root, 'apisix-conf', 'apisix.yaml'), 'utf8');
    writeFileSync(routesPath, pointRoutesAt(template, { cms: address(cms), 'decision-api': address(decision), ...options.upstreams }));

    const identityEnv: Record<string, string> = {
      JWT_ISSUER: options.identity.issuer,
      JWT_AUDIENCE: options.identity.audience.join(','),
      JWT_ALGORITHMS: options.identity.algorithms.join(','),
      JWT_CLOCK_TOLERANCE_SECONDS: String(options.identity.clockToleranceSeconds),
      ...(options.identity.jwks.kind === 'file' ? { JWT_JWKS_FILE: options.identity.jwks.path } : { JWT_JWKS_URL: options.identity.jwks.url.href }),
    };
    const metricsPort = options.ports?.runnerMetrics ?? 'off';
    const runnerEnv = {
      PATH: process.env.PATH ?? '',
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
      ETCD_ENDPOINTS: etcdEndpoints.join(','),
      OPA_PATH: options.opaPath,
      RUNNER_STATE_DIR: join(workDir, 'runner-state'),
      RUNNER_METRICS_PORT: String(metricsPort),
      // Where the LLM route's http-logger posts responses to settle budgets (apisix.yaml reads it too).
      RUNNER_SETTLE_PORT: String(options.ports?.runnerSettle || (await freePort())),
      ...identityEnv,
      ...(signingKeys ? { POLICY_VERIFY_KEYS_FILE: signingKeys.jwksFile } : {}),
      ...options.runnerEnv,
    };
    const installation = findApisix(root);
    if (!installation) throw new Error('this machine has no APISIX: run `npm run setup` (it builds APISIX 3.9.1 from the kit), or set APISIX_HOME');
    const apisix = await startApisix({
      installation,
      repoRoot: root,
      // A checkout nginx's workers cannot enter (under /root, say) gets its prefix in the temp directory.
      ...(options.apisixPrefix && reachableByWorkers(options.apisixPrefix) ? { prefix: options.apisixPrefix } : {}),
      routesPath,
      port: options.ports?.gateway || (await freePort()),
      ...(options.ports?.apisixMetrics ? { prometheusPort: options.ports.apisixMetrics } : {}),
      env: runnerEnv,
      logger: log.child({ component: 'gateway' }),
    });
    const gateway: StackGateway = { ...apisix, logDir: join(apisix.prefix, 'logs') };
    const started = gateway;
    cleanups.push(() => started.stop());

    return {
      gateway,
      cmsUrl: `http://${address(cms)}`,
      decisionUrl: `http://${address(decision)}`,
      etcdEndpoints,
      etcd,
      routesPath,
      signingKeys,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
