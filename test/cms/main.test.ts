/** The gatehouse-cms binary (dist/cms/main.js): config from env, serves, stops on SIGTERM. */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../../runtime/paths.js';
import { freePort } from '../../dev/free-port.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { OPA_PATH, policyBody, rawRequest, V1_POLICY } from './harness.js';

const MAIN = join(packageRoot(), 'dist', 'cms', 'main.js');
let etcd: TestEtcd;
let keys: TestKeys;

beforeAll(async () => {
  etcd = await startEtcd();
  keys = await createTestKeys();
});
afterAll(async () => {
  await keys?.cleanup();
  await etcd?.cleanup();
});

describe('gatehouse-cms process', () => {
  it('serves with env config, logs pino JSON to stderr, and exits 0 on SIGTERM', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [MAIN], {
      env: {
        PATH: process.env.PATH,
        PORT: String(port),
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ...keys.env,
        JWT_ALGORITHMS: 'ES256',
        OPA_PATH,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.stdout.on('data', (chunk) => (stdout += chunk));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const baseUrl = `http://127.0.0.1:${port}`;
    try {
      const deadline = Date.now() + 20_000;
      for (;;) {
        try {
          if ((await rawRequest(baseUrl, 'GET', '/healthz')).status === 200) break;
        } catch {
          // not listening yet
        }
        if (Date.now() > deadline) throw new Error(`the CMS did not start:\n${stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const token = await keys.token({ sub: 'ada', role: 'platform_admin' });
      const put = await rawRequest(baseUrl, 'PUT', '/policies/from-binary', { token, body: policyBody(V1_POLICY) });
      expect(put.status).toBe(201);
      expect((await rawRequest(baseUrl, 'GET', '/readyz')).status).toBe(200);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    expect(stdout).toBe('');
    const lines = stderr
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line));
    expect(lines.some((line) => line.audit?.policy === 'from-binary')).toBe(true);
    expect(lines.some((line) => line.msg === 'shutting down')).toBe(true);
  });

  it('refuses to start without identity configuration', async () => {
    const child = spawn(process.execPath, [MAIN], { env: { PATH: process.env.PATH, OPA_PATH }, stdio: 'ignore' });
    expect(await new Promise((resolve) => child.once('exit', resolve))).toBe(2);
  });
});
