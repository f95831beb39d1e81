// The policy input document: the one module that decides what a policy sees.
// It is the document APISIX's own `opa` plugin sends (so policies written for
// that plugin run unchanged), plus the verified identity and project.
//
//   {
//     "type": "http",
//     "request": { "scheme", "method", "host", "port", "path", "headers", "query" },
//     "var":     { "server_addr", "server_port", "remote_addr", "remote_port", "timestamp" },
//     "user":    { "sub", "role", "project", ...other verified claims } | null,
//     "project": "<the caller's project>" | null,
//     "body":    <parsed JSON, or text>          (only when the route asks for it)
//     "budget":  {model, estimated_cost, max_tokens, remaining_tokens, limits: [...]} | null
//                                                 (only with with_budget: the caller project's LLM budget for this call)
//     "truncated": {"body": true}                 (only when something was withheld, see below)
//   }
//
// A body larger than the route's `max_body_bytes` is not shown (`body` is
// null and `truncated.body` is true); the size is checked from
// Content-Length before the body is fetched. The `opa` plugin denies such
// requests unless the route sets `allow_truncated`, because the upstream
// receives the whole body while the policy would judge none of it.
//
// `headers` and `query` map a name to a string, or to an array when repeated;
// a bare query flag (`?debug`) is `true`, as in APISIX. Credentials are not
// policy data: the headers and query parameters http/credentials names (the
// Authorization header, cookies, API keys, `?key=`, `?access_token=`, ...),
// and the headers the chain names as credentials (a vault conf's), never
// enter the input.
import type { GatewayRequest } from '../api/http.js';
import { isCredentialHeader, isCredentialQueryParameter } from '../../http/credentials.js';
import { setOwnKey } from '../../http/own-keys.js';
import type { BudgetView } from '../../budget/gateway.js';

export interface VerifiedUser {
  sub: string;
  role: string | null;
  project: string | null;
  [claim: string]: unknown;
}

export interface PolicyInput {
  type: 'http';
  request: {
    scheme: string;
    method: string;
    host: string;
    port: number | null;
    path: string;
    headers: Record<string, string | string[]>;
    query: Record<string, string | true | (string | true)[]>;
  };
  var: {
    server_addr: string | null;
    server_port: string | null;
    remote_addr: string;
    remote_port: string | null;
    timestamp: number;
  };
  user: VerifiedUser | null;
  project: string | null;
  body?: unknown;
  /** The project's LLM budget as it stands for this call (opa's with_budget). */
  budget?: BudgetView | null;
  /** Present when part of the request was withheld from the policy. */
  truncated?: { body?: true };
}

export interface InputOptions {
  /**
   * Ask APISIX for `host`, `scheme`, `server_addr`, `server_port` and
   * `remote_port` (one ExtraInfo round trip each). Without them `host` is the
   * Host header APISIX forwards (the upstream's), `scheme` is "http" and the
   * ports are null.
   */
  withVars: boolean;
  /** Fetch the request body (ExtraInfo) and parse it when it is JSON. */
  withBody: boolean;
  /** Bodies larger than this are not shown: `body` is then null and `truncated.body` true. */
  maxBodyBytes: number;
  /** Credential headers beyond http/credentials' (lower-case), withheld too: the chain's (CallContext.credentialHeaders). */
  credentialHeaders?: ReadonlySet<string>;
  /**
   * Leave `request.headers` and `request.query` empty until fillRequestMaps
   * fills them in: for a decision whose policies may read neither (each is
   * shown only the parts of the input it reads), building them is wasted.
   */
  deferRequestMaps?: boolean;
}

/** Where `request.headers` and `request.query` stand until fillRequestMaps (deferRequestMaps). */
// Frozen: a policy that were shown one by mistake could not make it look filled.
const DEFERRED_HEADERS = Object.freeze({}) as PolicyInput['request']['headers'];
const DEFERRED_QUERY = Object.freeze({}) as PolicyInput['request']['query'];

/** The parts of the input that deferRequestMaps leaves out. */
const DEFERRED_PATHS: readonly (readonly string[])[] = [
  ['request', 'headers'],
  ['request', 'query'],
];

/** Whether `policy` (a LoadedPolicy) is shown any part of the input that deferRequestMaps leaves out. */
export function readsRequestMaps(policy: { readsInput(path: readonly string[]): boolean }): boolean {
  return DEFERRED_PATHS.some((path) => policy.readsInput(path));
}

/** Fills in the headers and query of a document built with deferRequestMaps; a complete one is left as it is. */
export function fillRequestMaps(input: PolicyInput, request: GatewayRequest, options: InputOptions): void {
  if (input.request.headers === DEFERRED_HEADERS) input.request.headers = headerMap(request, options.credentialHeaders);
  if (input.request.query === DEFERRED_QUERY) input.request.query = queryMap(request.originalArgs);
}

function headerMap(request: GatewayRequest, credentialHeaders: ReadonlySet<string> | undefined): Record<string, string | string[]> {
  return request.headers.toObject((name) => isCredentialHeader(name, credentialHeaders));
}

function queryMap(entries: readonly { name: string; value: string | null }[]): PolicyInput['request']['query'] {
  const out: PolicyInput['request']['query'] = {};
  for (const { name, value } of entries) {
    if (isCredentialQueryParameter(name)) continue;
    const v: string | true = value === null ? true : value;
    const existing = Object.hasOwn(out, name) ? out[name] : undefined;
    if (Array.isArray(existing)) existing.push(v);
    else setOwnKey(out, name, existing === undefined ? v : [existing, v]);
  }
  return out;
}

function parseBody(bytes: Uint8Array, contentType: string | null): unknown {
  const text = Buffer.from(bytes).toString('utf8');
  if (contentType && /^application\/([\w.+-]*\+)?json\b/i.test(contentType.trim())) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

/**
 * The input document for `request`. Built at once, unless the options ask
 * APISIX for variables or the body (ExtraInfo round trips): a promise then.
 */
export function buildPolicyInput(
  request: GatewayRequest,
  identity: { user: VerifiedUser | null; project: string | null },
  options: InputOptions,
): PolicyInput | Promise<PolicyInput> {
  if (!options.withVars && !options.withBody) return inputDocument(request, identity, options, NO_VARS);
  return withExtraInfo(request, identity, options);
}

interface InputVars {
  host: string | null;
  scheme: string | null;
  server_addr: string | null;
  server_port: string | null;
  remote_port: string | null;
}

const NO_VARS: InputVars = { host: null, scheme: null, server_addr: null, server_port: null, remote_port: null };

async function withExtraInfo(
  request: GatewayRequest,
  identity: { user: VerifiedUser | null; project: string | null },
  options: InputOptions,
): Promise<PolicyInput> {
  const vars = options.withVars
    ? {
        host: await request.variable('host'),
        scheme: await request.variable('scheme'),
        server_addr: await request.variable('server_addr'),
        server_port: await request.variable('server_port'),
        remote_port: await request.variable('remote_port'),
      }
    : NO_VARS;
  const input = inputDocument(request, identity, options, vars);
  if (options.withBody) {
    // Too large by its own account: not even fetched.
    const declared = Number(request.headers.get('content-length') ?? Number.NaN);
    const bytes = Number.isFinite(declared) && declared > options.maxBodyBytes ? null : await request.body();
    if (bytes === null || bytes.length > options.maxBodyBytes) {
      input.body = null;
      input.truncated = { body: true };
    } else {
      input.body = parseBody(bytes, request.headers.get('content-type'));
    }
  }
  return input;
}

function inputDocument(
  request: GatewayRequest,
  identity: { user: VerifiedUser | null; project: string | null },
  options: InputOptions,
  vars: InputVars,
): PolicyInput {
  return {
    type: 'http',
    request: {
      scheme: vars.scheme ?? 'http',
      method: request.method,
      host: vars.host ?? request.headers.get('host') ?? '',
      port: vars.server_port === null ? null : Number(vars.server_port),
      path: request.path,
      headers: options.deferRequestMaps ? DEFERRED_HEADERS : headerMap(request, options.credentialHeaders),
      query: options.deferRequestMaps ? DEFERRED_QUERY : queryMap(request.originalArgs),
    },
    var: {
      server_addr: vars.server_addr,
      server_port: vars.server_port,
      remote_addr: request.srcIp,
      remote_port: vars.remote_port,
      timestamp: Math.floor(Date.now() / 1000),
    },
    user: identity.user,
    project: identity.project,
  };
}
