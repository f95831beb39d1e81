// `vault`: injects a credential held in Vault (KV v2) into the upstream
// request, so callers (the RAG application) never hold LLM keys. The path may
// name the caller's project, so each project can have its own key:
//
//   {"mount": "secret", "path": "llm/{project}", "field": "api_key",
//    "header": "authorization", "format": "Bearer {value}"}
//
// Whatever credential the client sent is removed first. The secret never
// enters logs, errors, metrics or policy input (this plugin runs after opa).
import { ConfError, unavailablePlugin, type Plugin } from '../api/plugin.js';
import { jsonConfParser } from '../api/json-conf.js';
import { identitySlot } from '../api/slots.js';
import { isValidPolicyName } from '../../policy/store/names.js';
import { SecretCache, SecretUnavailableError } from './secret-cache.js';
import type { VaultSession } from './session.js';
import type { VaultPathTemplate } from './config.js';

export interface VaultConf {
  mount: string;
  path: string;
  field: string;
  header: string;
  format: string;
  strip_headers: string[];
}

/** Client credentials that never go past the gateway on a route with this plugin (each one in http/credentials' list). */
export const ALWAYS_STRIPPED = ['authorization', 'proxy-authorization', 'api-key', 'x-api-key'];

const schema = {
  type: 'object',
  additionalProperties: false,
  required: ['path', 'field'],
  properties: {
    mount: { type: 'string', pattern: '^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$', default: 'secret' },
    // Segments of letters, digits, _ and -, or the {project} placeholder.
    path: { type: 'string', pattern: '^([A-Za-z0-9_-]+|\\{project\\})(/([A-Za-z0-9_-]+|\\{project\\}))*$' },
    field: { type: 'string', minLength: 1 },
    header: { type: 'string', pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", default: 'authorization' },
    format: { type: 'string', pattern: '\\{value\\}', default: 'Bearer {value}' },
    strip_headers: { type: 'array', items: { type: 'string', minLength: 1 }, default: [] },
  },
};

export interface VaultEvents {
  secret(event: 'hit' | 'miss' | 'refresh' | 'stale' | 'refresh-failed' | 'unavailable'): void;
}

export interface VaultPluginDeps {
  session: VaultSession | null;
  ttlMs: number;
  maxStalenessMs: number;
  events?: VaultEvents;
  configError?: string;
  /** What confs may name (VAULT_ALLOWED_PATHS); everything else is refused at PrepareConf. */
  allowedPaths: VaultPathTemplate[];
}

/** Without a session (VAULT_ADDR unset), routes naming `vault` fail at PrepareConf. */
export function createVaultPlugin(deps: VaultPluginDeps): Plugin<VaultConf> & { cache: SecretCache<Record<string, unknown>> | null } {
  const session = deps.session;
  if (!session) return { ...unavailablePlugin('vault', `Vault is not configured (${deps.configError ?? 'VAULT_ADDR unset'})`), cache: null };
  const cache = new SecretCache<Record<string, unknown>>({
    fetch: (key) => {
      const [mount, path] = JSON.parse(key) as [string, string];
      return session.readKv2(mount, path);
    },
    ttlMs: deps.ttlMs,
    maxStalenessMs: deps.maxStalenessMs,
    onEvent: (event) => deps.events?.secret(event),
  });
  const parse = jsonConfParser<VaultConf>('vault', schema);

  return {
    name: 'vault',
    cache,
    parseConf(raw) {
      const conf = parse(raw);
      if (!deps.allowedPaths.some((allowed) => allowed.mount === conf.mount && allowed.path === conf.path)) {
        throw new ConfError(`vault: ${conf.mount}:${conf.path} is not in VAULT_ALLOWED_PATHS`);
      }
      conf.header = conf.header.toLowerCase();
      conf.strip_headers = conf.strip_headers.map((h) => h.toLowerCase());
      return conf;
    },

    // What it strips and what it injects: never policy input, never logged.
    credentialHeaders(conf) {
      return [...ALWAYS_STRIPPED, conf.header, ...conf.strip_headers];
    },

    async requestFilter(conf, request, response, ctx) {
      for (const name of new Set([...ALWAYS_STRIPPED, conf.header, ...conf.strip_headers])) request.headers.delete(name);

      let path = conf.path;
      if (path.includes('{project}')) {
        const project = identitySlot.get(ctx)?.project ?? null;
        // The claim is checked again here: it becomes part of a Vault path.
        if (!project || !isValidPolicyName(project)) {
          response.problem(403, 'the caller has no project');
          return;
        }
        path = path.replaceAll('{project}', project);
      }

      const key = JSON.stringify([conf.mount, path]);
      // The path as configured ({project} unresolved) and whether the cache had it: never the secret.
      ctx.trace?.attributes({
        'gatehouse.vault.mount': conf.mount,
        'gatehouse.vault.path_template': conf.path,
        'gatehouse.vault.cache_hit': cache.isFresh(key),
      });
      let secret: Record<string, unknown>;
      try {
        secret = await cache.get(key);
      } catch (error) {
        if (!(error instanceof SecretUnavailableError)) throw error;
        const cause = error.cause as { message?: string; status?: number | null } | undefined;
        ctx.log.error(
          { mount: conf.mount, path, reason: error.message, vaultStatus: cause?.status ?? null, vaultError: cause?.message },
          'credential unavailable; refusing the request',
        );
        response.problem(503, 'the upstream credential is unavailable');
        response.headers.set('retry-after', '5');
        return;
      }
      const value = secret[conf.field];
      if (typeof value !== 'string' || value === '') {
        ctx.log.error({ mount: conf.mount, path, field: conf.field }, 'the Vault secret has no such string field');
        response.problem(503, 'the upstream credential is unavailable');
        return;
      }
      request.headers.set(conf.header, conf.format.replaceAll('{value}', value));
    },
  };
}
