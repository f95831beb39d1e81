// APISIX stand-in: public entry points for tests and the start script.
export { findRepoRoot } from '../repo-root.js';
export { startStandin, waitForSocket, STANDIN_SERVER_HEADER, DEFAULT_BODY_LIMIT_BYTES } from './standin.js';
export type { StandinHandle, StandinOptions } from './standin.js';
export { parseRoutes, loadRoutesFile, matchRoute, RouteConfigError } from './routes.js';
export type { Route, Upstream, ExtPluginConf, ExtPluginPhase } from './routes.js';
export { parseGatewayConfig, loadGatewayConfig, runnerEnvironment, resolveRunnerCmd } from './gateway-config.js';
