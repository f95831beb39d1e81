// For tests of APISIX's http-logger: a loopback HTTP server that records the
// log POSTs it receives (and when), and the config.yaml edit that lets a
// gateway run the plugin.
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Document } from 'yaml';
import type { ApisixInstallation } from '../../tools/apisix/index.js';

export interface ReceivedLog {
  /** Date.now() when the whole POST had arrived. */
  at: number;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface LogReceiver {
  /** `http://127.0.0.1:<port>` */
  url: string;
  received: ReceivedLog[];
  /** Answers the next POSTs with these statuses, in order (then 200 again). */
  failNext(...statuses: number[]): void;
  /** Waits this long before answering each POST. */
  setDelay(ms: number): void;
  /** Resolves once `count` POSTs have arrived in all; rejects after `timeoutMs`. */
  waitFor(count: number, timeoutMs?: number): Promise<ReceivedLog[]>;
  close(): Promise<void>;
}

export async function startLogReceiver(): Promise<LogReceiver> {
  const received: ReceivedLog[] = [];
  const statuses: number[] = [];
  let delayMs = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ at: Date.now(), method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      const status = statuses.shift() ?? 200;
      setTimeout(() => res.writeHead(status).end(status < 400 ? 'ok' : 'refused'), delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    failNext: (...next) => void statuses.push(...next),
    setDelay: (ms) => void (delayMs = ms),
    async waitFor(count, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (received.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} log POSTs within ${timeoutMs} ms, got ${received.length}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return received;
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Lua modules APISIX 3.9.1 loads with http-logger but never calls on the
 * paths Gatehouse uses, absent from the APISIX kit: without them the plugin
 * fails to load and APISIX skips it on every route without a word.
 * `prometheus` (nginx-lua-prometheus) is required by the batch processor for
 * the prometheus plugin's metrics, which only that plugin sets up;
 * `ffi-zlib` (lua-ffi-zlib) is required by log-util to decode a collected
 * response body sent with Content-Encoding gzip.
 */
const PLACEHOLDER_MODULES: Record<string, string> = {
  prometheus: 'nginx-lua-prometheus',
  'ffi-zlib': 'lua-ffi-zlib',
};

function placeholderModule(library: string): string {
  return [
    `-- ${library} is not installed with this APISIX. This stands in for it so that`,
    '-- the plugins requiring it load; any use of it fails loudly instead of',
    '-- behaving differently.',
    'return setmetatable({}, {',
    '    __index = function(_, key)',
    `        error("${library} is not installed: " .. tostring(key))`,
    '    end,',
    '})',
    '',
  ].join('\n');
}

/** Whether the installation carries a Lua module (where APISIX's lua_package_path looks). */
function hasLuaModule(installation: ApisixInstallation, name: string): boolean {
  const roots = [join(installation.home, 'deps', 'share', 'lua', '5.1'), join(installation.home, '..', 'openresty', 'lualib'), '/usr/local/openresty/lualib'];
  return roots.some((root) => existsSync(join(root, `${name}.lua`)) || existsSync(join(root, name, 'init.lua')));
}

/**
 * The config.yaml edit a gateway test needs for http-logger: the plugin in
 * `plugins` (APISIX skips a route's plugin that is not listed, silently),
 * and, on an APISIX without the modules above (the kit's build), a
 * directory of placeholders for them on `apisix.extra_lua_path`.
 */
export function enableHttpLogger(config: Document, installation: ApisixInstallation | null): void {
  const plugins = config.get('plugins') as { items: unknown[]; add(v: unknown): void } | undefined;
  const listed = (config.toJS() as { plugins?: string[] }).plugins ?? [];
  if (plugins && !listed.includes('http-logger')) plugins.add('http-logger');
  if (!installation) return;
  const missing = Object.keys(PLACEHOLDER_MODULES).filter((name) => !hasLuaModule(installation, name));
  if (missing.length === 0) return;
  const dir = mkdtempSync(join(tmpdir(), 'gh-apisix-lua-'));
  for (const name of missing) writeFileSync(join(dir, `${name}.lua`), placeholderModule(PLACEHOLDER_MODULES[name]!));
  config.setIn(['apisix', 'extra_lua_path'], `${dir}/?.lua`);
}
