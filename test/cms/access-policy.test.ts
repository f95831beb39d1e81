/**
 * The access policy: its own `opa test` suite, and the wasm the build ships
 * (dist/policy/access/access.wasm) deciding exactly like `opa eval` on
 * the Rego source.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ACCESS_POLICY_ENTRYPOINT, loadAccessPolicy, type AccessInput } from '../../policy/access/index.js';
import { packageRoot } from '../../runtime/paths.js';
import { defaultAccessPolicyWasmPath } from '../../policy/access/index.js';
import { loadPolicyEngine } from '../../policy/engine/index.js';
import { OPA_PATH } from './harness.js';

const run = promisify(execFile);
const policyDir = join(packageRoot(), 'policy', 'access');

describe('access policy', () => {
  it('passes its opa test suite', async () => {
    const { stdout } = await run(OPA_PATH, ['test', policyDir, '--format', 'json'], { timeout: 60_000 });
    const results = JSON.parse(stdout) as Array<{ name: string; fail?: boolean; error?: unknown }>;
    expect(results.length).toBeGreaterThanOrEqual(10);
    expect(results.filter((r) => r.fail || r.error).map((r) => r.name)).toEqual([]);
  });

  it('compiled wasm decides like opa eval on the Rego source', async () => {
    const users = [
      undefined,
      { sub: 'ada', role: 'platform_admin', project: null },
      { sub: 'tom', role: 'project_user', project: 'team-a' },
      { sub: 'pat', role: 'project_user', project: 'platform' },
      { sub: 'vic', role: 'viewer', project: 'team-a' },
      { sub: 'nob', role: 'project_user', project: null },
    ];
    const requests: Array<[string, string[]]> = [
      ['GET', ['policies']],
      ['GET', ['policies', 'team-a']],
      ['HEAD', ['policies', 'team-a']],
      ['GET', ['policies', 'team-b']],
      ['GET', ['policies', 'platform']],
      ['PUT', ['policies', 'team-a']],
      ['DELETE', ['policies', 'team-a']],
      ['PATCH', ['policies', 'team-a']],
      ['GET', ['policies', 'team-a', 'history']],
      ['GET', ['policies', 'team-a', 'history', '2']],
      ['GET', ['policies', 'team-a', 'x', 'y', 'z']],
      ['GET', ['other']],
      ['GET', ['gateways']],
      ['GET', ['budgets']],
      ['GET', ['budgets', 'team-a']],
      ['HEAD', ['budgets', 'team-a']],
      ['GET', ['budgets', 'team-b']],
      ['GET', ['budgets', 'platform']],
      ['PUT', ['budgets', 'team-a']],
      ['DELETE', ['budgets', 'team-a']],
      ['GET', ['budgets', 'team-a', 'history']],
      ['GET', ['budgets', 'team-a', 'history', '3']],
      ['GET', ['budgets', 'team-b', 'history']],
      ['GET', ['usage', 'team-a']],
      ['GET', ['usage', 'team-b']],
      ['GET', ['usage', 'platform']],
      ['PUT', ['usage', 'team-a']],
      ['GET', ['usage']],
    ];
    const inputs: AccessInput[] = users.flatMap((user) => requests.map(([method, path]) => (user ? { method, path, user } : { method, path })));

    const dir = await mkdtemp(join(tmpdir(), 'gatehouse-access-'));
    try {
      await writeFile(join(dir, 'cases.json'), JSON.stringify({ cases: inputs }));
      const query = `[d | some c in data.cases; d := data.gatehouse.cms.access with input as c]`;
      const { stdout } = await run(OPA_PATH, ['eval', '--format', 'json', '-d', join(policyDir, 'access.rego'), '-d', join(dir, 'cases.json'), query], {
        timeout: 60_000,
      });
      const oracle = (JSON.parse(stdout) as { result: Array<{ expressions: Array<{ value: Array<Record<string, unknown>> }> }> }).result[0]!.expressions[0]!
        .value;

      const engine = await loadPolicyEngine(await readFile(defaultAccessPolicyWasmPath()));
      const access = await loadAccessPolicy(defaultAccessPolicyWasmPath());
      inputs.forEach((input, index) => {
        const expected = oracle[index]!;
        const fromWasm = engine.evaluate(input, ACCESS_POLICY_ENTRYPOINT) as Record<string, unknown>;
        expect({ input, allow: fromWasm.allow, reason: fromWasm.reason, status: fromWasm.status_code }).toEqual({
          input,
          allow: expected.allow,
          reason: expected.reason,
          status: expected.status_code,
        });
        expect(access.decide(input)).toEqual({ allow: expected.allow, reason: expected.reason, statusCode: expected.status_code });
      });
      // The matrix holds both answers, so the comparison above means something.
      expect(oracle.some((d) => d.allow === true)).toBe(true);
      expect(oracle.some((d) => d.allow === false)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
