// Writes real compiled policies into a real etcd, through the same compiler
// and store the CMS uses, for tests that need policies without the HTTP API.
import type { Etcd3 } from 'etcd3';
import type { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { RegoCompiler, policySubmission } from '../../cms/rego-compiler.js';
import { PolicyStore } from '../../policy/store/index.js';
import { opaPath as findOpa } from '../../runtime/paths.js';

export const opaPath = findOpa(process.env.OPA_PATH);

export { NESTED_LOOP_REGO } from '../../dev/policies.js';

/** Compiles policies with the real opa and writes them straight to etcd as the CMS stores them (no HTTP, no checks): for tests of the read side. */
export class EtcdPolicyWriter {
  readonly compiler = new RegoCompiler({ opaPath });
  readonly store: PolicyStore;
  private readonly compiled = new Map<string, Awaited<ReturnType<RegoCompiler['compile']>>>();

  constructor(client: Etcd3) {
    this.store = new PolicyStore(client);
  }

  /** Compiles (cached per source) and writes one policy version. */
  async put(name: string, rego: string, data: unknown = {}, author = 'test'): Promise<number> {
    let compiled = this.compiled.get(rego);
    if (!compiled) {
      compiled = await this.compiler.compile(rego, JSON.stringify(data));
      this.compiled.set(rego, compiled);
    }
    const result = await this.store.put(name, policySubmission(rego, JSON.stringify(data), compiled, author));
    return result.meta.version;
  }
}

/** Resolves once `watcher` has loaded etcd's `revision` (a write's); throws after 10 s. */
export async function untilWatcherAt(watcher: PolicyWatcher, revision: number): Promise<void> {
  for (let waited = 0; watcher.current.revision < revision; waited += 10) {
    if (waited > 10_000) throw new Error(`the watcher did not reach revision ${revision}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
