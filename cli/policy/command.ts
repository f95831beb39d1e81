// `gatehouse policy ...`: policies as code. A directory of policies
// (<dir>/<name>/policy.rego, data.json, *_test.rego) pulled from, compared
// with and pushed to the CMS, with If-Match from what was pulled, so that a
// concurrent change is a conflict and never overwritten.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { createTwoFilesPatch } from 'diff';
import { opaPath } from '../../runtime/paths.js';
import { opaSandboxEnv, writeCompileCapabilities } from '../../cms/opa-capabilities.js';
import { isValidPolicyName } from '../../policy/store/names.js';
import { CmsClient, CmsError, versionOf } from '../cms-client.js';
import { EXIT, parseFlags, type CliIo } from '../io.js';
import {
  checkWritable,
  filesOf,
  localNames,
  policyObject,
  prettyData,
  readPolicyDir,
  readPolicyFolder,
  readState,
  sameContent,
  writePolicyDir,
  writeState,
  type PolicyFiles,
} from './files.js';
import { describeReplay, replayLog } from './replay.js';

export const POLICY_USAGE = `usage: gatehouse policy <command> [names...] [options]

  pull [names]          write the live policies (default: every one you may read) to the directory
  diff [names]          show what the directory would change on the CMS (Rego, data, tests)
                        --exit-code   exit 6 when there are differences
  push [names]          write what changed, each with If-Match from the version pulled
                        --wait <s>    answer once every gateway enforces it (Prefer: wait)
  check [names]         compile, load and test on the CMS, writing nothing
  replay <name> --log <file>
                        replay the decisions a gateway logged (DECISION_LOG=file:...) for policy
                        <name> with the live version and the local draft, on the CMS, writing
                        nothing; prints each decision the draft changes and exits 6 if any
                        --file <path>      the draft: a policy.rego (data.json, *_test.rego beside
                                           it) or its folder (default: <dir>/<name>)
                        --allow-changes    exit 0 when decisions change
  test [names]          run the tests locally with opa (OPA_PATH, else this package's pinned opa),
                        as the CMS gate runs them: the gateway engine's builtins only (no
                        http.send, no opa.runtime), an environment of PATH and HOME only
  status <name>         which live gateways enforce the current version
  history <name>        the retained versions
  rollback <name> <v>   write version v again as the next version (--wait <s>)

  --dir <dir>           the policies directory (default: ./policies)
  --url <url>           the CMS, or the gateway in front of it (default: GATEHOUSE_URL, else http://127.0.0.1:9080)
  --token-file <file>   the bearer token (default: GATEHOUSE_TOKEN, else GATEHOUSE_TOKEN_FILE)
  --insecure            allow an http:// URL that is not loopback (the token goes with every call)
  --json                one JSON document on stdout, for scripts

Exit codes: 0 done; 1 failed (network, CMS error); 2 usage or configuration;
3 refused (does not compile, tests fail); 4 conflict (changed on the CMS since
it was pulled); 5 not enforced by every gateway in time; 6 differences (diff --exit-code),
or decisions the draft changes (replay).
`;

class CliExit extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const run = promisify(execFile);

export async function runPolicyCli(argv: string[], io: CliIo): Promise<number> {
  const parsed = parseFlags(
    argv,
    {
      dir: { type: 'string' },
      url: { type: 'string' },
      'token-file': { type: 'string' },
      json: { type: 'boolean', default: false },
      wait: { type: 'string' },
      'exit-code': { type: 'boolean', default: false },
      insecure: { type: 'boolean', default: false },
      log: { type: 'string' },
      file: { type: 'string' },
      'allow-changes': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    POLICY_USAGE,
    io,
  );
  if (!parsed) return EXIT.usage;
  const { values, positionals } = parsed;
  const [command, ...args] = positionals;
  if (values.help || !command) {
    (values.help ? io.out : io.err)(POLICY_USAGE);
    return values.help ? EXIT.ok : EXIT.usage;
  }
  const dir = resolve(io.cwd ?? process.cwd(), values.dir ?? 'policies');
  const json = values.json;
  const report: Record<string, unknown> = { command };
  const say = (text: string) => {
    if (!json) io.out(text.endsWith('\n') ? text : `${text}\n`);
  };

  let wait: number | null = null;
  if (values.wait !== undefined) {
    wait = Number(values.wait);
    if (!/^\d{1,2}$/.test(values.wait) || wait > 60) {
      io.err('--wait takes whole seconds, at most 60\n');
      return EXIT.usage;
    }
  }

  let code: number = EXIT.ok;
  try {
    // Names become paths under the directory and the CMS's URLs: the CMS's rule, before anything else.
    for (const name of command === 'rollback' ? args.slice(0, 1) : args) {
      if (!isValidPolicyName(name))
        throw new CliExit(EXIT.usage, `${JSON.stringify(name)} is not a policy name (lowercase letters, digits and "-", at most 63)`);
    }
    if (command === 'test') {
      code = await localTest(dir, args.length ? args : localNames(dir), io, report, say);
    } else {
      const client = cmsClient(values.url, values['token-file'], values.insecure, io);
      switch (command) {
        case 'pull':
          code = await pull(client, dir, args, report, say);
          break;
        case 'diff':
          code = await diff(client, dir, args, values['exit-code'], report, say);
          break;
        case 'push':
          code = await push(client, dir, args, wait, report, say);
          break;
        case 'check':
          code = await check(client, dir, args, report, say);
          break;
        case 'replay': {
          const name = one(args, 'replay <name> --log <file> [--file <policy.rego>] [--allow-changes]');
          if (values.log === undefined) throw new CliExit(EXIT.usage, 'usage: gatehouse policy replay <name> --log <file>: name the decision log');
          code = await replay(client, dir, name, values.log, values.file, values['allow-changes'], io, report, say);
          break;
        }
        case 'status':
          code = await status(client, one(args, 'status <name>'), report, say);
          break;
        case 'history':
          code = await history(client, one(args, 'history <name>'), report, say);
          break;
        case 'rollback': {
          if (args.length !== 2 || !/^[1-9]\d{0,11}$/.test(args[1]!)) throw new CliExit(EXIT.usage, 'usage: gatehouse policy rollback <name> <version>');
          code = await rollback(client, dir, args[0]!, Number(args[1]), wait, report, say);
          break;
        }
        default:
          throw new CliExit(EXIT.usage, `unknown command ${JSON.stringify(command)}\n${POLICY_USAGE}`);
      }
    }
  } catch (error) {
    if (error instanceof CliExit) {
      io.err(`${error.message}\n`);
      code = error.code;
      report.error = error.message;
    } else if (error instanceof CmsError) {
      io.err(`${error.message}\n${details(error)}`);
      code =
        error.status === 412 || error.status === 409
          ? EXIT.conflict
          : error.status === 400 || error.status === 422
            ? EXIT.refused
            : error.status === 401 || error.status === 403
              ? EXIT.usage
              : EXIT.failed;
      report.error = { status: error.status, ...error.problem };
    } else {
      io.err(`gatehouse policy ${command}: ${(error as Error).message}\n`);
      code = EXIT.failed;
      report.error = (error as Error).message;
    }
  }
  report.exitCode = code;
  if (json) io.out(`${JSON.stringify(report, null, 2)}\n`);
  return code;
}

function one(args: string[], usage: string): string {
  if (args.length !== 1) throw new CliExit(EXIT.usage, `usage: gatehouse policy ${usage}`);
  return args[0]!;
}

/** 127.0.0.0/8, ::1 and localhost: a plain http:// URL there never leaves the machine. */
function isLoopback(hostname: string): boolean {
  const host = hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '0:0:0:0:0:0:0:1';
}

function cmsClient(url: string | undefined, tokenFile: string | undefined, insecure: boolean, io: CliIo): CmsClient {
  const base = url ?? io.env.GATEHOUSE_URL ?? 'http://127.0.0.1:9080';
  let parsed: URL;
  try {
    parsed = new URL(base);
  } catch {
    throw new CliExit(EXIT.usage, `${JSON.stringify(base)} is not a URL`);
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new CliExit(EXIT.usage, `${parsed.protocol} URLs are not supported: use https://`);
  // The bearer token travels with every call: in clear text only to this machine, unless asked for.
  if (parsed.protocol === 'http:' && !isLoopback(parsed.hostname) && !insecure) {
    throw new CliExit(EXIT.usage, `refusing to send the token over plain http to ${parsed.host}: use https://, or pass --insecure`);
  }
  const file = tokenFile ?? io.env.GATEHOUSE_TOKEN_FILE;
  const token = (tokenFile ? undefined : io.env.GATEHOUSE_TOKEN) ?? (file && existsSync(file) ? readFileSync(file, 'utf8').trim() : undefined);
  if (!token) throw new CliExit(EXIT.usage, 'no token: set GATEHOUSE_TOKEN, or GATEHOUSE_TOKEN_FILE / --token-file to a file holding it');
  return new CmsClient(base, token);
}

/** The lines of a problem that help: compile diagnostics and failing tests, at their file and row. */
function details(error: CmsError): string {
  const lines: string[] = [];
  for (const raw of error.problem?.errors ?? []) {
    const e = raw as { file?: string; row?: number; col?: number; code?: string; message?: string };
    lines.push(`  ${e.file ?? '?'}:${e.row ?? 0}:${e.col ?? 0}: ${e.code ?? 'error'}: ${e.message ?? ''}`);
  }
  for (const raw of error.problem?.failures ?? []) {
    const f = raw as { file?: string; row?: number; name?: string; message?: string };
    lines.push(`  ${f.file ?? '?'}:${f.row ?? 0}: FAIL ${f.name ?? '?'}: ${f.message ?? ''}`);
  }
  return lines.length ? `${lines.join('\n')}\n` : '';
}

async function live(client: CmsClient, name: string): Promise<{ files: PolicyFiles; version: number } | null> {
  const answer = await client.expect('GET', `/policies/${name}`, [200, 404]);
  if (answer.status === 404) return null;
  return { files: filesOf(answer.text, name), version: versionOf(answer.headers.etag) };
}

async function pull(client: CmsClient, dir: string, names: string[], report: Record<string, unknown>, say: (t: string) => void): Promise<number> {
  const wanted = names.length ? names : await client.names();
  // Everything read and checked first (names, test file names, paths): one bad answer writes nothing.
  const fetched: { name: string; files: PolicyFiles; version: number }[] = [];
  for (const name of wanted) {
    const current = await live(client, name);
    if (!current) throw new CliExit(EXIT.failed, `no policy ${name} on the CMS`);
    checkWritable(dir, name, current.files);
    fetched.push({ name, ...current });
  }
  const pulled: { name: string; version: number }[] = [];
  for (const { name, files, version } of fetched) {
    writePolicyDir(dir, name, files, { version });
    pulled.push({ name, version });
    say(`pulled ${name} version ${version}`);
  }
  report.pulled = pulled;
  return EXIT.ok;
}

function fileDiff(name: string, file: string, before: string | null, after: string | null): string {
  if (before === after) return '';
  return createTwoFilesPatch(
    before === null ? '/dev/null' : `live/${name}/${file}`,
    after === null ? '/dev/null' : `local/${name}/${file}`,
    before ?? '',
    after ?? '',
  );
}

function diffFiles(name: string, liveFiles: PolicyFiles | null, local: PolicyFiles): { files: string[]; patch: string } {
  const parts: [string, string | null, string | null][] = [
    ['policy.rego', liveFiles?.rego ?? null, local.rego],
    ['data.json', liveFiles ? prettyData(liveFiles.dataText) : null, prettyData(local.dataText)],
  ];
  const testNames = new Set([...Object.keys(liveFiles?.tests ?? {}), ...Object.keys(local.tests)]);
  for (const test of [...testNames].sort()) parts.push([test, liveFiles?.tests[test] ?? null, local.tests[test] ?? null]);
  const changed = parts.filter(([, a, b]) => a !== b);
  return { files: changed.map(([file]) => file), patch: changed.map(([file, a, b]) => fileDiff(name, file, a, b)).join('') };
}

async function diff(
  client: CmsClient,
  dir: string,
  names: string[],
  exitCode: boolean,
  report: Record<string, unknown>,
  say: (t: string) => void,
): Promise<number> {
  const locals = names.length ? names : localNames(dir);
  const changes: { name: string; status: 'new' | 'changed' | 'same'; files: string[] }[] = [];
  for (const name of locals) {
    const local = readPolicyDir(dir, name);
    const current = await live(client, name);
    if (current && sameContent(current.files, local)) {
      changes.push({ name, status: 'same', files: [] });
      continue;
    }
    const { files, patch } = diffFiles(name, current?.files ?? null, local);
    changes.push({ name, status: current ? 'changed' : 'new', files });
    say(`${current ? '~' : '+'} ${name}${current ? ` (live version ${current.version})` : ' (not on the CMS)'}\n${patch}`);
  }
  const liveOnly = names.length ? [] : (await client.names()).filter((name) => !locals.includes(name));
  for (const name of liveOnly) say(`- ${name}: on the CMS, not in ${dir} (push never deletes)`);
  report.changes = changes;
  report.liveOnly = liveOnly;
  const differs = changes.some((c) => c.status !== 'same');
  if (!differs) say('no differences');
  return differs && exitCode ? EXIT.differs : EXIT.ok;
}

async function push(
  client: CmsClient,
  dir: string,
  names: string[],
  wait: number | null,
  report: Record<string, unknown>,
  say: (t: string) => void,
): Promise<number> {
  const locals = names.length ? names : localNames(dir);
  const pushed: Record<string, unknown>[] = [];
  report.pushed = pushed;
  let code: number = EXIT.ok;
  for (const name of locals) {
    const local = readPolicyDir(dir, name);
    const state = readState(dir, name);
    const current = await live(client, name);
    if (current && sameContent(current.files, local)) {
      say(`${name}: unchanged (version ${current.version})`);
      pushed.push({ name, outcome: 'unchanged', version: current.version });
      continue;
    }
    if (!state && current) {
      throw new CliExit(
        EXIT.conflict,
        `${name}: exists on the CMS (version ${current.version}) but was not pulled here; pull it first, so that a push cannot overwrite what you have not seen`,
      );
    }
    // If-Match from what was pulled: a change made on the CMS since then is a conflict, not an overwrite.
    const condition: Record<string, string> = state ? { 'if-match': `"${state.version}"` } : { 'if-none-match': '*' };
    let answer;
    try {
      answer = await client.expect('PUT', `/policies/${name}`, [200, 201], {
        body: policyObject(local),
        headers: { ...condition, ...(wait !== null ? { prefer: `wait=${wait}` } : {}) },
      });
    } catch (error) {
      if (error instanceof CmsError && error.status === 412) {
        throw new CliExit(
          EXIT.conflict,
          `${name}: changed on the CMS since version ${state?.version ?? '(none)'} was pulled (now ${current ? `version ${current.version}` : 'deleted'}); pull, merge your change, push again. Nothing was written.`,
        );
      }
      throw error;
    }
    const version = versionOf(answer.headers.etag);
    writeState(dir, name, { version });
    const enforcedBy = answer.headers['gatehouse-enforced-by'];
    const behind = answer.headers['gatehouse-behind'];
    pushed.push({
      name,
      outcome: answer.status === 201 ? 'created' : 'replaced',
      version,
      ...(enforcedBy ? { enforcedBy } : {}),
      ...(behind ? { behind: behind.split(', ') } : {}),
    });
    say(
      `${name}: ${answer.status === 201 ? 'created' : 'replaced'}, version ${version}${enforcedBy ? `, enforced by ${enforcedBy} gateways` : ''}${behind ? ` (behind: ${behind})` : ''}`,
    );
    if (behind) code = EXIT.notEnforced;
  }
  return code;
}

async function check(client: CmsClient, dir: string, names: string[], report: Record<string, unknown>, say: (t: string) => void): Promise<number> {
  const results: Record<string, unknown>[] = [];
  report.checked = results;
  let code: number = EXIT.ok;
  for (const name of names.length ? names : localNames(dir)) {
    const answer = await client.call('POST', `/policies/${name}/check`, { body: policyObject(readPolicyDir(dir, name)) });
    if (answer.status === 200) {
      const ok = JSON.parse(answer.text) as { tests: { passed: number } };
      results.push({ name, ok: true, testsPassed: ok.tests.passed });
      say(`${name}: ok (${ok.tests.passed} tests passed)`);
      continue;
    }
    const problem = JSON.parse(answer.text) as CmsError['problem'];
    const error = new CmsError(answer.status, problem, `${name}: ${answer.status} ${problem?.title ?? ''}${problem?.detail ? `: ${problem.detail}` : ''}`);
    if (answer.status !== 400 && answer.status !== 422) throw error;
    results.push({ name, ok: false, status: answer.status, ...problem });
    say(`${error.message}\n${details(error)}`);
    code = EXIT.refused;
  }
  return code;
}

async function replay(
  client: CmsClient,
  dir: string,
  name: string,
  logFile: string,
  file: string | undefined,
  allowChanges: boolean,
  io: CliIo,
  report: Record<string, unknown>,
  say: (t: string) => void,
): Promise<number> {
  const log = resolve(io.cwd ?? process.cwd(), logFile);
  if (!existsSync(log) || !statSync(log).isFile()) throw new CliExit(EXIT.usage, `no decision log at ${log}`);
  let draft: PolicyFiles;
  if (file === undefined) {
    if (!existsSync(join(dir, name, 'policy.rego')))
      throw new CliExit(EXIT.usage, `no draft of ${name}: ${join(dir, name, 'policy.rego')} does not exist (pull it, or pass --file)`);
    draft = readPolicyDir(dir, name);
  } else {
    const path = resolve(io.cwd ?? process.cwd(), file);
    if (!existsSync(path)) throw new CliExit(EXIT.usage, `no draft at ${path}`);
    draft = statSync(path).isDirectory() ? readPolicyFolder(path) : readPolicyFolder(dirname(path), basename(path));
  }
  const summary = await replayLog(client, name, log, draft);
  report.replay = { name, log, ...summary };
  if (summary.batches === 0) say(`${name}: no decision in ${log} names ${name}; nothing replayed`);
  for (const line of describeReplay(name, log, summary).slice(summary.batches === 0 ? 1 : 0)) say(line);
  if (summary.flips.length > 0 && !allowChanges) return EXIT.differs;
  return EXIT.ok;
}

async function localTest(dir: string, names: string[], io: CliIo, report: Record<string, unknown>, say: (t: string) => void): Promise<number> {
  const opa = opaPath(io.env.OPA_PATH);
  if (!existsSync(opa)) throw new CliExit(EXIT.usage, `no opa at ${opa}: set OPA_PATH, or run npm run setup in the gatehouse package`);
  // As the CMS gate runs them (cms/opa-capabilities.ts): the engine's builtins, nothing of this environment.
  const sandbox = await mkdtemp(join(tmpdir(), 'gatehouse-policy-test-'));
  try {
    const capabilities = join(sandbox, 'capabilities.json');
    await writeCompileCapabilities(capabilities);
    return await runLocalTests(dir, names, opa, { capabilities, env: opaSandboxEnv(io.env.PATH, sandbox) }, report, say);
  } finally {
    await rm(sandbox, { recursive: true, force: true });
  }
}

async function runLocalTests(
  dir: string,
  names: string[],
  opa: string,
  sandbox: { capabilities: string; env: Record<string, string> },
  report: Record<string, unknown>,
  say: (t: string) => void,
): Promise<number> {
  const results: Record<string, unknown>[] = [];
  report.tested = results;
  let code: number = EXIT.ok;
  for (const name of names) {
    const files = readPolicyDir(dir, name);
    const tests = Object.keys(files.tests);
    if (tests.length === 0) {
      say(`${name}: no tests`);
      results.push({ name, passed: 0, failed: [] });
      continue;
    }
    const base = join(dir, name);
    const attempt = async (v0: boolean) => {
      try {
        const { stdout } = await run(
          opa,
          [
            'test',
            '--format',
            'json',
            '--capabilities',
            sandbox.capabilities,
            '--timeout',
            '10s',
            ...(v0 ? ['--v0-compatible'] : []),
            'policy.rego',
            'data.json',
            ...tests,
          ],
          { cwd: base, env: sandbox.env },
        );
        return stdout;
      } catch (error) {
        const failure = error as { stdout?: string; stderr?: string };
        if (failure.stdout?.trim().startsWith('[')) return failure.stdout;
        return { stderr: failure.stderr ?? String(error) };
      }
    };
    let outcome = await attempt(false);
    if (typeof outcome !== 'string') outcome = await attempt(true);
    if (typeof outcome !== 'string') {
      say(`${name}: the tests do not load:\n${outcome.stderr}`);
      results.push({ name, error: outcome.stderr.trim() });
      code = EXIT.refused;
      continue;
    }
    const all = JSON.parse(outcome) as { name: string; fail?: boolean; error?: { message?: string }; location?: { file?: string; row?: number } }[];
    const failed = all.filter((t) => t.fail || t.error);
    results.push({ name, passed: all.length - failed.length, failed: failed.map((t) => t.name) });
    say(`${name}: ${all.length - failed.length}/${all.length} tests passed`);
    for (const t of failed) say(`  ${t.location?.file ?? '?'}:${t.location?.row ?? 0}: FAIL ${t.name}${t.error?.message ? `: ${t.error.message}` : ''}`);
    if (failed.length > 0) code = EXIT.refused;
  }
  return code;
}

async function status(client: CmsClient, name: string, report: Record<string, unknown>, say: (t: string) => void): Promise<number> {
  const answer = await client.expect('GET', `/policies/${name}/status`, [200]);
  const body = JSON.parse(answer.text) as {
    version: number;
    revision: number;
    enforcedBy: number;
    gateways: { id: string; datacenter: string | null; revision: number; enforces: boolean }[];
  };
  Object.assign(report, body);
  say(`${name} version ${body.version} (revision ${body.revision}): enforced by ${body.enforcedBy}/${body.gateways.length} gateways`);
  for (const g of body.gateways) say(`  ${g.enforces ? 'ok    ' : 'BEHIND'} ${g.id}${g.datacenter ? ` [${g.datacenter}]` : ''} at revision ${g.revision}`);
  return body.enforcedBy === body.gateways.length ? EXIT.ok : EXIT.notEnforced;
}

async function history(client: CmsClient, name: string, report: Record<string, unknown>, say: (t: string) => void): Promise<number> {
  const answer = await client.expect('GET', `/policies/${name}/history`, [200]);
  const body = JSON.parse(answer.text) as { versions: { version: number; author: string; updatedAt: string; sha256: string }[] };
  report.versions = body.versions;
  for (const v of body.versions) say(`${String(v.version).padStart(5)}  ${v.updatedAt}  ${v.author}  ${v.sha256.slice(0, 12)}`);
  return EXIT.ok;
}

async function rollback(
  client: CmsClient,
  dir: string,
  name: string,
  version: number,
  wait: number | null,
  report: Record<string, unknown>,
  say: (t: string) => void,
): Promise<number> {
  const state = existsSync(join(dir, name)) ? readState(dir, name) : null;
  const answer = await client.expect('POST', `/policies/${name}/rollback`, [200, 201], {
    body: JSON.stringify({ version }),
    headers: { ...(state ? { 'if-match': `"${state.version}"` } : {}), ...(wait !== null ? { prefer: `wait=${wait}` } : {}) },
  });
  const now = versionOf(answer.headers.etag);
  const behind = answer.headers['gatehouse-behind'];
  Object.assign(report, {
    name,
    from: version,
    version: now,
    ...(answer.headers['gatehouse-enforced-by'] ? { enforcedBy: answer.headers['gatehouse-enforced-by'] } : {}),
  });
  say(
    `${name}: version ${version} written again as version ${now}${answer.headers['gatehouse-enforced-by'] ? `, enforced by ${answer.headers['gatehouse-enforced-by']} gateways` : ''}${state ? '; pull to bring the directory in step' : ''}`,
  );
  return behind ? EXIT.notEnforced : EXIT.ok;
}
