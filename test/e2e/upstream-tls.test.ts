// https upstreams (the LLM, which receives each project's Vault key) are
// verified: config.yaml turns on nginx's proxy_ssl_verify against
// apisix.ssl.ssl_trusted_certificate. Checked on the gateway with the
// repository's config.yaml, only the bundle's path changed: an upstream whose
// certificate the bundle does not vouch for gets nothing, not even the request.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import type { Document } from 'yaml';
import { startTestGateway, type TestGatewayHandle } from '../support/gateway.js';

let dir: string;
let upstream: Server;
let upstreamPort = 0;
let received = 0;
const gateways: TestGatewayHandle[] = [];

/** A CA, and a certificate it signs for 127.0.0.1. */
function makeCerts(): void {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  openssl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=test upstream CA',
  );
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl(
    'x509',
    '-req',
    '-in',
    'server.csr',
    '-CA',
    'ca.crt',
    '-CAkey',
    'ca.key',
    '-CAcreateserial',
    '-out',
    'server.crt',
    '-days',
    '1',
    '-extfile',
    'san.ext',
  );
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
});

afterAll(async () => {
  for (const gateway of gateways) await gateway.stop();
  await new Promise((resolve) => upstream?.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

async function gatewayWith(editConfig: (config: Document) => void): Promise<TestGatewayHandle> {
  const routesPath = join(dir, `apisix-${gateways.length}.yaml`);
  writeFileSync(
    routesPath,
    [
      'routes:',
      '  - id: llm',
      '    uri: /llm/*',
      '    upstream:',
      '      scheme: https',
      '      pass_host: node',
      '      nodes:',
      `        "127.0.0.1:${upstreamPort}": 1`,
      '#END',
      '',
    ].join('\n'),
  );
  const gateway = await startTestGateway({ routesPath, editConfig });
  gateways.push(gateway);
  return gateway;
}

const trusting = (bundle: string) => (config: Document) => config.setIn(['apisix', 'ssl', 'ssl_trusted_certificate'], bundle);

describe('https upstreams', () => {
  it('an upstream whose certificate the trusted bundle does not vouch for gets nothing: 502', async () => {
    // The system's roots do not include the test CA.
    const gateway = await gatewayWith(trusting('/etc/ssl/certs/ca-certificates.crt'));
    received = 0;
    const res = await request(`${gateway.url}/llm/v1/chat/completions`, { headers: { authorization: 'Bearer sk-project-key' } });
    await res.body.dump();
    expect(res.statusCode).toBe(502);
    expect(received).toBe(0);
  });

  it('an upstream the bundle vouches for is reached', async () => {
    const gateway = await gatewayWith(trusting(join(dir, 'ca.crt')));
    received = 0;
    const res = await request(`${gateway.url}/llm/v1/chat/completions`);
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('secret-bearing request served');
    expect(received).toBe(1);
  });

  it("it is config.yaml's snippet that verifies: without it the same untrusted upstream gets the key", async () => {
    const gateway = await gatewayWith((config) => {
      trusting('/etc/ssl/certs/ca-certificates.crt')(config);
      config.deleteIn(['nginx_config', 'http_server_configuration_snippet']);
    });
    received = 0;
    const res = await request(`${gateway.url}/llm/v1/chat/completions`, { headers: { authorization: 'Bearer sk-project-key' } });
    await res.body.dump();
    expect(res.statusCode).toBe(200);
    expect(received).toBe(1);
  });
});
