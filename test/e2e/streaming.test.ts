// Streamed LLM completions end to end: APISIX 3.9.1 with the real runner
// running the LLM route's chain (jwt -> opa with the JSON body -> vault ->
// path-rewrite), a real etcd, Vault and compiled policies, and the LLM stub
// writing one chunk every 50 ms. The client must get the chunks as they are
// written, and an http-logger on the route must get, after the response,
// the whole streamed body and the request as the upstream received it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Document } from 'yaml';
import { createEtcdClient } from '../../etcd/index.js';
import { startLlmStub, type LlmStub, type LlmStubUsage } from '../../dev/llm-stub/index.js';
import { standaloneRoutesText } from '../../dev/local-stack/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startTestGateway, type TestGatewayHandle } from '../support/gateway.js';
import { startLogReceiver, type LogReceiver, type ReceivedLog } from '../support/http-logger.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { EtcdPolicyWriter, opaPath } from '../support/policies.js';
import { completionChunks, readSse, sseData, type SseRead } from '../support/sse.js';
import { startVault, type TestVault } from '../support/vault.js';

const POLICY = `package project.authz
import rego.v1

default allow := false

allow if {
	input.user.role in data.llm_roles
	input.body.model in data.models
	input.body.max_tokens <= data.max_tokens
}
`;
const DATA = { llm_roles: ['rag-service'], models: ['llama-3'], max_tokens: 256 };
const LLM_KEY = 'sk-team-a-stream-0001';
const CHUNK_DELAY_MS = 50;
const MAX_TOKENS = 12;

let dir: string;
let keys: TestKeys;
let vault: TestVault;
let etcd: TestEtcd;
let llm: LlmStub;
let logs: LogReceiver;
let gateway: TestGatewayHandle;
let token = '';

/** The LLM route's chain, as apisix-conf/apisix.yaml has it (jwt's conf given). */
function llmChain(jwt: object, prefix: string) {
  return [
    { name: 'jwt', value: JSON.stringify(jwt) },
    { name: 'opa', value: JSON.stringify({ policies: ['platform', 'caller-project'], with_body: true }) },
    { name: 'vault', value: JSON.stringify({ mount: 'secret', path: 'llm/{project}', field: 'api_key', header: 'authorization', format: 'Bearer {value}' }) },
    { name: 'path-rewrite', value: JSON.stringify({ strip_prefix: prefix }) },
  ];
}

function httpLogger(path: string) {
  return {
    uri: `${logs.url}${path}`,
    batch_max_size: 1,
    include_resp_body: true,
    log_format: {
      status: '$status',
      request_uri: '$request_uri',
      body: '$resp_body',
      project: '$http_x_gatehouse_project',
      request_id: '$http_x_request_id',
    },
  };
}

function routes(): string {
  // A fresh object for each route: a shared one would be rendered as a YAML alias.
  const upstream = () => ({ nodes: { [new URL(llm.url).host]: 1 }, timeout: { connect: 2, send: 10, read: 10 } });
  const doc = new Document({
    routes: [
      {
        // The production route's chain: the identity is not forwarded to the LLM.
        id: 'llm',
        uris: ['/llm', '/llm/*'],
        methods: ['GET', 'POST'],
        plugins: {
          'ext-plugin-pre-req': { conf: llmChain({ forward_identity: false }, '/llm'), allow_degradation: false },
          'http-logger': httpLogger('/llm'),
        },
        upstream: upstream(),
      },
      {
        // The same chain with jwt forwarding the identity: x-gatehouse-project is a header the runner set.
        id: 'llm-identity',
        uris: ['/llm-identity/*'],
        methods: ['POST'],
        plugins: {
          'ext-plugin-pre-req': { conf: llmChain({}, '/llm-identity'), allow_degradation: false },
          'http-logger': httpLogger('/llm-identity'),
        },
        upstream: upstream(),
      },
      {
        // ext-plugin-post-resp whose runner plugin leaves the body alone...
        id: 'post-pass',
        uris: ['/post-pass/*'],
        plugins: {
          'ext-plugin-pre-req': { conf: [{ name: 'path-rewrite', value: '{"strip_prefix":"/post-pass"}' }] },
          'ext-plugin-post-resp': { conf: [{ name: 'example', value: '{"response":{"set_headers":{"x-post-resp":"seen"}}}' }] },
        },
        upstream: upstream(),
      },
      {
        // ...and one whose plugin reads it (to append to it).
        id: 'post-read',
        uris: ['/post-read/*'],
        plugins: {
          'ext-plugin-pre-req': { conf: [{ name: 'path-rewrite', value: '{"strip_prefix":"/post-read"}' }] },
          'ext-plugin-post-resp': { conf: [{ name: 'example', value: '{"response":{"append_body":"\\n"}}' }] },
        },
        upstream: upstream(),
      },
    ],
  });
  return standaloneRoutesText(doc);
}

const completion = (extra: Record<string, unknown> = {}) =>
  JSON.stringify({ model: 'llama-3', max_tokens: MAX_TOKENS, messages: [{ role: 'user', content: 'tell me something, slowly' }], ...extra });

async function post(path: string, body: string, headers: Record<string, string> = {}) {
  return fetch(`${gateway.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...headers },
    body,
  });
}

/** Streams a completion and finds what the stub recorded for it. */
async function streamed(path: string, extra: Record<string, unknown>, headers: Record<string, string> = {}): Promise<{ read: SseRead; usage: LlmStubUsage }> {
  const res = await post(path, completion({ stream: true, ...extra }), headers);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
  const read = await readSse(res.body!);
  const id = completionChunks(read.events.map((e) => e.data))[0]!.id;
  const usage = llm.usage.find((u) => u.id === id);
  if (!usage) throw new Error(`the stub has no record of ${id}`);
  return { read, usage };
}

/** The client had the first chunk well before the stub wrote its last one, over several reads. */
function expectIncremental(read: SseRead, usage: LlmStubUsage): void {
  expect(read.events[0]!.at).toBeLessThan(usage.lastChunkAt!);
  expect(usage.lastChunkAt! - read.events[0]!.at).toBeGreaterThan(CHUNK_DELAY_MS * 5);
  expect(read.reads.length).toBeGreaterThanOrEqual(5);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gh-streaming-'));
  keys = await createTestKeys();
  vault = await startVault();
  await vault.kvPut('secret', 'llm/team-a', { api_key: LLM_KEY });
  const approle = await vault.createAppRole('gatehouse-gateway', 'path "secret/data/llm/*" { capabilities = ["read"] }', { tokenTtl: '60s' });
  etcd = await startEtcd();
  const client = createEtcdClient(etcd.endpoints);
  await new EtcdPolicyWriter(client).put('team-a', POLICY, DATA);
  client.close();
  llm = await startLlmStub({ chunkDelayMs: CHUNK_DELAY_MS });
  logs = await startLogReceiver();
  const routesPath = join(dir, 'apisix.yaml');
  writeFileSync(routesPath, routes());
  // apisix-conf/config.yaml loads http-logger (a plugin it did not list would be skipped without a word).
  gateway = await startTestGateway({
    routesPath,
    env: {
      ETCD_ENDPOINTS: etcd.endpoints.join(','),
      ...keys.env,
      OPA_PATH: opaPath,
      RUNNER_STATE_DIR: join(dir, 'runner-state'),
      RUNNER_WORKERS: '1',
      VAULT_ADDR: vault.addr,
      VAULT_ROLE_ID: approle.roleId,
      VAULT_SECRET_ID: approle.secretId,
    },
  });
  token = await keys.token({ sub: 'rag-a', role: 'rag-service', project: 'team-a' });
  // The runner answers once it has the policies.
  const deadline = Date.now() + 20_000;
  for (;;) {
    const res = await post('/llm/v1/chat/completions', completion({ max_tokens: 1, stub_chunk_delay_ms: 0 }));
    await res.text();
    if (res.status === 200) break;
    if (Date.now() > deadline) throw new Error(`the LLM route never allowed a request (last status ${res.status})`);
    await new Promise((r) => setTimeout(r, 100));
  }
  await logs.waitFor(1);
  logs.received.length = 0;
}, 180_000);

afterAll(async () => {
  await gateway?.stop();
  await llm?.close();
  await logs?.close();
  await vault?.stop();
  await etcd?.cleanup();
  await keys?.cleanup();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const logsFor = async (path: string, count: number): Promise<ReceivedLog[]> => {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const found = logs.received.filter((l) => l.url.split('?')[0] === path);
    if (found.length >= count) return found;
    if (Date.now() > deadline) {
      throw new Error(`expected ${count} log POSTs to ${path}, got ${found.length} (all: ${logs.received.map((l) => l.url).join(', ') || 'none'})`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('streamed completions through APISIX', () => {
  it('arrive chunk by chunk through the chain, with the usage chunk when asked for', async () => {
    const { read, usage } = await streamed('/llm/v1/chat/completions', { stream_options: { include_usage: true } });
    expectIncremental(read, usage);
    const data = read.events.map((e) => e.data);
    expect(data.at(-1)).toBe('[DONE]');
    const chunks = completionChunks(data);
    expect(chunks.filter((c) => c.choices[0]?.delta.content)).toHaveLength(MAX_TOKENS);
    expect(chunks.at(-1)!.choices).toEqual([]);
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: usage.promptTokens, completion_tokens: MAX_TOKENS, total_tokens: usage.promptTokens + MAX_TOKENS });
    expect(usage).toMatchObject({ streamed: true, usageReported: true, completionTokens: MAX_TOKENS, tokensWritten: MAX_TOKENS, aborted: false });
    // The chain ran: the stub got the project's key from Vault, on the rewritten path.
    const seen = llm.requests.at(-1)!;
    expect(seen.url).toBe('/v1/chat/completions');
    expect(seen.headers.authorization).toBe(`Bearer ${LLM_KEY}`);

    const plain = await streamed('/llm/v1/chat/completions', {});
    expectIncremental(plain.read, plain.usage);
    expect(completionChunks(plain.read.events.map((e) => e.data)).some((c) => c.usage !== undefined)).toBe(false);
    expect(plain.usage.usageReported).toBe(false);
  });

  it('http-logger gets, after the response, the whole streamed body and the header the runner set, while the client still streams', async () => {
    logs.received.length = 0;
    const requestId = `req-${Date.now()}`;
    const { read, usage } = await streamed(
      '/llm-identity/v1/chat/completions',
      { stream_options: { include_usage: true } },
      { 'x-gatehouse-project': 'someone-else', 'x-request-id': requestId },
    );
    expectIncremental(read, usage);
    const [log] = await logsFor('/llm-identity', 1);
    expect(log!.headers['content-type']).toBe('application/json');
    // lua-resty-http writes the `?` of an empty query.
    expect(log!.url).toBe('/llm-identity?');
    expect(log!.at).toBeGreaterThanOrEqual(read.reads.at(-1)!.at);
    const entry = JSON.parse(log!.body) as Record<string, string>;
    expect(entry).toMatchObject({ status: '200', request_uri: '/llm-identity/v1/chat/completions', route_id: 'llm-identity', request_id: requestId });
    // jwt replaced the client's copy with the verified project, and the log saw the upstream's request.
    expect(entry.project).toBe('team-a');
    expect(entry.body).toBe(read.text);
    const loggedChunks = completionChunks(sseData(entry.body!));
    expect(loggedChunks.at(-1)!.usage).toEqual({
      prompt_tokens: usage.promptTokens,
      completion_tokens: usage.completionTokens,
      total_tokens: usage.totalTokens,
    });
    expect(entry.body).not.toContain(LLM_KEY);
  });

  it('on the production chain the log has no project header at all: jwt removed the spoofed one and forwards none', async () => {
    logs.received.length = 0;
    const { read } = await streamed('/llm/v1/chat/completions', { stream_options: { include_usage: true } }, { 'x-gatehouse-project': 'someone-else' });
    const [log] = await logsFor('/llm', 1);
    const entry = JSON.parse(log!.body) as Record<string, string>;
    expect(entry.body).toBe(read.text);
    expect('project' in entry).toBe(false);
    expect(entry.route_id).toBe('llm');
  });

  it('a denied request is logged with its status and the problem the runner answered', async () => {
    logs.received.length = 0;
    const res = await post('/llm/v1/chat/completions', completion({ model: 'gpt-5-enormous', stream: true }));
    const body = await res.text();
    expect(res.status).toBe(403);
    const [log] = await logsFor('/llm', 1);
    expect(JSON.parse(log!.body)).toMatchObject({ status: '403', body });
  });

  it('ext-plugin-post-resp streams when the runner leaves the body alone, and delivers it whole when a plugin reads it', async () => {
    const passed = await streamed('/post-pass/v1/chat/completions', {});
    expectIncremental(passed.read, passed.usage);

    const res = await post('/post-read/v1/chat/completions', completion({ stream: true }));
    expect(res.status).toBe(200);
    const read = await readSse(res.body!);
    const id = completionChunks(read.events.map((e) => e.data))[0]!.id;
    const usage = llm.usage.find((u) => u.id === id)!;
    // Nothing reached the client before the stub had written its last chunk.
    expect(read.events[0]!.at).toBeGreaterThanOrEqual(usage.lastChunkAt!);
    expect(read.text.endsWith('data: [DONE]\n\n\n')).toBe(true);
  });
});
