// Which gateway the gateway tests run on: the real APISIX, which `npm test`'s
// setup builds from the APISIX kit (or APISIX_HOME names). A machine without
// it fails these tests rather than quietly testing something else, unless
// GATEHOUSE_GATEWAY=standin asks for the APISIX stand-in explicitly.
import { findApisix, type ApisixInstallation } from '../../tools/apisix/index.js';
import { repoRoot } from './runner-process.js';

export type TestGateway = 'apisix' | 'standin';

export function testGateway(): TestGateway {
  if (process.env.GATEHOUSE_GATEWAY === 'standin') return 'standin';
  if (!findApisix(repoRoot)) {
    throw new Error('no APISIX on this machine: `npm run setup` builds it from ../shared/apisix-kit, or set APISIX_HOME; GATEHOUSE_GATEWAY=standin runs the gateway tests on the APISIX stand-in instead');
  }
  return 'apisix';
}

export function apisixInstallation(): ApisixInstallation {
  const installation = findApisix(repoRoot);
  if (!installation) throw new Error('no APISIX on this machine (see testGateway)');
  return installation;
}

/** The Server header each gateway answers with (config.yaml turns APISIX's version off). */
export const SERVER_HEADER: Record<TestGateway, RegExp> = {
  apisix: /^APISIX$/,
  standin: /Gatehouse stand-in/,
};
