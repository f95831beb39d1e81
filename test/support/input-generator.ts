// Deterministic pseudo-random policy inputs, shaped like the gateway's input
// document (plugins/opa/input.ts), for differential tests of the wasm engine
// against the real `opa`. No Math.random: the same seed gives the same inputs,
// so a failure reproduces from the seed printed with it.
//
// Values come from small pools that overlap the constants test policies use
// (roles, projects, models, limits, paths), so both sides of each rule are hit,
// mixed with edge cases: unicode, empty strings, null, wrong types, repeated
// headers and query parameters, bare query flags, numbers at the edges.
import type { PolicyInput } from '../../plugins/opa/input.js';

/** sfc32: a small, fast PRNG with a 128-bit state; the seed is expanded with splitmix32. */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    let s = seed >>> 0;
    const splitmix = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = splitmix();
    this.b = splitmix();
    this.c = splitmix();
    this.d = splitmix();
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  nextUint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.nextUint32() / 0x1_0000_0000;
  }

  /** Integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.floor(this.next() * items.length)] as T;
  }

  /** A random subset (in pool order) of the items. */
  subset<T>(items: readonly T[], p = 0.5): T[] {
    return items.filter(() => this.chance(p));
  }
}

/** The seed for a run: env DIFF_SEED (decimal or 0x hex) or the given default. */
export function seedFromEnv(fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.DIFF_SEED?.trim();
  if (!raw) return fallback >>> 0;
  const value = Number(raw);
  if (!Number.isSafeInteger(value)) throw new Error(`DIFF_SEED must be an integer, got ${JSON.stringify(raw)}`);
  return value >>> 0;
}

// ---- pools ---------------------------------------------------------------

export const ROLES = ['admin', 'viewer', 'editor', 'Admin', 'ADMIN', '', 'admin ', 'ädmin', 'auditor', 'root'] as const;
export const PROJECTS = ['alpha', 'beta', 'gamma', 'Alpha', '', 'ünïcode', 'proj-1', 'платформа'] as const;
const SUBS = [
  'alice',
  'bob',
  'carol@example.com',
  'dave@example.org',
  'eve@evil.example.com',
  'Mallory@Example.com',
  'svc:ci',
  'zoë@example.com',
  '用户',
  '',
  'root',
  'blocked-user',
  ' alice',
] as const;
const METHODS = ['GET', 'GET', 'POST', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'get'] as const;
const STATIC_PATHS = [
  '/',
  '',
  '/v1/chat/completions',
  '/v1/completions',
  '/v1/models',
  '/public/docs/index.html',
  '/public/',
  '/public/../admin',
  '/admin/users',
  '/admin/users/42',
  '/data/report.json',
  '/data/report.JSON',
  '/api/alpha/items/42',
  '/api/beta/items/1234567',
  '/api/gamma/items/x1',
  '/api/Alpha/items/7',
  '/api/ünïcode/items/1',
  '/api//items/5',
  '/api/alpha/items/42/',
  '/ök/✓/🙂',
  '/health',
  '/api/alpha/../beta/items/3',
] as const;
const LLM_PATHS = ['/v1/chat/completions', '/v1/chat/completions', '/v1/completions', '/v1/embeddings', '/v2/chat/completions'] as const;
const HOSTS = ['api.example.com', 'gateway.local', 'localhost', '127.0.0.1', 'EXAMPLE.com', 'xn--bcher-kva.example', ''] as const;
const REMOTE_ADDRS = ['10.0.0.5', '10.1.2.3', '192.168.1.20', '203.0.113.9', '::1', '2001:db8::1', '127.0.0.1'] as const;
const USER_AGENTS = ['curl/8.5.0', ' Mozilla/5.0 ', 'python-requests/2.32', 'gatehouse-test', '', 'bot 🤖'] as const;
const API_VERSIONS = ['2', 'v2', '2024-01-01', '2024-1-1', 'latest', '', '٣'] as const;
const CONTENT_TYPES = ['application/json', 'text/plain', 'application/vnd.api+json', 'multipart/form-data'] as const;
const LANGS = ['en-US', 'de-DE,de;q=0.9', 'zh-CN', 'fr'] as const;
const QUERY_STRINGS = ['1', '2', '0', '-3', '10', '99', '100', '101', 'abc', '1e3', '1.5', '', ' 5', '0x10', '007', '-0', '1000000', '1e400', '-0.5'] as const;
const TAGS = ['a', 'b', 'c', 'beta', 'x', 'ß', '', 'A'] as const;

export const MODELS = [
  'gpt-4o-mini',
  'gpt-4o-mini',
  'gpt-4o',
  'gpt-4o',
  'claude-3-haiku',
  'claude-3-haiku',
  'claude-3-opus',
  'llama-3-70b',
  'GPT-4O-MINI',
  'gpt-4o-mini ',
  '',
  'mistral-large',
] as const;

/** Numbers chosen around the limits the test policies use, plus edges of JSON/IEEE doubles. */
export const EDGE_NUMBERS = [
  0,
  1,
  -1,
  1.5,
  255,
  256,
  1024,
  4095,
  4096,
  4097,
  4096.0001,
  8192,
  8193,
  100000,
  1e21,
  2 ** 31,
  2 ** 31 - 1,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 53 + 2,
  1e-7,
  Number.MIN_VALUE,
  Number.MAX_VALUE,
  -(2 ** 53),
] as const;

const TIMESTAMPS = [0, -1, -86_399, 1_700_000_000, 1_735_689_600, 1_735_689_599, 1_767_225_600, 1_767_225_601, 2_000_000_000, -1, 1.5e9 + 0.5] as const;

// ---- builders ------------------------------------------------------------

function maybe<T>(rng: Prng, p: number, make: () => T): T | undefined {
  return rng.chance(p) ? make() : undefined;
}

function randomPath(rng: Prng): string {
  if (rng.chance(0.7)) return rng.pick(STATIC_PATHS);
  const depth = rng.int(0, 8);
  const segments: string[] = [];
  const parts = ['api', 'alpha', 'beta', 'items', String(rng.int(0, 1_000_000)), 'v1', 'chat', '..', 'ünï', 'A', '', 'public', 'x.json'];
  for (let i = 0; i < depth; i++) segments.push(rng.pick(parts));
  return '/' + segments.join('/');
}

function requestId(rng: Prng): string {
  const hex = '0123456789abcdef';
  let id = '';
  for (let i = 0; i < 16; i++) id += hex[rng.int(0, 15)];
  return id;
}

function randomHeaders(rng: Prng, project: string | null): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  if (rng.chance(0.8)) headers.host = rng.pick(HOSTS);
  if (rng.chance(0.7)) headers['x-request-id'] = rng.chance(0.9) ? requestId(rng) : '';
  if (rng.chance(0.6)) headers['content-type'] = rng.pick(CONTENT_TYPES);
  if (rng.chance(0.5)) headers['user-agent'] = rng.pick(USER_AGENTS);
  if (rng.chance(0.4)) headers['x-api-version'] = rng.chance(0.85) ? rng.pick(API_VERSIONS) : [rng.pick(API_VERSIONS), rng.pick(API_VERSIONS)];
  if (rng.chance(0.3)) headers['x-tenant'] = rng.chance(0.6) && project !== null ? project : rng.pick(PROJECTS);
  if (rng.chance(0.3)) headers['accept-language'] = rng.pick(LANGS);
  if (rng.chance(0.3)) {
    const hops = rng.int(1, 4);
    const values = Array.from({ length: hops }, () => rng.pick(REMOTE_ADDRS));
    headers['x-forwarded-for'] = values.length === 1 ? values[0]! : values;
  }
  if (rng.chance(0.08)) headers['x-debug'] = rng.pick(['1', 'true', '']);
  if (rng.chance(0.05)) headers['x-internal-token'] = requestId(rng); // a forbidden header
  return headers;
}

function queryValue(rng: Prng): string | true | (string | true)[] {
  const r = rng.next();
  if (r < 0.7) return rng.pick(QUERY_STRINGS);
  if (r < 0.8) return true;
  const n = rng.int(2, 3);
  return Array.from({ length: n }, () => (rng.chance(0.85) ? rng.pick(QUERY_STRINGS) : true));
}

function tagValue(rng: Prng): string | true | (string | true)[] {
  const r = rng.next();
  if (r < 0.5) return rng.pick(TAGS);
  if (r < 0.55) return true;
  const n = rng.int(2, 4);
  return Array.from({ length: n }, () => (rng.chance(0.9) ? rng.pick(TAGS) : true));
}

function randomQuery(rng: Prng): PolicyInput['request']['query'] {
  const query: PolicyInput['request']['query'] = {};
  if (rng.chance(0.4)) query.page = queryValue(rng);
  if (rng.chance(0.4)) query.limit = queryValue(rng);
  if (rng.chance(0.4)) query.tag = tagValue(rng);
  if (rng.chance(0.15)) query.debug = rng.chance(0.8) ? true : rng.pick(['1', 'yes', '']);
  if (rng.chance(0.1)) query['ünï'] = rng.pick(['✓', 'ö', '']);
  if (rng.chance(0.1)) query[''] = 'empty-name';
  return query;
}

function randomUser(rng: Prng, project: string | null): PolicyInput['user'] {
  if (rng.chance(0.12)) return null;
  const user: Record<string, unknown> = {
    sub: rng.pick(SUBS),
    role: rng.chance(0.9) ? rng.pick(ROLES) : null,
    project: rng.chance(0.7) ? project : rng.chance(0.5) ? rng.pick(PROJECTS) : null,
  };
  if (rng.chance(0.05)) delete user.role; // a token without the claim
  if (rng.chance(0.03)) user.sub = rng.pick([42, true, ['alice']]); // a claim of the wrong type
  if (rng.chance(0.3)) user.groups = rng.subset(['ops', 'dev', 'billing', 'ünï']);
  if (rng.chance(0.2)) user.email_verified = rng.chance(0.5);
  return user as PolicyInput['user'];
}

function randomMessages(rng: Prng): unknown[] {
  const n = rng.int(0, 4);
  const contents = ['hi', 'Explain OPA', '', 'ünïcödé ✓', 'x'.repeat(rng.int(0, 300))];
  return Array.from({ length: n }, () => ({ role: rng.pick(['user', 'system', 'assistant', 'tool']), content: rng.pick(contents) }));
}

/** An LLM request body (as the gateway parses JSON), or text, or something odd. */
function randomBody(rng: Prng): unknown {
  const r = rng.next();
  if (r < 0.05) return null; // too large, or not fetched
  if (r < 0.1) return rng.pick(['plain text body', '', '{"model": "gpt-4o"', 'ünïcode']); // text, or broken JSON
  if (r < 0.13) return rng.pick([[], [1, 2], 42, true]);
  const body: Record<string, unknown> = {};
  if (rng.chance(0.92)) {
    const m = rng.next();
    body.model = m < 0.88 ? rng.pick(MODELS) : m < 0.93 ? rng.pick([42, null, true]) : [rng.pick(MODELS)];
  }
  if (rng.chance(0.8)) {
    const t = rng.next();
    body.max_tokens = t < 0.85 ? rng.pick(EDGE_NUMBERS) : rng.pick(['100', null, true, [100]]);
  }
  if (rng.chance(0.6)) body.messages = randomMessages(rng);
  if (rng.chance(0.3)) body.stream = rng.chance(0.5);
  if (rng.chance(0.3)) body.temperature = rng.pick([0, 0.2, 0.7, 1, 1.5, 2, 2.5, -0.1]);
  return body;
}

export function randomInput(rng: Prng, timestampNow = 1_750_000_000): PolicyInput {
  const project = rng.chance(0.9) ? rng.pick(PROJECTS) : null;
  const withVars = rng.chance(0.6);
  const input: PolicyInput = {
    type: 'http',
    request: {
      scheme: withVars ? rng.pick(['http', 'https', 'https']) : 'http',
      method: rng.pick(METHODS),
      host: rng.pick(HOSTS),
      port: withVars ? rng.pick([80, 443, 8080, 9080, 0, 65535, 1023, 1024]) : null,
      path: randomPath(rng),
      headers: randomHeaders(rng, project),
      query: randomQuery(rng),
    },
    var: {
      server_addr: withVars ? rng.pick(['127.0.0.1', '10.0.0.1', '::1']) : null,
      server_port: withVars ? rng.pick(['9080', '9443', '80']) : null,
      remote_addr: rng.pick(REMOTE_ADDRS),
      remote_port: withVars ? String(rng.int(1024, 65535)) : null,
      timestamp: rng.chance(0.7) ? timestampNow + rng.int(-86_400, 86_400) : rng.pick(TIMESTAMPS),
    },
    user: randomUser(rng, project),
    project,
  };
  if (rng.chance(0.6)) {
    input.body = randomBody(rng);
    // A body mostly comes with an LLM route: reach the paths such policies guard.
    if (rng.chance(0.5)) input.request.path = rng.pick(LLM_PATHS);
  }
  return input;
}

/** `count` inputs from one seed. */
export function generateInputs(seed: number, count: number): PolicyInput[] {
  const rng = new Prng(seed);
  return Array.from({ length: count }, () => randomInput(rng));
}
