// npm start: the local stack with a seeded demo. Ports can be moved with
// GATEWAY_PORT (9080), CMS_PORT (8081), DECISION_PORT (8181), RAG_PORT (8082),
// LLM_PORT (8083), VAULT_PORT (8200), RUNNER_METRICS_PORT (9091),
// APISIX_METRICS_PORT (9093, APISIX's prometheus plugin) and ETCD_CLIENT_PORT
// (2379). etcd's data is kept under .local/stack-etcd, so policies survive a
// restart; Vault runs in dev mode (in memory) and is
// seeded again each time. STACK_NAME (default "default") keeps a second
// stack's etcd data, demo keys and APISIX prefix apart from the first's.
//
// Before starting anything it checks that those ports are free and that no
// other process uses the stack's etcd data or its directory (a stack of the
// same STACK_NAME still running), and if not says which and by what, in one
// line. A start that fails partway stops everything it had started.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { createDemoIdentity, demoCurlCommands, seedDemoPolicies, DEMO_PROJECT, DEMO_LLM_SECRET } from '../dev/demo.js';
import { startLocalStack } from '../dev/local-stack/index.js';
import { currentFleetStatus } from '../cms/fleet.js';
import type { Etcd3 } from 'etcd3';
import { createEtcdClient } from '../etcd/index.js';
import { PLATFORM_POLICY_NAME, PolicyStore } from '../policy/store/index.js';
import { startDemoRag } from '../dev/local-stack/demo-rag.js';
import { startLlmStub } from '../dev/llm-stub/index.js';
import { BudgetStore } from '../budget/store.js';
import type { Budget } from '../budget/definition.js';
import { opaPath as opaBinary, packageRoot } from '../runtime/paths.js';

/** Tokens per minute and per day; calls without max_tokens are charged (and sent) 256. */
const DEMO_BUDGET: Budget = {
  windows: [
    { per: 'minute', tokens: 20_000 },
    { per: 'day', tokens: 1_000_000 },
  ],
  default_max_tokens: 256,
};
import { startLocalVault } from '../dev/local-vault/index.js';
import { directoryHolder, portHolder } from '../dev/in-use.js';
import { localEtcdDataDir } from '../dev/local-etcd/index.js';

const root = packageRoot();
const port = (name: string, fallback: number) => Number(process.env[name] ?? fallback);

/** The ports npm start listens on, by the variable that moves each, with their defaults. */
const PORTS: Record<string, number> = {
  GATEWAY_PORT: 9080,
  CMS_PORT: 8081,
  DECISION_PORT: 8181,
  RAG_PORT: 8082,
  LLM_PORT: 8083,
  VAULT_PORT: 8200,
  RUNNER_METRICS_PORT: 9091,
  APISIX_METRICS_PORT: 9093,
  ETCD_CLIENT_PORT: 2379,
};
const ETCD_DATA_ROOT = 'stack-etcd';

/** A start refused before anything was started; its message is the one line to show. */
class StartRefused extends Error {}

/** What is in the way of this start: ports taken, the stack's etcd data or directory in use; one phrase each. */
async function obstacles(stackName: string, stackDir: string): Promise<string[]> {
  const found: string[] = [];
  for (const [name, fallback] of Object.entries(PORTS)) {
    const value = port(name, fallback);
    if (!Number.isInteger(value) || value < 0 || value > 65_535)
      throw new StartRefused(`${name} must be a port number, not ${JSON.stringify(process.env[name])}`);
    const holder = value === 0 ? null : await portHolder(value);
    if (holder) found.push(`port ${value} (${name}) is in use by ${holder}`);
  }
  const dirs: [string, string][] = [
    ['etcd data directory', localEtcdDataDir({ dataRoot: ETCD_DATA_ROOT, name: stackName })],
    ['stack directory', stackDir],
  ];
  for (const [what, dir] of dirs) {
    const holder = existsSync(dir) ? directoryHolder(dir) : null;
    if (holder) found.push(`${what} ${dir} is in use by ${holder}`);
  }
  return found;
}

/** What this start has started, stopped last first: on Ctrl-C, and when the start fails partway. */
const started: (() => Promise<unknown> | unknown)[] = [];
let stopped: Promise<void> | null = null;

/** Registers how to stop what was just started; stops it at once if the stack is being stopped already. */
function track(stop: () => Promise<unknown> | unknown): void {
  if (stopped)
    void Promise.resolve()
      .then(stop)
      .catch(() => undefined);
  else started.push(stop);
}

async function stopAll(): Promise<void> {
  for (const stop of started.splice(0).reverse())
    await Promise.resolve()
      .then(stop)
      .catch(() => undefined);
}

/** Stops everything started so far and exits; never hangs on the way out (what has not stopped in 15 s is left to the OS). */
async function shutdown(code: number): Promise<never> {
  if (!stopped) {
    setTimeout(() => process.exit(code || 1), 15_000).unref();
    stopped = stopAll();
  }
  await stopped;
  return process.exit(code);
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check().catch(() => false)) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return false;
}

async function main() {
  const log = pino({ name: 'gatehouse-local', level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2));
  const opaPath = opaBinary(process.env.OPA_PATH);
  const stackName = process.env.STACK_NAME ?? 'default';
  if (!/^[a-z0-9][a-z0-9-]{0,40}$/.test(stackName))
    throw new StartRefused(`STACK_NAME must be lower-case letters, digits and dashes, not ${JSON.stringify(stackName)}`);
  const suffix = stackName === 'default' ? '' : `-${stackName}`;
  const stackDir = join(root, '.local', `stack${suffix}`);
  const inTheWay = await obstacles(stackName, stackDir);
  if (inTheWay.length > 0) throw new StartRefused(`cannot start: ${inTheWay.join('; ')}`);
  // From here on, Ctrl-C stops what has started, also before the stack is up.
  process.on('SIGINT', () => void shutdown(0));
  process.on('SIGTERM', () => void shutdown(0));
  const identity = await createDemoIdentity(join(root, '.local', `demo${suffix}`));
  const ragPort = port('RAG_PORT', 8082);
  const rag = await startDemoRag(ragPort);
  track(() => rag.close());
  const llm = await startLlmStub(port('LLM_PORT', 8083));
  track(() => llm.close());
  llm.acceptKeys([DEMO_LLM_SECRET.value]);
  const vault = await startLocalVault({ port: port('VAULT_PORT', 8200) });
  track(() => vault.stop());
  await vault.kvPut(DEMO_LLM_SECRET.mount, DEMO_LLM_SECRET.path, { [DEMO_LLM_SECRET.field]: DEMO_LLM_SECRET.value });
  const gatewayRole = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }');
  const stack = await startLocalStack({
    identity: identity.identityConfig,
    etcdDataRoot: ETCD_DATA_ROOT,
    etcdName: stackName,
    workDir: stackDir,
    apisixPrefix: join(stackDir, 'apisix'),
    etcdClientPort: port('ETCD_CLIENT_PORT', 2379),
    ports: {
      gateway: port('GATEWAY_PORT', 9080),
      cms: port('CMS_PORT', 8081),
      decision: port('DECISION_PORT', 8181),
      runnerMetrics: port('RUNNER_METRICS_PORT', 9091),
      apisixMetrics: port('APISIX_METRICS_PORT', 9093),
    },
    upstreams: { rag: `127.0.0.1:${ragPort}`, llm: llm.url },
    consoleDemoTokens: [
      { label: 'platform admin ada', token: identity.tokens.platformAdmin },
      { label: `project user dev (${DEMO_PROJECT})`, token: identity.tokens.projectUser },
    ],
    opaPath,
    // Every policy version signed by the CMS, every gateway checking it (a key pair kept in the stack's directory).
    policySigning: true,
    // APISIX logs the runner's output at warn in its error.log: keep the runner to warnings.
    runnerEnv: {
      LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
      VAULT_ADDR: vault.addr,
      VAULT_ROLE_ID: gatewayRole.roleId,
      VAULT_SECRET_ID: gatewayRole.secretId,
    },
    logger: log,
  });
  track(() => stack.stop());
  const seeded = await seedDemoPolicies({
    etcdEndpoints: stack.etcdEndpoints,
    opaPath,
    ...(stack.signingKeys ? { signing: { keyFile: stack.signingKeys.privateKeyFile, kid: stack.signingKeys.kid } } : {}),
  });
  const etcd = createEtcdClient(stack.etcdEndpoints);
  track(() => etcd.close());
  const budgetSeeded = await seedDemoBudget(etcd);
  // Up means every curl line below answers as it says: wait (briefly) until
  // every gateway process enforces the demo policies, as their fleet reports
  // tell (each of the runner's workers loads and watches on its own).
  const demoRevision = Math.max(
    ...(await Promise.all([PLATFORM_POLICY_NAME, DEMO_PROJECT].map(async (name) => (await new PolicyStore(etcd).currentRevision(name))?.revision ?? 0))),
  );
  const enforced = await waitUntil(async () => {
    const ready = await fetch(`http://127.0.0.1:${port('RUNNER_METRICS_PORT', 9091)}/readyz`, { signal: AbortSignal.timeout(2_000) });
    await ready.arrayBuffer();
    if (!ready.ok) return false;
    const fleet = await currentFleetStatus(etcd, demoRevision);
    return fleet.gateways.length > 0 && fleet.enforcedBy === fleet.gateways.length;
  }, 30_000);
  etcd.close();
  if (!enforced) log.warn('the gateway does not enforce the demo policies yet; the first curl lines may answer 403 or 503');

  const gw = stack.gateway.url;
  const gatewayLabel = 'APISIX 3.9.1';
  const gatewayLogs = `\n  gateway logs              ${stack.gateway.logDir}  (error.log has the runner's output)`;
  const t = identity.tokens;
  const out = process.stdout;
  out.write(`
Gatehouse local stack is up.

  gateway (${gatewayLabel}) ${gw}
  web console               ${gw}/console/  (demo sign-in buttons; or ${stack.cmsUrl}/console/)
    policies                ${gw}/console/#/          (filter, pages, New policy)
    a policy                ${gw}/console/#/p/${DEMO_PROJECT}  (editor, gateways, candidate, history; its playground: #/p/${DEMO_PROJECT}/playground)
    fleet                   ${gw}/console/#/fleet     (every gateway, behind or stale)
    budgets and usage       ${gw}/console/#/b/${DEMO_PROJECT}  (the budget, charts of tokens per hour and day)
  CMS (direct)              ${stack.cmsUrl}        (/healthz, /readyz, /metrics, /openapi.json)
  decision API (direct)     ${stack.decisionUrl}
  runner metrics            http://127.0.0.1:${port('RUNNER_METRICS_PORT', 9091)}/metrics  (/healthz, /readyz)
  APISIX metrics            ${stack.gateway.prometheusUrl ?? 'off (no prometheus plugin in apisix-conf/config.yaml)'}  (Grafana: deploy/grafana/gatehouse.json)
  Vault (dev mode)          ${vault.addr}  (the demo project's LLM key at ${DEMO_LLM_SECRET.mount}/${DEMO_LLM_SECRET.path})
  LLM (OpenAI-compatible stub) ${llm.url}
  etcd                      ${stack.etcdEndpoints.join(', ')}${gatewayLogs}
  seeded policies           ${seeded.length ? seeded.join(', ') : 'none new (kept from the last run)'}
  LLM budget of ${DEMO_PROJECT}${' '.repeat(Math.max(1, 13 - DEMO_PROJECT.length))}${budgetSeeded ? 'seeded: ' : 'kept: '}${JSON.stringify(DEMO_BUDGET)}

Demo tokens (12 h): platform admin "ada", project user "dev" of "${DEMO_PROJECT}", project user "eve" of "other-team".
  export ADMIN='${t.platformAdmin}'
  export DEV='${t.projectUser}'
  export EVE='${t.otherProjectUser}'

# Through the gateway: the RAG route (platform policy, then the caller's project policy)
curl -s ${gw}/rag/ask -H "Authorization: Bearer $DEV"                 # 200: dev's project allows project users
curl -s ${gw}/rag/ask -H "Authorization: Bearer $EVE"                 # 403: other-team has no policy
curl -s ${gw}/rag/ask                                                 # 401: no token
curl -s ${gw}/rag/ask -H "Authorization: Bearer $DEV" -H 'X-Gatehouse-Role: platform_admin'   # the spoofed header never arrives

# The LLM through the gateway (the RAG app's hairpin): the demo policy allows some models;
# the gateway swaps the caller's token for the project's key from Vault.
curl -s -X POST ${gw}/llm/v1/chat/completions -H "Authorization: Bearer $DEV" -H 'Content-Type: application/json' --data '{"model":"llama-3","max_tokens":128,"messages":[{"role":"user","content":"hi"}]}'
curl -s -X POST ${gw}/llm/v1/chat/completions -H "Authorization: Bearer $DEV" -H 'Content-Type: application/json' --data '{"model":"gpt-5","max_tokens":128,"messages":[]}'   # 403: model not allowed
# Streamed, token by token; every call is charged to the project's LLM budget (usage per model and hour below)
curl -s -N -X POST ${gw}/llm/v1/chat/completions -H "Authorization: Bearer $DEV" -H 'Content-Type: application/json' --data '{"model":"llama-3","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
curl -s ${gw}/budgets/${DEMO_PROJECT} -H "Authorization: Bearer $DEV"              # 200: the budget (project users read their own)
curl -s ${gw}/usage/${DEMO_PROJECT} -H "Authorization: Bearer $DEV"                # 200: tokens used per model and hour, the last 24 h

# The decision API (OPA's Data API)
curl -s -X POST ${gw}/v1/data/${DEMO_PROJECT}/project/authz -H "Authorization: Bearer $DEV" -H 'Content-Type: application/json' --data '{"input":{"user":{"role":"project_user"}}}'

# The CMS through the gateway
${demoCurlCommands(gw, { platformAdmin: '$ADMIN', projectUser: '$DEV', otherProjectUser: '$EVE' })}

Press Ctrl-C to stop.
`);
  // Runs first: what was started is stopped last first.
  track(() => out.write('\nstopping...\n'));
}

main().catch(async (err) => {
  // One line when refused; the whole story (a server's output, say) otherwise.
  process.stderr.write(err instanceof StartRefused ? `npm start: ${err.message}\n` : `npm start failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  await shutdown(1);
});

/** The demo project's LLM budget, written when it has none (a user's own is kept). */
async function seedDemoBudget(etcd: Etcd3): Promise<boolean> {
  const store = new BudgetStore(etcd);
  if (await store.get(DEMO_PROJECT)) return false;
  await store.put(DEMO_PROJECT, DEMO_BUDGET, 'gatehouse-demo-seed');
  return true;
}
