// `npm start`'s stack (dist/scripts/start.js) as a user meets it: it comes
// up on the real APISIX, and the curl lines it prints give the answers their
// comments promise.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../dev/apisix/index.js';
import { runPolicyCli } from '../../cli/policy/command.js';
import { EXIT } from '../../cli/io.js';
import { repoRoot } from '../support/runner-process.js';
import { until } from '../support/stack.js';

const stackName = `test-${process.pid}`;
let start: ChildProcess;
let printed = '';

const ports: Record<string, string> = {};

beforeAll(async () => {
  for (const name of [
    'GATEWAY_PORT',
    'CMS_PORT',
    'DECISION_PORT',
    'RAG_PORT',
    'LLM_PORT',
    'VAULT_PORT',
    'RUNNER_METRICS_PORT',
    'APISIX_METRICS_PORT',
    'ETCD_CLIENT_PORT',
  ]) {
    ports[name] = String(await freePort());
  }
  start = spawn(process.execPath, [join(repoRoot, 'dist/scripts/start.js')], {
    cwd: repoRoot,
    env: { ...process.env, ...ports, STACK_NAME: stackName, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let errors = '';
  start.stderr!.on('data', (chunk: Buffer) => (errors += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`npm start did not come up in 120 s:\n${printed}\n${errors}`)), 120_000);
    start.stdout!.on('data', (chunk: Buffer) => {
      printed += chunk.toString();
      if (printed.includes('Press Ctrl-C to stop.')) {
        clearTimeout(timer);
        resolve();
      }
    });
    start.once('exit', (code) => reject(new Error(`npm start exited (${code}):\n${printed}\n${errors}`)));
  });
}, 150_000);

afterAll(async () => {
  if (start && start.exitCode === null) {
    const exited = new Promise((resolve) => start.once('exit', resolve));
    start.kill('SIGTERM');
    await exited;
  }
  for (const dir of [`stack-${stackName}`, `demo-${stackName}`, join('stack-etcd', stackName)]) {
    rmSync(join(repoRoot, '.local', dir), { recursive: true, force: true });
  }
}, 30_000);

/** Each printed curl line's HTTP status, run by bash with the printed exports, in order. */
function statusesOfCurlLines(): { line: string; status: number }[] {
  const lines = printed.split('\n');
  const exports = lines.filter((line) => /^\s*export (ADMIN|DEV|EVE)=/.test(line)).map((line) => line.trim());
  expect(exports).toHaveLength(3);
  return lines
    .filter((line) => line.startsWith('curl '))
    .map((line) => {
      // The status instead of the body; -i's headers go to /dev/null with it.
      const command = line.replace(/^curl -si? /, 'curl -s -o /dev/null -w "%{http_code}" ').replace(/\s+#.*$/, '');
      const status = Number(execFileSync('bash', ['-c', `${exports.join('\n')}\n${command}`], { encoding: 'utf8' }));
      return { line, status };
    });
}

describe('npm start', () => {
  it('names the gateway it runs: the real APISIX', () => {
    expect(printed).toMatch(/gateway \(APISIX 3\.9\.1\)/);
  });

  it('every curl line it prints answers as its comment says, through the gateway', () => {
    const results = statusesOfCurlLines();
    expect(results.map((r) => r.status)).toEqual([
      200, // rag as dev
      403, // rag as eve (no policy for other-team)
      401, // rag without a token
      200, // rag with a spoofed role header
      200, // an allowed model
      403, // a model the policy does not allow
      200, // a streamed call, charged to the demo budget
      200, // the demo budget, as dev
      200, // dev's project's usage
      200, // the decision API
      200, // list policies
      200, // read the demo project's policy
      403, // the platform policy as a project user
      201, // create team-a
      200, // replace team-a at version 1
      200, // history
    ]);
    const gateway = /gateway \([^)]*\) (http:\/\/\S+)/.exec(printed)?.[1];
    expect(gateway).toBeTruthy();
    for (const { line } of results) expect(line).toContain(gateway!);
  });

  it("prints where APISIX's prometheus metrics are (APISIX_METRICS_PORT), and they count the curl lines' requests by route", async () => {
    const url = /APISIX metrics\s+(\S+)/.exec(printed)?.[1];
    expect(url).toBe(`http://127.0.0.1:${ports.APISIX_METRICS_PORT}/apisix/prometheus/metrics`);
    // Counted in APISIX's log phase, after the answer.
    await until(
      () => fetch(url!).then((r) => r.text()),
      (text) => /^apisix_http_status\{code="200",route="rag"/m.test(text) && /^apisix_http_status\{code="401",route="rag"/m.test(text),
      'the RAG route in apisix_http_status',
    );
  });

  it('gatehouse policy round-trips a directory against it: pull, edit, diff, push (waiting for the gateways), status', async () => {
    const gateway = /gateway \([^)]*\) (http:\/\/\S+)/.exec(printed)![1]!;
    const admin = /export ADMIN='([^']+)'/.exec(printed)![1]!;
    const dir = mkdtempSync(join(tmpdir(), 'gh-start-policies-'));
    const cli = (args: string[]) =>
      runPolicyCli([...args, '--dir', dir], { env: { GATEHOUSE_URL: gateway, GATEHOUSE_TOKEN: admin }, out: () => undefined, err: () => undefined });
    expect(await cli(['pull', 'demo'])).toBe(EXIT.ok);
    const dataFile = join(dir, 'demo', 'data.json');
    writeFileSync(dataFile, readFileSync(dataFile, 'utf8').replace('"llama-3"', '"llama-3", "mistral-7b"'));
    expect(await cli(['diff', '--exit-code'])).toBe(EXIT.differs);
    expect(await cli(['push', '--wait', '20'])).toBe(EXIT.ok);
    expect(await cli(['diff', '--exit-code'])).toBe(EXIT.ok);
    expect(await cli(['status', 'demo'])).toBe(EXIT.ok);
  });

  it('serves the web console through the gateway, with the demo sign-in', async () => {
    const address = /web console\s+(http:\/\/\S+)/.exec(printed)?.[1];
    expect(address).toMatch(/\/console\/$/);
    // The console's pages, each named with its address.
    for (const name of ['policies', 'a policy', 'fleet', 'budgets and usage'])
      expect(printed).toMatch(new RegExp(`\\n    ${name}\\s+${address!.replace(/[.]/g, '\\.')}#/`));
    const page = await fetch(address!);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('/console/app.js');
    const demo = (await (await fetch(`${address!}demo-tokens`)).json()) as { label: string }[];
    expect(demo.map((d) => d.label)).toEqual(['platform admin ada', 'project user dev (demo)']);
  });
});
