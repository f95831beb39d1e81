// A real etcd client with faults injected at the points a network can fail
// a transaction: before it reaches etcd (nothing written), or after etcd
// committed it (its answer lost), and the reads that follow. etcd itself is
// real; only what the caller gets back is changed.
import type { Etcd3 } from 'etcd3';

export interface EtcdFaults {
  /** Transactions to fail before they are sent (nothing written). */
  failCommits: number;
  /** Transactions whose answer to lose after etcd committed them. */
  loseCommitAnswers: number;
  /** Reads to fail after each lost answer. */
  readsToFailAfterLoss: number;
}

export function faultyEtcd(real: Etcd3): { client: Etcd3; faults: EtcdFaults } {
  const faults: EtcdFaults = { failCommits: 0, loseCommitAnswers: 0, readsToFailAfterLoss: 0 };
  let failReads = 0;
  const client = new Proxy(real, {
    get(target, prop) {
      if (prop === 'if') {
        return (...args: Parameters<Etcd3['if']>) => {
          const guard = target.if(...args);
          return {
            then: (...ops: Parameters<typeof guard.then>) => {
              const txn = guard.then(...ops);
              return {
                commit: async () => {
                  if (faults.failCommits > 0) {
                    faults.failCommits--;
                    throw new Error('unavailable: the link is down');
                  }
                  const answer = await txn.commit();
                  if (faults.loseCommitAnswers === 0) return answer;
                  faults.loseCommitAnswers--;
                  failReads = faults.readsToFailAfterLoss;
                  throw new Error('deadline exceeded: the answer was lost');
                },
              };
            },
          };
        };
      }
      if (prop === 'get') {
        return (key: string) => {
          if (failReads === 0) return target.get(key);
          failReads--;
          return { exec: () => Promise.reject(new Error('deadline exceeded')) };
        };
      }
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { client, faults };
}
