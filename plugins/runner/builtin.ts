// The plugins this runner ships with, in one list, given what they depend on.
import type { AnyPlugin } from '../api/plugin.js';
import { examplePlugin } from '../example/index.js';
import { createJwtPlugin } from '../jwt/index.js';
import { createOpaPlugin, type DecisionLogSink, type DecisionRecorder, type PolicySource } from '../opa/index.js';
import type { IdentityVerifier } from '../../identity/index.js';
import { createVaultPlugin, type VaultPluginDeps } from '../vault/index.js';
import { pathRewritePlugin } from '../path-rewrite/index.js';
import { createLlmBudgetPlugin } from '../llm-budget/index.js';
import type { GatewayBudgets } from '../../budget/gateway.js';
import type { CandidateShadow } from '../../policy/candidate/index.js';

export interface PluginDependencies {
  verifier: IdentityVerifier | null;
  verifierError?: string;
  policies: PolicySource;
  decisions: DecisionRecorder;
  decisionLog?: DecisionLogSink;
  vault: VaultPluginDeps;
  /** LLM budgets (null without etcd: routes using them are refused at PrepareConf). */
  budgets: GatewayBudgets | null;
  /** Where policies' candidates are shadowed and canaried (absent without etcd). */
  candidates?: CandidateShadow;
}

export function builtinPlugins(deps: PluginDependencies): AnyPlugin[] {
  return [
    examplePlugin,
    createJwtPlugin(deps.verifier, deps.verifierError),
    createOpaPlugin({
      policies: deps.policies,
      decisions: deps.decisions,
      decisionLog: deps.decisionLog,
      budgets: deps.budgets,
      ...(deps.candidates ? { candidates: deps.candidates } : {}),
    }),
    createLlmBudgetPlugin(deps.budgets),
    createVaultPlugin(deps.vault),
    pathRewritePlugin,
  ];
}
