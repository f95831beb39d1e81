/**
 * bench:cms: latency of a policy PUT through the CMS, split into the Rego
 * compile (opa parse + opa build, real opa) and the etcd write (reads and the
 * one transaction, real etcd), as the CMS reports them in Server-Timing.
 * Sequential PUTs of the seed's example policy, data varied each time so
 * every PUT is a new version.
 *
 *   npm run bench:cms                     (BENCH_CMS_PUTS=300 to change the count)
 *   ETCD_ENDPOINTS=http://... to use a running etcd instead of starting one
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import hdr from 'hdr-histogram-js';
import { pino } from 'pino';
import { buildCmsApp } from '../cms/app.js';
import { opaPath } from '../runtime/paths.js';
import { startLocalEtcd } from '../dev/local-etcd/index.js';
import { createDemoIdentity, EXAMPLE_POLICY } from '../dev/demo.js';

const PUTS = Number(process.env.BENCH_CMS_PUTS ?? 200);
const WARMUP = 10;

function histogram() {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 });
}

function serverTiming(header: string | null, name: string): number {
  const match = header?.match(new RegExp(`${name};dur=([\\d.]+)`));
  if (!match?.[1]) throw new Error(`no ${name} in Server-Timing: ${header}`);
  return Number(match[1]);
}

async function main(): Promise<void> {
  const externalEtcd = process.env.ETCD_ENDPOINTS?.split(',').filter(Boolean);
  const etcd = externalEtcd ? null : await startLocalEtcd({ dataRoot: 'bench-etcd' });
  const endpoints = externalEtcd ?? etcd!.endpoints;
  const keysDir = await mkdtemp(join(tmpdir(), 'gatehouse-bench-'));
  const identity = await createDemoIdentity(keysDir);
  const app = await buildCmsApp({
    etcdEndpoints: endpoints,
    identity: identity.identityConfig,
    opaPath: opaPath(process.env.OPA_PATH),
    logger: pino({ level: 'silent' }),
  });
  const baseUrl = await app.listen({ port: 0, host: '127.0.0.1' });
  const headers = { authorization: `Bearer ${identity.tokens.platformAdmin}`, 'content-type': 'application/json' };

  const total = histogram();
  const compile = histogram();
  const etcdWrite = histogram();
  const get = histogram();
  try {
    for (let i = 0; i < WARMUP + PUTS; i++) {
      const body = JSON.stringify({ rego: EXAMPLE_POLICY.rego, data: { ...EXAMPLE_POLICY.data, revision: i } });
      const started = performance.now();
      const response = await fetch(`${baseUrl}/policies/bench-${i % 4}`, { method: 'PUT', headers, body });
      await response.arrayBuffer();
      const elapsed = performance.now() - started;
      if (response.status !== 200 && response.status !== 201) throw new Error(`PUT answered ${response.status}`);
      if (i < WARMUP) continue;
      const timing = response.headers.get('server-timing');
      total.recordValue(Math.round(elapsed * 1000));
      compile.recordValue(Math.round(serverTiming(timing, 'compile') * 1000));
      etcdWrite.recordValue(Math.round(serverTiming(timing, 'etcd') * 1000));

      const getStarted = performance.now();
      const read = await fetch(`${baseUrl}/policies/bench-${i % 4}`, { headers });
      await read.arrayBuffer();
      get.recordValue(Math.round((performance.now() - getStarted) * 1000));
    }
    const ms = (us: number) => (us / 1000).toFixed(2);
    const row = (label: string, h: ReturnType<typeof histogram>) =>
      `| ${label} | ${ms(h.getValueAtPercentile(50))} | ${ms(h.getValueAtPercentile(90))} | ${ms(h.getValueAtPercentile(99))} | ${ms(h.maxValue)} |`;
    process.stdout.write(
      [
        `CMS PUT latency, ${PUTS} sequential PUTs of the seed example policy (after ${WARMUP} warm-up), real opa and etcd, milliseconds:`,
        '',
        '| stage | p50 | p90 | p99 | max |',
        '| --- | ---: | ---: | ---: | ---: |',
        row('PUT total (client)', total),
        row('compile (opa parse + build)', compile),
        row('etcd write (read + txn)', etcdWrite),
        row('GET (client, for scale)', get),
        '',
      ].join('\n'),
    );
  } finally {
    for (const h of [total, compile, etcdWrite, get]) h.destroy();
    await app.close();
    await etcd?.cleanup();
    await rm(keysDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:cms failed: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
