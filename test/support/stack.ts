// The local stack as end-to-end tests use it (dev/local-stack: etcd, the
// CMS, the decision API, APISIX with the real runner), with test keys, a
// recording RAG upstream behind /rag, and a client that calls through the
// gateway.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createTestKeys, type TestKeys } from './jwt.js';
import { startRecordingUpstream, type RecordingUpstream } from './upstream.js';
import { opaPath } from './policies.js';
import { startLocalStack, type LocalStack, type LocalStackOptions } from '../../dev/local-stack/index.js';

export interface CallOptions {
  token?: string;
  body?: string;
  headers?: Record<string, string>;
}

export interface CallAnswer {
  status: number;
  headers: Headers;
  text: string;
}

export interface TestStack {
  stack: LocalStack;
  keys: TestKeys;
  rag: RecordingUpstream;
  /** A request through the gateway: a bearer token, a body (sent as JSON unless a content-type says otherwise). */
  call(method: string, path: string, options?: CallOptions): Promise<CallAnswer>;
  stop(): Promise<void>;
}

export async function startTestStack(options: { name: string } & Partial<Pick<LocalStackOptions, 'policySigning' | 'etcdName' | 'ports'>>): Promise<TestStack> {
  const keys = await createTestKeys();
  const rag = await startRecordingUpstream({ status: 200, body: '{"answer":"42"}', headers: { 'content-type': 'application/json' } });
  let stack: LocalStack;
  try {
    stack = await startLocalStack({
      identity: keys.identityConfig,
      etcdDataRoot: 'test-etcd',
      ...(options.etcdName ? { etcdName: options.etcdName } : {}),
      ...(options.ports ? { ports: options.ports } : {}),
      upstreams: { rag: rag.url },
      workDir: mkdtempSync(join(tmpdir(), `gh-${options.name}-`)),
      opaPath,
      ...(options.policySigning ? { policySigning: true } : {}),
      logger: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }),
    });
  } catch (error) {
    await rag.close();
    await keys.cleanup();
    throw error;
  }
  return {
    stack,
    keys,
    rag,
    async call(method, path, { token, body, headers: extra } = {}) {
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      Object.assign(headers, extra);
      if (body !== undefined) headers['content-type'] ??= 'application/json';
      const response = await fetch(`${stack.gateway.url}${path}`, { method, headers, body });
      return { status: response.status, headers: response.headers, text: await response.text() };
    },
    async stop() {
      await stack.stop();
      await rag.close();
      await keys.cleanup();
    },
  };
}

/** Waits until `read` gives a value `done` accepts (every 100 ms), or throws naming `what` with the last value. */
export async function until<T>(read: () => Promise<T>, done: (value: T) => boolean, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (done(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
