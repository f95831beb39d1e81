// A small client for APISIX 3's Admin API: GET, PUT and DELETE of routes and
// upstreams by id, with the admin key in X-API-KEY.
import { request } from 'undici';
import type { AdminObject, JsonObject } from './routes-file.js';

export class AdminApiError extends Error {
  override readonly name = 'AdminApiError';
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

export interface StoredObject {
  id: string;
  value: JsonObject;
}

export class AdminApi {
  private readonly base: string;

  constructor(
    baseUrl: string,
    private readonly key: string,
    private readonly timeoutMs = 10_000,
  ) {
    // ADMIN_API_URL may be given with or without the /apisix/admin path.
    const trimmed = baseUrl.replace(/\/+$/, '');
    this.base = trimmed.endsWith('/apisix/admin') ? trimmed : `${trimmed}/apisix/admin`;
  }

  private async call(method: 'GET' | 'PUT' | 'DELETE', path: string, body?: JsonObject): Promise<{ status: number; json: unknown }> {
    const response = await request(`${this.base}${path}`, {
      method,
      headers: { 'x-api-key': this.key, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
    const text = await response.body.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = text;
    }
    if (response.statusCode === 401 || response.statusCode === 403) {
      throw new AdminApiError(`${method} ${path}: ${response.statusCode}, the Admin API refused the key (check ADMIN_API_KEY)`, response.statusCode);
    }
    return { status: response.statusCode, json };
  }

  private static errorText(json: unknown): string {
    if (json && typeof json === 'object') {
      const record = json as Record<string, unknown>;
      return String(record.error_msg ?? record.message ?? JSON.stringify(json));
    }
    return String(json);
  }

  /** The stored object, or null when APISIX has none with that id. */
  async get(kind: AdminObject['kind'], id: string): Promise<StoredObject | null> {
    const { status, json } = await this.call('GET', `/${kind}/${encodeURIComponent(id)}`);
    if (status === 404) return null;
    if (status !== 200) throw new AdminApiError(`GET ${kind}/${id}: ${status} ${AdminApi.errorText(json)}`, status);
    // APISIX 3 answers {key, value, createdIndex, modifiedIndex}; value carries id, create_time, update_time.
    const value = (json as { value?: unknown })?.value;
    if (!value || typeof value !== 'object' || Array.isArray(value)) {
      throw new AdminApiError(`GET ${kind}/${id}: unexpected answer ${JSON.stringify(json)}`, status);
    }
    return { id, value: value as JsonObject };
  }

  /** Every object of a kind (APISIX 3: {total, list: [{key, value}]}). */
  async list(kind: AdminObject['kind']): Promise<StoredObject[]> {
    const { status, json } = await this.call('GET', `/${kind}`);
    if (status === 404) return [];
    if (status !== 200) throw new AdminApiError(`GET ${kind}: ${status} ${AdminApi.errorText(json)}`, status);
    const list = (json as { list?: unknown })?.list;
    // An empty collection comes back as {} or as an empty list depending on the version.
    if (list === undefined || (typeof list === 'object' && list !== null && !Array.isArray(list) && Object.keys(list).length === 0)) return [];
    if (!Array.isArray(list)) throw new AdminApiError(`GET ${kind}: unexpected answer ${JSON.stringify(json)}`, status);
    return list.map((item: { key?: string; value?: JsonObject }) => {
      const value = item.value ?? {};
      const id =
        value.id !== undefined
          ? String(value.id)
          : (String(item.key ?? '')
              .split('/')
              .pop() ?? '');
      return { id, value };
    });
  }

  /** Creates (201) or replaces (200) the object. */
  async put(object: AdminObject): Promise<number> {
    const { status, json } = await this.call('PUT', `/${object.kind}/${encodeURIComponent(object.id)}`, object.body);
    if (status !== 200 && status !== 201) {
      throw new AdminApiError(`PUT ${object.kind}/${object.id}: ${status} ${AdminApi.errorText(json)}`, status);
    }
    return status;
  }

  async delete(kind: AdminObject['kind'], id: string): Promise<number> {
    const { status, json } = await this.call('DELETE', `/${kind}/${encodeURIComponent(id)}`);
    if (status !== 200 && status !== 404) throw new AdminApiError(`DELETE ${kind}/${id}: ${status} ${AdminApi.errorText(json)}`, status);
    return status;
  }
}
