// gatehouse routes export|diff|apply against the real APISIX Admin API
// (traditional mode on a real etcd), with the repository's real routes file.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { runCli } from '../../cli/routes/command.js';
import type { CliIo } from '../../cli/io.js';
import { parseRoutesFile } from '../../cli/routes/routes-file.js';
import { repoRoot } from '../support/runner-process.js';
import { startAdminApi, type AdminApi } from '../deploy/apisix-admin-api.js';

const routesPath = join(repoRoot, 'apisix-conf', 'apisix.yaml');
const routesText = () => readFileSync(routesPath, 'utf8');
type Doc = { routes: Record<string, any>[]; upstreams: Record<string, any>[] };
const repoDoc = () => parse(routesText()) as Doc;

let admin: AdminApi;
let dir: string;

beforeAll(async () => {
  admin = await startAdminApi();
}, 60_000);
afterAll(async () => {
  await admin?.close();
});
beforeEach(async () => {
  await admin?.reset();
  dir = mkdtempSync(join(tmpdir(), 'gh-routes-'));
});

async function cli(args: string[], options: { key?: string | null; confirm?: CliIo['confirm']; env?: NodeJS.ProcessEnv } = {}) {
  let out = '';
  let err = '';
  // Export and validation need no Admin API (nothing is sent to this address).
  const env: NodeJS.ProcessEnv = { ...options.env, ADMIN_API_URL: admin?.url ?? 'http://127.0.0.1:1' };
  if (options.key !== null) env.ADMIN_API_KEY = options.key ?? admin?.key ?? 'unused';
  const code = await runCli(args, {
    env,
    out: (text) => (out += text),
    err: (text) => (err += text),
    ...(options.confirm ? { confirm: options.confirm } : {}),
  });
  return { code, out, err };
}

function writeVariant(mutate: (doc: Doc) => void): string {
  const doc = repoDoc();
  mutate(doc);
  const path = join(dir, `apisix-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(path, `${stringify(doc)}#END\n`);
  return path;
}

const puts = () => admin.requests.filter((r) => r.method === 'PUT');

/** The ext-plugin-* rules of the reference, checked independently of the CLI's own validator. */
function checkExtPluginRules(route: Record<string, any>) {
  for (const [name, conf] of Object.entries((route.plugins ?? {}) as Record<string, any>)) {
    if (!name.startsWith('ext-plugin-')) continue;
    expect(Array.isArray(conf.conf) && conf.conf.length).toBeGreaterThanOrEqual(1);
    for (const entry of conf.conf) {
      expect(typeof entry.name).toBe('string');
      expect(entry.name.length).toBeGreaterThanOrEqual(1);
      expect(entry.name.length).toBeLessThanOrEqual(128);
      expect(typeof entry.value).toBe('string');
    }
    if ('allow_degradation' in conf) expect(typeof conf.allow_degradation).toBe('boolean');
  }
}

describe('gatehouse routes export', () => {
  it('prints a standalone file with every route and upstream of apisix.yaml, #END last, that standalone mode accepts', async () => {
    const { code, out } = await cli(['routes', 'export'], { key: null });
    expect(code).toBe(0);
    expect(out.trimEnd().split('\n').pop()).toBe('#END');
    const doc = repoDoc();
    const exported = parse(out) as Doc;
    expect(exported.routes.map((r) => r.id)).toEqual(doc.routes.map((r) => r.id));
    expect(exported.upstreams.map((u) => u.id)).toEqual(doc.upstreams.map((u) => u.id));
    expect(exported).toEqual({ routes: doc.routes, upstreams: doc.upstreams });
  });

  it('writes to --out, and the compiled bin does the same', async () => {
    const out = join(dir, 'exported.yaml');
    expect((await cli(['routes', 'export', '--out', out], { key: null })).code).toBe(0);
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { bin: Record<string, string> };
    expect(pkg.bin.gatehouse).toBe('dist/cli/main.js');
    const fromBin = execFileSync(process.execPath, [join(repoRoot, pkg.bin.gatehouse!), 'routes', 'export'], { encoding: 'utf8' });
    expect(fromBin).toBe(readFileSync(out, 'utf8'));
  });
});

describe('payload validation before anything is sent', () => {
  const broken: [string, (doc: Doc) => void, RegExp][] = [
    ['an ext-plugin conf with no entry', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].conf = []), /conf.*(fewer than 1|must NOT have fewer)/],
    ['a runner plugin name of 129 characters', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].conf[0].name = 'x'.repeat(129)), /name.*more than 128/],
    ['an empty runner plugin name', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].conf[0].name = ''), /name.*fewer than 1/],
    ['a conf value that is not a string', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].conf[0].value = { policies: [] }), /value.*string/],
    ['allow_degradation that is not a boolean', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].allow_degradation = 'no'), /allow_degradation.*boolean/],
    ['a misspelt allow_degradation', (d) => (d.routes[0]!.plugins['ext-plugin-pre-req'].allow_degredation = true), /unknown property "allow_degredation"/],
    [
      'a route without uri or uris',
      (d) => {
        delete d.routes[0]!.uri;
        delete d.routes[0]!.uris;
      },
      /uri/,
    ],
    [
      'a route with both uri and uris',
      (d) => {
        d.routes[0]!.uri = '/x';
        d.routes[0]!.uris = ['/y'];
      },
      /exactly one of "uri"\/"uris"/,
    ],
    ['a method APISIX does not know', (d) => (d.routes[0]!.methods = ['GET', 'FETCH']), /methods.*must be one of/],
    ['a route without upstream or upstream_id', (d) => delete d.routes[0]!.upstream_id, /upstream/],
    ['an upstream_id missing from upstreams', (d) => (d.routes[0]!.upstream_id = 'nowhere'), /upstream_id "nowhere" is not in "upstreams"/],
    ['an upstream without nodes', (d) => delete d.upstreams[0]!.nodes, /nodes/],
    ['an upstream node weight that is not an integer', (d) => (d.upstreams[0]!.nodes = { '127.0.0.1:1': 'heavy' }), /nodes/],
    ['an id APISIX refuses', (d) => (d.routes[0]!.id = 'has space'), /"id" must be/],
  ];

  it("the repository's routes file passes every rule", () => {
    const file = parseRoutesFile(routesText());
    expect(file.routes.length).toBe(repoDoc().routes.length);
    for (const route of file.routes) checkExtPluginRules(route.body);
  });

  it.each(broken)('refuses %s, and sends nothing', async (_name, mutate, message) => {
    const path = writeVariant(mutate);
    const result = await cli(['routes', 'apply', '--yes', '--file', path]);
    expect(result.code).toBe(1);
    expect(result.err).toMatch(message);
    expect(admin?.requests ?? []).toHaveLength(0);
  });

  it('refuses a routes file without #END', async () => {
    const path = join(dir, 'no-end.yaml');
    writeFileSync(path, routesText().replace(/#END\s*$/, ''));
    const result = await cli(['routes', 'export', '--file', path], { key: null });
    expect(result.code).toBe(1);
    expect(result.err).toMatch(/#END/);
  });
});

describe('gatehouse routes diff and apply against the Admin API', () => {
  it('creates upstreams before routes with X-API-KEY, every payload valid, each answered 201', async () => {
    const doc = repoDoc();
    const result = await cli(['routes', 'apply', '--yes']);
    expect(result.code, result.err).toBe(0);
    const sent = puts();
    expect(sent.map((r) => r.path)).toEqual([
      ...doc.upstreams.map((u) => `/apisix/admin/upstreams/${u.id}`),
      ...doc.routes.map((r) => `/apisix/admin/routes/${r.id}`),
    ]);
    for (const request of admin.requests) expect(request.apiKey).toBe(admin.key);
    for (const request of sent.filter((r) => r.path.includes('/routes/'))) checkExtPluginRules(request.body as Record<string, any>);
    expect(result.out).toMatch(/\+ route cms: create/);
    expect(result.out.match(/-> 201/g)).toHaveLength(doc.upstreams.length + doc.routes.length);
    // The diff comes before the first PUT in the output.
    expect(result.out.indexOf('create')).toBeLessThan(result.out.indexOf('PUT '));
    // What APISIX stores is what the file says.
    const stored = await admin.stored('routes');
    for (const route of doc.routes) {
      const { id, ...body } = route;
      // ${{VAR:=default}} resolved as standalone APISIX resolves it (RUNNER_SETTLE_PORT is not set here).
      expect(stored.get(id)).toMatchObject(JSON.parse(JSON.stringify(body).replaceAll('${{RUNNER_SETTLE_PORT:=9092}}', '9092')));
    }
    expect(JSON.stringify(stored.get('llm'))).toContain('http://127.0.0.1:9092/budget/usage');
  });

  it('resolves ${{VAR}} from its environment, as standalone APISIX does; an unset one without a default is refused, nothing sent', async () => {
    const withPort = await runCli(['routes', 'apply', '--yes'], {
      env: { ADMIN_API_URL: admin.url, ADMIN_API_KEY: admin.key, RUNNER_SETTLE_PORT: '9555' },
      out: () => undefined,
      err: () => undefined,
    });
    expect(withPort).toBe(0);
    expect(JSON.stringify((await admin.stored('routes')).get('llm'))).toContain('http://127.0.0.1:9555/budget/usage');
    const before = admin.requests.length;
    const file = writeVariant((doc) => {
      doc.routes[0]!.desc = '${{GATEHOUSE_SURELY_UNSET}}';
    });
    const refused = await cli(['routes', 'apply', '--yes', '--allow-env', 'GATEHOUSE_SURELY_UNSET', '--file', file]);
    expect(refused.code).not.toBe(0);
    expect(refused.err).toMatch(/can't find environment variable GATEHOUSE_SURELY_UNSET/);
    expect(admin.requests.slice(before).filter((r) => r.method === 'PUT')).toHaveLength(0);
    // Back to the repository's file as the other tests expect it.
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
  });

  it('resolves no credential and no variable it was not allowed: refused, naming it, nothing sent, the value never printed', async () => {
    const vaultToken = `hvs.${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
    const env = { VAULT_TOKEN: vaultToken, GATEHOUSE_OTHER: 'other-value-31d7' };
    for (const reference of ['${{ADMIN_API_KEY}}', '${{VAULT_TOKEN}}', '${{VAULT_TOKEN:=fallback}}', 'Bearer ${{VAULT_TOKEN}}', '${{GATEHOUSE_OTHER}}']) {
      const name = /\{\{(\w+)/.exec(reference)![1]!;
      const file = writeVariant((doc) => {
        doc.routes[0]!.desc = reference;
      });
      admin.requests.length = 0;
      const refused = await cli(['routes', 'apply', '--yes', '--file', file], { env });
      expect(refused.code, reference).toBe(1);
      expect(refused.err).toContain(`\${{${name}}} is refused`);
      expect(refused.err).toMatch(name === 'GATEHOUSE_OTHER' ? /routes may use RUNNER_SETTLE_PORT \(--allow-env NAME adds one\)/ : /names a credential/);
      expect(admin.requests, reference).toHaveLength(0);
      for (const secret of [admin.key, vaultToken, 'other-value-31d7']) expect(refused.out + refused.err).not.toContain(secret);
    }
    expect((await admin.stored('routes')).size).toBe(0);
    // Nor can a credential be allowed by hand.
    for (const name of ['VAULT_TOKEN', 'ADMIN_API_KEY', 'ETCD_PASSWORD', 'VAULT_SECRET_ID']) {
      const allowed = await cli(['routes', 'diff', '--allow-env', name], { env });
      expect(allowed.code).toBe(2);
      expect(allowed.err).toContain(`--allow-env ${name}: a credential is never written into a route`);
    }
  });

  it('an allowed variable is resolved into what is sent, while the plan shows the reference as the file writes it', async () => {
    const file = writeVariant((doc) => {
      doc.routes[0]!.desc = 'owner ${{GATEHOUSE_ROUTE_OWNER}}';
    });
    const id = repoDoc().routes[0]!.id as string;
    const env = { GATEHOUSE_ROUTE_OWNER: 'owner-7f3a9c', RUNNER_SETTLE_PORT: '9777' };
    const created = await cli(['routes', 'apply', '--yes', '--allow-env', 'GATEHOUSE_ROUTE_OWNER', '--file', file], { env });
    expect(created.code, created.err).toBe(0);
    expect(created.out).toContain('"desc":"owner ${{GATEHOUSE_ROUTE_OWNER}}"');
    expect(created.out).toContain('${{RUNNER_SETTLE_PORT:=9092}}');
    expect(created.out).toContain('is shown as the file writes it');
    expect(created.out).not.toContain('owner-7f3a9c');
    expect(created.out).not.toContain('9777');
    const sent = puts().find((r) => r.path === `/apisix/admin/routes/${id}`)!.body as Record<string, unknown>;
    expect(sent.desc).toBe('owner owner-7f3a9c');
    expect(JSON.stringify((await admin.stored('routes')).get('llm'))).toContain('http://127.0.0.1:9777/budget/usage');
    // An update shows the file's side as written too.
    const changed = await cli(['routes', 'diff', '--allow-env', 'GATEHOUSE_ROUTE_OWNER', '--file', file], {
      env: { ...env, GATEHOUSE_ROUTE_OWNER: 'owner-new-55e1' },
    });
    expect(changed.code, changed.err).toBe(0);
    expect(changed.out).toContain('desc: "owner owner-7f3a9c" -> "owner ${{GATEHOUSE_ROUTE_OWNER}}"');
    expect(changed.out).not.toContain('owner-new-55e1');
  });

  it('a credential of its environment that APISIX stores (put there by hand) is printed as [NAME]', async () => {
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    const vaultToken = `hvs.${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
    const id = repoDoc().routes[0]!.id as string;
    const { create_time: _created, update_time: _updated, ...route } = (await admin.stored('routes')).get(id)!;
    await admin.put('routes', id, { ...route, desc: `token ${vaultToken} and key ${admin.key}` });
    const diff = await cli(['routes', 'diff'], { env: { VAULT_TOKEN: vaultToken } });
    expect(diff.code, diff.err).toBe(0);
    expect(diff.out).toContain('desc: "token [VAULT_TOKEN] and key [ADMIN_API_KEY]" -> (absent)');
    expect(diff.out).not.toContain(vaultToken);
    expect(diff.out).not.toContain(admin.key);
  });

  it('is idempotent: a second apply sends no PUT, although APISIX added ids, timestamps and defaults', async () => {
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    admin.requests.length = 0;
    const second = await cli(['routes', 'apply', '--yes']);
    expect(second.code).toBe(0);
    expect(puts()).toHaveLength(0);
    expect(second.out).toMatch(/already matches/);
    expect(second.out).not.toMatch(/[+~-] (route|upstream)/);
  });

  it('PUTs only what changed (200), and the diff names the field', async () => {
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    const target = repoDoc().routes[0]!;
    const path = writeVariant((d) => (d.routes[0]!.priority = 7));
    const diff = await cli(['routes', 'diff', '--file', path]);
    expect(diff.code).toBe(0);
    expect(diff.out).toContain(`~ route ${target.id}: update`);
    expect(diff.out).toContain('priority: 0 -> 7');
    admin.requests.length = 0;
    const applied = await cli(['routes', 'apply', '--yes', '--file', path]);
    expect(applied.code).toBe(0);
    expect(puts().map((r) => r.path)).toEqual([`/apisix/admin/routes/${target.id}`]);
    expect(applied.out).toContain(`PUT routes/${target.id} -> 200`);
    expect((await admin.stored('routes')).get(target.id)!.priority).toBe(7);
  });

  it('sees a change made by hand on APISIX, even in a field the file does not set', async () => {
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    const id = repoDoc().routes[1]!.id as string;
    const { create_time: _created, update_time: _updated, ...route } = (await admin.stored('routes')).get(id)!;
    await admin.put('routes', id, { ...route, host: 'sneaky.example' });
    const diff = await cli(['routes', 'diff']);
    expect(diff.out).toContain(`~ route ${id}: update`);
    expect(diff.out).toContain('host: "sneaky.example" -> (absent)');
    admin.requests.length = 0;
    await cli(['routes', 'apply', '--yes']);
    expect(puts().map((r) => r.path)).toEqual([`/apisix/admin/routes/${id}`]);
    expect((await admin.stored('routes')).get(id)!.host).toBeUndefined();
  });

  it('lists objects APISIX has and the file does not; --prune deletes them, routes before upstreams', async () => {
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    await admin.put('upstreams', 'old', { nodes: { '10.0.0.1:80': 1 } });
    await admin.put('routes', 'old', { uri: '/old', upstream_id: 'old' });
    const diff = await cli(['routes', 'diff']);
    expect(diff.out).toContain('- route old: on APISIX, not in the file (kept; --prune deletes it)');
    expect(diff.out).toContain('- upstream old: on APISIX, not in the file');
    admin.requests.length = 0;
    expect((await cli(['routes', 'apply', '--yes'])).code).toBe(0);
    expect((await admin.stored('routes')).has('old')).toBe(true);
    const pruned = await cli(['routes', 'apply', '--yes', '--prune']);
    expect(pruned.code, pruned.err).toBe(0);
    // The route goes first; APISIX may refuse the upstream's DELETE with "still using it" until its
    // worker has seen the route gone, and only that refusal is retried, so the upstream's may repeat.
    const deletes = admin.requests.filter((r) => r.method === 'DELETE').map((r) => r.path);
    expect(deletes[0]).toBe('/apisix/admin/routes/old');
    expect(deletes.slice(1).length).toBeGreaterThan(0);
    expect(new Set(deletes.slice(1))).toEqual(new Set(['/apisix/admin/upstreams/old']));
    expect((await admin.stored('routes')).has('old')).toBe(false);
    expect((await admin.stored('upstreams')).has('old')).toBe(false);
  });

  it('asks before applying: no terminal and no --yes, or a "no", applies nothing', async () => {
    const noTerminal = await cli(['routes', 'apply']);
    expect(noTerminal.code).toBe(3);
    expect(noTerminal.out).toMatch(/\+ route/);
    expect(puts()).toHaveLength(0);
    const questions: string[] = [];
    const declined = await cli(['routes', 'apply'], { confirm: async (q) => (questions.push(q), false) });
    expect(declined.code).toBe(3);
    expect(questions[0]).toMatch(/Apply \d+ change\(s\)/);
    expect(puts()).toHaveLength(0);
    const accepted = await cli(['routes', 'apply'], { confirm: async () => true });
    expect(accepted.code).toBe(0);
    expect(puts().length).toBe(repoDoc().routes.length + repoDoc().upstreams.length);
  });

  it('without the key, or with a wrong one, the Admin API answers 401 and nothing is written', async () => {
    const wrong = await cli(['routes', 'apply', '--yes'], { key: 'not-the-key' });
    expect(wrong.code).toBe(1);
    expect(wrong.err).toMatch(/401.*ADMIN_API_KEY/);
    expect((await admin.stored('routes')).size + (await admin.stored('upstreams')).size).toBe(0);
    const missing = await cli(['routes', 'diff'], { key: null });
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/ADMIN_API_KEY must be set/);
  });

  it('a diff never writes', async () => {
    await cli(['routes', 'diff']);
    expect(admin.requests.every((r) => r.method === 'GET')).toBe(true);
    expect((await admin.stored('routes')).size).toBe(0);
  });
});
