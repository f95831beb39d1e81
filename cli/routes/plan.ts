// What `gatehouse routes apply` would change: each object of the routes file
// compared with what APISIX stores under the same id.
import { AdminApiError, type AdminApi, type StoredObject } from './admin-api.js';
import type { AdminObject, Json, JsonObject, RoutesFile } from './routes-file.js';

export type Action =
  | { op: 'create'; object: AdminObject }
  | { op: 'update'; object: AdminObject; changes: FieldChange[] }
  | { op: 'unchanged'; object: AdminObject }
  | { op: 'extra'; kind: AdminObject['kind']; id: string };

export interface FieldChange {
  field: string;
  from: Json | undefined;
  to: Json | undefined;
}

/** Fields APISIX adds to what it stores; they say nothing about the route itself. */
const METADATA = new Set(['id', 'create_time', 'update_time']);

/**
 * Defaults APISIX's schemas fill into a stored object. A stored field that the
 * file leaves out is ignored only when it holds exactly this default; any
 * other leftover (a host someone added by hand, say) counts as a change.
 */
const DEFAULTS: Record<AdminObject['kind'], Record<string, Json>> = {
  routes: { status: 1, priority: 0 },
  upstreams: { type: 'roundrobin', scheme: 'http', pass_host: 'pass', hash_on: 'vars' },
};

/** The same for the confs of the plugins the routes use, by plugin name. */
const EXT_PLUGIN_DEFAULTS: Record<string, Json> = { allow_degradation: false };
const PLUGIN_DEFAULTS: Record<string, Record<string, Json>> = {
  'ext-plugin-pre-req': EXT_PLUGIN_DEFAULTS,
  'ext-plugin-post-req': EXT_PLUGIN_DEFAULTS,
  'ext-plugin-post-resp': EXT_PLUGIN_DEFAULTS,
  // APISIX 3.9.1's prometheus schema.
  prometheus: { prefer_name: false },
  // APISIX 3.9.1's http-logger schema, with its batch processor's (utils/batch-processor.lua).
  'http-logger': {
    timeout: 3,
    include_req_body: false,
    include_resp_body: false,
    concat_method: 'json',
    ssl_verify: false,
    name: 'http logger',
    max_retry_count: 0,
    retry_delay: 1,
    buffer_duration: 60,
    inactive_timeout: 5,
    batch_max_size: 1000,
  },
};

function stripDefaults(stored: Json | undefined, wanted: Json | undefined, defaults: Record<string, Json>): Json | undefined {
  if (!isObject(stored) || !isObject(wanted)) return stored;
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(stored)) {
    if (!(key in wanted) && key in defaults && same(value, defaults[key]!)) continue;
    out[key] = value;
  }
  return out;
}

/** The stored object as the file would write it: metadata and untouched defaults removed. */
export function normalizeStored(kind: AdminObject['kind'], stored: JsonObject, wanted: JsonObject): JsonObject {
  const copy: JsonObject = {};
  for (const [key, value] of Object.entries(stored)) if (!METADATA.has(key)) copy[key] = value;
  const top = stripDefaults(copy, wanted, DEFAULTS[kind]) as JsonObject;
  if (kind === 'routes') {
    if (isObject(top.upstream) && isObject(wanted.upstream)) {
      top.upstream = stripDefaults(top.upstream, wanted.upstream, DEFAULTS.upstreams) as JsonObject;
    }
    if (isObject(top.plugins) && isObject(wanted.plugins)) {
      const plugins: JsonObject = {};
      for (const [name, conf] of Object.entries(top.plugins)) {
        const defaults = PLUGIN_DEFAULTS[name];
        plugins[name] = defaults ? (stripDefaults(conf, wanted.plugins[name], defaults) as Json) : conf;
      }
      top.plugins = plugins;
    }
  }
  return top;
}

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Deep equality on JSON values; object key order does not matter, array order does. */
export function same(a: Json | undefined, b: Json | undefined): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((item, i) => same(item, b[i]));
  if (isObject(a) && isObject(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const key of keys) if (!same(a[key], b[key])) return false;
    return true;
  }
  return false;
}

export function fieldChanges(from: JsonObject, to: JsonObject): FieldChange[] {
  const keys = [...new Set([...Object.keys(to), ...Object.keys(from)])];
  return keys.filter((key) => !same(from[key], to[key])).map((field) => ({ field, from: from[field], to: to[field] }));
}

/** Upstreams first, then routes: a route may name an upstream_id that must exist already. */
export async function plan(api: AdminApi, file: RoutesFile): Promise<Action[]> {
  const actions: Action[] = [];
  for (const kind of ['upstreams', 'routes'] as const) {
    const wanted = kind === 'upstreams' ? file.upstreams : file.routes;
    for (const object of wanted) {
      const stored = await api.get(kind, object.id);
      if (!stored) {
        actions.push({ op: 'create', object });
        continue;
      }
      const changes = fieldChanges(normalizeStored(kind, stored.value, object.body), object.body);
      actions.push(changes.length === 0 ? { op: 'unchanged', object } : { op: 'update', object, changes });
    }
    const ids = new Set(wanted.map((object) => object.id));
    const existing: StoredObject[] = await api.list(kind);
    for (const stored of existing) if (!ids.has(stored.id)) actions.push({ op: 'extra', kind, id: stored.id });
  }
  return actions;
}

const singular = (kind: AdminObject['kind']) => (kind === 'routes' ? 'route' : 'upstream');
const show = (value: Json | undefined) => (value === undefined ? '(absent)' : JSON.stringify(value));

/**
 * The diff as people read it. With `shown` (the routes file before its
 * `${{NAME}}` references were resolved), what the file sets is printed as the
 * file writes it, so a resolved value never appears in the plan.
 */
export function renderPlan(actions: Action[], prune: boolean, shown?: RoutesFile): string {
  const lines: string[] = [];
  const asWritten = (object: AdminObject): JsonObject => {
    const list = shown ? (object.kind === 'routes' ? shown.routes : shown.upstreams) : [];
    return list.find((candidate) => candidate.id === object.id)?.body ?? object.body;
  };
  let references = false;
  for (const action of actions) {
    if (action.op === 'extra') {
      lines.push(`- ${singular(action.kind)} ${action.id}: on APISIX, not in the file (${prune ? 'will be deleted' : 'kept; --prune deletes it'})`);
      continue;
    }
    const name = `${singular(action.object.kind)} ${action.object.id}`;
    const body = asWritten(action.object);
    if (action.op === 'create') {
      const text = JSON.stringify(body);
      references ||= text.includes('${{');
      lines.push(`+ ${name}: create`, `    ${text}`);
    } else if (action.op === 'unchanged') lines.push(`  ${name}: unchanged`);
    else {
      lines.push(`~ ${name}: update`);
      for (const change of action.changes) {
        // Top-level fields never hold a reference in their name (the schema knows every one).
        const to = body === action.object.body ? change.to : body[change.field];
        references ||= show(to).includes('${{');
        lines.push(`    ${change.field}: ${show(change.from)} -> ${show(to)}`);
      }
    }
  }
  if (references) lines.push('(${{NAME}} is shown as the file writes it; its value is sent, not printed)');
  return `${lines.join('\n')}\n`;
}

export function pendingChanges(actions: Action[], prune: boolean): number {
  return actions.filter((action) => action.op === 'create' || action.op === 'update' || (prune && action.op === 'extra')).length;
}

/** Applies a plan: PUTs what changed (upstreams, then routes), then, with prune, deletes routes before upstreams. */
export async function applyPlan(api: AdminApi, actions: Action[], prune: boolean, log: (line: string) => void): Promise<void> {
  for (const action of actions) {
    if (action.op !== 'create' && action.op !== 'update') continue;
    const status = await api.put(action.object);
    log(`PUT ${action.object.kind}/${action.object.id} -> ${status}`);
  }
  if (!prune) return;
  const extras = actions.filter((action): action is Extract<Action, { op: 'extra' }> => action.op === 'extra');
  for (const kind of ['routes', 'upstreams'] as const) {
    for (const extra of extras.filter((action) => action.kind === kind)) {
      const status = kind === 'upstreams' ? await deleteOnceUnreferenced(api, extra.id) : await api.delete(kind, extra.id);
      log(`DELETE ${kind}/${extra.id} -> ${status}`);
    }
  }
}

// APISIX checks "is a route still using this upstream" against the routes its
// worker has loaded from etcd, which follow a route DELETE a moment later: the
// upstream's DELETE right after its route's can be refused with 400 "still
// using it". Only that refusal is retried, for a few seconds.
const STILL_USING = /still using/i;
const UNREFERENCED_WAIT_MS = 5_000;

async function deleteOnceUnreferenced(api: AdminApi, id: string): Promise<number> {
  const deadline = Date.now() + UNREFERENCED_WAIT_MS;
  for (let delayMs = 50; ; delayMs = Math.min(delayMs * 2, 500)) {
    try {
      return await api.delete('upstreams', id);
    } catch (error) {
      const retriable = error instanceof AdminApiError && error.status === 400 && STILL_USING.test(error.message);
      if (!retriable || Date.now() + delayMs > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}
