// Routes of the APISIX stand-in, read from a standalone `apisix.yaml` and
// matched the way APISIX's radixtree router (`radixtree_host_uri`) does.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { parseHttpLoggerConf, type HttpLoggerConf } from './http-logger.js';
import { resolveConfVars } from '../apisix/conf-vars.js';

export const EXT_PLUGIN_PHASES = ['ext-plugin-pre-req', 'ext-plugin-post-req', 'ext-plugin-post-resp'] as const;
export type ExtPluginPhase = (typeof EXT_PLUGIN_PHASES)[number];

/** One `ext-plugin-*` plugin's conf, as APISIX's schema accepts it. */
export interface ExtPluginConf {
  conf: { name: string; value: string }[];
  allow_degradation: boolean;
}

export interface UpstreamNode {
  host: string;
  port: number;
  weight: number;
}

export interface Upstream {
  type: string;
  nodes: UpstreamNode[];
  scheme: 'http' | 'https';
  passHost: 'pass' | 'node' | 'rewrite';
  upstreamHost: string | null;
  /** Seconds, as in APISIX. */
  timeout: { connect: number; send: number; read: number };
}

export interface Route {
  id: string;
  /** Exact URIs, and prefixes (the part before a trailing `*`). */
  exactUris: string[];
  prefixUris: string[];
  methods: string[] | null;
  hosts: string[] | null;
  priority: number;
  plugins: Partial<Record<ExtPluginPhase, ExtPluginConf>>;
  /** APISIX's http-logger on this route, if any. */
  httpLogger: HttpLoggerConf | null;
  upstream: Upstream;
  /** Changes whenever the file is reloaded with a change: part of the conf-token key. */
  confVersion: number;
  /** Position in the file: the last tie-breaker. */
  order: number;
}

export class RouteConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RouteConfigError';
  }
}

/** Methods APISIX's route schema accepts. */
const ROUTE_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'CONNECT', 'TRACE', 'PURGE'];
const DEFAULT_TIMEOUT_SECONDS = 60;

type Obj = Record<string, unknown>;
const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Standalone mode ignores a file that does not end with `#END` (it may be half written). */
export function hasEndMarker(text: string): boolean {
  const lines = text.trimEnd().split(/\r?\n/);
  return lines[lines.length - 1]?.trim() === '#END';
}

/** Plugins the stand-in implements besides the ext-plugin phases. */
export const OTHER_PLUGINS = ['http-logger'] as const;

export interface ParseRoutesOptions {
  /**
   * config.yaml's `plugins` list, when it has one. APISIX skips a route's
   * plugin that is not listed there without a word (a logger then never
   * logs); the stand-in refuses such a route instead.
   */
  enabledPlugins?: readonly string[] | null;
  /**
   * The environment `${{NAME}}` and `${{NAME:=default}}` are resolved from:
   * APISIX's workers see only what nginx_config.envs lets through (see
   * runnerEnvironment). Default: none, so only defaults apply.
   */
  env?: Readonly<Record<string, string | undefined>>;
}

export function loadRoutesFile(path: string, confVersion = 1, options: ParseRoutesOptions = {}): Route[] {
  return parseRoutes(readFileSync(path, 'utf8'), confVersion, path, options);
}

/** Parses and validates an `apisix.yaml`; throws RouteConfigError naming the first problem. */
export function parseRoutes(text: string, confVersion = 1, source = 'apisix.yaml', options: ParseRoutesOptions = {}): Route[] {
  const enabled = options.enabledPlugins ?? null;
  if (!hasEndMarker(text)) throw new RouteConfigError(`${source}: the last line must be "#END"`);
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new RouteConfigError(`${source}: invalid YAML: ${(err as Error).message}`);
  }
  if (doc === null || doc === undefined) return [];
  if (!isObject(doc)) throw new RouteConfigError(`${source}: expected a mapping at the top level`);
  try {
    doc = resolveConfVars(doc, options.env ?? {}) as Obj;
  } catch (err) {
    throw new RouteConfigError(`${source}: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw new RouteConfigError(`${source}: expected a mapping at the top level`);

  const upstreams = new Map<string, Upstream>();
  const rawUpstreams = doc.upstreams ?? [];
  if (!Array.isArray(rawUpstreams)) throw new RouteConfigError(`${source}: "upstreams" must be a list`);
  rawUpstreams.forEach((raw, i) => {
    const where = `${source}: upstreams[${i}]`;
    if (!isObject(raw)) throw new RouteConfigError(`${where} must be a mapping`);
    const id = idOf(raw.id, where);
    upstreams.set(id, parseUpstream(raw, where));
  });

  const rawRoutes = doc.routes ?? [];
  if (!Array.isArray(rawRoutes)) throw new RouteConfigError(`${source}: "routes" must be a list`);
  const seen = new Set<string>();
  return rawRoutes.map((raw, order) => {
    let where = `${source}: routes[${order}]`;
    if (!isObject(raw)) throw new RouteConfigError(`${where} must be a mapping`);
    // The route id is part of APISIX's conf-token key, so the stand-in requires it.
    const id = idOf(raw.id, where);
    where = `${source}: route "${id}"`;
    if (seen.has(id)) throw new RouteConfigError(`${where}: duplicate id`);
    seen.add(id);

    const uris = raw.uris !== undefined ? raw.uris : raw.uri !== undefined ? [raw.uri] : undefined;
    if (!Array.isArray(uris) || uris.length === 0 || !uris.every((u) => typeof u === 'string' && u.startsWith('/'))) {
      throw new RouteConfigError(`${where}: needs "uri" or "uris" with paths starting with "/"`);
    }
    const exactUris: string[] = [];
    const prefixUris: string[] = [];
    for (const uri of uris as string[]) {
      if (uri.endsWith('*')) prefixUris.push(uri.slice(0, -1));
      else exactUris.push(uri);
    }

    let methods: string[] | null = null;
    if (raw.methods !== undefined) {
      if (!Array.isArray(raw.methods) || raw.methods.some((m) => typeof m !== 'string' || !ROUTE_METHODS.includes(m))) {
        throw new RouteConfigError(`${where}: "methods" must list some of ${ROUTE_METHODS.join(', ')}`);
      }
      methods = raw.methods as string[];
    }

    let hosts: string[] | null = null;
    const rawHosts = raw.hosts !== undefined ? raw.hosts : raw.host !== undefined ? [raw.host] : undefined;
    if (rawHosts !== undefined) {
      if (!Array.isArray(rawHosts) || rawHosts.some((h) => typeof h !== 'string' || h === '')) {
        throw new RouteConfigError(`${where}: "host"/"hosts" must be non-empty strings`);
      }
      hosts = (rawHosts as string[]).map((h) => h.toLowerCase());
    }

    const priority = raw.priority ?? 0;
    if (!Number.isInteger(priority)) throw new RouteConfigError(`${where}: "priority" must be an integer`);

    const plugins: Route['plugins'] = {};
    let httpLogger: HttpLoggerConf | null = null;
    if (raw.plugins !== undefined) {
      if (!isObject(raw.plugins)) throw new RouteConfigError(`${where}: "plugins" must be a mapping`);
      for (const [name, conf] of Object.entries(raw.plugins)) {
        const isPhase = (EXT_PLUGIN_PHASES as readonly string[]).includes(name);
        if (!isPhase && !(OTHER_PLUGINS as readonly string[]).includes(name)) {
          // Silently ignoring a plugin (an auth plugin, say) would let requests through that
          // APISIX would refuse: refuse the route instead.
          throw new RouteConfigError(`${where}: plugin "${name}" is not supported by the APISIX stand-in`);
        }
        if (enabled && !enabled.includes(name)) {
          throw new RouteConfigError(`${where}: plugin "${name}" is not in config.yaml's plugins list (APISIX would skip it silently)`);
        }
        if (isPhase) {
          plugins[name as ExtPluginPhase] = parseExtPluginConf(conf, `${where}: ${name}`);
          continue;
        }
        try {
          httpLogger = parseHttpLoggerConf(conf);
        } catch (err) {
          throw new RouteConfigError(`${where}: ${name}: ${(err as Error).message}`);
        }
      }
    }

    let upstream: Upstream;
    if (raw.upstream !== undefined) {
      if (!isObject(raw.upstream)) throw new RouteConfigError(`${where}: "upstream" must be a mapping`);
      upstream = parseUpstream(raw.upstream, `${where}: upstream`);
    } else if (raw.upstream_id !== undefined) {
      const ref = idOf(raw.upstream_id, `${where}: upstream_id`);
      const found = upstreams.get(ref);
      if (!found) throw new RouteConfigError(`${where}: upstream_id "${ref}" is not in "upstreams"`);
      upstream = found;
    } else {
      throw new RouteConfigError(`${where}: needs "upstream" or "upstream_id"`);
    }

    return { id, exactUris, prefixUris, methods, hosts, priority: priority as number, plugins, httpLogger, upstream, confVersion, order };
  });
}

function idOf(raw: unknown, where: string): string {
  if ((typeof raw === 'string' && raw !== '') || (typeof raw === 'number' && Number.isInteger(raw))) return String(raw);
  throw new RouteConfigError(`${where}: needs an "id" (string or integer)`);
}

/** The schema APISIX's ext-plugin-* plugins declare. */
export function parseExtPluginConf(raw: unknown, where: string): ExtPluginConf {
  if (!isObject(raw)) throw new RouteConfigError(`${where}: must be a mapping`);
  for (const key of Object.keys(raw)) {
    if (key !== 'conf' && key !== 'allow_degradation' && key !== '_meta') {
      // APISIX's schema does not forbid other keys; flagging them catches typos like "allow_degredation".
      throw new RouteConfigError(`${where}: unknown property "${key}"`);
    }
  }
  const conf = raw.conf;
  if (!Array.isArray(conf) || conf.length < 1) throw new RouteConfigError(`${where}: "conf" needs at least one entry`);
  const entries = conf.map((entry, i) => {
    if (!isObject(entry)) throw new RouteConfigError(`${where}: conf[${i}] must be a mapping`);
    const { name, value } = entry;
    if (typeof name !== 'string' || name.length < 1 || name.length > 128) {
      throw new RouteConfigError(`${where}: conf[${i}].name must be a string of 1 to 128 characters`);
    }
    if (typeof value !== 'string') {
      throw new RouteConfigError(`${where}: conf[${i}].value must be a string (the plugin's JSON conf)`);
    }
    return { name, value };
  });
  const degrade = raw.allow_degradation ?? false;
  if (typeof degrade !== 'boolean') throw new RouteConfigError(`${where}: "allow_degradation" must be a boolean`);
  return { conf: entries, allow_degradation: degrade };
}

function parseUpstream(raw: Obj, where: string): Upstream {
  const type = raw.type ?? 'roundrobin';
  if (typeof type !== 'string') throw new RouteConfigError(`${where}: "type" must be a string`);
  const nodes: UpstreamNode[] = [];
  if (isObject(raw.nodes)) {
    for (const [address, weight] of Object.entries(raw.nodes)) {
      const match = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(address);
      if (!match) throw new RouteConfigError(`${where}: bad node address "${address}"`);
      if (!Number.isInteger(weight) || (weight as number) < 0) {
        throw new RouteConfigError(`${where}: node "${address}" needs an integer weight >= 0`);
      }
      nodes.push({ host: match[1]!.replace(/^\[|\]$/g, ''), port: match[2] ? Number(match[2]) : 0, weight: weight as number });
    }
  } else if (Array.isArray(raw.nodes)) {
    raw.nodes.forEach((node, i) => {
      if (!isObject(node) || typeof node.host !== 'string' || !Number.isInteger(node.weight ?? 1)) {
        throw new RouteConfigError(`${where}: nodes[${i}] needs "host" and an integer "weight"`);
      }
      nodes.push({ host: node.host, port: Number(node.port ?? 0), weight: Number(node.weight ?? 1) });
    });
  } else {
    throw new RouteConfigError(`${where}: "nodes" must map "host:port" to a weight`);
  }
  if (nodes.length === 0) throw new RouteConfigError(`${where}: "nodes" is empty`);

  const scheme = raw.scheme ?? 'http';
  if (scheme !== 'http' && scheme !== 'https') {
    throw new RouteConfigError(`${where}: scheme "${String(scheme)}" is not supported by the stand-in (http, https)`);
  }
  for (const node of nodes) if (node.port === 0) node.port = scheme === 'https' ? 443 : 80;

  const passHost = raw.pass_host ?? 'pass';
  if (passHost !== 'pass' && passHost !== 'node' && passHost !== 'rewrite') {
    throw new RouteConfigError(`${where}: "pass_host" must be pass, node or rewrite`);
  }
  const upstreamHost = raw.upstream_host === undefined ? null : String(raw.upstream_host);
  if (passHost === 'rewrite' && !upstreamHost) {
    throw new RouteConfigError(`${where}: pass_host "rewrite" needs "upstream_host"`);
  }

  const timeout = { connect: DEFAULT_TIMEOUT_SECONDS, send: DEFAULT_TIMEOUT_SECONDS, read: DEFAULT_TIMEOUT_SECONDS };
  if (raw.timeout !== undefined) {
    if (!isObject(raw.timeout)) throw new RouteConfigError(`${where}: "timeout" must be a mapping`);
    for (const key of ['connect', 'send', 'read'] as const) {
      const value = raw.timeout[key];
      if (value === undefined) continue;
      if (typeof value !== 'number' || !(value > 0)) throw new RouteConfigError(`${where}: timeout.${key} must be > 0 seconds`);
      timeout[key] = value;
    }
  }
  return { type, nodes, scheme, passHost, upstreamHost, timeout };
}

export interface RouteQuery {
  method: string;
  /** nginx's `$host`: the Host header without port, lower-cased. */
  host: string;
  /** The decoded, normalised path (`$uri`). */
  path: string;
}

function hostMatches(pattern: string, host: string): boolean {
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
  return pattern === host;
}

/**
 * Picks the route APISIX would: routes with a matching `host` before
 * host-less ones (radixtree_host_uri); then an exact URI before any prefix,
 * a longer prefix before a shorter one, a higher `priority` first, file
 * order last. A route whose methods do not fit is passed over.
 */
export function matchRoute(routes: readonly Route[], query: RouteQuery): Route | null {
  type Candidate = { route: Route; hostSpecific: boolean; exact: boolean; prefixLength: number };
  const candidates: Candidate[] = [];
  for (const route of routes) {
    if (route.methods && !route.methods.includes(query.method)) continue;
    if (route.hosts && !route.hosts.some((h) => hostMatches(h, query.host))) continue;
    const hostSpecific = route.hosts !== null;
    if (route.exactUris.includes(query.path)) {
      candidates.push({ route, hostSpecific, exact: true, prefixLength: query.path.length });
      continue;
    }
    let longest = -1;
    for (const prefix of route.prefixUris) {
      if (query.path.startsWith(prefix) && prefix.length > longest) longest = prefix.length;
    }
    if (longest >= 0) candidates.push({ route, hostSpecific, exact: false, prefixLength: longest });
  }
  candidates.sort(
    (a, b) =>
      Number(b.hostSpecific) - Number(a.hostSpecific) ||
      Number(b.exact) - Number(a.exact) ||
      b.prefixLength - a.prefixLength ||
      b.route.priority - a.route.priority ||
      a.route.order - b.route.order,
  );
  return candidates[0]?.route ?? null;
}
