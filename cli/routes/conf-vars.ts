// APISIX's `${{NAME}}` references, resolved as APISIX resolves them (in
// apisix.yaml, as standalone APISIX does): `gatehouse routes` before it sends routes to the Admin API (which stores
// what it is given), there only for the names it allows.

/** A reference to a variable that is unset and has no default; APISIX refuses the whole file. */
export class ConfVarError extends Error {
  override readonly name = 'ConfVarError';
  constructor(readonly variable: string) {
    super(`failed to handle configuration: can't find environment variable ${variable}`);
  }
}

/** A reference to a variable the caller does not allow (see ResolveOptions.allowed), with or without a default. */
export class ConfVarNotAllowedError extends Error {
  override readonly name = 'ConfVarNotAllowedError';
  constructor(readonly variable: string) {
    super(`\${{${variable}}} is not a variable that may be resolved here`);
  }
}

export interface ResolveOptions {
  /**
   * The only names that may be resolved: a reference to any other is refused
   * (ConfVarNotAllowedError), even with a default. Absent: every name, as
   * APISIX resolves them.
   */
  allowed?: ReadonlySet<string>;
}

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/**
 * APISIX's resolve_conf_var (apisix/cli/file.lua), which standalone mode
 * applies to apisix.yaml: `${{NAME}}` and `${{NAME:=default}}` in keys and
 * string values are replaced; a value that used a variable and reads as a
 * number or as true/false becomes one; a variable without value or default
 * makes the whole file invalid.
 */
export function resolveConfVars(node: unknown, env: Readonly<Record<string, string | undefined>>, options: ResolveOptions = {}): unknown {
  const substitute = (text: string): { value: string; used: boolean } => {
    let used = false;
    const value = text.replace(/\$\{\{\s*(\w+[:=]?.*?)\s*\}\}/g, (_, inner: string) => {
      let name = inner;
      let fallback: string | undefined;
      const split = inner.indexOf(':=');
      if (split !== -1) {
        fallback = inner.slice(split + 2).trim();
        name = inner.slice(0, split);
      }
      if (options.allowed && !options.allowed.has(name)) throw new ConfVarNotAllowedError(name);
      const found = env[name] ?? fallback;
      if (found === undefined) throw new ConfVarError(name);
      used = true;
      return found;
    });
    return { value, used };
  };
  if (Array.isArray(node)) return node.map((item) => resolveConfVars(item, env, options));
  if (isObject(node)) {
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(node)) out[substitute(key).value] = resolveConfVars(value, env, options);
    return out;
  }
  if (typeof node !== 'string') return node;
  const { value, used } = substitute(node);
  if (!used) return value;
  // Lua's tonumber: decimal (with exponent) or hexadecimal, surrounding spaces allowed.
  if (/^\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|0[xX][\da-fA-F]+)\s*$/.test(value)) return Number(value.trim());
  if (value === 'true') return true;
  if (value === 'false') return false;
  return value;
}
