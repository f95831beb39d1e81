// The parts of APISIX's `config.yaml` the stand-in honours: the proxy port,
// how the plugin runner is started (`ext-plugin.cmd` / `path_for_test`),
// which environment variables reach it (`nginx_config.envs`) and which
// plugins routes may use (`plugins`).
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

export interface GatewayConfig {
  nodeListen: number | null;
  /** argv of the runner; null when config.yaml has none. */
  runnerCmd: string[] | null;
  /** `ext-plugin.path_for_test`: connect to a runner started by hand instead of spawning one. */
  pathForTest: string | null;
  /** `nginx_config.envs`: `NAME` passes the variable through, `NAME=value` sets it. */
  envs: string[];
  /**
   * https upstreams: whether their certificates are verified (nginx's
   * `proxy_ssl_verify on`, from nginx_config.http_server_configuration_snippet),
   * and against which bundle (`apisix.ssl.ssl_trusted_certificate`; the
   * system's roots when absent).
   */
  upstreamTls: { verify: boolean; trustedCertificate: string | null };
  /** `plugins`: the plugins APISIX loads; null when config.yaml has no list (APISIX's default list then applies). */
  plugins: string[] | null;
}

export class GatewayConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GatewayConfigError';
  }
}

type Obj = Record<string, unknown>;
const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

export function loadGatewayConfig(path: string): GatewayConfig {
  return parseGatewayConfig(readFileSync(path, 'utf8'), path);
}

export function parseGatewayConfig(text: string, source = 'config.yaml'): GatewayConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text) ?? {};
  } catch (err) {
    throw new GatewayConfigError(`${source}: invalid YAML: ${(err as Error).message}`);
  }
  if (!isObject(doc)) throw new GatewayConfigError(`${source}: expected a mapping at the top level`);

  let nodeListen: number | null = null;
  const apisix = doc.apisix;
  if (isObject(apisix) && apisix.node_listen !== undefined) {
    const listen = Array.isArray(apisix.node_listen) ? apisix.node_listen[0] : apisix.node_listen;
    const port = isObject(listen) ? listen.port : listen;
    if (!Number.isInteger(port)) throw new GatewayConfigError(`${source}: apisix.node_listen must be a port`);
    nodeListen = port as number;
  }

  let runnerCmd: string[] | null = null;
  let pathForTest: string | null = null;
  const ext = doc['ext-plugin'];
  if (ext !== undefined && ext !== null) {
    if (!isObject(ext)) throw new GatewayConfigError(`${source}: "ext-plugin" must be a mapping`);
    if (ext.cmd !== undefined) {
      if (!Array.isArray(ext.cmd) || ext.cmd.length === 0 || ext.cmd.some((a) => typeof a !== 'string')) {
        throw new GatewayConfigError(`${source}: ext-plugin.cmd must be a non-empty list of strings`);
      }
      runnerCmd = ext.cmd as string[];
    }
    if (ext.path_for_test !== undefined) {
      if (typeof ext.path_for_test !== 'string' || ext.path_for_test.startsWith('unix:')) {
        throw new GatewayConfigError(`${source}: ext-plugin.path_for_test must be a socket path (without "unix:")`);
      }
      pathForTest = ext.path_for_test;
    }
  }

  let envs: string[] = [];
  const nginx = doc.nginx_config;
  if (isObject(nginx) && nginx.envs !== undefined) {
    if (!Array.isArray(nginx.envs) || nginx.envs.some((e) => typeof e !== 'string' || e === '')) {
      throw new GatewayConfigError(`${source}: nginx_config.envs must be a list of variable names`);
    }
    envs = nginx.envs as string[];
  }
  const snippet = isObject(nginx) && typeof nginx.http_server_configuration_snippet === 'string' ? nginx.http_server_configuration_snippet : '';
  const ssl = isObject(apisix) && isObject(apisix.ssl) ? apisix.ssl : {};
  const upstreamTls = {
    verify: /(^|;|\n)\s*proxy_ssl_verify\s+on\s*;/.test(snippet),
    trustedCertificate: typeof ssl.ssl_trusted_certificate === 'string' ? ssl.ssl_trusted_certificate : null,
  };
  let plugins: string[] | null = null;
  if (doc.plugins !== undefined && doc.plugins !== null) {
    if (!Array.isArray(doc.plugins) || doc.plugins.some((p) => typeof p !== 'string')) {
      throw new GatewayConfigError(`${source}: "plugins" must be a list of plugin names`);
    }
    plugins = doc.plugins as string[];
  }
  return { nodeListen, runnerCmd, pathForTest, envs, upstreamTls, plugins };
}

/**
 * Variables nginx keeps for the processes it starts: only those declared
 * with `env` (from `nginx_config.envs`), plus `TZ` (nginx keeps it by default)
 * and `PATH` (APISIX declares it so the runner's binary can be found).
 */
export function runnerEnvironment(
  envs: readonly string[],
  parent: NodeJS.ProcessEnv,
  fixed: Record<string, string>,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of ['PATH', 'TZ']) {
    const value = parent[name];
    if (value !== undefined) out[name] = value;
  }
  for (const entry of envs) {
    const eq = entry.indexOf('=');
    if (eq > 0) {
      out[entry.slice(0, eq)] = entry.slice(eq + 1);
    } else {
      const value = parent[entry];
      if (value !== undefined) out[entry] = value;
    }
  }
  return { ...out, ...fixed };
}

/** Relative paths in `ext-plugin.cmd` are taken from the repository root (APISIX would use its prefix). */
export function resolveRunnerCmd(cmd: readonly string[], root: string): string[] {
  return cmd.map((arg, i) => {
    if (i === 0 && !arg.includes('/')) return arg; // a program looked up on PATH, e.g. "node"
    if (isAbsolute(arg) || arg.startsWith('-') || !/[/.]/.test(arg)) return arg;
    return resolve(root, arg);
  });
}
