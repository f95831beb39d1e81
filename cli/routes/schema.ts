// The Admin API's rules for the objects Gatehouse sends, checked before any
// request leaves: a payload APISIX would refuse halfway through an apply
// would leave routes and upstreams out of step. The rules follow APISIX 3's
// route, upstream and ext-plugin-* schemas (shared/reference/apisix-gateway.md
// and apisix-ext-plugin.md); fields Gatehouse never uses are refused rather
// than passed through unchecked, so that a typo cannot slip by.
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';

export class RouteSchemaError extends Error {
  override readonly name = 'RouteSchemaError';
}

const ROUTE_METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'CONNECT', 'TRACE', 'PURGE'];
const EXT_PLUGINS = ['ext-plugin-pre-req', 'ext-plugin-post-req', 'ext-plugin-post-resp'];

const id = {
  anyOf: [
    { type: 'string', pattern: '^[a-zA-Z0-9\\-_.]{1,64}$' },
    { type: 'integer', minimum: 1 },
  ],
};
const positive = { type: 'number', exclusiveMinimum: 0 };
const timeout = {
  type: 'object',
  properties: { connect: positive, send: positive, read: positive },
  required: ['connect', 'send', 'read'],
  additionalProperties: false,
};

const extPluginConf = {
  type: 'object',
  properties: {
    conf: {
      type: 'array',
      minItems: 1,
      items: {
        type: 'object',
        properties: {
          name: { type: 'string', minLength: 1, maxLength: 128 },
          value: { type: 'string' },
        },
        required: ['name', 'value'],
        additionalProperties: false,
      },
    },
    allow_degradation: { type: 'boolean' },
  },
  required: ['conf'],
  // APISIX itself tolerates other keys; refusing them catches "allow_degredation".
  additionalProperties: false,
};

const upstream = {
  type: 'object',
  properties: {
    type: { enum: ['roundrobin', 'chash', 'ewma', 'least_conn'] },
    nodes: {
      anyOf: [
        {
          type: 'object',
          minProperties: 1,
          propertyNames: { pattern: '^[^:\\s]+:[0-9]{1,5}$' },
          additionalProperties: { type: 'integer', minimum: 0 },
        },
        {
          type: 'array',
          minItems: 1,
          items: {
            type: 'object',
            properties: {
              host: { type: 'string', minLength: 1 },
              port: { type: 'integer', minimum: 1, maximum: 65535 },
              weight: { type: 'integer', minimum: 0 },
              priority: { type: 'integer' },
            },
            required: ['host', 'weight'],
            additionalProperties: false,
          },
        },
      ],
    },
    scheme: { enum: ['http', 'https', 'grpc', 'grpcs'] },
    pass_host: { enum: ['pass', 'node', 'rewrite'] },
    upstream_host: { type: 'string', minLength: 1 },
    hash_on: { enum: ['vars', 'header', 'cookie', 'consumer', 'vars_combinations'] },
    key: { type: 'string' },
    retries: { type: 'integer', minimum: 0 },
    retry_timeout: { type: 'number', minimum: 0 },
    timeout,
    keepalive_pool: {
      type: 'object',
      properties: { size: { type: 'integer', minimum: 1 }, idle_timeout: { type: 'number', minimum: 0 }, requests: { type: 'integer', minimum: 1 } },
      additionalProperties: false,
    },
    tls: {
      type: 'object',
      properties: { client_cert: { type: 'string' }, client_key: { type: 'string' }, verify: { type: 'boolean' } },
      additionalProperties: false,
    },
    checks: { type: 'object' },
    name: { type: 'string', minLength: 1, maxLength: 100 },
    desc: { type: 'string', maxLength: 256 },
    labels: { type: 'object', additionalProperties: { type: 'string' } },
  },
  required: ['nodes'],
  // pass_host "rewrite" needs the host to rewrite to.
  if: { properties: { pass_host: { const: 'rewrite' } }, required: ['pass_host'] },
  then: { required: ['upstream_host'] },
  additionalProperties: false,
};

const uri = { type: 'string', minLength: 1, maxLength: 4096, pattern: '^/' };

const route = {
  type: 'object',
  properties: {
    uri,
    uris: { type: 'array', minItems: 1, uniqueItems: true, items: uri },
    methods: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: ROUTE_METHODS } },
    host: { type: 'string', minLength: 1 },
    hosts: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', minLength: 1 } },
    priority: { type: 'integer' },
    name: { type: 'string', minLength: 1, maxLength: 100 },
    desc: { type: 'string', maxLength: 256 },
    status: { enum: [0, 1] },
    labels: { type: 'object', additionalProperties: { type: 'string' } },
    enable_websocket: { type: 'boolean' },
    timeout,
    plugins: {
      type: 'object',
      properties: Object.fromEntries(EXT_PLUGINS.map((name) => [name, extPluginConf])),
      // Built-in plugins are checked by APISIX itself; they must at least be objects.
      additionalProperties: { type: 'object' },
    },
    upstream,
    upstream_id: id,
  },
  allOf: [
    { oneOf: [{ required: ['uri'] }, { required: ['uris'] }] },
    { oneOf: [{ required: ['upstream'] }, { required: ['upstream_id'] }] },
    { not: { required: ['host', 'hosts'] } },
  ],
  additionalProperties: false,
};

const ajv = new Ajv({ allErrors: true, strict: false });
const routeValidator = ajv.compile(route);
const upstreamValidator = ajv.compile(upstream);

function describe(errors: ErrorObject[], hint: string): string {
  const messages = errors.map((error) => {
    const at = error.instancePath || '(the object)';
    if (error.keyword === 'additionalProperties') return `${at}: unknown property "${String(error.params.additionalProperty)}"`;
    if (error.keyword === 'enum') return `${at}: must be one of ${(error.params.allowedValues as unknown[]).join(', ')}`;
    // oneOf/not failures say little on their own: name the alternatives.
    if (error.keyword === 'oneOf' || error.keyword === 'not') return `${at}: ${hint}`;
    return `${at}: ${error.message ?? error.keyword}`;
  });
  return [...new Set(messages)].join('; ');
}

function check(validator: ValidateFunction, value: unknown, where: string, hint: string): void {
  if (validator(value)) return;
  throw new RouteSchemaError(`${where}: ${describe(validator.errors ?? [], hint)}`);
}

export function validateRoute(value: unknown, where = 'route'): void {
  check(routeValidator, value, where, 'needs exactly one of "uri"/"uris", exactly one of "upstream"/"upstream_id", and not both "host" and "hosts"');
}

export function validateUpstream(value: unknown, where = 'upstream'): void {
  check(upstreamValidator, value, where, 'invalid');
}
