// The real APISIX, for the local stack, the tests and the rehearsal: where it
// is installed, and one running instance of it.
export { findApisix } from './installation.js';
export type { ApisixInstallation } from './installation.js';
export { startApisix, prepareApisix, testApisixConfig, reachableByWorkers, ApisixStartError } from './instance.js';
export { freePort } from '../free-port.js';
export type { ApisixHandle, ApisixInstanceOptions, PreparedApisix } from './instance.js';
