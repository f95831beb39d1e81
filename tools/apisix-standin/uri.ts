// Path and query handling of the APISIX stand-in, reproducing what nginx and
// APISIX do to a request line: the decoded, normalised `$uri` that routes
// match and that HTTPReqCall carries, `ngx.req.get_uri_args()` (repeated
// names, bare flags), `ngx.encode_args()` and APISIX's `uri_safe_encode`.

/** One query argument value: a string, or `true` for a bare flag (`?debug`). */
export type ArgValue = string | true;

/**
 * Query arguments as a Lua table from `ngx.req.get_uri_args()`: one entry per
 * name, values in order. A Map keeps the first-appearance order of names
 * (nginx hands them over in hash order; any order is faithful).
 */
export type ArgTable = Map<string, ArgValue[]>;

/** nginx's `$uri`: percent-decoded, slashes merged, `.`/`..` resolved. Null when nginx answers 400. */
export function normalizeRequestPath(rawPath: string): string | null {
  const decoded = percentDecode(rawPath, false);
  if (decoded === null || !decoded.startsWith('/')) return null;
  const segments: string[] = [];
  const parts = decoded.split('/');
  // parts[0] is the empty string before the leading slash.
  for (let i = 1; i < parts.length; i++) {
    const part = parts[i]!;
    const last = i === parts.length - 1;
    if (part === '' || part === '.') {
      // merge_slashes and `.` removal; a trailing one keeps the trailing slash.
      if (last) segments.push('');
      continue;
    }
    if (part === '..') {
      // Climbing above the root is a 400 in nginx.
      if (segments.length === 0) return null;
      segments.pop();
      if (last) segments.push('');
      continue;
    }
    segments.push(part);
  }
  return '/' + segments.join('/');
}

/**
 * Decodes %XX escapes as UTF-8 bytes (nginx works on bytes; invalid UTF-8 is
 * kept as replacement characters here). `plusIsSpace` is the query-string
 * flavour. Null on a malformed escape, which nginx rejects with 400 in a path.
 */
export function percentDecode(text: string, plusIsSpace: boolean): string | null {
  if (!text.includes('%') && !(plusIsSpace && text.includes('+'))) return text;
  const bytes: number[] = [];
  const source = Buffer.from(text, 'utf8');
  for (let i = 0; i < source.length; i++) {
    const byte = source[i]!;
    if (byte === 0x25 /* % */) {
      const hex = source.subarray(i + 1, i + 3).toString('latin1');
      if (!/^[0-9a-fA-F]{2}$/.test(hex)) {
        if (!plusIsSpace) return null;
        // ngx.unescape_uri leaves a stray % alone in a query.
        bytes.push(byte);
        continue;
      }
      bytes.push(parseInt(hex, 16));
      i += 2;
    } else if (plusIsSpace && byte === 0x2b /* + */) {
      bytes.push(0x20);
    } else {
      bytes.push(byte);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

/**
 * `ngx.req.get_uri_args(max)`: repeated names become several values, `?flag`
 * becomes `true`. APISIX 3.9 asks for them with max 0, no limit
 * (apisix/core/request.lua get_uri_args); `maxArgs` 0 means that.
 */
export function parseQuery(query: string, maxArgs = 0): ArgTable {
  const args: ArgTable = new Map();
  let count = 0;
  for (const part of query.split('&')) {
    if (part === '') continue;
    if (maxArgs > 0 && count >= maxArgs) break;
    count++;
    const eq = part.indexOf('=');
    const name = percentDecode(eq === -1 ? part : part.slice(0, eq), true) ?? '';
    // nginx skips an argument without a name (`=x`).
    if (name === '') continue;
    const value: ArgValue = eq === -1 ? true : percentDecode(part.slice(eq + 1), true) ?? '';
    const list = args.get(name);
    if (list) list.push(value);
    else args.set(name, [value]);
  }
  return args;
}

/** `ngx.escape_uri` (component flavour): what `ngx.encode_args` applies to names and values. */
function escapeComponent(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const ch = String.fromCharCode(byte);
    out += /[A-Za-z0-9\-._~]/.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** `ngx.encode_args()`: the query string nginx's `$args` becomes after `set_uri_args`. */
export function encodeQuery(args: ArgTable): string {
  const parts: string[] = [];
  for (const [name, values] of args) {
    for (const value of values) {
      parts.push(value === true ? escapeComponent(name) : `${escapeComponent(name)}=${escapeComponent(value)}`);
    }
  }
  return parts.join('&');
}

/**
 * APISIX's `core.utils.uri_safe_encode`, applied to a Rewrite's path and to
 * the default upstream URI: escapes only space, `#`, `%`, `?`, control bytes
 * and non-ASCII bytes. A runner must therefore send the path decoded: `%20`
 * sent would arrive upstream as `%2520`.
 */
export function uriSafeEncode(path: string): string {
  let out = '';
  for (const byte of Buffer.from(path, 'utf8')) {
    const escape = byte <= 0x20 || byte === 0x23 || byte === 0x25 || byte === 0x3f || byte >= 0x7f;
    out += escape ? `%${byte.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(byte);
  }
  return out;
}

/** Splits a raw request target into its path and query (without `?`); null query when there is no `?`. */
export function splitRequestTarget(target: string): { path: string; query: string | null } {
  const q = target.indexOf('?');
  return q === -1 ? { path: target, query: null } : { path: target.slice(0, q), query: target.slice(q + 1) };
}
