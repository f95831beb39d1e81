// The ext-plugin protocol's messages as plain objects. These are the only
// shapes code outside plugins/protocol sees; FlatBuffers stays inside.

/** A name/value pair. `value: null` is an entry without value: a flag arg on
 *  the way in, a delete in a Rewrite on the way out. */
export interface TextEntry {
  name: string;
  value: string | null;
}

export const HTTP_METHODS = [
  'GET',
  'HEAD',
  'POST',
  'PUT',
  'DELETE',
  'MKCOL',
  'COPY',
  'MOVE',
  'OPTIONS',
  'PROPFIND',
  'PROPPATCH',
  'LOCK',
  'UNLOCK',
  'PATCH',
  'TRACE',
] as const;
export type HttpMethod = (typeof HTTP_METHODS)[number];

export type ErrorCode = 'BAD_REQUEST' | 'SERVICE_UNAVAILABLE' | 'CONF_TOKEN_NOT_FOUND';
export const ERROR_CODES: readonly ErrorCode[] = ['BAD_REQUEST', 'SERVICE_UNAVAILABLE', 'CONF_TOKEN_NOT_FOUND'];

export interface ErrorResponse {
  code: ErrorCode;
}

export interface PrepareConfRequest {
  /** Runner plugins in order: name and JSON conf string. */
  conf: { name: string; value: string }[];
  key: string | null;
}

export interface PrepareConfResponse {
  confToken: number;
}

export interface HttpReqCallRequest {
  id: number;
  /** 4 bytes for IPv4, 16 for IPv6. */
  srcIp: Uint8Array;
  method: HttpMethod;
  path: string;
  args: TextEntry[];
  headers: TextEntry[];
  confToken: number;
}

export interface StopAction {
  type: 'stop';
  status: number;
  headers: TextEntry[];
  body: Uint8Array | null;
}

export interface RewriteAction {
  type: 'rewrite';
  path: string | null;
  headers: TextEntry[];
  args: TextEntry[];
  respHeaders: TextEntry[];
  body: Uint8Array | null;
}

export interface HttpReqCallResponse {
  id: number;
  action: StopAction | RewriteAction | null;
}

export type ExtraInfoRequest = { type: 'var'; name: string } | { type: 'reqBody' } | { type: 'respBody' };

export interface ExtraInfoResponse {
  /** null when the variable is unset. */
  result: Uint8Array | null;
}

export interface HttpRespCallRequest {
  id: number;
  status: number;
  headers: TextEntry[];
  confToken: number;
}

export interface HttpRespCallResponse {
  id: number;
  /** 0 keeps the upstream status. */
  status: number;
  /** Non-empty replaces all of the upstream's headers. */
  headers: TextEntry[];
  body: Uint8Array | null;
}
