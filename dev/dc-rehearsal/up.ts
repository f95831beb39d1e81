#!/usr/bin/env node
// npm run dc:up: the two-datacenter rehearsal, left running in the
// background (npm run dc:down stops it). Needs root (network namespaces).
import { join } from 'node:path';
import { createDemoIdentity, seedDemoPolicies, DEMO_PROJECT } from '../demo.js';
import { opaPath as opaBinary, packageRoot } from '../../runtime/paths.js';
import { identityEnv } from './identity-env.js';
import { netnsAvailable } from './netns.js';
import { startRehearsal } from './rehearsal.js';
import { REHEARSAL_PLAN, rehearsalWorkDir } from './plan.js';

async function main() {
  if (!netnsAvailable()) throw new Error('the rehearsal needs root and `ip netns` (network namespaces)');
  const root = packageRoot();
  const workDir = rehearsalWorkDir(root);
  const opaPath = opaBinary(process.env.OPA_PATH);
  const identity = await createDemoIdentity(join(workDir, 'identity'));
  const rehearsal = await startRehearsal({ ...REHEARSAL_PLAN, workDir, identityEnv: identityEnv(identity.identityConfig), opaPath });
  const seeded = await seedDemoPolicies({
    etcdEndpoints: rehearsal.etcdEndpoints,
    etcdAuth: rehearsal.etcdUsers.cms,
    opaPath,
    signing: { keyFile: rehearsal.signingKeys.privateKeyFile, kid: rehearsal.signingKeys.kid },
  });
  const t = identity.tokens;
  const p = REHEARSAL_PLAN.prefix;
  process.stdout.write(`
Two-datacenter rehearsal is up (stop it with: npm run dc:down).

  HAProxy (clients use this)  ${rehearsal.url}        stats: ${rehearsal.statsUrl}
  dc1 gateway / CMS           ${rehearsal.sites.dc1.gateway}  ${rehearsal.sites.dc1.cms}   runner ${rehearsal.sites.dc1.runnerHealth}/readyz
  dc2 gateway / CMS           ${rehearsal.sites.dc2.gateway}  ${rehearsal.sites.dc2.cms}   runner ${rehearsal.sites.dc2.runnerHealth}/readyz
  etcd                        ${rehearsal.etcdEndpoints.join(' ')}
  seeded policies             ${seeded.length ? seeded.join(', ') : 'none new'}
  logs                        ${join(workDir, 'logs')}

  export ADMIN='${t.platformAdmin}'
  export DEV='${t.projectUser}'

curl -s ${rehearsal.url}/rag/ask -H "Authorization: Bearer $DEV"     # {"site":"dc1"|"dc2",...}: both datacenters serve
curl -s ${rehearsal.url}/policies -H "Authorization: Bearer $ADMIN"   # the CMS, through whichever datacenter HAProxy picks

Break things (as root):
  ip link set ${p}-dc1h down      # datacenter 1 cut off (its app node and etcd member)
  ip link set ${p}-dc1h up
  ip link set ${p}-with down      # the witness site cut off
  ip netns pids ${p}-dc2          # the processes of datacenter 2
The project policy of "${DEMO_PROJECT}" lets its project users through.
`);
}

main().catch((error) => {
  process.stderr.write(`dc:up failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
