// npm run bench:hairpin — what the LLM route's chain adds to a request, in one
// run: the same chat completion through the gateway (APISIX) on
//   /llm/v1/chat/completions   jwt -> opa (JSON body, budget) -> llm-budget -> vault (cached key) -> path-rewrite,
//                              and http-logger posting each response back to settle the budget
//   /llm-unmetered/...         the same route without budgets (what budget checking adds)
//   /rag/v1/chat/completions   jwt -> opa (no body), for comparison
//   /direct/v1/chat/completions  no plugins
// both to the same OpenAI-compatible stub, with a real Vault, etcd and runner.
//
// Env: BENCH_CONNECTIONS (8), BENCH_SECONDS (3), BENCH_ROUNDS (3).
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { pino } from 'pino';
import { parseDocument } from 'yaml';
import { createDemoIdentity } from '../dev/demo.js';
import { standaloneRoutesText, startLocalStack } from '../dev/local-stack/index.js';
import { startLlmStub } from '../dev/llm-stub/index.js';
import { startLocalVault } from '../dev/local-vault/index.js';
import { createEtcdClient } from '../etcd/index.js';
import { BudgetStore } from '../budget/store.js';
import { readUsage } from '../budget/usage.js';
import { benchOpaPath, driveConcurrently, machineLine, storeBenchPolicy, medianStats, printTable, retryUntilReady, type Stats } from './support.js';
import { packageRoot } from '../runtime/paths.js';

const connections = Number(process.env.BENCH_CONNECTIONS ?? 8);
const seconds = Number(process.env.BENCH_SECONDS ?? 3);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const root = packageRoot();

const POLICY = `package project.authz
import rego.v1

default allow := false

# The RAG route (no body in the input).
allow if {
	input.user.role in data.llm_roles
	not startswith(input.request.path, "/llm/")
}

allow if {
	input.user.role in data.llm_roles
	input.body.model in data.models
	input.body.max_tokens <= data.max_tokens
}
`;
const DATA = { llm_roles: ['rag-service'], models: ['gpt-4o-mini', 'llama-3'], max_tokens: 2048 };

async function main() {
  const work = mkdtempSync(join(tmpdir(), 'gh-bench-hairpin-'));
  const vault = await startLocalVault();
  const llm = await startLlmStub();
  const cleanups: (() => Promise<unknown>)[] = [() => vault.stop(), () => llm.close()];
  try {
    await vault.kvPut('secret', 'llm/bench', { api_key: 'sk-bench-0001' });
    const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }');
    const identity = await createDemoIdentity(join(work, 'identity'));

    // The repository's routes plus one route with no plugins to the same upstream.
    const template = parseDocument(readFileSync(join(root, 'apisix-conf/apisix.yaml'), 'utf8'));
    template.addIn(['routes'], { id: 'direct', uris: ['/direct/*'], upstream_id: 'llm' });
    // The LLM route as it was before budgets: no llm-budget, no budget in the input, no http-logger.
    const llmRoute = (template.toJS() as { routes: { id: string; plugins: Record<string, { conf: { name: string; value: string }[] }> }[] }).routes.find(
      (r) => r.id === 'llm',
    )!;
    const unmetered = structuredClone(llmRoute) as typeof llmRoute & { uris: string[] };
    unmetered.id = 'llm-unmetered';
    unmetered.uris = ['/llm-unmetered/*'];
    delete (unmetered.plugins as Record<string, unknown>)['http-logger'];
    unmetered.plugins['ext-plugin-pre-req']!.conf = unmetered.plugins['ext-plugin-pre-req']!.conf.filter((entry) => entry.name !== 'llm-budget').map(
      (entry) => {
        if (entry.name === 'opa') return { ...entry, value: JSON.stringify({ ...JSON.parse(entry.value), with_budget: false }) };
        if (entry.name === 'path-rewrite') return { ...entry, value: JSON.stringify({ strip_prefix: '/llm-unmetered' }) };
        return entry;
      },
    );
    template.addIn(['routes'], unmetered);
    const templatePath = join(work, 'apisix.yaml');
    writeFileSync(templatePath, standaloneRoutesText(template));

    const stack = await startLocalStack({
      identity: identity.identityConfig,
      etcdDataRoot: 'bench-etcd',
      upstreams: { llm: llm.url, rag: llm.url },
      routesTemplate: templatePath,
      workDir: join(work, 'stack'),
      opaPath: benchOpaPath,
      runnerEnv: { LOG_LEVEL: 'warn', VAULT_ADDR: vault.addr, VAULT_ROLE_ID: approle.roleId, VAULT_SECRET_ID: approle.secretId },
      logger: pino({ level: 'warn' }),
    });
    cleanups.unshift(() => stack.stop());

    await storeBenchPolicy(stack.etcdEndpoints, 'bench', POLICY, JSON.stringify(DATA));
    // A budget that never runs out: what is measured is the checking, reserving and settling.
    const etcd = createEtcdClient(stack.etcdEndpoints);
    await new BudgetStore(etcd).put('bench', { windows: [{ per: 'day', tokens: 1e12 }], block_tokens: 1e9 }, 'bench');
    etcd.close();

    const ragToken = await identity.sign({ sub: 'rag', role: 'rag-service', project: 'bench' });
    const body = JSON.stringify({ model: 'llama-3', max_tokens: 256, messages: [{ role: 'user', content: 'What does Gatehouse do?' }] });
    const pool = new Pool(stack.gateway.url, { connections });
    const send = async (path: string) => {
      const res = await pool.request({
        method: 'POST',
        path,
        headers: { authorization: `Bearer ${ragToken}`, 'content-type': 'application/json' },
        body,
      });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`${path}: ${res.statusCode} ${text}`);
    };
    // Warm up: policies loaded, secret cached, connections open.
    await retryUntilReady(() => send('/llm/v1/chat/completions'));
    await send('/direct/v1/chat/completions');
    await send('/llm-unmetered/v1/chat/completions');
    const drive = (name: string, path: string) => driveConcurrently(name, connections, seconds, () => send(path));

    const results = new Map<string, Stats[]>();
    for (let round = 0; round < rounds; round++) {
      for (const [name, path] of [
        ['direct route, no plugins', '/direct/v1/chat/completions'],
        ['RAG route: jwt + opa (no body)', '/rag/v1/chat/completions'],
        ['LLM route without budgets: jwt + opa(body) + vault(cached) + path-rewrite', '/llm-unmetered/v1/chat/completions'],
        ['LLM route: + budget in opa input + llm-budget + http-logger settle', '/llm/v1/chat/completions'],
      ] as const) {
        const s = await drive(name, path);
        results.set(name, [...(results.get(name) ?? []), s]);
      }
    }
    await pool.close();
    const [direct, rag, chain, budgeted] = [...results.values()].map(medianStats) as [Stats, Stats, Stats, Stats];
    console.log(machineLine());
    console.log(`through APISIX 3.9.1 to an LLM stub; connections: ${connections}; ${seconds}s x ${rounds} rounds (median)\n`);
    printTable([direct, rag, chain, budgeted], { ...direct, name: 'direct' });
    console.log(`\nadded by the chain: p50 +${(chain.p50 - direct.p50).toFixed(0)} µs, p99 +${(chain.p99 - direct.p99).toFixed(0)} µs`);
    console.log(
      `added by budget checking: p50 +${(budgeted.p50 - chain.p50).toFixed(0)} µs, p99 +${(budgeted.p99 - chain.p99).toFixed(0)} µs; throughput ${(budgeted.opsPerSecond / chain.opsPerSecond).toFixed(2)}x the route without budgets`,
    );
    await new Promise((r) => setTimeout(r, 2_000)); // the last responses' settling and usage writes
    const reader = createEtcdClient(stack.etcdEndpoints);
    const usage = await readUsage(reader, 'bench', Date.now() - 3_600_000, Date.now() + 1);
    reader.close();
    console.log(`settled: ${usage.total.requests} calls charged ${usage.total.charged_tokens} tokens (${usage.total.unsettled} unsettled)`);
  } finally {
    for (const cleanup of cleanups) await cleanup().catch(() => undefined);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
