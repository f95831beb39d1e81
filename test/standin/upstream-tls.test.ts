// https upstreams (the LLM, which receives each project's Vault key) are
// verified: config.yaml turns on nginx's proxy_ssl_verify against
// ssl_trusted_certificate, and the stand-in does what nginx then does. An
// upstream whose certificate the bundle does not vouch for gets nothing,
// not even the request.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { request } from 'undici';
import { FakeRunner } from './fake-runner.js';
import { parseGatewayConfig, startStandin, type StandinHandle } from '../../tools/apisix-standin/index.js';
import { repoRoot } from '../support/runner-process.js';

let dir: string;
let upstream: Server;
let upstreamPort = 0;
let received = 0;
let fake: FakeRunner;
const standins: StandinHandle[] = [];

/** A CA, and a certificate it signs for 127.0.0.1. */
function makeCerts(): void {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=test upstream CA');
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '1', '-extfile', 'san.ext');
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'gh-upstream-tls-'));
  makeCerts();
  upstream = createServer({ key: readFileSync(join(dir, 'server.key')), cert: readFileSync(join(dir, 'server.crt')) }, (req, res) => {
    received++;
    res.end('secret-bearing request served');
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  upstreamPort = (upstream.address() as { port: number }).port;
  fake = await FakeRunner.start();
});

afterAll(async () => {
  for (const s of standins) await s.stop();
  await fake?.close();
  await new Promise((resolve) => upstream?.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

async function standinWith(config: string): Promise<StandinHandle> {
  const configPath = join(dir, `config-${standins.length}.yaml`);
  writeFileSync(configPath, config);
  const routesPath = join(dir, 'apisix.yaml');
  writeFileSync(
    routesPath,
    ['routes:', '  - id: llm', '    uri: /llm/*', '    upstream:', '      scheme: https', '      pass_host: node', '      nodes:', `        "127.0.0.1:${upstreamPort}": 1`, '#END', ''].join('\n'),
  );
  const standin = await startStandin({ configPath, routesPath, runnerSocketPath: fake.socketPath, reloadIntervalMs: null, logger: pino({ level: 'silent' }) });
  standins.push(standin);
  return standin;
}

const verifying = (bundle: string) => `apisix:\n  ssl:\n    ssl_trusted_certificate: ${bundle}\nnginx_config:\n  http_server_configuration_snippet: |\n    proxy_ssl_verify on;\n`;

describe('https upstreams', () => {
  it("the repository's configs turn verification on", () => {
    for (const file of ['apisix-conf/config.yaml', 'apisix-conf/config-traditional.yaml']) {
      const config = parseGatewayConfig(readFileSync(join(repoRoot, file), 'utf8'));
      expect(config.upstreamTls.verify, file).toBe(true);
      expect(config.upstreamTls.trustedCertificate, file).not.toBeNull();
    }
  });

  it('an upstream whose certificate the trusted bundle does not vouch for gets nothing: 502', async () => {
    // The system's roots do not include the test CA.
    const standin = await standinWith(verifying('/etc/ssl/certs/ca-certificates.crt'));
    received = 0;
    const res = await request(`${standin.url}/llm/v1/chat/completions`, { headers: { authorization: 'Bearer sk-project-key' } });
    await res.body.dump();
    expect(res.statusCode).toBe(502);
    expect(received).toBe(0);
  });

  it('an upstream the bundle vouches for is reached', async () => {
    const standin = await standinWith(verifying(join(dir, 'ca.crt')));
    received = 0;
    const res = await request(`${standin.url}/llm/v1/chat/completions`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('secret-bearing request served');
    expect(received).toBe(1);
  });
});
