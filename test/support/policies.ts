// Writes real compiled policies into a real etcd, through the same compiler
// and store the CMS uses, for tests that need policies without the HTTP API.
import type { Etcd3 } from 'etcd3';
import { RegoCompiler, policySubmission } from '../../cms/rego-compiler.js';
import { PolicyStore } from '../../policy/store/index.js';
import { opaPath as findOpa } from '../../runtime/paths.js';

export const opaPath = findOpa(process.env.OPA_PATH);

/**
 * A project policy whose work grows with n * n (n from the request's query)
 * and allocates little, so that fuel or a deadline stops it, not memory:
 * about 100 ms for n = 500 on a 2-core machine (burning a little more than
 * the default fuel), seconds for n = 4000, at once for a small n.
 */
export const NESTED_LOOP_REGO = `package project.authz
import rego.v1
default allow := false
r := numbers.range(1, to_number(input.request.query.n))
allow if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;

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
