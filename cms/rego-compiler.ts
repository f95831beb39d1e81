/**
 * Compiles one Rego module (plus its data document) to OPA wasm with the real
 * `opa` binary, the way every Gatehouse policy is compiled: the CMS on each
 * PUT, and the build for the CMS's own access policy.
 *
 * Steps, each an `opa` process run with execFile (no shell) and a timeout,
 * in a private temp dir that is removed afterwards:
 *   1. `opa parse --format json`: Rego v1 first; if that does not parse, v0
 *      (`--v0-compatible`). Gives the syntax version and the package, which
 *      becomes the single entrypoint, so every rule of the package (allow,
 *      reason, status_code, headers, ...) is visible to the caller.
 *   2. `opa check --schema` with the input's JSON Schema (default: the
 *      gateway's, plugins/opa/input.schema.json) over the policy, its data
 *      and its test modules: a policy that reads a field the input does not
 *      have (`input.usr.role`), or compares one with a value of another type,
 *      is refused here with OPA's row and column, before anything is built.
 *   3. `opa build -t wasm -e <package>` against the capabilities that
 *      @open-policy-agent/opa-wasm ships: a builtin that SDK cannot run is a
 *      compile error now, not a failure at request time. data.json is part of
 *      the build, so OPA itself reads the data document once before it is stored.
 *   4. Only on a failed build: `opa check --format json` with the same
 *      options, for OPA's messages with row and column.
 *   5. The built wasm metered for fuel (policy/engine/meter.ts, in the
 *      process's metering worker), unless `metered: false`: the module is
 *      stored as every gateway runs it, so that no gateway loads binaryen or
 *      spends a core rewriting each new module (its engine compiles a
 *      metered module as it is).
 *   6. Beside it, `opa deps` on the entrypoint: the parts of the input the
 *      policy can read (`inputRefs`), which gateways then show it alone;
 *      the wasm parses its whole input on every evaluation. Remembered by
 *      the Rego's sha256: a write of new data alone runs no opa deps.
 *
 * Each opa process may commit at most `memoryMaxBytes` (its data segment,
 * through `prlimit --data`: Go reserves address space it never uses, so an
 * address-space limit would stop opa before it starts, while the data limit
 * counts only the memory it maps writable), with GOMEMLIMIT at 3/4 of it so
 * that Go collects before it reaches the wall, and GOMAXPROCS=2 so that its
 * footprint does not grow with the host's cores. Test runs (`opa test`,
 * whose memory and time the tests decide) are at most `testConcurrency` at once.
 */
import { inSpan } from './tracing.js';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { LRUCache } from 'lru-cache';
import pLimit, { type LimitFunction } from 'p-limit';
import { list as listTar } from 'tar'; // reads the gzipped bundle opa writes, without a tar binary
import { sha256Hex, type PolicySubmission } from '../policy/store/index.js';
import { policyInputSchema } from '../plugins/opa/input-schema.js';
import { meterWasm } from '../policy/engine/metering.js';
import { MAX_INPUT_REF_DEPTH, MAX_INPUT_REFS } from '../policy/engine/serialised-input.js';
import { compilerSearchPath } from './config.js';
import { opaSandboxEnv, writeCompileCapabilities } from './opa-capabilities.js';

const run = promisify(execFile);

export type RegoSyntaxVersion = 'v0' | 'v1';

export interface RegoDiagnostic {
  code: string;
  message: string;
  /** "policy.rego" or "data.json" */
  file?: string;
  row?: number;
  col?: number;
}

export interface CompiledPolicy {
  /** The policy's tests, when it has some: all of them passed. */
  tests?: { passed: number };
  /** The module as gateways run it: opa's policy.wasm, metered for fuel unless the compiler was told not to (step 5). */
  wasm: Buffer;
  /** Package path with slashes, e.g. "project/authz". */
  entrypoint: string;
  syntaxVersion: RegoSyntaxVersion;
  /** The parts of the input the policy can read (step 6); absent: the whole input. */
  inputRefs?: string[][];
  opaVersion: string;
  durationMs: number;
}

/** A compiled policy as the store writes it: source, data text, wasm and how it was built. */
export function policySubmission(rego: string, dataText: string, compiled: CompiledPolicy, author: string): PolicySubmission {
  return {
    rego,
    dataText,
    wasm: compiled.wasm,
    author,
    opaVersion: compiled.opaVersion,
    entrypoint: compiled.entrypoint,
    syntaxVersion: compiled.syntaxVersion,
    ...(compiled.inputRefs ? { inputRefs: compiled.inputRefs } : {}),
  };
}

/** The Rego (or its data) is wrong: the caller's fault, with OPA's diagnostics. */
export class RegoCompileError extends Error {
  override readonly name = 'RegoCompileError';
  constructor(readonly diagnostics: RegoDiagnostic[]) {
    super(diagnostics.map((d) => `${d.row ?? 0}:${d.col ?? 0} ${d.code}: ${d.message}`).join('\n') || 'compile failed');
  }
}

export interface PolicyTestFailure {
  /** The test rule, e.g. "test_viewer_denied". */
  name: string;
  /** Its package, e.g. "data.project.authz_test". */
  package: string;
  /** The test file and the rule's row in it. */
  file?: string;
  row?: number;
  message: string;
}

/** The policy compiles but its tests do not all pass: nothing may be written. */
export class PolicyTestsFailedError extends Error {
  override readonly name = 'PolicyTestsFailedError';
  constructor(
    readonly failures: PolicyTestFailure[],
    readonly passed: number,
  ) {
    super(`${failures.length} of ${failures.length + passed} policy tests failed: ${failures.map((f) => f.name).join(', ')}`);
  }
}

/** Too many compiles are running and waiting already: try again shortly (nothing was started). */
export class CompilerBusyError extends Error {
  override readonly name = 'CompilerBusyError';
}

/** opa itself could not run (missing, crashed, timed out): our fault. */
export class CompilerUnavailableError extends Error {
  override readonly name = 'CompilerUnavailableError';
}

/** The policy's tests were stopped: `opa test` needed more memory, or more time, than a test run may have. Nothing may be written. */
export class PolicyTestsStoppedError extends Error {
  override readonly name = 'PolicyTestsStoppedError';
  constructor(
    readonly resource: 'memory' | 'time',
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** An opa process was stopped at its memory limit or its deadline (internal: each step says what that means). */
class OpaStoppedError extends Error {
  override readonly name = 'OpaStoppedError';
  constructor(
    readonly resource: 'memory' | 'time',
    message: string,
  ) {
    super(message);
  }
}

export interface RegoCompilerOptions {
  opaPath: string;
  /** PATH of the opa processes, where prlimit is found (default: the CMS configuration's, cms/config.ts). */
  searchPath?: string;
  timeoutMs?: number;
  /** Compiles running at once (each runs its opa processes one after another: parse, check, build, then deps beside the tests); default: the number of cores. */
  concurrency?: number;
  /** Compiles that may wait for a slot; one more is refused with CompilerBusyError. Default: 4 per slot. */
  maxQueued?: number;
  /** The most memory each opa process may commit, bytes (prlimit --data); default 256 MiB. */
  memoryMaxBytes?: number;
  /** Test runs (opa test) at once; a compile whose tests must wait keeps its slot. Default 2. */
  testConcurrency?: number;
  /**
   * The JSON Schema file of `input` that every policy and its tests are
   * type-checked against (`opa check --schema`); default: the gateway's
   * policy input (plugins/opa/input-schema.ts). A policy written for another
   * input says so with OPA's own `# METADATA` `schemas:` annotation.
   */
  inputSchemaPath?: string;
  /** Whether the built wasm is metered for fuel (step 5); false only where gateways run unmetered (POLICY_EVAL_FUEL=off). Default true. */
  metered?: boolean;
}

const POLICY_FILE = 'policy.rego';
const DATA_FILE = 'data.json';
const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_OPA_MEMORY_MAX_BYTES = 256 * 1024 * 1024;
/**
 * How Go dies when it cannot map memory (the data limit reached): "fatal
 * error: runtime: out of memory" or "cannot allocate memory" mostly, but
 * also a thread it cannot start, or a segmentation fault in the collector
 * when an allocation of its own fails.
 */
const GO_OUT_OF_MEMORY = /^fatal error: |runtime: out of memory|pthread_create failed|^SIGSEGV: segmentation violation|^unexpected fault address/m;
/** Signals a process at its data limit dies of, without a word (mmap fails where the runtime does not look). */
const OUT_OF_MEMORY_SIGNALS = new Set(['SIGSEGV', 'SIGBUS', 'SIGABRT']);

interface ProcessResult {
  ok: boolean;
  stdout: string;
  stderr: string;
}

function relativeFile(file: unknown): string | undefined {
  if (typeof file !== 'string' || file.length === 0) return undefined;
  const test = file.match(/(?:^|\/)tests\/([^/]+_test\.rego)$/);
  if (test) return test[1];
  return file.endsWith(DATA_FILE) ? DATA_FILE : file.endsWith(POLICY_FILE) ? POLICY_FILE : undefined;
}

/** Reads `{"errors":[...]}` as printed by opa parse/check --format json; null when it is not that. */
function diagnosticsFrom(text: string): RegoDiagnostic[] | null {
  const start = text.indexOf('{');
  if (start < 0) return null;
  try {
    const parsed = JSON.parse(text.slice(start)) as { errors?: unknown };
    if (!Array.isArray(parsed.errors)) return null;
    return parsed.errors.map((raw) => {
      const error = raw as { code?: unknown; message?: unknown; location?: { file?: unknown; row?: unknown; col?: unknown }; details?: unknown };
      const message = typeof error.message === 'string' ? error.message : 'unknown error';
      const diagnostic: RegoDiagnostic = {
        code: typeof error.code === 'string' ? error.code : 'rego_error',
        message: message + typeErrorDetail(message, error.details),
      };
      const file = relativeFile(error.location?.file);
      if (file) diagnostic.file = file;
      if (typeof error.location?.row === 'number' && error.location.row > 0) diagnostic.row = error.location.row;
      if (typeof error.location?.col === 'number' && error.location.col > 0) diagnostic.col = error.location.col;
      return diagnostic;
    });
  } catch {
    return null;
  }
}

/** An OPA type in words: "string", "object{role, sub}", "any<string, null>". */
function typeName(type: unknown): string {
  const t = type as { type?: unknown; static?: { key?: unknown }[]; dynamic?: unknown; of?: unknown[] } | null;
  if (!t || typeof t.type !== 'string') return 'unknown';
  if (t.type === 'object' && Array.isArray(t.static)) return `object{${t.static.map((p) => String(p.key)).join(', ')}${t.dynamic ? ', ...' : ''}}`;
  if (t.type === 'any' && Array.isArray(t.of)) return `any<${t.of.map(typeName).join(', ')}>`;
  return t.type;
}

/**
 * What OPA's type checker found, as its pretty format prints it below the
 * message (the JSON format has it in `details` only): for an unknown field,
 * which one and what the input has there; for a match error, the two types.
 */
function typeErrorDetail(message: string, details: unknown): string {
  if (!details || typeof details !== 'object') return '';
  const d = details as { ref?: { value?: unknown }[]; pos?: unknown; oneOf?: unknown; a?: unknown; b?: unknown };
  if (message.startsWith('undefined ref') && Array.isArray(d.ref) && typeof d.pos === 'number' && Array.isArray(d.oneOf)) {
    return ` (have ${JSON.stringify(d.ref[d.pos]?.value)}, want one of: ${d.oneOf.map(String).join(', ')})`;
  }
  if (message === 'match error' && d.a !== undefined && d.b !== undefined) {
    const [a, b] = [typeName(d.a), typeName(d.b)];
    const nullHint =
      (a.startsWith('object') && b === 'null') || (b.startsWith('object') && a === 'null')
        ? '; the input schema types that field as an object even where it may be null: test it with != null or is_null()'
        : '';
    return `: ${a} against ${b}${nullHint}`;
  }
  return '';
}

/** Plain-text opa errors (`file:row: code: message`) as diagnostics, the temp dir removed. */
function diagnosticsFromText(text: string, workDir: string): RegoDiagnostic[] {
  const lines = text
    .split('\n')
    .map((line) => line.replaceAll(`${workDir}/`, '').trim())
    .filter(Boolean);
  return lines.map((line) => {
    const match = line.match(/^(?:error: )?(?:\d+ errors? occurred[^:]*: )?(policy\.rego|data\.json|tests\/[^:/]+_test\.rego):(\d+): (\w+): (.*)$/);
    if (!match) return { code: 'rego_error', message: line };
    return { file: match[1]!.replace(/^tests\//, ''), row: Number(match[2]), code: match[3] as string, message: match[4] as string };
  });
}

export class RegoCompiler {
  readonly opaPath: string;
  private readonly searchPath: string;
  private readonly timeoutMs: number;
  private readonly memoryMaxBytes: number;
  private readonly inputSchemaPath: string;
  private versionPromise: Promise<string> | undefined;
  /**
   * Input refs by the sha256 of the Rego they were listed for: they depend
   * on the module alone (opa deps reads no data), so a write that changes
   * only the data, or brings back a Rego seen lately, runs no opa deps.
   */
  private readonly refsByRego = new LRUCache<string, { refs: string[][] | undefined }>({ max: 1_024 });
  /** Bounds the test runs, whose memory and time the submitted tests decide. */
  private readonly testSlots: LimitFunction;
  /** Bounds the opa processes: a burst of writes queues, a flood is refused, never a fork storm. */
  private readonly slots: LimitFunction;
  private readonly maxQueued: number;
  private readonly metered: boolean;

  constructor(options: RegoCompilerOptions) {
    this.opaPath = options.opaPath;
    this.searchPath = options.searchPath ?? compilerSearchPath();
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.memoryMaxBytes = options.memoryMaxBytes ?? DEFAULT_OPA_MEMORY_MAX_BYTES;
    this.inputSchemaPath = options.inputSchemaPath ?? policyInputSchema().path;
    // Missing, every policy would be refused as if its own fault: refuse to start instead.
    if (!existsSync(this.inputSchemaPath)) throw new Error(`no input schema at ${this.inputSchemaPath}`);
    this.testSlots = pLimit(options.testConcurrency ?? 2);
    const concurrency = options.concurrency ?? availableParallelism();
    this.slots = pLimit(concurrency);
    this.maxQueued = options.maxQueued ?? 4 * concurrency;
    this.metered = options.metered ?? true;
  }

  /**
   * Runs opa under its memory limit and deadline. Throws OpaStoppedError when
   * it was stopped at either, CompilerUnavailableError when it could not run.
   */
  private async opa(args: string[], cwd: string): Promise<ProcessResult> {
    const limit = String(this.memoryMaxBytes);
    try {
      const { stdout, stderr } = await run('prlimit', [`--data=${limit}:${limit}`, `--stack=${STACK_BYTES}:`, '--', this.opaPath, ...args], {
        cwd,
        timeout: this.timeoutMs,
        maxBuffer: MAX_OUTPUT_BYTES,
        // opa needs nothing else; keep secrets out
        env: { ...opaSandboxEnv(this.searchPath, cwd), GOMEMLIMIT: String(Math.floor((this.memoryMaxBytes * 3) / 4)), GOMAXPROCS: '2' },
      });
      return { ok: true, stdout, stderr };
    } catch (error) {
      const failure = error as { code?: unknown; killed?: boolean; signal?: string; stdout?: string; stderr?: string };
      if (GO_OUT_OF_MEMORY.test(failure.stderr ?? '') || (!failure.killed && OUT_OF_MEMORY_SIGNALS.has(failure.signal ?? ''))) {
        throw new OpaStoppedError('memory', `more than ${mib(this.memoryMaxBytes)} MiB of memory`);
      }
      if (failure.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') throw new OpaStoppedError('memory', `more than ${mib(MAX_OUTPUT_BYTES)} MiB of output`);
      if (failure.killed) throw new OpaStoppedError('time', `more than ${this.timeoutMs} ms`);
      if (typeof failure.code === 'number') {
        return { ok: false, stdout: failure.stdout ?? '', stderr: failure.stderr ?? '' };
      }
      const why = failure.signal
        ? `was killed (${failure.signal})`
        : failure.code === 'ENOENT'
          ? 'prlimit (util-linux) is not installed'
          : String(failure.code ?? error);
      throw new CompilerUnavailableError(`opa ${args[0]} could not run: ${why}`, { cause: error });
    }
  }

  /** `opa version` of the configured binary, e.g. "1.22.3" (cached). */
  opaVersion(): Promise<string> {
    this.versionPromise ??= unavailableWhenStopped(this.opa(['version'], tmpdir())).then((result) => {
      const match = result.stdout.match(/^Version:\s*(\S+)/m);
      if (!result.ok || !match?.[1]) throw new CompilerUnavailableError(`cannot read the version of ${this.opaPath}`);
      return match[1];
    });
    this.versionPromise.catch(() => {
      this.versionPromise = undefined; // let a later call try again
    });
    return this.versionPromise;
  }

  /**
   * Compiles, then runs the policy's tests when it has some (with `opa test`,
   * against the same capabilities, so a test cannot lean on a builtin the
   * gateway's wasm engine lacks); refuses at once with CompilerBusyError when
   * the queue is full. Failing tests throw PolicyTestsFailedError; a test
   * module that does not compile throws RegoCompileError naming its file.
   */
  compile(rego: string, dataText = '{}', tests: Record<string, string> | null = null): Promise<CompiledPolicy> {
    if (this.slots.pendingCount >= this.maxQueued) {
      return Promise.reject(
        new CompilerBusyError(`${this.slots.activeCount} policies are compiling and ${this.slots.pendingCount} waiting; try again shortly`),
      );
    }
    return this.slots(() => this.compileNow(rego, dataText, tests));
  }

  private async compileNow(rego: string, dataText: string, tests: Record<string, string> | null): Promise<CompiledPolicy> {
    const started = performance.now();
    const opaVersion = await this.opaVersion();
    const workDir = await mkdtemp(join(tmpdir(), 'gatehouse-rego-'));
    try {
      await Promise.all([
        writeFile(join(workDir, POLICY_FILE), rego),
        writeFile(join(workDir, DATA_FILE), dataText),
        writeCompileCapabilities(join(workDir, 'capabilities.json')),
      ]);
      const { syntaxVersion, entrypoint } = await this.parse(workDir);
      const syntaxFlags = syntaxVersion === 'v0' ? ['--v0-compatible'] : [];
      const common = ['--capabilities', 'capabilities.json', ...syntaxFlags];
      const testFiles = tests ? await writeTests(workDir, tests) : null;
      await this.typeCheck(workDir, syntaxVersion, testFiles ?? []);
      const build = await compileStep(this.opa(['build', '-t', 'wasm', '-e', entrypoint, ...common, '-o', 'bundle.tar.gz', POLICY_FILE, DATA_FILE], workDir));
      if (!build.ok) {
        const check = await compileStep(this.opa(['check', '--format', 'json', ...common, POLICY_FILE, DATA_FILE], workDir));
        const diagnostics = check.ok ? null : (diagnosticsFrom(check.stdout) ?? diagnosticsFrom(check.stderr));
        throw new RegoCompileError(diagnostics ?? diagnosticsFromText(build.stderr, workDir));
      }
      const built = await readBundleWasm(join(workDir, 'bundle.tar.gz'));
      const refs = this.inputRefs(workDir, rego, entrypoint, syntaxVersion);
      // Awaited below; should metering or the tests fail first, its failure must not go unhandled.
      refs.catch(() => undefined);
      const wasm = this.metered ? Buffer.from(await inSpan('metering', () => meterWasm(built))) : built;
      const tested = testFiles
        ? await inSpan('tests', () => this.runTests(workDir, testFiles, syntaxVersion), { 'gatehouse.policy.test_files': testFiles.length })
        : null;
      const inputRefs = await refs;
      return {
        wasm,
        entrypoint,
        syntaxVersion,
        opaVersion,
        durationMs: performance.now() - started,
        ...(inputRefs ? { inputRefs } : {}),
        ...(tested ? { tests: tested } : {}),
      };
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
  }

  /**
   * `opa test` on the policy, its data and the test modules (in tests/). In
   * the policy's syntax first; test modules that only parse in the other are
   * tried in that one (a v0 module beside a v1 policy needs `import rego.v1`
   * in neither, a v1 module beside a v0 policy needs it). At most
   * `testConcurrency` runs at once; a run stopped at its memory limit or
   * deadline is PolicyTestsStoppedError.
   */
  private async runTests(workDir: string, files: string[], syntax: RegoSyntaxVersion): Promise<{ passed: number }> {
    const attempt = async (v0: boolean) => {
      try {
        return await this.opa(
          [
            'test',
            '--format',
            'json',
            '--capabilities',
            'capabilities.json',
            '--timeout',
            '10s',
            ...(v0 ? ['--v0-compatible'] : []),
            POLICY_FILE,
            DATA_FILE,
            ...files,
          ],
          workDir,
        );
      } catch (error) {
        if (!(error instanceof OpaStoppedError)) throw error;
        throw new PolicyTestsStoppedError(
          error.resource,
          `the policy tests were stopped: opa test needed ${error.message}, more than a test run may have; nothing was written`,
          { cause: error },
        );
      }
    };
    const { result, results } = await this.testSlots(async () => {
      let result = await attempt(syntax === 'v0');
      let results = testResults(result.stdout);
      if (!results) {
        const other = await attempt(syntax !== 'v0');
        const otherResults = testResults(other.stdout);
        if (otherResults) {
          result = other;
          results = otherResults;
        }
      }
      return { result, results };
    });
    if (!results) throw new RegoCompileError(diagnosticsFromText(result.stderr, workDir));
    if (results.length === 0) throw new RegoCompileError([{ code: 'rego_test_error', message: 'the test modules define no test (rules named test_*)' }]);
    const failures: PolicyTestFailure[] = results
      .filter((r) => r.fail || r.error)
      .map((r) => {
        const file = relativeFile(r.location?.file);
        return {
          name: r.name,
          package: r.package,
          ...(file ? { file } : {}),
          ...(typeof r.location?.row === 'number' ? { row: r.location.row } : {}),
          message: r.error?.message ?? `${r.name} failed${r.output ? `; it printed: ${r.output.trim().slice(0, 500)}` : ''}`,
        };
      });
    if (failures.length > 0) throw new PolicyTestsFailedError(failures, results.length - failures.length);
    return { passed: results.length };
  }

  /**
   * `opa check --schema` on the policy, its data and its test modules (in
   * tests/), with the input schema: OPA's type checker refuses a reference
   * the schema does not have and a comparison of different types. In the
   * policy's syntax; when only test modules fail to parse, in the other one
   * (as runTests does).
   */
  private async typeCheck(workDir: string, syntax: RegoSyntaxVersion, testFiles: string[]): Promise<void> {
    const check = async (v0: boolean) => {
      const args = ['check', '--format', 'json', '--capabilities', 'capabilities.json', ...(v0 ? ['--v0-compatible'] : [])];
      const result = await compileStep(this.opa([...args, '--schema', this.inputSchemaPath, POLICY_FILE, DATA_FILE, ...testFiles], workDir));
      if (result.ok) return null;
      return diagnosticsFrom(result.stdout) ?? diagnosticsFrom(result.stderr) ?? diagnosticsFromText(result.stderr, workDir);
    };
    const diagnostics = await check(syntax === 'v0');
    if (!diagnostics) return;
    const onlyTestsUnparsed =
      testFiles.length > 0 && diagnostics.every((d) => d.code === 'rego_parse_error' && d.file !== undefined && d.file !== POLICY_FILE && d.file !== DATA_FILE);
    if (onlyTestsUnparsed) {
      const other = await check(syntax !== 'v0');
      if (!other) return;
      if (!other.some((d) => d.code === 'rego_parse_error')) throw new RegoCompileError(other);
    }
    throw new RegoCompileError(diagnostics);
  }

  /**
   * The parts of the input the policy can read (step 6): `opa deps` on the
   * entrypoint, whose base documents include every reference to `input`
   * the package's rules and functions can make, cut where it stops being
   * constant. Undefined, so that gateways show the whole input, when the
   * policy reads `input` itself (or through a variable key at its root), is
   * v0 (`opa deps` reads v1 only), or opa could not list them.
   */
  private async inputRefs(workDir: string, rego: string, entrypoint: string, syntaxVersion: RegoSyntaxVersion): Promise<string[][] | undefined> {
    if (syntaxVersion === 'v0') return undefined;
    const key = sha256Hex(rego);
    const known = this.refsByRego.get(key);
    if (known) return known.refs;
    const query = `data${entrypoint
      .split('/')
      .map((segment) => `[${JSON.stringify(segment)}]`)
      .join('')}`;
    try {
      const deps = await this.opa(['deps', '--format', 'json', '--data', POLICY_FILE, query], workDir);
      if (!deps.ok) return undefined; // not remembered: the next write of this Rego asks again
      const refs = inputRefsOf(deps.stdout);
      this.refsByRego.set(key, { refs });
      return refs;
    } catch (error) {
      if (error instanceof OpaStoppedError) return undefined;
      throw error;
    }
  }

  private async parse(workDir: string): Promise<{ syntaxVersion: RegoSyntaxVersion; entrypoint: string }> {
    const v1 = await compileStep(this.opa(['parse', '--format', 'json', POLICY_FILE], workDir));
    if (v1.ok) return { syntaxVersion: 'v1', entrypoint: entrypointOf(v1.stdout) };
    const v0 = await compileStep(this.opa(['parse', '--format', 'json', '--v0-compatible', POLICY_FILE], workDir));
    if (v0.ok) return { syntaxVersion: 'v0', entrypoint: entrypointOf(v0.stdout) };
    // Neither parses: report against v1, today's syntax.
    throw new RegoCompileError(diagnosticsFrom(v1.stderr) ?? diagnosticsFrom(v1.stdout) ?? diagnosticsFromText(v1.stderr, workDir));
  }
}

/** Writes the test modules into tests/ of the work dir; their paths from it. */
async function writeTests(workDir: string, tests: Record<string, string>): Promise<string[]> {
  await mkdir(join(workDir, 'tests'));
  await Promise.all(Object.entries(tests).map(([name, module]) => writeFile(join(workDir, 'tests', name), module)));
  return Object.keys(tests).map((name) => `tests/${name}`);
}

const STACK_BYTES = 8 * 1024 * 1024; // each opa thread's stack counts against the data limit: the usual size, whatever the host's

function mib(bytes: number): number {
  return Math.round(bytes / (1024 * 1024));
}

/** parse, build, check: a Rego that needs more memory than opa may have does not compile; past the deadline opa is unavailable (as before). */
async function compileStep(step: Promise<ProcessResult>): Promise<ProcessResult> {
  try {
    return await step;
  } catch (error) {
    if (!(error instanceof OpaStoppedError)) throw error;
    if (error.resource === 'memory')
      throw new RegoCompileError([{ code: 'rego_compile_limit', message: `opa needed ${error.message} to compile this policy` }]);
    throw new CompilerUnavailableError(`opa needed ${error.message}`, { cause: error });
  }
}

/** opa version: stopped is unavailable (an OPA_MEMORY_MAX_MB too small for opa to start fails the CMS at start). */
async function unavailableWhenStopped(step: Promise<ProcessResult>): Promise<ProcessResult> {
  try {
    return await step;
  } catch (error) {
    if (error instanceof OpaStoppedError)
      throw new CompilerUnavailableError(`opa version needed ${error.message}: is OPA_MEMORY_MAX_MB too small?`, { cause: error });
    throw error;
  }
}

interface OpaTestResult {
  name: string;
  package: string;
  location?: { file?: string; row?: number };
  fail?: boolean;
  error?: { message?: string };
  output?: string;
}

/** `opa test --format json` results; null when opa printed none (the modules did not load). */
function testResults(stdout: string): OpaTestResult[] | null {
  const text = stdout.trim();
  if (!text.startsWith('[')) return null;
  try {
    const parsed = JSON.parse(text) as unknown;
    return Array.isArray(parsed) ? (parsed as OpaTestResult[]) : null;
  } catch {
    return null;
  }
}

/**
 * The input refs of `opa deps --format json` output, each cut at its first
 * term that is not a string (a number indexes an array: the array is kept
 * whole); only the shortest of refs that share a prefix. Undefined for the
 * whole input: a ref to `input` itself, output that does not read as deps,
 * or more refs than metadata may list.
 */
export function inputRefsOf(depsJson: string): string[][] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(depsJson);
  } catch {
    return undefined;
  }
  const base = (parsed as { base?: unknown }).base ?? [];
  if (!Array.isArray(base)) return undefined;
  const refs: string[][] = [];
  for (const ref of base) {
    if (!Array.isArray(ref)) return undefined;
    const [head, ...rest] = ref as { type?: unknown; value?: unknown }[];
    if (head?.type !== 'var' || head.value !== 'input') continue;
    const path: string[] = [];
    for (const term of rest) {
      if (term.type !== 'string' || typeof term.value !== 'string') break;
      path.push(term.value);
    }
    if (path.length === 0 || path.length > MAX_INPUT_REF_DEPTH) return undefined;
    refs.push(path);
  }
  const shortestFirst = refs.sort((a, b) => a.length - b.length);
  const kept: string[][] = [];
  for (const ref of shortestFirst) {
    if (!kept.some((k) => k.every((segment, i) => ref[i] === segment))) kept.push(ref);
  }
  if (kept.length > MAX_INPUT_REFS) return undefined;
  return kept.sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1));
}

/** The package of a parsed module (opa parse --format json) as a slash-separated entrypoint. */
function entrypointOf(astJson: string): string {
  const ast = JSON.parse(astJson) as { package?: { path?: Array<{ type: string; value: unknown }> } };
  const path = ast.package?.path ?? [];
  const segments = path.slice(1).map((term) => term.value);
  if (segments.length === 0 || segments.some((s) => typeof s !== 'string' || s.length === 0 || s.includes('/'))) {
    throw new RegoCompileError([{ code: 'rego_package_error', message: 'the package path must be made of names without "/"', file: POLICY_FILE, row: 1 }]);
  }
  return segments.join('/');
}

async function readBundleWasm(bundlePath: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let found = false;
  await listTar({
    file: bundlePath,
    onReadEntry: (entry) => {
      if (entry.path.replace(/^\.?\//, '') === 'policy.wasm') {
        found = true;
        entry.on('data', (chunk: Buffer) => chunks.push(chunk));
      } else {
        entry.resume();
      }
    },
  });
  if (!found) throw new CompilerUnavailableError('opa build wrote no policy.wasm');
  return Buffer.concat(chunks);
}
