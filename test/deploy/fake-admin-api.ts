// A local HTTP server that answers as APISIX 3's Admin API does for routes
// and upstreams (shared/reference/apisix-gateway.md), and records every
// request: 401 without the right X-API-KEY, PUT 201 on create and 200 on
// replace, GET as {key, value, createdIndex, modifiedIndex} with the id,
// create_time, update_time and the schema defaults APISIX fills into what it
// stores, 404 {"message":"Key not found"}, a route whose upstream_id does not
// exist refused with 400, and an upstream still used by a route not deletable.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

type Obj = Record<string, unknown>;

export interface AdminRequest {
  method: string;
  path: string;
  apiKey: string | undefined;
  body: unknown;
}

export interface FakeAdminApi {
  url: string;
  key: string;
  requests: AdminRequest[];
  store: { routes: Map<string, Obj>; upstreams: Map<string, Obj> };
  close(): Promise<void>;
}

const ROUTE_DEFAULTS = { status: 1, priority: 0 };
const UPSTREAM_DEFAULTS = { type: 'roundrobin', scheme: 'http', pass_host: 'pass', hash_on: 'vars' };

function withDefaults(kind: 'routes' | 'upstreams', body: Obj): Obj {
  if (kind === 'upstreams') return { ...UPSTREAM_DEFAULTS, ...body };
  const route: Obj = { ...ROUTE_DEFAULTS, ...body };
  if (route.upstream && typeof route.upstream === 'object') route.upstream = { ...UPSTREAM_DEFAULTS, ...(route.upstream as Obj) };
  if (route.plugins && typeof route.plugins === 'object') {
    const plugins: Obj = {};
    for (const [name, conf] of Object.entries(route.plugins as Obj)) {
      plugins[name] = name.startsWith('ext-plugin-') ? { allow_degradation: false, ...(conf as Obj) } : conf;
    }
    route.plugins = plugins;
  }
  return route;
}

export async function startFakeAdminApi(key = 'test-admin-key'): Promise<FakeAdminApi> {
  const requests: AdminRequest[] = [];
  const store = { routes: new Map<string, Obj>(), upstreams: new Map<string, Obj>() };
  let index = 100;

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown = undefined;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = text;
      }
      const apiKey = req.headers['x-api-key'] as string | undefined;
      const path = (req.url ?? '').split('?')[0] ?? '';
      requests.push({ method: req.method ?? '', path, apiKey, body });
      const send = (status: number, payload: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json', server: 'APISIX/3.x' });
        res.end(JSON.stringify(payload));
      };
      if (apiKey !== key) return send(401, { error_msg: 'failed to check token' });

      const match = /^\/apisix\/admin\/(routes|upstreams)(?:\/([^/]+))?$/.exec(path);
      if (!match) return send(404, { error_msg: '404 Route Not Found' });
      const kind = match[1] as 'routes' | 'upstreams';
      const id = match[2] ? decodeURIComponent(match[2]) : undefined;
      const objects = store[kind];
      const entry = (objectId: string, value: Obj) => ({ key: `/apisix/${kind}/${objectId}`, value, createdIndex: index, modifiedIndex: index });

      if (req.method === 'GET' && id === undefined) {
        const list = [...objects.entries()].map(([objectId, value]) => entry(objectId, value));
        return send(200, { total: list.length, list });
      }
      if (id === undefined) return send(405, { error_msg: 'not allowed' });
      if (req.method === 'GET') {
        const value = objects.get(id);
        return value ? send(200, entry(id, value)) : send(404, { message: 'Key not found' });
      }
      if (req.method === 'PUT') {
        if (!body || typeof body !== 'object' || Array.isArray(body)) return send(400, { error_msg: 'invalid request body' });
        const object = body as Obj;
        if (object.id !== undefined && String(object.id) !== id) return send(400, { error_msg: 'wrong route id' });
        if (kind === 'routes' && object.upstream_id !== undefined && !store.upstreams.has(String(object.upstream_id))) {
          return send(400, { error_msg: `failed to fetch upstream info by upstream id [${String(object.upstream_id)}], response code: 404` });
        }
        const existed = objects.get(id);
        const now = Math.floor(Date.now() / 1000);
        const value = { ...withDefaults(kind, object), id, create_time: (existed?.create_time as number) ?? now, update_time: now };
        objects.set(id, value);
        index++;
        return send(existed ? 200 : 201, entry(id, value));
      }
      if (req.method === 'DELETE') {
        if (!objects.has(id)) return send(404, { message: 'Key not found' });
        if (kind === 'upstreams' && [...store.routes.values()].some((route) => String(route.upstream_id) === id)) {
          return send(400, { error_msg: `can not delete this upstream, route [${id}] is still using it now` });
        }
        objects.delete(id);
        return send(200, { deleted: '1', key: `/apisix/${kind}/${id}` });
      }
      return send(405, { error_msg: 'not allowed' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    key,
    requests,
    store,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
