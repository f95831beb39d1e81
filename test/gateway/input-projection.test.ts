// A policy is shown only the parts of the input its metadata's inputRefs name
// (policy/engine/serialised-input.ts). That the projection never changes a
// decision is the differential test's business (every policy there is
// evaluated on its projection and compared with opa on the whole input);
// here: what a projection keeps, and that gateways honour the refs a
// version's metadata carries, and refuse refs they cannot read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pino } from 'pino';
import type { Etcd3 } from 'etcd3';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { EtcdPolicyWriter, untilWatcherAt } from '../support/policies.js';
import { createEtcdClient } from '../../etcd/index.js';
import { policySubmission } from '../../cms/rego-compiler.js';
import { inputFor, InputProjection, SerialisedInput } from '../../policy/engine/serialised-input.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { PolicyUnloadableError } from '../../policy/watcher/policy-set.js';

const INPUT = {
  type: 'http',
  request: { method: 'GET', path: '/rag/ask', headers: { host: 'gw', 'x-a': ['1', '2'] }, query: {} },
  user: { sub: 'ada', role: 'viewer', project: 'team-a', groups: ['x'] },
  project: 'team-a',
  body: null,
};

describe('an input projection', () => {
  it('keeps what the refs name, whole, and on the way only the keys some ref names', () => {
    const projection = InputProjection.of([['request', 'path'], ['user', 'role'], ['request', 'headers', 'x-a'], ['project']])!;
    expect(projection.apply(INPUT)).toEqual({
      request: { path: '/rag/ask', headers: { 'x-a': ['1', '2'] } },
      user: { role: 'viewer' },
      project: 'team-a',
    });
    // The document itself is left as it was.
    expect(INPUT.request.headers).toEqual({ host: 'gw', 'x-a': ['1', '2'] });
  });

  it('keeps a value that is not an object whole where a ref goes through it, and skips keys the input lacks', () => {
    const projection = InputProjection.of([
      ['body', 'model'],
      ['user', 'groups', 'first'],
      ['var', 'timestamp'],
    ])!;
    expect(projection.apply(INPUT)).toEqual({ body: null, user: { groups: ['x'] } });
    expect(projection.apply('text')).toBe('text');
  });

  it('a shorter ref keeps the whole of what a longer one names inside it, in any order', () => {
    const a = InputProjection.of([['user', 'role'], ['user']])!;
    const b = InputProjection.of([['user'], ['user', 'role']])!;
    expect(a.apply(INPUT)).toEqual({ user: INPUT.user });
    expect(b.apply(INPUT)).toEqual({ user: INPUT.user });
    expect(a.key).toBe(b.key);
  });

  it('says whether it keeps anything at or under a path', () => {
    const projection = InputProjection.of([['request', 'path'], ['request', 'headers', 'x-a'], ['user']])!;
    expect(projection.reads(['request', 'headers'])).toBe(true); // a ref goes on under it
    expect(projection.reads(['request', 'headers', 'x-a', 'deep'])).toBe(true); // inside what a ref keeps
    expect(projection.reads(['user', 'role'])).toBe(true);
    expect(projection.reads(['request'])).toBe(true);
    expect(projection.reads([])).toBe(true);
    expect(projection.reads(['request', 'query'])).toBe(false);
    expect(projection.reads(['request', 'headers', 'x-b'])).toBe(false);
    expect(projection.reads(['body'])).toBe(false);
  });

  it('keeps a "__proto__" key as a key, as JSON gives it', () => {
    const input = JSON.parse('{"body":{"__proto__":{"admin":true},"model":"m"}}') as unknown;
    const projected = InputProjection.of([['body', '__proto__']])!.apply(input);
    expect(JSON.stringify(projected)).toBe('{"body":{"__proto__":{"admin":true}}}');
  });

  it('no refs, or a ref to the input itself: the whole input; refs of another shape are refused', () => {
    expect(InputProjection.of(undefined)).toBeNull();
    expect(InputProjection.of([['user'], []])).toBeNull();
    expect(InputProjection.of([])!.apply(INPUT)).toEqual({});
    for (const bad of [null, 'user', [['user', 1]], [Array(65).fill('a')], [{ 0: 'user' }], [[], ['user', 1]]]) {
      expect(() => InputProjection.of(bad), JSON.stringify(bad)).toThrow(TypeError);
    }
    expect(() => InputProjection.of(Array(1025).fill(['a']))).toThrow(/at most 1024/);
  });

  it('serialises each projection once per decision: policies reading the same parts share it', () => {
    const serialised = new SerialisedInput(INPUT);
    const platform = InputProjection.of([
      ['user', 'sub'],
      ['request', 'path'],
    ])!;
    const same = InputProjection.of([
      ['request', 'path'],
      ['user', 'sub'],
    ])!;
    const project = InputProjection.of([['user', 'role']])!;
    const first = inputFor(serialised, platform) as SerialisedInput;
    expect(inputFor(serialised, same)).toBe(first);
    expect(inputFor(serialised, project)).not.toBe(first);
    expect(new TextDecoder().decode(first.bytes)).toBe('{"user":{"sub":"ada"},"request":{"path":"/rag/ask"}}');
    expect(inputFor(serialised, null)).toBe(serialised);
    expect(inputFor(INPUT, project)).toEqual({ user: { role: 'viewer' } });
  });
});

describe('a gateway and the input refs of a version', () => {
  let etcd: TestEtcd;
  let admin: Etcd3;
  let writer: EtcdPolicyWriter;
  let watcher: PolicyWatcher;

  // Reads the role only; its compiled refs name input.user.role.
  const ROLE_POLICY = 'package project.authz\nimport rego.v1\ndefault allow := false\nallow if input.user.role == "viewer"\n';

  beforeAll(async () => {
    etcd = await startEtcd();
    admin = createEtcdClient(etcd.endpoints);
    writer = new EtcdPolicyWriter(admin);
    watcher = new PolicyWatcher({ client: createEtcdClient(etcd.endpoints), log: pino({ level: 'silent' }) });
    await watcher.start();
  }, 30_000);

  afterAll(async () => {
    await watcher?.stop();
    admin?.close();
    await etcd?.cleanup();
  });

  async function writeWith(name: string, inputRefs: unknown): Promise<void> {
    const compiled = await writer.compiler.compile(ROLE_POLICY);
    expect(compiled.inputRefs).toEqual([['user', 'role']]);
    const { inputRefs: _compiled, ...rest } = policySubmission(ROLE_POLICY, '{}', compiled, 'test');
    const submission = inputRefs === undefined ? rest : { ...rest, inputRefs: inputRefs as string[][] };
    const { revision } = await writer.store.put(name, submission);
    await untilWatcherAt(watcher, revision);
  }

  it('shows a policy only the parts its metadata names', async () => {
    await writeWith('as-compiled', [['user', 'role']]);
    await writeWith('whole', undefined);
    // Metadata naming another part than the policy reads: the policy is blind to the role.
    await writeWith('blinded', [['request', 'path']]);
    const decide = (name: string) => watcher.current.get(name)!.evaluate('t', new SerialisedInput(INPUT));
    expect(await decide('as-compiled')).toEqual({ allow: true });
    expect(await decide('whole')).toEqual({ allow: true });
    expect(await decide('blinded')).toEqual({ allow: false });
    // What each is shown, as a gateway asks before building the parts of its input no policy reads.
    const reads = (name: string, path: string[]) => watcher.current.get(name)!.readsInput(path);
    expect(reads('as-compiled', ['user', 'role'])).toBe(true);
    expect(reads('as-compiled', ['request', 'headers'])).toBe(false);
    expect(reads('blinded', ['request', 'path'])).toBe(true);
    expect(reads('blinded', ['user'])).toBe(false);
    expect(reads('whole', ['request', 'headers'])).toBe(true);
  });

  it('refuses a version whose refs it cannot read: denied, never shown the whole input', async () => {
    await writeWith('malformed', [['user', 7]]);
    const policy = watcher.current.get('malformed')!;
    expect(policy.broken).toMatch(/inputRefs cannot be read/);
    expect(policy.readsInput(['request', 'headers'])).toBe(true);
    await expect(policy.evaluate('t', INPUT)).rejects.toThrow(PolicyUnloadableError);
  });
});
