// `gatehouse policy replay`: a decision log written by a real runner
// (DECISION_LOG=file:...), replayed on a real CMS with the live version and
// the local draft; the exit code a CI step relies on (6 when decisions
// change, 0 with --allow-changes or none), malformed lines reported and
// skipped, a large log sent in batches within the CMS's limits.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPolicyCli } from '../../cli/policy/command.js';
import { EXIT } from '../../cli/io.js';
import { MAX_REPLAY_INPUTS } from '../../cms/replay.js';
import type { StopAction } from '../../plugins/protocol/index.js';
import { ApisixClient, request } from '../support/apisix-client.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { startHarness, type Cms, type Harness } from '../cms/harness.js';

let harness: Harness;
let cms: Cms;
let runner: RunnerProcess;
let dir: string;
let runnerLog: string;
/** The runner's log, with a line that is not JSON and an event without input appended. */
let log: string;

const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.roles\n';
const ROLES = ['admin', 'viewer', 'analyst', 'admin'];

async function cli(args: string[]) {
  let out = '';
  let err = '';
  const code = await runPolicyCli([...args, '--dir', dir], {
    env: { GATEHOUSE_URL: cms.baseUrl, GATEHOUSE_TOKEN: harness.tokens.admin },
    out: (t) => (out += t),
    err: (t) => (err += t),
  });
  return { code, out, err, json: () => JSON.parse(out) as Record<string, any> };
}

function writeDraft(folder: string, roles: string[]): void {
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, 'policy.rego'), REGO);
  writeFileSync(join(folder, 'data.json'), JSON.stringify({ roles }));
}

const events = (file: string) =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, any>);

/** One decision per role, through the runner, as APISIX would ask: the statuses. */
async function decide(roles: string[]): Promise<(number | 'pass')[]> {
  const client = await ApisixClient.open(runner.socketPath);
  try {
    const confToken = await client.prepare(
      [
        { name: 'jwt', value: '{}' },
        { name: 'opa', value: '{"policies":["project:team"]}' },
      ],
      'route#orders#ext-plugin-pre-req#1',
    );
    const statuses: (number | 'pass')[] = [];
    for (const [i, role] of roles.entries()) {
      const token = await harness.keys.token({ sub: `user-${i}`, role, project: 'team' });
      const answer = await client.call(request({ confToken, path: '/orders', headers: [{ name: 'authorization', value: `Bearer ${token}` }] }));
      statuses.push(answer.action?.type === 'stop' ? (answer.action as StopAction).status : 'pass');
    }
    return statuses;
  } finally {
    client.close();
  }
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  const put = await cms.request('PUT', '/policies/team', { token: harness.tokens.admin, body: JSON.stringify({ rego: REGO, data: { roles: ['admin'] } }) });
  expect(put.status).toBe(201);
  runnerLog = join(mkdtempSync(join(tmpdir(), 'gh-replay-log-')), 'decisions.log');
  runner = await startRunner({
    env: {
      ETCD_ENDPOINTS: harness.etcd.endpoints.join(','),
      RUNNER_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-replay-state-')),
      ...harness.keys.env,
      DECISION_LOG: `file:${runnerLog}`,
      GATEWAY_ID: 'gw-replay',
    },
  });
  // The runner loads its policies after its socket opens: until then it answers 503.
  const deadline = Date.now() + 20_000;
  while ((await decide(['admin']))[0] === 503) {
    if (Date.now() > deadline) throw new Error('the runner did not load its policies');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  expect(await decide(ROLES)).toEqual(['pass', 403, 403, 'pass']);
  // The warm-up's allowed decision and the four: five events that name the policy (those answered 503 name none).
  const naming = () => events(runnerLog).filter((event) => event.policies.some((p: { name: string }) => p.name === 'team')).length;
  const until = Date.now() + 10_000;
  while (naming() < ROLES.length + 1 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50));
  expect(naming()).toBe(ROLES.length + 1);
  log = join(mkdtempSync(join(tmpdir(), 'gh-replay-')), 'decisions.log');
  writeFileSync(log, readFileSync(runnerLog, 'utf8'));
  const withoutInput = { ...events(runnerLog).at(-1)!, input: null };
  appendFileSync(log, `{"time": "truncated\n${JSON.stringify(withoutInput)}\n`);
  dir = mkdtempSync(join(tmpdir(), 'gh-replay-policies-'));
}, 90_000);

afterAll(async () => {
  await runner?.stop();
  await harness?.close();
});

describe('gatehouse policy replay', () => {
  it('a draft allowing one more role: that decision is printed with its request, live -> draft, and the exit code is 6; --allow-changes exits 0', async () => {
    writeDraft(join(dir, 'team'), ['admin', 'analyst']);
    const lines = readFileSync(log, 'utf8').split('\n');
    const analystLine = lines.findIndex((line) => line.includes('"role":"analyst"')) + 1;
    expect(analystLine).toBeGreaterThan(0);

    const res = await cli(['replay', 'team', '--log', log]);
    expect(res.code, res.err).toBe(EXIT.differs);
    expect(res.out).toContain(`team: ${ROLES.length + 1} decisions from ${log} replayed against live version 1: 1 changed`);
    expect(res.out).toMatch(
      new RegExp(`line ${analystLine} \\(\\S+, GET /orders, route orders, gateway gw-replay, was deny 403\\): \\{"allow":false\\} -> \\{"allow":true\\}`),
    );
    // The line that is not JSON and the event without input: reported, skipped, counted.
    expect(res.out).toContain(`skipped 2 lines: 1 not JSON, 1 without input (lines ${lines.length - 2}, ${lines.length - 1})`);

    const allowed = await cli(['replay', 'team', '--log', log, '--allow-changes', '--json']);
    expect(allowed.code).toBe(EXIT.ok);
    const report = allowed.json().replay;
    expect(report).toMatchObject({ name: 'team', liveVersion: 1, evaluated: ROLES.length + 1, batches: 1 });
    expect(report.flips).toEqual([expect.objectContaining({ line: analystLine, live: { allow: false }, draft: { allow: true }, gateway: 'gw-replay' })]);
    expect(report.skipped).toMatchObject({ notJson: 1, noInput: 1, lines: [lines.length - 2, lines.length - 1] });
  });

  it('no flips: exit 0; the draft may be named with --file', async () => {
    const elsewhere = join(mkdtempSync(join(tmpdir(), 'gh-replay-draft-')), 'draft');
    writeDraft(elsewhere, ['admin']);
    const res = await cli(['replay', 'team', '--log', log, '--file', join(elsewhere, 'policy.rego')]);
    expect(res.code, res.out + res.err).toBe(EXIT.ok);
    expect(res.out).toContain('replayed against live version 1: 0 changed');
  });

  it('a log larger than one check: sent in batches within the limit, every flip found', async () => {
    writeDraft(join(dir, 'team'), ['admin', 'analyst']);
    const real = readFileSync(runnerLog, 'utf8').split('\n').filter(Boolean);
    const big = join(mkdtempSync(join(tmpdir(), 'gh-replay-big-')), 'decisions.log');
    const copies = Math.ceil((2 * MAX_REPLAY_INPUTS + 1) / real.length);
    writeFileSync(big, `${Array.from({ length: copies }, () => real.join('\n')).join('\n')}\n`);
    const res = await cli(['replay', 'team', '--log', big, '--json']);
    expect(res.code).toBe(EXIT.differs);
    const report = res.json().replay;
    expect(report.evaluated).toBe(copies * real.length);
    expect(report.batches).toBe(Math.ceil((copies * real.length) / MAX_REPLAY_INPUTS));
    expect(report.flips).toHaveLength(copies);
  }, 60_000);

  it('a draft the CMS refuses stops the replay (exit 3); no log, no draft: usage (exit 2)', async () => {
    const broken = join(mkdtempSync(join(tmpdir(), 'gh-replay-broken-')), 'team');
    mkdirSync(broken);
    writeFileSync(join(broken, 'policy.rego'), 'package team.authz\nallow if {\n');
    expect((await cli(['replay', 'team', '--log', log, '--file', broken])).code).toBe(EXIT.refused);
    expect((await cli(['replay', 'team', '--log', join(dir, 'missing.log')])).code).toBe(EXIT.usage);
    expect((await cli(['replay', 'team'])).code).toBe(EXIT.usage);
    expect((await cli(['replay', 'nobody', '--log', log])).code).toBe(EXIT.usage);
  });
});
