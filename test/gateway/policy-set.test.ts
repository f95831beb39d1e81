// A policy set applies a change without copying every policy: an overlay of
// recent changes over a base, folded in now and then. Whatever the folding,
// it must read exactly like a plain map with the same changes applied.
import { describe, expect, it } from 'vitest';
import { PolicySet, type LoadedPolicy } from '../../policy/watcher/policy-set.js';

const policy = (name: string, version: number) => ({ name, meta: { version } }) as unknown as LoadedPolicy;

describe('policy set', () => {
  it('reads like a map through thousands of changes, deletions and foldings', () => {
    const reference = new Map<string, LoadedPolicy>();
    for (let i = 0; i < 2_000; i++) reference.set(`p${i}`, policy(`p${i}`, 1));
    let set = new PolicySet(1, new Map(reference), 'etcd');
    let seed = 7;
    const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    for (let revision = 2; revision < 3_000; revision++) {
      const changes = new Map<string, LoadedPolicy | null>();
      for (let k = 0; k < 1 + Math.floor(random() * 3); k++) {
        const name = `p${Math.floor(random() * 2_500)}`;
        const value = random() < 0.2 ? null : policy(name, revision);
        changes.set(name, value);
      }
      for (const [name, value] of changes) {
        if (value) reference.set(name, value);
        else reference.delete(name);
      }
      const before = set;
      set = set.with(revision, changes);
      expect(set.revision).toBe(revision);
      // The earlier set is untouched: a decision holding it sees one revision.
      if (revision % 97 === 0) expect(before.revision).toBe(revision - 1);
      if (revision % 250 === 0 || revision === 2_999) {
        expect(set.size).toBe(reference.size);
        expect(new Map(set.policies)).toEqual(reference);
        for (const name of ['p0', 'p1999', 'p2400', 'nope']) expect(set.get(name)).toBe(reference.get(name));
      }
    }
  });

  it('a change to one set never shows in another made from it', () => {
    const base = new PolicySet(1, new Map([['a', policy('a', 1)]]), 'etcd');
    const next = base.with(
      2,
      new Map([
        ['a', policy('a', 2)],
        ['b', policy('b', 2)],
      ]),
    );
    const gone = next.with(3, new Map([['a', null]]));
    expect(base.get('a')?.meta.version).toBe(1);
    expect(base.get('b')).toBeUndefined();
    expect(next.get('a')?.meta.version).toBe(2);
    expect(gone.get('a')).toBeUndefined();
    expect(gone.size).toBe(1);
    expect([...gone.policies.keys()]).toEqual(['b']);
  });
});
