// APISIX's `http-logger` plugin, as far as Gatehouse uses it, the way
// APISIX 3.9.1 runs it (apisix/plugins/http-logger.lua,
// apisix/utils/log-util.lua, apisix/utils/batch-processor.lua): a copy of the
// response body is collected while it goes to the client (never holding it
// back), and after the response one entry is built from `log_format` and
// handed to a batch processor, which POSTs it to `uri` from a timer, off the
// request's path.
import { request as httpRequest, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Logger } from 'pino';

export interface HttpLoggerConf {
  uri: string;
  authHeader: string | null;
  /** Seconds, for connecting, sending and reading (lua-resty-http's set_timeout). */
  timeout: number;
  /** Key -> literal or `$variable`. */
  logFormat: Record<string, string>;
  includeRespBody: boolean;
  concatMethod: 'json' | 'new_line';
  sslVerify: boolean;
  batch: {
    name: string;
    batchMaxSize: number;
    inactiveTimeout: number;
    bufferDuration: number;
    maxRetryCount: number;
    retryDelay: number;
  };
}

/**
 * Variables a `log_format` may name beyond the request's own (the
 * RequestState variables and the `http_`, `arg_`, `cookie_` families):
 * those that exist once the response is sent.
 */
export const RESPONSE_LOG_VARIABLES: ReadonlySet<string> = new Set([
  'status',
  'resp_body',
  'bytes_sent',
  'body_bytes_sent',
  'upstream_status',
  'upstream_addr',
  'upstream_response_time',
  'msec',
  'time_iso8601',
  'time_local',
  'service_id',
]);

/** Request variables the stand-in knows (RequestState.variable). */
export const REQUEST_LOG_VARIABLES: ReadonlySet<string> = new Set([
  'remote_addr',
  'remote_port',
  'server_addr',
  'server_port',
  'route_id',
  'request_method',
  'method',
  'request_uri',
  'uri',
  'host',
  'scheme',
  'request_time',
  'args',
  'query_string',
  'is_args',
  'upstream_uri',
  'upstream_host',
  'server_protocol',
  'content_type',
  'content_length',
  'request_id',
]);

const KNOWN_KEYS = new Set([
  'uri',
  'auth_header',
  'timeout',
  'log_format',
  'include_req_body',
  'include_req_body_expr',
  'include_resp_body',
  'include_resp_body_expr',
  'concat_method',
  'ssl_verify',
  'name',
  'max_retry_count',
  'retry_delay',
  'buffer_duration',
  'inactive_timeout',
  'batch_max_size',
  '_meta',
]);

type Obj = Record<string, unknown>;
const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** core.schema.uri_def: a scheme, then a host name or a bracketed IPv6 address, then an optional port. */
const URI_DEF = /^[^/]+:\/\/([\da-zA-Z.-]+|\[[\da-fA-F:]+\])(:\d+)?/;

/**
 * Validates an http-logger conf against APISIX's schema (with the batch
 * processor's fields and defaults) and the stand-in's limits; throws with
 * the first problem.
 */
export function parseHttpLoggerConf(raw: unknown): HttpLoggerConf {
  if (!isObject(raw)) throw new Error('must be a mapping');
  for (const key of Object.keys(raw)) {
    // APISIX's schema allows other keys; refusing them catches typos like "include_resp_bdy".
    if (!KNOWN_KEYS.has(key)) throw new Error(`unknown property "${key}"`);
  }
  const uri = raw.uri;
  if (typeof uri !== 'string' || !URI_DEF.test(uri)) throw new Error('"uri" is required: a URI with a scheme and a host');
  const scheme = /^([^:]+):/.exec(uri)![1]!.toLowerCase();
  if (scheme !== 'http' && scheme !== 'https') throw new Error(`"uri": the stand-in sends logs over http or https, not ${scheme}`);
  try {
    new URL(uri);
  } catch {
    throw new Error(`"uri": ${uri} is not a URL`);
  }

  const int = (key: string, min: number, fallback: number): number => {
    const value = raw[key] ?? fallback;
    if (!Number.isInteger(value) || (value as number) < min) throw new Error(`"${key}" must be an integer of at least ${min}`);
    return value as number;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const value = raw[key] ?? fallback;
    if (typeof value !== 'boolean') throw new Error(`"${key}" must be a boolean`);
    return value;
  };

  if (raw.auth_header !== undefined && typeof raw.auth_header !== 'string') throw new Error('"auth_header" must be a string');
  if (raw.include_resp_body_expr !== undefined) {
    // It decides per request whether the body is collected; a stand-in that ignored it would log bodies APISIX does not.
    throw new Error('"include_resp_body_expr" is not supported by the APISIX stand-in');
  }
  for (const key of ['include_req_body_expr'] as const) {
    if (raw[key] !== undefined && (!Array.isArray(raw[key]) || (raw[key] as unknown[]).length < 1)) {
      throw new Error(`"${key}" must be a non-empty array`);
    }
  }
  // Request bodies only go into APISIX's default (full) log format, which the stand-in does not build.
  bool('include_req_body', false);

  if (raw.log_format === undefined) {
    throw new Error('"log_format" is required by the APISIX stand-in (it does not build APISIX\'s default full log entry)');
  }
  if (!isObject(raw.log_format)) throw new Error('"log_format" must be an object');
  const logFormat: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw.log_format)) {
    // log-util.lua calls value:byte(1, 1): anything but a string fails at the first request.
    if (typeof value !== 'string') throw new Error(`log_format.${key} must be a string`);
    if (value.startsWith('$') && !knownLogVariable(value.slice(1))) {
      throw new Error(`log_format.${key}: the APISIX stand-in does not know the variable ${value}`);
    }
    logFormat[key] = value;
  }

  const concat = raw.concat_method ?? 'json';
  if (concat !== 'json' && concat !== 'new_line') throw new Error('"concat_method" must be json or new_line');
  const name = raw.name ?? 'http logger';
  if (typeof name !== 'string') throw new Error('"name" must be a string');

  return {
    uri,
    authHeader: (raw.auth_header as string | undefined) ?? null,
    timeout: int('timeout', 1, 3),
    logFormat,
    includeRespBody: bool('include_resp_body', false),
    concatMethod: concat,
    sslVerify: bool('ssl_verify', false),
    batch: {
      name,
      batchMaxSize: int('batch_max_size', 1, 1000),
      inactiveTimeout: int('inactive_timeout', 1, 5),
      bufferDuration: int('buffer_duration', 1, 60),
      maxRetryCount: int('max_retry_count', 0, 0),
      retryDelay: int('retry_delay', 0, 1),
    },
  };
}

export function knownLogVariable(name: string): boolean {
  if (REQUEST_LOG_VARIABLES.has(name) || RESPONSE_LOG_VARIABLES.has(name)) return true;
  return /^(http|arg|cookie)_[A-Za-z0-9_-]+$/.test(name);
}

/**
 * log-util's get_custom_format_log: `$name` values from the variables (a
 * variable without value leaves its key out, as a nil does in a Lua table),
 * other values as they are; then `route_id` (and `service_id`, which the
 * stand-in's routes never have) from the matched route, over any key of
 * that name.
 */
export function customLogEntry(logFormat: Record<string, string>, variable: (name: string) => string | null, routeId: string): Record<string, unknown> {
  const entry: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(logFormat)) {
    if (value.startsWith('$')) {
      const resolved = variable(value.slice(1));
      if (resolved !== null) entry[key] = resolved;
    } else {
      entry[key] = value;
    }
  }
  delete entry.service_id;
  entry.route_id = routeId;
  return entry;
}

/** How a batch goes on the wire: one object for batch_max_size 1, else an array (json) or lines (new_line). */
export function encodeBatch(entries: readonly unknown[], conf: HttpLoggerConf): string {
  if (conf.batch.batchMaxSize === 1) return JSON.stringify(entries[0]);
  if (conf.concatMethod === 'json') return JSON.stringify(entries);
  return entries.map((e) => JSON.stringify(e)).join('\n');
}

/** What http-logger's send_http_data does: one POST; a status of 400 or more is a failure. */
export function postLogs(conf: HttpLoggerConf, body: string, signal?: AbortSignal): Promise<void> {
  const url = new URL(conf.uri);
  const https = url.protocol === 'https:';
  const headers: Record<string, string> = {
    // lua-resty-http is handed the URI's host alone, without its port.
    host: url.hostname,
    'content-type': conf.concatMethod === 'json' ? 'application/json' : 'text/plain',
    'content-length': String(Buffer.byteLength(body)),
    'user-agent': 'lua-resty-http/0.16.1 (Lua) ngx_lua/10026',
  };
  if (conf.authHeader !== null) headers.authorization = conf.authHeader;
  const options: RequestOptions & { rejectUnauthorized?: boolean } = {
    method: 'POST',
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : https ? 443 : 80,
    // lua-resty-http is handed neturl's query table: it always writes the `?`, even for no query.
    path: `${url.pathname || '/'}?${url.search.slice(1)}`,
    headers,
    agent: false,
    timeout: conf.timeout * 1000,
    ...(https ? { rejectUnauthorized: conf.sslVerify, servername: url.hostname } : {}),
    ...(signal ? { signal } : {}),
  };
  return new Promise((resolve, reject) => {
    const req = (https ? httpsRequest : httpRequest)(options, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        if (status >= 400) {
          reject(new Error(`server returned status code[${status}] host[${url.hostname}] port[${options.port}] body[${Buffer.concat(chunks).toString()}]`));
        } else {
          resolve();
        }
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (err) => reject(new Error(`error while sending data to [${url.hostname}] port[${options.port}] ${err.message}`)));
    req.end(body);
  });
}

/**
 * APISIX's batch processor for one plugin conf: batch_max_size 1 sends each
 * entry at once; otherwise entries wait until the batch is full, or no entry
 * came for inactive_timeout, or the first waited buffer_duration (checked
 * every inactive_timeout). A failed batch is retried max_retry_count times,
 * retry_delay apart, then dropped. Sends happen on timers, never on the
 * request's path.
 */
export class LogBatchProcessor {
  private entries: unknown[] = [];
  private firstEntryAt = 0;
  private lastEntryAt = 0;
  private flushTimer: NodeJS.Timeout | null = null;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly aborter = new AbortController();
  private stopped = false;

  constructor(
    private readonly conf: HttpLoggerConf,
    private readonly log: Logger,
    private readonly send: (conf: HttpLoggerConf, body: string, signal: AbortSignal) => Promise<void> = postLogs,
  ) {}

  push(entry: unknown): void {
    if (this.stopped) return;
    const { batchMaxSize } = this.conf.batch;
    if (batchMaxSize === 1) {
      this.schedule(0, { entries: [entry], retries: 0 });
      return;
    }
    this.entries.push(entry);
    const now = Date.now();
    if (this.entries.length === 1) this.firstEntryAt = now;
    this.lastEntryAt = now;
    if (this.entries.length >= batchMaxSize) this.processBuffer();
    if (this.flushTimer === null) this.startFlushTimer();
  }

  /** Timers cancelled and sends aborted, as nginx's premature timers at exit: what is buffered is lost. */
  stop(): void {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    this.aborter.abort();
  }

  private startFlushTimer(): void {
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      const now = Date.now();
      const { inactiveTimeout, bufferDuration } = this.conf.batch;
      if (now - this.lastEntryAt >= inactiveTimeout * 1000 || now - this.firstEntryAt >= bufferDuration * 1000) {
        this.processBuffer();
        return;
      }
      this.startFlushTimer();
    }, this.conf.batch.inactiveTimeout * 1000);
  }

  private processBuffer(): void {
    if (this.entries.length === 0) return;
    const batch = { entries: this.entries, retries: 0 };
    this.entries = [];
    this.schedule(0, batch);
  }

  private schedule(delayMs: number, batch: { entries: unknown[]; retries: number }): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      void this.execute(batch);
    }, delayMs);
    this.timers.add(timer);
  }

  private async execute(batch: { entries: unknown[]; retries: number }): Promise<void> {
    try {
      await this.send(this.conf, encodeBatch(batch.entries, this.conf), this.aborter.signal);
    } catch (err) {
      if (this.stopped) return;
      const { name, maxRetryCount, retryDelay } = this.conf.batch;
      this.log.error({ err: (err as Error).message }, `Batch Processor[${name}] failed to process entries`);
      batch.retries++;
      if (batch.retries <= maxRetryCount) this.schedule(retryDelay * 1000, batch);
      else this.log.error(`Batch Processor[${name}] exceeded the max_retry_count[${batch.retries}] dropping the entries`);
    }
  }
}

/** One batch processor per http-logger conf, as APISIX keys its buffers by the conf table. */
export class HttpLoggers {
  private readonly processors = new Map<HttpLoggerConf, LogBatchProcessor>();

  constructor(private readonly log: Logger) {}

  push(conf: HttpLoggerConf, entry: unknown): void {
    let processor = this.processors.get(conf);
    if (!processor) {
      processor = new LogBatchProcessor(conf, this.log);
      this.processors.set(conf, processor);
    }
    processor.push(entry);
  }

  stop(): void {
    for (const processor of this.processors.values()) processor.stop();
    this.processors.clear();
  }
}
