/**
 * etcd access control for Gatehouse's keys: the CMS is the only writer of
 * policies; gateways (the runner) and the decision API only read them. With
 * auth enabled, a compromised gateway cannot write an allow-all policy past
 * the CMS's compile, validation and audit.
 *
 *   role gatehouse-policy-writer   readwrite /policies/ and /policy-index/, read /gatehouse/gateways/;
 *                                  readwrite /budgets/ and /budget-history/, read the budget ledger,
 *                                  its holders and /usage/
 *   role gatehouse-policy-reader   read      /policies/ and /policy-index/, readwrite /gatehouse/gateways/;
 *                                  read /budgets/, readwrite the budget ledger, its holders and /usage/
 *
 * Gateways write their own reports of what they enforce (policy/fleet); the
 * CMS reads them. A gateway's credential could overwrite another gateway's
 * report (etcd grants by prefix), which can mislead the CMS's status but
 * never what any gateway enforces. Likewise gateways share the budget ledger
 * and write usage (budget/keys.ts): a gateway's credential can misstate what
 * was spent, as the gateway that enforces the budget could anyway; it cannot
 * change a budget.
 *   user gatehouse-cms       -> writer      (the CMS)
 *   user gatehouse-gateway   -> reader      (runners and the decision API)
 *   user root                -> root        (operators; etcd requires it to enable auth)
 *
 * With mutual TLS, etcd takes the user name from the client certificate's
 * common name, so certificates with CN gatehouse-cms and gatehouse-gateway
 * need no password; over plain connections the users log in with one
 * (ETCD_USERNAME, ETCD_PASSWORD). Anything else that uses the cluster
 * (APISIX's /apisix routes in traditional mode) needs its own role.
 */
import { Range, type Etcd3 } from 'etcd3';
import { GATEWAYS_PREFIX, POLICIES_PREFIX, POLICY_INDEX_PREFIX } from '../../policy/store/keys.js';
import { BUDGET_HISTORY_PREFIX, BUDGETS_PREFIX, HOLDERS_PREFIX, LEDGER_PREFIX, USAGE_PREFIX } from '../../budget/keys.js';

export const POLICY_WRITER_ROLE = 'gatehouse-policy-writer';
export const POLICY_READER_ROLE = 'gatehouse-policy-reader';
export const CMS_USER = 'gatehouse-cms';
export const GATEWAY_USER = 'gatehouse-gateway';

/** The key ranges Gatehouse's services use, as [start, end). */
export function policyKeyRanges(): Range[] {
  return [Range.prefix(POLICIES_PREFIX), Range.prefix(POLICY_INDEX_PREFIX)];
}

export interface EtcdAuthSetup {
  rootPassword: string;
  /** Passwords of the service users; unused (but required by etcd 3.4) when they authenticate with certificates. */
  cmsPassword: string;
  gatewayPassword: string;
  /** Other roles to create, e.g. APISIX's readwrite on /apisix. */
  extraRoles?: { role: string; user: string; password: string; ranges: Range[]; permission: 'Read' | 'Write' | 'Readwrite' }[];
  /** More users with etcd's root role (operators' certificates, by common name), with their passwords. */
  admins?: { user: string; password: string }[];
}

/** Creates the roles and users and turns auth on. Run once, as a client of an etcd without auth. */
export async function enableEtcdAuth(client: Etcd3, setup: EtcdAuthSetup): Promise<void> {
  const writer = await client.role(POLICY_WRITER_ROLE).create();
  await writer.grant([
    ...policyKeyRanges().map((range) => ({ permission: 'Readwrite' as const, range })),
    { permission: 'Read' as const, range: Range.prefix(GATEWAYS_PREFIX) },
    ...[BUDGETS_PREFIX, BUDGET_HISTORY_PREFIX].map((prefix) => ({ permission: 'Readwrite' as const, range: Range.prefix(prefix) })),
    ...[LEDGER_PREFIX, HOLDERS_PREFIX, USAGE_PREFIX].map((prefix) => ({ permission: 'Read' as const, range: Range.prefix(prefix) })),
  ]);
  const reader = await client.role(POLICY_READER_ROLE).create();
  await reader.grant([
    ...policyKeyRanges().map((range) => ({ permission: 'Read' as const, range })),
    { permission: 'Readwrite' as const, range: Range.prefix(GATEWAYS_PREFIX) },
    { permission: 'Read' as const, range: Range.prefix(BUDGETS_PREFIX) },
    ...[LEDGER_PREFIX, HOLDERS_PREFIX, USAGE_PREFIX].map((prefix) => ({ permission: 'Readwrite' as const, range: Range.prefix(prefix) })),
  ]);
  await (await client.user(CMS_USER).create(setup.cmsPassword)).addRole(POLICY_WRITER_ROLE);
  await (await client.user(GATEWAY_USER).create(setup.gatewayPassword)).addRole(POLICY_READER_ROLE);
  for (const extra of setup.extraRoles ?? []) {
    const role = await client.role(extra.role).create();
    await role.grant(extra.ranges.map((range) => ({ permission: extra.permission, range })));
    await (await client.user(extra.user).create(extra.password)).addRole(extra.role);
  }
  for (const admin of setup.admins ?? []) await (await client.user(admin.user).create(admin.password)).addRole('root');
  await (await client.user('root').create(setup.rootPassword)).addRole('root');
  await client.auth.authEnable({});
}
