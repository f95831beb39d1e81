// Credentials in requests: the one list of the header names and query
// parameter names whose values are credentials. They never enter a policy
// input (plugins/opa/input.ts, the decision API) and are masked in decision
// logs (policy/decision-log). Names compare case-insensitively: HTTP header
// names are (RFC 9110), and clients spell them as they like (Go's
// `http.Header` writes `Authorization`, nginx hands them over lower-case).

/**
 * Request headers that carry credentials: sessions and bearer tokens, and
 * every key header the `vault` plugin strips from the client's request or
 * injects into the upstream's (plugins/vault ALWAYS_STRIPPED and its default
 * `header`). A route's own vault `header` and `strip_headers` are added per
 * chain (CallContext.credentialHeaders).
 */
export const CREDENTIAL_HEADERS: readonly string[] = [
  'authorization',
  'proxy-authorization',
  'cookie',
  'set-cookie',
  'x-api-key',
  'api-key',
  'x-gatehouse-token',
];

/** Query parameters that carry credentials (API keys, OAuth tokens, signatures). */
export const CREDENTIAL_QUERY_PARAMETERS: readonly string[] = [
  'key',
  'api_key',
  'api-key',
  'apikey',
  'token',
  'access_token',
  'id_token',
  'refresh_token',
  'client_secret',
  'password',
  'sig',
];

/** What a masked credential reads as in a decision log. */
export const MASKED = '[masked]';

const HEADERS = new Set(CREDENTIAL_HEADERS);
const QUERY_PARAMETERS = new Set(CREDENTIAL_QUERY_PARAMETERS);

/** Whether a header (any case) carries credentials; `extra` holds further lower-case names. */
export function isCredentialHeader(name: string, extra?: ReadonlySet<string>): boolean {
  const lower = name.toLowerCase();
  return HEADERS.has(lower) || (extra?.has(lower) ?? false);
}

/** Whether a query parameter (any case) carries credentials. */
export function isCredentialQueryParameter(name: string): boolean {
  return QUERY_PARAMETERS.has(name.toLowerCase());
}

function decodedName(raw: string): string {
  try {
    return decodeURIComponent(raw.replaceAll('+', ' '));
  } catch {
    return raw;
  }
}

/**
 * A path or URI with the values of its credential query parameters replaced
 * by MASKED; everything else is left as written. Without a query string the
 * same string comes back.
 */
export function maskCredentialQuery(uri: string): string {
  const question = uri.indexOf('?');
  if (question < 0) return uri;
  const hash = uri.indexOf('#', question);
  const query = uri.slice(question + 1, hash < 0 ? undefined : hash);
  const masked = query
    .split('&')
    .map((pair) => {
      const equals = pair.indexOf('=');
      const name = equals < 0 ? pair : pair.slice(0, equals);
      return equals >= 0 && isCredentialQueryParameter(decodedName(name)) ? `${name}=${MASKED}` : pair;
    })
    .join('&');
  return `${uri.slice(0, question + 1)}${masked}${hash < 0 ? '' : uri.slice(hash)}`;
}
