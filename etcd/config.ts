/**
 * etcd settings as the services read them from their environment (each
 * service's configuration module calls these with its environment):
 *
 *   ETCD_ENDPOINTS          comma-separated etcd URLs (default DEFAULT_ETCD_ENDPOINT; the runner: none)
 *   ETCD_CACERT, ETCD_CERT, ETCD_KEY  TLS to etcd (https:// endpoints): CA, client certificate and key (PEM files)
 *   ETCD_USERNAME, ETCD_PASSWORD (or ETCD_PASSWORD_FILE)  etcd user, when auth is on and the certificate does not name it
 */
import { readEtcdFile, type EtcdClientOptions } from './client.js';

/** The etcd a service talks to when ETCD_ENDPOINTS is unset: one on this host. */
export const DEFAULT_ETCD_ENDPOINT = 'http://127.0.0.1:2379';

/**
 * ETCD_ENDPOINTS: comma-separated URLs, blanks dropped. Unset: the local
 * DEFAULT_ETCD_ENDPOINT, or none with `optional` (a runner without etcd
 * enforces no policies: the opa plugin then denies with 503).
 */
export function etcdEndpoints(env: NodeJS.ProcessEnv, options: { optional?: boolean } = {}): string[] {
  return (env.ETCD_ENDPOINTS ?? (options.optional ? '' : DEFAULT_ETCD_ENDPOINT))
    .split(',')
    .map((endpoint) => endpoint.trim())
    .filter(Boolean);
}

/**
 * ETCD_CACERT, ETCD_CERT, ETCD_KEY (PEM file paths), and ETCD_USERNAME with
 * ETCD_PASSWORD or ETCD_PASSWORD_FILE, as createEtcdClient options.
 */
export function etcdClientOptionsFromEnv(env: NodeJS.ProcessEnv): EtcdClientOptions {
  const file = (name: string) => env[name]?.trim() || undefined;
  const caFile = file('ETCD_CACERT');
  const certFile = file('ETCD_CERT');
  const keyFile = file('ETCD_KEY');
  const username = env.ETCD_USERNAME?.trim();
  let password = env.ETCD_PASSWORD;
  const passwordFile = file('ETCD_PASSWORD_FILE');
  if (passwordFile)
    password = readEtcdFile(passwordFile, 'password file')
      .toString('utf8')
      .replace(/\r?\n$/, '');
  if (Boolean(username) !== (password !== undefined && password !== '')) {
    throw new Error('an etcd user needs its password, and a password its user (ETCD_USERNAME, ETCD_PASSWORD or ETCD_PASSWORD_FILE)');
  }
  const auth = username && password ? { auth: { username, password } } : {};
  if (!caFile && !certFile && !keyFile) return auth;
  return { tls: { ...(caFile ? { caFile } : {}), ...(certFile ? { certFile } : {}), ...(keyFile ? { keyFile } : {}) }, ...auth };
}
