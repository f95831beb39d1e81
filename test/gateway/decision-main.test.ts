// The gatehouse-decision binary binds loopback unless told otherwise: like
// the CMS, only APISIX on the same node should reach it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { createTestKeys, type TestKeys } from '../support/jwt.js';
import { repoRoot } from '../support/runner-process.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { freePort } from '../../dev/local-etcd/index.js';
import { createEtcdClient } from '../../etcd/index.js';

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

/** The local addresses listening on `port`, from /proc/net/tcp and tcp6 (hex, as the kernel writes them). */
function listeners(port: number): string[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const found: string[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      // 0A: LISTEN
      if (local?.endsWith(`:${hexPort}`) && state === '0A') found.push(local.split(':')[0]!);
    }
  }
  return found;
}

describe('gatehouse-decision process', () => {
  it('listens on 127.0.0.1 only when DECISION_HOST is not set', async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [join(repoRoot, 'dist/decision-api/main.js')], {
      env: {
        PATH: process.env.PATH ?? '',
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ...keys.env,
        DECISION_PORT: String(port),
        DECISION_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-decision-')),
        POLICY_EVAL_WORKERS: '0',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const deadline = Date.now() + 15_000;
      while (
        !(await fetch(`http://127.0.0.1:${port}/healthz`).then(
          (r) => r.ok,
          () => false,
        ))
      ) {
        if (Date.now() > deadline) throw new Error(`the decision API did not start: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // 0100007F is 127.0.0.1; 00000000 would be every interface.
      expect(listeners(port)).toEqual(['0100007F']);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it('starts with the evaluation pool (POLICY_EVAL_WORKERS) when etcd holds a platform policy it warms up first', async () => {
    const client = createEtcdClient(etcd.endpoints);
    try {
      await new EtcdPolicyWriter(client).put('platform', 'package gatehouse.platform\nimport rego.v1\ndefault allow := false\nallow if input.user.sub\n');
    } finally {
      client.close();
    }
    const port = await freePort();
    const child = spawn(process.execPath, [join(repoRoot, 'dist/decision-api/main.js')], {
      env: {
        PATH: process.env.PATH ?? '',
        ETCD_ENDPOINTS: etcd.endpoints.join(','),
        ...keys.env,
        DECISION_PORT: String(port),
        DECISION_STATE_DIR: mkdtempSync(join(tmpdir(), 'gh-decision-')),
        POLICY_EVAL_WORKERS: '2',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      const deadline = Date.now() + 30_000;
      while (
        !(await fetch(`http://127.0.0.1:${port}/readyz`).then(
          (r) => r.ok,
          () => false,
        ))
      ) {
        // Before: the process left with status 0 while the pool's workers (unref'd) built the platform policy's engine.
        if (child.exitCode !== null) throw new Error(`the decision API exited with status ${child.exitCode} before listening: ${stderr}`);
        if (Date.now() > deadline) throw new Error(`the decision API did not become ready: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(child.exitCode).toBeNull();
    } finally {
      child.kill('SIGTERM');
    }
  }, 60_000);
});
