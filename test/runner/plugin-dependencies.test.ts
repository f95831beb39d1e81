// A plugin whose dependency this runner does not have (no token verifier,
// no etcd for budgets, no Vault, no compiled CMS access policy) refuses
// every conf naming it at PrepareConf, with the reason, and never runs.
import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { builtinPlugins, type PluginDependencies } from '../../plugins/runner/builtin.js';
import { ConfError, unavailablePlugin, type AnyPlugin, type CallContext } from '../../plugins/api/plugin.js';
import { GatewayRequest, StopResponse } from '../../plugins/api/http.js';
import { PolicySet } from '../../policy/watcher/policy-set.js';

const without: PluginDependencies = {
  verifier: null,
  policies: { current: () => PolicySet.empty, cmsAccess: null },
  decisions: { record: () => undefined },
  vault: { session: null, ttlMs: 60_000, maxStalenessMs: 300_000, allowedPaths: [] },
  budgets: null,
};

function byName(plugins: AnyPlugin[], name: string): AnyPlugin {
  const plugin = plugins.find((p) => p.name === name);
  if (!plugin) throw new Error(`no plugin ${name}`);
  return plugin;
}

function refusal(plugin: AnyPlugin, conf: object): string {
  try {
    plugin.parseConf(JSON.stringify(conf));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfError);
    return (err as Error).message;
  }
  throw new Error(`${plugin.name} accepted ${JSON.stringify(conf)}`);
}

describe('plugins without their dependencies', () => {
  const plugins = builtinPlugins(without);

  it('refuse every conf naming them, saying what is missing; an opa conf holds only what it uses', () => {
    expect(refusal(byName(plugins, 'jwt'), {})).toBe('jwt: token verification is not configured (JWT_* unset)');
    expect(refusal(byName(plugins, 'llm-budget'), {})).toBe('llm-budget: budgets are not available (ETCD_ENDPOINTS is not set)');
    expect(refusal(byName(plugins, 'vault'), { path: 'llm/{project}', field: 'api_key' })).toBe('vault: Vault is not configured (VAULT_ADDR unset)');
    expect(refusal(byName(plugins, 'opa'), { with_budget: true })).toBe('opa: with_budget needs budgets (ETCD_ENDPOINTS)');
    expect(refusal(byName(plugins, 'opa'), { policies: ['cms-access'] })).toBe('opa: the CMS access policy is not available (build it with npm run build)');
    // What does not need the missing part still works.
    expect(byName(plugins, 'opa').parseConf('{}')).toMatchObject({ policies: [{ kind: 'platform' }, { kind: 'caller-project' }], budgets: null });

    // The reasons the runner gives are kept.
    const given = builtinPlugins({
      ...without,
      verifierError: 'JWT_JWKS_FILE cannot be read',
      vault: { ...without.vault, configError: 'VAULT_ROLE_ID unset' },
    });
    expect(refusal(byName(given, 'jwt'), {})).toBe('jwt: token verification is not configured (JWT_JWKS_FILE cannot be read)');
    expect(refusal(byName(given, 'vault'), { path: 'llm/{project}', field: 'api_key' })).toBe('vault: Vault is not configured (VAULT_ROLE_ID unset)');
  });

  it('a stand-in that is run anyway fails the call rather than letting it through', async () => {
    const plugin = unavailablePlugin('jwt', 'token verification is not configured');
    expect(() => plugin.parseConf('{}')).toThrow(ConfError);
    const request = new GatewayRequest(
      { id: 1, method: 'GET', path: '/', srcIp: '127.0.0.1', headers: [], args: [] },
      { variable: () => Promise.resolve(null), requestBody: () => Promise.resolve(new Uint8Array()), responseBody: () => Promise.resolve(new Uint8Array()) },
    );
    const ctx: CallContext = { state: new Map(), log: pino({ level: 'silent' }) };
    expect(() => plugin.requestFilter(undefined as never, request, new StopResponse(), ctx)).toThrow(/token verification is not configured/);
  });
});
