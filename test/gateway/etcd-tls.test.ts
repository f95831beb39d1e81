// Gatehouse's etcd client over mutual TLS, configured as the app nodes are
// (ETCD_CACERT, ETCD_CERT, ETCD_KEY), against an etcd that requires client
// certificates, with the lab certificates of deploy/tls/make-lab-certs.sh.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { freePort } from '../../dev/local-etcd/index.js';
import { PolicyStore, StoreUnavailableError } from '../../policy/store/index.js';
import { createEtcdClient, etcdClientOptionsFromEnv } from '../../etcd/index.js';
import { PolicyWatcher } from '../../policy/watcher/watcher.js';
import { EtcdPolicyWriter } from '../support/policies.js';
import { repoRoot } from '../support/runner-process.js';

const ALLOW_ROLE = `package tls.authz
import rego.v1
default allow := false
allow if input.user.role == data.role
`;

let work: string;
let certs: string;
let etcd: ChildProcess;
let endpoint: string;
let output = '';

const env = (withClientCert: boolean) => ({
  ETCD_CACERT: join(certs, 'ca.crt'),
  ...(withClientCert ? { ETCD_CERT: join(certs, 'gatehouse-etcd-client.crt'), ETCD_KEY: join(certs, 'gatehouse-etcd-client.key') } : {}),
});

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'gh-etcd-tls-'));
  certs = join(work, 'certs');
  const made = spawnSync('sh', [join(repoRoot, 'deploy', 'tls', 'make-lab-certs.sh'), certs], { encoding: 'utf8' });
  expect(made.status, made.stderr).toBe(0);
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  endpoint = `https://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  etcd = spawn('etcd', [
    '--name',
    'tls',
    '--data-dir',
    join(work, 'data'),
    '--listen-client-urls',
    endpoint,
    '--advertise-client-urls',
    endpoint,
    '--listen-peer-urls',
    peer,
    '--initial-advertise-peer-urls',
    peer,
    '--initial-cluster',
    `tls=${peer}`,
    // The member certificate of deploy/ (its names include 127.0.0.1), and client certificates required.
    '--cert-file',
    join(certs, 'etcd-dc1.crt'),
    '--key-file',
    join(certs, 'etcd-dc1.key'),
    '--trusted-ca-file',
    join(certs, 'ca.crt'),
    '--client-cert-auth',
    '--logger',
    'zap',
    '--log-level',
    'warn',
  ]);
  etcd.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  etcd.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const client = createEtcdClient([endpoint], { ...etcdClientOptionsFromEnv(env(true)), callTimeoutMs: 1_000 });
  try {
    const deadline = Date.now() + 20_000;
    for (;;) {
      try {
        await new PolicyStore(client).ping();
        break;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`etcd over TLS did not answer: ${String(error)}\n${output.slice(-2_000)}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  } finally {
    client.close();
  }
}, 30_000);

afterAll(() => {
  etcd?.kill('SIGKILL');
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('etcd over mutual TLS', () => {
  it('the store writes and the watcher loads and follows policies, with the CA and the client certificate from the environment', async () => {
    const options = etcdClientOptionsFromEnv(env(true));
    expect(options.tls).toEqual({
      caFile: join(certs, 'ca.crt'),
      certFile: join(certs, 'gatehouse-etcd-client.crt'),
      keyFile: join(certs, 'gatehouse-etcd-client.key'),
    });
    const client = createEtcdClient([endpoint], options);
    const watcherClient = createEtcdClient([endpoint], options);
    const watcher = new PolicyWatcher({ client: watcherClient, log: pino({ level: 'silent' }), retryMs: 100 });
    try {
      const writer = new EtcdPolicyWriter(client);
      await writer.put('over-tls', ALLOW_ROLE, { role: 'viewer' });
      await watcher.start();
      expect(watcher.current.source).toBe('etcd');
      expect(watcher.current.get('over-tls')?.meta.version).toBe(1);
      await writer.put('over-tls', ALLOW_ROLE, { role: 'editor' });
      const deadline = Date.now() + 5_000;
      while (watcher.current.get('over-tls')?.meta.version !== 2) {
        if (Date.now() > deadline) throw new Error('the watch over TLS did not deliver version 2');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(watcher.status.state).toBe('watching');
    } finally {
      await watcher.stop();
      watcherClient.close();
      client.close();
    }
  });

  it('without a client certificate etcd refuses the client', async () => {
    const client = createEtcdClient([endpoint], { ...etcdClientOptionsFromEnv(env(false)), callTimeoutMs: 1_000 });
    try {
      await expect(new PolicyStore(client).ping()).rejects.toBeInstanceOf(StoreUnavailableError);
    } finally {
      client.close();
    }
  });

  it('refuses settings that cannot work: TLS files with an http:// endpoint, a certificate without its key, an unreadable file', () => {
    expect(() => createEtcdClient(['http://127.0.0.1:2379'], etcdClientOptionsFromEnv(env(true)))).toThrow(/not https:\/\//);
    expect(() => createEtcdClient([endpoint], { tls: { caFile: join(certs, 'ca.crt'), certFile: join(certs, 'gatehouse-etcd-client.crt') } })).toThrow(
      /needs its key/,
    );
    expect(() => createEtcdClient([endpoint], { tls: { caFile: join(work, 'missing.crt') } })).toThrow(/cannot read the etcd CA certificate/);
    expect(etcdClientOptionsFromEnv({})).toEqual({});
  });
});
