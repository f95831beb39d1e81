// `example`: a plugin that shows the runner's API end to end. Each conf key
// exercises one capability: answering directly (Stop), rewriting the
// upstream request (Rewrite), asking APISIX for variables and the body
// (ExtraInfo) and changing the upstream's answer (ext-plugin-post-resp).
import { createHash } from 'node:crypto';
import type { Plugin } from '../api/plugin.js';
import { jsonConfParser } from '../api/json-conf.js';

export interface ExampleConf {
  stop?: { status: number; body?: string; headers?: Record<string, string> };
  set_headers?: Record<string, string | null>;
  set_args?: Record<string, string | null>;
  path?: string;
  body?: string;
  resp_headers?: Record<string, string>;
  echo_var?: string;
  echo_body?: boolean;
  require_header?: string;
  /** Answers with what the plugin saw, as JSON: handy to check what APISIX sends. */
  echo_request?: boolean;
  /** Throws, to show that a failing plugin fails its request closed. */
  fail?: boolean;
  response?: { status?: number; set_headers?: Record<string, string>; append_body?: string };
}

const stringMap = { type: 'object', additionalProperties: { type: 'string' } };
const nullableStringMap = { type: 'object', additionalProperties: { type: ['string', 'null'] } };

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    stop: {
      type: 'object',
      additionalProperties: false,
      required: ['status'],
      properties: {
        status: { type: 'integer', minimum: 100, maximum: 599 },
        body: { type: 'string' },
        headers: stringMap,
      },
    },
    set_headers: nullableStringMap,
    set_args: nullableStringMap,
    path: { type: 'string', pattern: '^/' },
    body: { type: 'string', minLength: 1 },
    resp_headers: stringMap,
    echo_var: { type: 'string', minLength: 1 },
    echo_body: { type: 'boolean' },
    require_header: { type: 'string', minLength: 1 },
    echo_request: { type: 'boolean' },
    fail: { type: 'boolean' },
    response: {
      type: 'object',
      additionalProperties: false,
      properties: {
        status: { type: 'integer', minimum: 100, maximum: 599 },
        set_headers: stringMap,
        append_body: { type: 'string' },
      },
    },
  },
};

export const examplePlugin: Plugin<ExampleConf> = {
  name: 'example',
  parseConf: jsonConfParser<ExampleConf>('example', schema),

  async requestFilter(conf, request, response, ctx) {
    if (conf.fail) throw new Error('example plugin asked to fail');
    if (conf.require_header && !request.headers.has(conf.require_header)) {
      response.problem(401, `header ${conf.require_header} is required`);
      return;
    }
    if (conf.echo_request) {
      response.json(200, {
        id: request.id,
        method: request.method,
        path: request.path,
        srcIp: request.srcIp,
        headers: [...request.headers.entries()],
        args: [...request.args.entries()],
        sharedState: [...ctx.state.keys()],
        // Which process answered: a runner of several workers serves one socket.
        pid: process.pid,
      });
      return;
    }
    ctx.state.set('example', true);
    if (conf.stop) {
      response.status = conf.stop.status;
      for (const [name, value] of Object.entries(conf.stop.headers ?? {})) response.headers.set(name, value);
      if (conf.stop.body !== undefined) response.body = conf.stop.body;
      return;
    }
    for (const [name, value] of Object.entries(conf.set_headers ?? {})) {
      if (value === null) request.headers.delete(name);
      else request.headers.set(name, value);
    }
    for (const [name, value] of Object.entries(conf.set_args ?? {})) {
      if (value === null) request.args.delete(name);
      else request.args.set(name, value);
    }
    if (conf.path) request.path = conf.path;
    if (conf.body) request.setBody(conf.body);
    for (const [name, value] of Object.entries(conf.resp_headers ?? {})) request.responseHeaders.set(name, value);
    if (conf.echo_var) {
      const value = await request.variable(conf.echo_var);
      const header = `x-var-${conf.echo_var}`;
      if (value === null) request.headers.delete(header);
      else request.headers.set(header, value);
    }
    if (conf.echo_body) {
      const body = await request.body();
      request.headers.set('x-body-sha256', createHash('sha256').update(body).digest('hex'));
    }
  },

  async responseFilter(conf, response) {
    if (!conf.response) return;
    if (conf.response.status !== undefined) response.status = conf.response.status;
    for (const [name, value] of Object.entries(conf.response.set_headers ?? {})) response.headers.set(name, value);
    if (conf.response.append_body !== undefined) {
      const body = Buffer.from(await response.body());
      response.setBody(Buffer.concat([body, Buffer.from(conf.response.append_body)]));
    }
  },
};
