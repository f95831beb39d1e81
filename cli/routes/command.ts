// `gatehouse routes export|diff|apply`: the routes of apisix-conf/apisix.yaml
// for APISIX in either mode. Standalone nodes get the exported YAML; nodes in
// traditional mode get the same objects through the Admin API, PUT by id and
// only when they differ from what APISIX stores.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { packageRoot } from '../../runtime/paths.js';
import { EXIT, parseFlags, type CliIo } from '../io.js';
import { AdminApi } from './admin-api.js';
import { applyPlan, pendingChanges, plan, renderPlan } from './plan.js';
import { ROUTE_VARIABLES, exportStandalone, isCredentialName, loadRoutesFile, resolveEnvReferences } from './routes-file.js';

export const USAGE = `usage: gatehouse routes <export|diff|apply> [options]

  export   print the standalone apisix.yaml (ends with #END)
           --out <file>   write it there instead
  diff     compare the routes file with what APISIX's Admin API stores
  apply    show the diff, then PUT what changed (upstreams before routes)
           --yes          do not ask for confirmation
           --prune        also delete routes and upstreams APISIX has but the file does not

  --file <apisix.yaml>    routes file (default: apisix-conf/apisix.yaml of this package)
  --allow-env <NAME>      diff/apply: one more variable \${{NAME}} in the file may be resolved
                          from the environment (repeatable; by default ${ROUTE_VARIABLES.join(', ')};
                          never a credential: a name with KEY, TOKEN, SECRET, PASSWORD, ...)

Environment: ADMIN_API_URL (e.g. http://127.0.0.1:9180), ADMIN_API_KEY (sent as X-API-KEY).
The plan prints \${{NAME}} as the file writes it, and any credential of the
environment that shows up in what APISIX stores as [NAME].
`;

/** Runs the command; returns the process exit code. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  const parsed = parseFlags(
    argv,
    {
      file: { type: 'string' },
      out: { type: 'string' },
      yes: { type: 'boolean', short: 'y', default: false },
      prune: { type: 'boolean', default: false },
      'allow-env': { type: 'string', multiple: true, default: [] },
      help: { type: 'boolean', short: 'h', default: false },
    },
    USAGE,
    io,
  );
  if (!parsed) return EXIT.usage;
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(USAGE);
    return EXIT.ok;
  }
  const [group, command, ...rest] = positionals;
  if (group !== 'routes' || !command || !['export', 'diff', 'apply'].includes(command) || rest.length > 0) {
    io.err(USAGE);
    return EXIT.usage;
  }
  for (const name of values['allow-env']) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      io.err(`--allow-env ${JSON.stringify(name)}: not a variable name\n`);
      return EXIT.usage;
    }
    if (isCredentialName(name)) {
      io.err(`--allow-env ${name}: a credential is never written into a route\n`);
      return EXIT.usage;
    }
  }
  const allowed = new Set([...ROUTE_VARIABLES, ...values['allow-env']]);
  // What is printed from here on never carries a credential of this environment.
  const redact = redactor(io.env);
  const out = (text: string) => io.out(redact(text));
  const err = (text: string) => io.err(redact(text));

  try {
    const file = loadRoutesFile(resolve(values.file ?? join(packageRoot(), 'apisix-conf', 'apisix.yaml')));
    if (command === 'export') {
      const text = exportStandalone(file);
      if (values.out) writeFileSync(values.out, text);
      else io.out(text);
      return EXIT.ok;
    }

    const url = io.env.ADMIN_API_URL?.trim();
    const key = io.env.ADMIN_API_KEY?.trim();
    if (!url || !key) {
      err('ADMIN_API_URL and ADMIN_API_KEY must be set (the key comes from your secret store; none is built in)\n');
      return EXIT.usage;
    }
    const api = new AdminApi(url, key);
    // The Admin API stores what it is given: ${{VAR}} references are resolved here, as standalone APISIX
    // would, for the allowed names only; the plan shows them as the file writes them.
    const actions = await plan(api, resolveEnvReferences(file, io.env, allowed));
    out(renderPlan(actions, values.prune, file));
    const pending = pendingChanges(actions, values.prune);
    if (command === 'diff' || pending === 0) {
      if (pending === 0) out('APISIX already matches the routes file.\n');
      return EXIT.ok;
    }
    if (!values.yes) {
      if (!io.confirm) {
        err('refusing to apply without confirmation: no terminal to ask on; pass --yes\n');
        return EXIT.refused;
      }
      if (!(await io.confirm(`Apply ${pending} change(s) to ${url}? [y/N] `))) {
        err('nothing applied\n');
        return EXIT.refused;
      }
    }
    await applyPlan(api, actions, values.prune, (line) => out(`${line}\n`));
    return EXIT.ok;
  } catch (error) {
    err(`gatehouse routes ${command}: ${(error as Error).message}\n`);
    return EXIT.failed;
  }
}

/** Shorter values are not taken for credentials (they would garble unrelated text). */
const MIN_REDACTED_LENGTH = 6;

/**
 * Replaces, in printed text, the value of every credential of the
 * environment (the Admin key, tokens, passwords: isCredentialName), as it is
 * and as JSON writes it, with [NAME]: what APISIX stores may hold one (a route
 * written by hand, or by an earlier tool), and a diff prints it.
 */
export function redactor(env: NodeJS.ProcessEnv): (text: string) => string {
  const secrets: [string, string][] = [];
  for (const [name, raw] of Object.entries(env)) {
    const value = raw?.trim();
    if (!value || value.length < MIN_REDACTED_LENGTH || !isCredentialName(name)) continue;
    secrets.push([value, name], [JSON.stringify(value).slice(1, -1), name]);
  }
  secrets.sort((a, b) => b[0].length - a[0].length);
  return (text) => secrets.reduce((redacted, [value, name]) => redacted.replaceAll(value, `[${name}]`), text);
}

/** A yes/no question on the terminal, or undefined when stdin is not one. */
export function terminalConfirm(): CliIo['confirm'] {
  if (!process.stdin.isTTY) return undefined;
  return async (question) => {
    const rl = createInterface({ input: process.stdin, output: process.stderr });
    try {
      return /^y(es)?$/i.test((await rl.question(question)).trim());
    } finally {
      rl.close();
    }
  };
}
