import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { buildCmsApp } from '../../cms/app.js';
import { CompilerUnavailableError, inputRefsOf, RegoCompileError, RegoCompiler } from '../../cms/rego-compiler.js';
import { EXAMPLE_POLICY } from '../../dev/demo.js';
import { loadPolicyEngine } from '../../policy/engine/index.js';
import { accessInputSchema } from '../../policy/access/input-schema.js';
import { createTestKeys } from '../support/jwt.js';
import { OPA_PATH } from './harness.js';

const compiler = new RegoCompiler({ opaPath: OPA_PATH });

async function diagnosticsOf(rego: string) {
  try {
    await compiler.compile(rego);
  } catch (error) {
    expect(error).toBeInstanceOf(RegoCompileError);
    return (error as RegoCompileError).diagnostics;
  }
  throw new Error('compiled');
}

describe('Rego compiler (real opa)', () => {
  it('compiles the seed example verbatim as v0, entrypoint = package', async () => {
    const compiled = await compiler.compile(EXAMPLE_POLICY.rego, JSON.stringify(EXAMPLE_POLICY.data));
    expect(compiled).toMatchObject({ entrypoint: 'project/authz', syntaxVersion: 'v0', opaVersion: '1.22.3' });
    expect(compiled.wasm.subarray(0, 4)).toEqual(Buffer.from([0, 0x61, 0x73, 0x6d]));
  });

  it('compiles v1 and exposes every rule of the package through the one entrypoint', async () => {
    const rego = [
      'package gate.check',
      'default allow := false',
      'allow if input.var.timestamp > data.limit',
      'reason := "too small" if not allow',
      'status_code := 429 if not allow',
      'headers := {"x-exact-limit": "yes"} if data.limit == 9007199254740993',
    ].join('\n');
    // A limit past 2^53, given as text: the wasm must see the exact value (JSON.parse would make it ...992).
    const data = '{"limit":9007199254740993}';
    const compiled = await compiler.compile(rego, data);
    expect(compiled.syntaxVersion).toBe('v1');
    const engine = await loadPolicyEngine(compiled.wasm, { data });
    expect(engine.entrypoints).toContain('gate/check');
    expect(() => engine.evaluate({ var: { timestamp: 1 } })).toThrow(/name the entrypoint/);
    expect(engine.evaluate({ var: { timestamp: 9007199254740992 } }, 'gate/check')).toEqual({
      allow: false,
      reason: 'too small',
      status_code: 429,
      headers: { 'x-exact-limit': 'yes' },
    });
  });

  it('accepts future-keyword imports (valid in both syntaxes, so recorded as v1)', async () => {
    const compiled = await compiler.compile(
      'package p.q\nimport future.keywords.if\nimport future.keywords.in\ndefault allow = false\nallow if { input.request.method in ["GET"] }\n',
    );
    expect(compiled).toMatchObject({ syntaxVersion: 'v1', entrypoint: 'p/q' });
  });

  it('accepts v0-only constructs by falling back to --v0-compatible', async () => {
    const compiled = await compiler.compile('package old\n\ndeny[msg] {\n  msg := "no"\n}\n');
    expect(compiled).toMatchObject({ syntaxVersion: 'v0', entrypoint: 'old' });
    const engine = await loadPolicyEngine(compiled.wasm, { data: {} });
    expect(engine.evaluate({}, 'old')).toEqual({ deny: ['no'] });
  });

  it('refuses a builtin the wasm SDK cannot run, with its location', async () => {
    expect(await diagnosticsOf('package net\n\nallow if http.send({"method": "get", "url": "http://x.test"}).status_code == 200\n')).toEqual([
      { code: 'rego_type_error', message: 'undefined function http.send', file: 'policy.rego', row: 3, col: 10 },
    ]);
  });

  it('reports parse errors against v1 when neither syntax parses', async () => {
    const diagnostics = await diagnosticsOf('package bad\n\nallow if {\n  x := 1\n  x == "a" +\n}\n');
    expect(diagnostics).toEqual([{ code: 'rego_parse_error', message: 'unexpected } token', file: 'policy.rego', row: 6, col: 1 }]);
  });

  it('reports type errors of a v0 module', async () => {
    const diagnostics = await diagnosticsOf('package v0bad\n\nallow {\n  count(1) == "x"\n}\n');
    expect(diagnostics[0]).toMatchObject({ code: 'rego_type_error', row: 4 });
  });
});

describe('input refs (opa deps): the parts of the input a policy can read', () => {
  it('follows imports, functions and rules, and cuts a ref where its key stops being constant', async () => {
    const rego = [
      'package p.refs',
      'import rego.v1',
      'import input.request.headers as headers',
      'role_of(user) := user.role',
      'allow if role_of(input.user) == "admin"',
      'allow if headers["x-team"] == "a"',
      'allow if { some name; input.request.query[name] == "yes" }',
      'reason := "llm" if startswith(input.request.path, "/llm/")',
    ].join('\n');
    const compiled = await compiler.compile(rego);
    expect(compiled.inputRefs).toEqual([['request', 'headers', 'x-team'], ['request', 'path'], ['request', 'query'], ['user']]);
  });

  it('runs opa deps once per Rego: a write of other data alone reuses what it listed', async () => {
    const own = new RegoCompiler({ opaPath: OPA_PATH });
    const runs: string[] = [];
    const opa = (own as unknown as { opa: (args: string[], cwd: string) => Promise<unknown> }).opa.bind(own);
    (own as unknown as { opa: typeof opa }).opa = (args, cwd) => {
      runs.push(args[0]!);
      return opa(args, cwd);
    };
    const rego = 'package p.cached\nimport rego.v1\nallow if input.user.role in data.roles\n';
    const first = await own.compile(rego, '{"roles":["a"]}');
    const second = await own.compile(rego, '{"roles":["b"]}');
    expect(first.inputRefs).toEqual([['user', 'role']]);
    expect(second.inputRefs).toEqual([['user', 'role']]);
    expect(runs.filter((command) => command === 'deps')).toHaveLength(1);
    await own.compile(`${rego}deny if input.request.path == "/x"\n`);
    expect(runs.filter((command) => command === 'deps')).toHaveLength(2);
  });

  it('none listed (the whole input) for a policy that reads the input itself, and for v0', async () => {
    expect((await compiler.compile('package p.whole\nimport rego.v1\nseen := input\n')).inputRefs).toBeUndefined();
    expect((await compiler.compile(EXAMPLE_POLICY.rego, JSON.stringify(EXAMPLE_POLICY.data))).inputRefs).toBeUndefined();
  });

  it("reads opa deps' output: input refs only, cut at a term that is not a string, the shortest of a prefix", () => {
    const ref = (...terms: [string, unknown][]) => terms.map(([type, value]) => ({ type, value }));
    const deps = {
      base: [
        ref(['var', 'input'], ['string', 'arr'], ['number', 0], ['string', 'x']),
        ref(['var', 'input'], ['string', 'user'], ['string', 'role']),
        ref(['var', 'input'], ['string', 'user']),
        ref(['var', 'data'], ['string', 'limits']),
      ],
    };
    expect(inputRefsOf(JSON.stringify(deps))).toEqual([['arr'], ['user']]);
    expect(inputRefsOf(JSON.stringify({ base: [ref(['var', 'input'])] }))).toBeUndefined();
    expect(inputRefsOf(JSON.stringify({ virtual: [] }))).toEqual([]);
    expect(inputRefsOf('not json')).toBeUndefined();
  });
});

describe('input schemas (opa check --schema)', () => {
  it('an object that may be null, compared with null: refused, naming what compiles instead', async () => {
    expect(await diagnosticsOf('package p\n\ndeny if input.user == null\n')).toEqual([
      expect.objectContaining({
        code: 'rego_type_error',
        row: 3,
        message: expect.stringMatching(/^match error: object\{.*\} against null; .* != null or is_null\(\)$/),
      }),
    ]);
    await expect(compiler.compile('package p\n\ndeny if is_null(input.user)\nallow if input.user != null\n')).resolves.toMatchObject({ entrypoint: 'p' });
  });

  it("the access policy compiles against its own input schema, as the build does, and not against the gateway's", async () => {
    const access = await readFile(new URL('../../policy/access/access.rego', import.meta.url), 'utf8');
    const tests = { 'access_test.rego': await readFile(new URL('../../policy/access/access_test.rego', import.meta.url), 'utf8') };
    const accessCompiler = new RegoCompiler({ opaPath: OPA_PATH, inputSchemaPath: accessInputSchema().path });
    await expect(accessCompiler.compile(access, '{}', tests)).resolves.toMatchObject({ entrypoint: 'gatehouse/cms/access' });
    const misspelt = access.replace('input.user.role == "platform_admin"', 'input.user.rol == "platform_admin"');
    expect(misspelt).not.toBe(access);
    await expect(accessCompiler.compile(misspelt)).rejects.toMatchObject({
      diagnostics: [
        expect.objectContaining({
          code: 'rego_type_error',
          message: expect.stringMatching(/^undefined ref: input\.user\.rol \(have "rol", want one of: project, role, sub\)/),
        }),
      ],
    });
    await expect(compiler.compile(access)).rejects.toThrow(/undefined ref: input\.method/);
  });
});

describe("the compiler's PATH comes from the configuration", () => {
  // opa's processes get PATH and HOME only; prlimit, which starts each one, is found on that PATH.
  const nowhere = '/nonexistent-gatehouse-path';

  it('a compiler runs opa with the PATH it is given, not the one this process has', async () => {
    const compile = new RegoCompiler({ opaPath: OPA_PATH, searchPath: nowhere }).compile('package p\nallow := true\n');
    await expect(compile).rejects.toThrow(CompilerUnavailableError);
    await expect(compile).rejects.toThrow(/prlimit \(util-linux\) is not installed/);
  });

  it('the CMS passes its configured PATH to its compiler: with none that holds prlimit it does not start', async () => {
    const keys = await createTestKeys();
    try {
      const start = buildCmsApp({ etcdEndpoints: ['http://127.0.0.1:9'], identity: keys.identityConfig, opaPath: OPA_PATH, searchPath: nowhere });
      await expect(start).rejects.toThrow(CompilerUnavailableError);
    } finally {
      await keys.cleanup();
    }
  });
});
