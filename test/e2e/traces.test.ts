// Traces end to end: APISIX and the real runner (jwt -> opa -> llm-budget ->
// vault -> path-rewrite) with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a real
// OpenTelemetry Collector (dev/otelcol), a real Vault, etcd and compiled
// policies, in front of the LLM stub. One call continues the client's trace:
// the runner's request span, a span per plugin, the upstream sent the trace
// on, and the budget's settle span carrying the usage the stub reported. No
// span holds the Vault-held key, the client's token or the request body.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { startVault, type TestVault } from '../support/vault.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { startLlmStub, type LlmStub } from '../../dev/llm-stub/index.js';
import { startLocalStack, type LocalStack } from '../../dev/local-stack/index.js';
import { startLocalCollector, type LocalCollector, type ReceivedSpan } from '../../dev/otelcol/index.js';
import { createEtcdClient } from '../../etcd/index.js';
import { BudgetStore } from '../../budget/store.js';

const POLICY = `package project.authz
import rego.v1

default allow := false

allow if input.body.model in data.models
`;
const VAULT_KEY = 'sk-traced-0001-do-not-leak';
const BODY_MARKER = 'the-body-must-not-leak-7f3a';
const SERVICE = 'gatehouse-runner-traces-test';

let keys: TestKeys;
let vault: TestVault;
let llm: LlmStub;
let collector: LocalCollector;
let stack: LocalStack;
let token: string;

const chat = (content: string) => JSON.stringify({ model: 'gpt-4o-mini', max_tokens: 64, messages: [{ role: 'user', content }] });

async function callLlm(body: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${stack.gateway.url}/llm/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...headers },
    body,
  });
  return { status: res.status, text: await res.text() };
}

beforeAll(async () => {
  keys = await createTestKeys();
  vault = await startVault();
  await vault.kvPut('secret', 'llm/team-t', { api_key: VAULT_KEY });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }');
  llm = await startLlmStub();
  collector = await startLocalCollector();
  stack = await startLocalStack({
    identity: keys.identityConfig,
    etcdDataRoot: 'test-etcd',
    upstreams: { llm: llm.url, rag: llm.url },
    workDir: mkdtempSync(join(tmpdir(), 'gh-traces-')),
    opaPath,
    runnerEnv: {
      VAULT_ADDR: vault.addr,
      VAULT_ROLE_ID: approle.roleId,
      VAULT_SECRET_ID: approle.secretId,
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint,
      OTEL_SERVICE_NAME: SERVICE,
      // One process: each worker keeps its own Vault cache, and the traced call must find the warm-up's secret cached.
      RUNNER_WORKERS: '1',
    },
    logger: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
  });
  const etcd = createEtcdClient(stack.etcdEndpoints);
  await new EtcdPolicyWriter(etcd).put('team-t', POLICY, { models: ['gpt-4o-mini'] });
  await new BudgetStore(etcd).put('team-t', { windows: [{ per: 'day', tokens: 1_000_000 }] }, 'test');
  etcd.close();
  token = await keys.token({ sub: 'svc-t', role: 'rag-service', project: 'team-t' });
  // Until the runner has the policy and the budget.
  const deadline = Date.now() + 30_000;
  while ((await callLlm(chat('warm up'))).status !== 200) {
    if (Date.now() > deadline) throw new Error('the LLM route never allowed the first request');
    await new Promise((r) => setTimeout(r, 100));
  }
}, 240_000);

afterAll(async () => {
  await stack?.stop();
  await collector?.stop();
  await llm?.close();
  await vault?.stop();
  await keys?.cleanup();
});

describe('traces through the gateway', () => {
  it("continue the client's trace: a span per plugin, the upstream sent the trace on, GenAI usage as the LLM reported it, no secret", async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const clientSpan = '00f067aa0ba902b7';
    llm.requests.length = 0;
    llm.usage.length = 0;
    const res = await callLlm(chat(`hello ${BODY_MARKER}`), { traceparent: `00-${traceId}-${clientSpan}-01` });
    expect(res.status).toBe(200);
    expect(llm.usage).toHaveLength(1);
    const reported = llm.usage[0]!;

    const ofTrace = (spans: ReceivedSpan[]) => spans.filter((s) => s.traceId === traceId);
    const spans = ofTrace(await collector.until((all) => ofTrace(all).some((s) => s.name.startsWith('chat '))));

    // The runner's request span, a child of the client's.
    const request = spans.find((s) => s.parentSpanId === clientSpan)!;
    expect(request).toBeDefined();
    expect(request.resource['service.name']).toBe(SERVICE);
    expect(request.kind).toBe(2);
    expect(request.attributes).toMatchObject({ 'http.request.method': 'POST', 'url.path': '/llm/v1/chat/completions', 'gatehouse.outcome': 'pass' });

    // One child span per plugin, in chain order.
    const children = spans.filter((s) => s.parentSpanId === request.spanId && s.attributes['gatehouse.plugin'] !== undefined);
    expect(children.map((s) => s.name).sort()).toEqual(['jwt', 'llm-budget', 'opa', 'path-rewrite', 'vault']);
    const span = (name: string) => children.find((s) => s.name === name)!;
    expect(span('jwt').attributes).toMatchObject({ 'gatehouse.jwt.issuer': keys.identityConfig.issuer, 'gatehouse.project': 'team-t' });
    expect(span('jwt').attributes['gatehouse.jwt.kid']).toEqual(expect.any(String));
    expect(span('jwt').attributes['gatehouse.jwt.kid']).not.toBe('');
    expect(span('opa').attributes).toMatchObject({
      'gatehouse.policy.names': ['team-t'],
      'gatehouse.policy.versions': [expect.any(Number)],
      'gatehouse.policy.results': ['allow'],
      'gatehouse.decision.result': 'allow',
    });
    expect(span('vault').attributes).toMatchObject({
      'gatehouse.vault.mount': 'secret',
      'gatehouse.vault.path_template': 'llm/{project}',
      'gatehouse.vault.cache_hit': true,
    });
    expect(span('llm-budget').attributes).toMatchObject({ 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-4o-mini' });

    // The upstream was sent the trace, with the runner's request span as the parent.
    expect(llm.requests.at(-1)!.headers.traceparent).toBe(`00-${traceId}-${request.spanId}-01`);

    // The settle span: what the LLM reported, what was reserved and charged.
    const settle = spans.find((s) => s.name === 'chat gpt-4o-mini')!;
    expect(settle.parentSpanId).toBe(request.spanId);
    const reserved = span('llm-budget').attributes['gatehouse.budget.reserved'];
    expect(reserved).toEqual(expect.any(Number));
    expect(settle.attributes).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'gpt-4o-mini',
      'gen_ai.usage.input_tokens': reported.promptTokens,
      'gen_ai.usage.output_tokens': reported.completionTokens,
      'gatehouse.budget.reserved': reserved,
      'gatehouse.budget.charged': reported.promptTokens + reported.completionTokens,
      'http.response.status_code': 200,
    });

    // Nothing secret anywhere in what the collector received.
    const everything = collector.raw.join('\n');
    expect(everything).toContain('gatehouse.plugin');
    for (const secret of [VAULT_KEY, token, BODY_MARKER, token.split('.')[2]!]) expect(everything).not.toContain(secret);
  });
});
