/**
 * A CMS under test: real etcd, real opa, the compiled access policy from
 * dist/, served on a loopback port, and a raw HTTP client (node:http keeps
 * paths as written, so dot segments and encoded slashes reach the server).
 */
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { pino } from 'pino';
import { Etcd3, Range } from 'etcd3';
import { buildCmsApp, type CmsAppOptions } from '../../cms/app.js';
import { opaPath, packageRoot } from '../../runtime/paths.js';
import { defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';

export const OPA_PATH = opaPath(process.env.OPA_PATH);

export const ADMIN = { sub: 'ada', role: 'platform_admin' };
export const TEAM_A_USER = { sub: 'tom', role: 'project_user', project: 'team-a' };
export const TEAM_B_USER = { sub: 'bea', role: 'project_user', project: 'team-b' };

/** The seed's example policy object, byte for byte as printed in section 4.1. */
export const SEED_EXAMPLE_BODY =
  '{\n  "rego": "package project.authz\\n\\ndefault allow = false\\n\\nallow {\\n  input.user.role == \\"admin\\"\\n}",\n  "data": {\n    "valid_roles": ["admin", "viewer"]\n  }\n}';

export interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json(): any;
}

export interface RequestOptions {
  token?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Sets Content-Type: application/json when a body is given (default true). */
  json?: boolean;
}

export function rawRequest(baseUrl: string, method: string, path: string, options: RequestOptions = {}): Promise<Response> {
  const url = new URL(baseUrl);
  const headers: Record<string, string> = { ...options.headers };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined && options.json !== false && !('content-type' in headers)) {
    headers['content-type'] = 'application/json';
  }
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: url.hostname, port: url.port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: () => JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (options.body !== undefined) req.write(options.body);
    req.end();
  });
}

export interface EtcdSnapshot {
  revision: string;
  keys: Record<string, string>;
}

export interface Cms {
  app: FastifyInstance;
  baseUrl: string;
  logLines: string[];
  request(method: string, path: string, options?: RequestOptions): Promise<Response>;
  stop(): Promise<void>;
}

export interface Harness {
  etcd: TestEtcd;
  keys: TestKeys;
  tokens: { admin: string; teamA: string; teamB: string };
  /** Starts a CMS on this etcd (tests may run several, or restart one). */
  startCms(overrides?: Partial<CmsAppOptions>): Promise<Cms>;
  /** Every key under /policies/ with its value (hex) and the store revision: equal snapshots mean nothing was written. */
  snapshot(): Promise<EtcdSnapshot>;
  /** The same for budgets, their history and usage (/budgets/, /budget-history/, /usage/). */
  budgetSnapshot(): Promise<EtcdSnapshot>;
  etcdClient: Etcd3;
  close(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  const etcd = await startEtcd();
  const keys = await createTestKeys();
  const etcdClient = new Etcd3({ hosts: etcd.endpoints });
  const running: Cms[] = [];
  const tokens = {
    admin: await keys.token(ADMIN),
    teamA: await keys.token(TEAM_A_USER),
    teamB: await keys.token(TEAM_B_USER),
  };

  async function startCms(overrides: Partial<CmsAppOptions> = {}): Promise<Cms> {
    const logLines: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, callback) {
        logLines.push(...chunk.toString().split('\n').filter(Boolean));
        callback();
      },
    });
    const app = await buildCmsApp({
      etcdEndpoints: etcd.endpoints,
      etcdCallTimeoutMs: 1_000,
      opaPath: OPA_PATH,
      accessPolicyWasmPath: defaultAccessPolicyWasmPath(),
      identity: keys.identityConfig,
      logger: pino({ level: 'info' }, sink),
      ...overrides,
    });
    const address = await app.listen({ port: 0, host: '127.0.0.1' });
    const cms: Cms = {
      app,
      baseUrl: address,
      logLines,
      request: (method, path, options) => rawRequest(address, method, path, options),
      async stop() {
        running.splice(running.indexOf(cms), 1);
        await app.close();
      },
    };
    running.push(cms);
    return cms;
  }

  return {
    etcd,
    keys,
    tokens,
    etcdClient,
    startCms,
    snapshot: () => snapshotOf(etcdClient, ['/policies/']),
    budgetSnapshot: () => snapshotOf(etcdClient, ['/budgets/', '/budget-history/', '/usage/']),
    async close() {
      for (const cms of [...running]) await cms.stop();
      etcdClient.close();
      await keys.cleanup();
      await etcd.cleanup();
    },
  };
}

/** Every key under the prefixes, at one revision, read in pages: all of /policies/ may not fit one gRPC response. */
async function snapshotOf(etcdClient: Etcd3, prefixes: string[]): Promise<EtcdSnapshot> {
  const snapshotKeys: Record<string, string> = {};
  const revision = (await etcdClient.get(prefixes[0]!).exec()).header.revision;
  for (const prefix of prefixes) {
    const end = Range.prefix(prefix).end;
    let start = prefix;
    for (;;) {
      const page = await etcdClient.getAll().inRange(new Range(start, end)).revision(revision).limit(10).exec();
      for (const kv of page.kvs) snapshotKeys[kv.key.toString()] = kv.value.toString('hex');
      if (!page.more || page.kvs.length === 0) break;
      start = `${page.kvs[page.kvs.length - 1]!.key.toString()}\0`;
    }
  }
  return { revision, keys: snapshotKeys };
}

export function policyBody(rego: string, data: unknown = {}): string {
  return JSON.stringify({ rego, data });
}

export const V1_POLICY = 'package team.authz\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles\n';
