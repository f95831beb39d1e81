// `path-rewrite`: maps the gateway's route prefix onto the upstream's paths,
// e.g. /llm/v1/chat/completions -> /v1/chat/completions. (On real APISIX the
// built-in proxy-rewrite plugin can do the same.)
import type { Plugin } from '../api/plugin.js';
import { jsonConfParser } from '../api/json-conf.js';

export interface PathRewriteConf {
  strip_prefix: string;
  add_prefix: string;
}

const schema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    strip_prefix: { type: 'string', pattern: '^(/[^/]+)+$', default: '/' },
    add_prefix: { type: 'string', pattern: '^(/[^/]+)*$', default: '' },
  },
};

export const pathRewritePlugin: Plugin<PathRewriteConf> = {
  name: 'path-rewrite',
  parseConf: jsonConfParser<PathRewriteConf>('path-rewrite', schema),
  requestFilter(conf, request) {
    const { path } = request;
    let rest = path;
    if (conf.strip_prefix !== '/' && (path === conf.strip_prefix || path.startsWith(`${conf.strip_prefix}/`))) {
      rest = path.slice(conf.strip_prefix.length) || '/';
    }
    const next = `${conf.add_prefix}${rest}`;
    if (next !== path) request.path = next;
  },
};
