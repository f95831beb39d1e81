// The request/response model plugins see. It reads like HTTP: headers and
// query arguments are Fetch-style maps, bodies and nginx variables are
// fetched on demand. The runner turns the recorded changes into the
// protocol's Stop or Rewrite; plugins never see the wire format.
import { STATUS_CODES } from 'node:http';
import { setOwnKey } from '../../http/own-keys.js';

export type Bytes = Uint8Array;

/**
 * A multi-valued, ordered name/value map that remembers what changed, so only
 * changes are sent back to APISIX. A delete is recorded even for a name never
 * seen: removing a header must not depend on having been shown it.
 */
export class FieldMap {
  private readonly values = new Map<string, string[]>();
  private readonly changed = new Set<string>();

  constructor(
    entries: Iterable<{ name: string; value: string | null }> = [],
    private readonly normalize: (name: string) => string = (n) => n,
  ) {
    for (const { name, value } of entries) {
      const key = this.normalize(name);
      const list = this.values.get(key);
      // A bare flag (`?debug`) has no value; it reads as the empty string.
      if (list) list.push(value ?? '');
      else this.values.set(key, [value ?? '']);
    }
  }

  get(name: string): string | null {
    return this.values.get(this.normalize(name))?.[0] ?? null;
  }

  getAll(name: string): string[] {
    return [...(this.values.get(this.normalize(name)) ?? [])];
  }

  has(name: string): boolean {
    return this.values.has(this.normalize(name));
  }

  set(name: string, value: string): void {
    const key = this.normalize(name);
    this.values.set(key, [value]);
    this.changed.add(key);
  }

  append(name: string, value: string): void {
    const key = this.normalize(name);
    const list = this.values.get(key);
    if (list) list.push(value);
    else this.values.set(key, [value]);
    this.changed.add(key);
  }

  delete(name: string): void {
    const key = this.normalize(name);
    this.values.delete(key);
    this.changed.add(key);
  }

  keys(): IterableIterator<string> {
    return this.values.keys();
  }

  *entries(): IterableIterator<[string, string]> {
    for (const [name, list] of this.values) for (const value of list) yield [name, value];
  }

  /** Plain object view: a name's value, or its values when repeated; the names `omit` picks are left out. */
  toObject(omit?: (name: string) => boolean): Record<string, string | string[]> {
    const out: Record<string, string | string[]> = {};
    for (const [name, list] of this.values) {
      if (list.length === 0 || omit?.(name)) continue;
      setOwnKey(out, name, list.length === 1 ? list[0]! : [...list]);
    }
    return out;
  }

  get isChanged(): boolean {
    return this.changed.size > 0;
  }

  /** The changed names as entries: final values, or one value-less entry for a delete. */
  changes(): { name: string; value: string | null }[] {
    const out: { name: string; value: string | null }[] = [];
    for (const name of this.changed) {
      const list = this.values.get(name);
      if (!list || list.length === 0) out.push({ name, value: null });
      else for (const value of list) out.push({ name, value });
    }
    return out;
  }

  /** Every entry, in order (used when all headers must be sent). */
  all(): { name: string; value: string }[] {
    return [...this.entries()].map(([name, value]) => ({ name, value }));
  }
}

const lowerCase = (name: string) => name.toLowerCase();
const encoder = new TextEncoder();

export function toBytes(body: string | Bytes): Bytes {
  return typeof body === 'string' ? encoder.encode(body) : body;
}

/** Asks APISIX, mid-call, for a variable or a body (ExtraInfo). */
export interface ExtraInfoSource {
  variable(name: string): Promise<string | null>;
  requestBody(): Promise<Bytes>;
  responseBody(): Promise<Bytes>;
}

export interface GatewayRequestInit {
  id: number;
  method: string;
  path: string;
  /** The client address, or how to get it (formatted only when a plugin asks). */
  srcIp: string | (() => string);
  /** The headers, or how to get them (read only when a plugin first reads a header). */
  headers: readonly TextField[] | (() => readonly TextField[]);
  /** The query arguments, or how to get them (read only when a plugin first reads one). */
  args: readonly TextField[] | (() => readonly TextField[]);
}

/** A header or query argument as APISIX sends it (a bare flag has value null). */
export interface TextField {
  name: string;
  value: string | null;
}

function fields(source: readonly TextField[] | (() => readonly TextField[])): readonly TextField[] {
  return typeof source === 'function' ? source() : source;
}

/** The client request as the gateway sees it; changes become a Rewrite. */
export class GatewayRequest {
  readonly id: number;
  readonly method: string;
  private currentPath: string;
  private pathChanged = false;
  private newBody: Bytes | null = null;
  private bodyRead: Promise<Bytes> | null = null;
  // Built on first use: a chain that reads nothing pays for nothing.
  private address: string | (() => string);
  private headerMap: FieldMap | null = null;
  private argList: readonly TextField[] | null = null;
  private argMap: FieldMap | null = null;
  private responseHeaderMap: FieldMap | null = null;

  constructor(
    private readonly init: GatewayRequestInit,
    private readonly extra: ExtraInfoSource,
  ) {
    this.id = init.id;
    this.method = init.method;
    this.address = init.srcIp;
    this.currentPath = init.path;
  }

  /** The query arguments as APISIX sent them (a bare flag has value null). */
  get originalArgs(): readonly TextField[] {
    return (this.argList ??= fields(this.init.args));
  }

  /** Client address, IPv4 dotted or IPv6 text form. */
  get srcIp(): string {
    if (typeof this.address === 'function') this.address = this.address();
    return this.address;
  }

  get headers(): FieldMap {
    return (this.headerMap ??= new FieldMap(fields(this.init.headers), lowerCase));
  }

  get args(): FieldMap {
    return (this.argMap ??= new FieldMap(this.originalArgs));
  }

  /** Headers APISIX adds to the client's response (Rewrite resp_headers). */
  get responseHeaders(): FieldMap {
    return (this.responseHeaderMap ??= new FieldMap([], lowerCase));
  }

  /** The (decoded, normalised) upstream path. */
  get path(): string {
    return this.currentPath;
  }

  set path(value: string) {
    this.currentPath = value;
    this.pathChanged = true;
  }

  /** The request body, fetched from APISIX once and cached. */
  body(): Promise<Bytes> {
    if (this.newBody) return Promise.resolve(this.newBody);
    this.bodyRead ??= this.extra.requestBody();
    return this.bodyRead;
  }

  /** Replaces the body sent upstream (APISIX ignores an empty one). */
  setBody(body: string | Bytes): void {
    this.newBody = toBytes(body);
  }

  /** An nginx/APISIX variable (`remote_addr`, `route_id`, ...); null when unset. */
  variable(name: string): Promise<string | null> {
    return this.extra.variable(name);
  }

  get rewritten(): {
    path: string | null;
    body: Bytes | null;
    headers: TextField[];
    args: TextField[];
    responseHeaders: TextField[];
  } {
    // Maps no plugin touched have no changes: they are not built (nor the request's args decoded) to say so.
    return {
      path: this.pathChanged ? this.currentPath : null,
      body: this.newBody,
      headers: this.headerMap?.changes() ?? [],
      args: this.argMap?.changes() ?? [],
      responseHeaders: this.responseHeaderMap?.changes() ?? [],
    };
  }

  get isChanged(): boolean {
    return (
      this.pathChanged ||
      this.newBody !== null ||
      (this.headerMap?.isChanged ?? false) ||
      (this.argMap?.isChanged ?? false) ||
      (this.responseHeaderMap?.isChanged ?? false)
    );
  }
}

/** The answer a plugin gives in place of the upstream; setting anything stops the chain. */
export class StopResponse {
  private statusCode = 0;
  private payload: Bytes | null = null;
  private headerMap: FieldMap | null = null;

  get headers(): FieldMap {
    return (this.headerMap ??= new FieldMap([], lowerCase));
  }

  get status(): number {
    return this.statusCode;
  }

  set status(code: number) {
    this.statusCode = code;
  }

  get body(): Bytes | null {
    return this.payload;
  }

  set body(value: string | Bytes | null) {
    this.payload = value === null ? null : toBytes(value);
  }

  get stopped(): boolean {
    return this.statusCode !== 0 || this.payload !== null || (this.headerMap?.isChanged ?? false);
  }

  /** Answers with an RFC 9457 problem document. */
  problem(status: number, detail?: string, extra: Record<string, unknown> = {}): void {
    this.status = status;
    this.headers.set('content-type', 'application/problem+json');
    this.body = JSON.stringify(problemDocument(status, detail, extra));
  }

  json(status: number, value: unknown): void {
    this.status = status;
    this.headers.set('content-type', 'application/json');
    this.body = JSON.stringify(value);
  }
}

export function problemDocument(status: number, detail?: string, extra: Record<string, unknown> = {}) {
  return {
    type: 'about:blank',
    title: STATUS_CODES[status] ?? 'Error',
    status,
    ...(detail === undefined ? {} : { detail }),
    ...extra,
  };
}

/** The upstream's answer, for `ext-plugin-post-resp`. */
export class UpstreamResponse {
  readonly headers: FieldMap;
  private statusCode: number;
  private statusChanged = false;
  private newBody: Bytes | null = null;
  private bodyRead: Promise<Bytes> | null = null;

  constructor(
    readonly id: number,
    status: number,
    headers: { name: string; value: string | null }[],
    private readonly extra: ExtraInfoSource,
  ) {
    this.statusCode = status;
    this.headers = new FieldMap(headers, lowerCase);
  }

  get status(): number {
    return this.statusCode;
  }

  set status(code: number) {
    this.statusCode = code;
    this.statusChanged = true;
  }

  /** The upstream body, fetched from APISIX once (it can be read only once). */
  body(): Promise<Bytes> {
    if (this.newBody) return Promise.resolve(this.newBody);
    this.bodyRead ??= this.extra.responseBody();
    return this.bodyRead;
  }

  setBody(body: string | Bytes): void {
    this.newBody = toBytes(body);
  }

  get changes(): { status: number | null; headersChanged: boolean; body: Bytes | null } {
    return {
      status: this.statusChanged ? this.statusCode : null,
      headersChanged: this.headers.isChanged,
      body: this.newBody,
    };
  }
}
