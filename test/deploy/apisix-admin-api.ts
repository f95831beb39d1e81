// The real APISIX Admin API for the routes CLI's tests: APISIX in
// traditional mode with apisix-conf/config-traditional.yaml (its machine
// paths and etcd pointed at this machine), on a real etcd. A recording proxy
// in front of it lets a test see what the CLI sent (method, path, key, body);
// what APISIX stored is read back through the Admin API itself.
import { randomBytes } from 'node:crypto';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { createEtcdClient } from '../../etcd/index.js';
import { freePort, startApisix, type ApisixHandle } from '../../dev/apisix/index.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { apisixInstallation } from '../support/gateway.js';
import { repoRoot } from '../support/runner-process.js';

type Obj = Record<string, unknown>;
export type AdminKind = 'routes' | 'upstreams';

export interface AdminRequest {
  method: string;
  path: string;
  apiKey: string | undefined;
  body: unknown;
}

export interface AdminApi {
  /** The recording proxy in front of APISIX's Admin API. */
  url: string;
  key: string;
  /** What reached the Admin API through the proxy since the last reset. */
  requests: AdminRequest[];
  /** What APISIX stores, by id (read with the Admin API, not through the proxy). */
  stored(kind: AdminKind): Promise<Map<string, Obj>>;
  /** A change made on APISIX by hand, past the proxy. */
  put(kind: AdminKind, id: string, body: Obj): Promise<void>;
  /** No routes, no upstreams, no recorded requests. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

export async function startAdminApi(): Promise<AdminApi> {
  const key = randomBytes(24).toString('hex');
  const etcd: TestEtcd = await startEtcd();
  const adminPort = await freePort();
  let apisix: ApisixHandle | undefined;
  try {
    apisix = await startApisix({
      installation: apisixInstallation(),
      repoRoot,
      configPath: join(repoRoot, 'apisix-conf', 'config-traditional.yaml'),
      port: await freePort(),
      workerProcesses: 1,
      env: { PATH: process.env.PATH ?? '', APISIX_ADMIN_KEY: key },
      edit: (config) => {
        config.setIn(['deployment', 'etcd', 'host'], etcd.endpoints);
        config.deleteIn(['deployment', 'etcd', 'tls']);
        config.setIn(['deployment', 'admin', 'admin_listen', 'port'], adminPort);
        config.setIn(['apisix', 'ssl', 'ssl_trusted_certificate'], '/etc/ssl/certs/ca-certificates.crt');
        // The runner is not part of what these tests look at.
        config.delete('ext-plugin');
      },
      logger: pino({ level: 'silent' }),
      expectRunner: false,
    });
  } catch (err) {
    await etcd.cleanup();
    throw err;
  }
  const started = apisix;
  const admin = `http://127.0.0.1:${adminPort}/apisix/admin`;

  const requests: AdminRequest[] = [];
  const proxy: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const header = req.headers['x-api-key'];
      requests.push({
        method: req.method ?? '',
        path: (req.url ?? '').split('?')[0] ?? '',
        apiKey: Array.isArray(header) ? header[0] : header,
        body: body.length ? (JSON.parse(body.toString()) as unknown) : undefined,
      });
      const upstream = httpRequest({ host: '127.0.0.1', port: adminPort, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      });
      upstream.on('error', () => res.writeHead(502).end());
      upstream.end(body);
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));

  const call = async (method: string, path: string, body?: Obj): Promise<Obj | null> => {
    const response = await fetch(`${admin}${path}`, {
      method,
      headers: { 'x-api-key': key, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await response.text();
    // APISIX answers a list with nothing ever stored under it with 404.
    if (method === 'GET' && response.status === 404) return null;
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return JSON.parse(text) as Obj;
  };

  const etcdClient = createEtcdClient(etcd.endpoints);
  return {
    url: `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
    key,
    requests,
    async stored(kind) {
      const list = (await call('GET', `/${kind}`)) as { list?: { value: Obj }[] } | null;
      return new Map((list?.list ?? []).map((item) => [String(item.value.id), item.value]));
    },
    async put(kind, id, body) {
      await call('PUT', `/${kind}/${id}`, body);
    },
    async reset() {
      // Straight in etcd: the Admin API will not delete an upstream a route still uses.
      await etcdClient.delete().prefix('/apisix/routes/');
      await etcdClient.delete().prefix('/apisix/upstreams/');
      requests.length = 0;
    },
    async close() {
      await new Promise((resolve) => proxy.close(resolve));
      etcdClient.close();
      await started.stop();
      await etcd.cleanup();
    },
  };
}
