// The runner's settle port (APISIX's http-logger posts LLM responses there):
// bad input gets a clear answer and changes nothing; the runner survives it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { freePort } from '../../tools/local-etcd/index.js';

let etcd: TestEtcd;
const runners: { runner: RunnerProcess; url: string; workers: number }[] = [];

beforeAll(async () => {
  etcd = await startEtcd();
  for (const workers of [1, 2]) {
    const port = await freePort();
    const runner = await startRunner({ env: { ETCD_ENDPOINTS: etcd.endpoints.join(','), RUNNER_SETTLE_PORT: String(port), RUNNER_WORKERS: String(workers) } });
    runners.push({ runner, url: `http://127.0.0.1:${port}/budget/usage`, workers });
  }
  // The settle port opens once the runner (its primary, with workers) is up.
  for (const { url } of runners) {
    const deadline = Date.now() + 10_000;
    while (!(await fetch(url, { method: 'POST', body: '[]', headers: { 'content-type': 'application/json' } }).then((r) => r.ok, () => false))) {
      if (Date.now() > deadline) throw new Error(`${url} never answered`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}, 60_000);

afterAll(async () => {
  for (const { runner } of runners) await runner.stop();
  await etcd?.stop();
});

describe.each([1, 2])('the settle port with %i worker(s)', (workers) => {
  const target = () => runners.find((r) => r.workers === workers)!;
  const post = (body: string, contentType = 'application/json') => fetch(target().url, { method: 'POST', body, headers: { 'content-type': contentType } });

  it('takes http-logger entries, one or a batch; entries naming no call in flight change nothing', async () => {
    const entry = { reservation: 'a'.repeat(32), status: '200', body: '{"usage":{"prompt_tokens":1,"completion_tokens":1}}' };
    expect((await post(JSON.stringify(entry))).status).toBe(204);
    expect((await post(JSON.stringify([entry, { ...entry, reservation: '' }, { status: '403' }]))).status).toBe(204);
  });

  it('answers malformed posts with 400 problem+json, oversize with 413, other media types with 415', async () => {
    for (const body of ['{"reservation":', '"text"', '[1, 2]', JSON.stringify({ reservation: 'b'.repeat(32), status: 'two hundred' })]) {
      const res = await post(body);
      expect(res.status, body).toBe(400);
      expect(res.headers.get('content-type'), body).toMatch(/application\/problem\+json/);
      await res.arrayBuffer();
    }
    // Refused as soon as the size is known: a 413, or the connection closed while the client still writes.
    const oversize = await post('x'.repeat(33 * 1024 * 1024)).then((res) => res.status, (err: Error) => (err.cause as { code?: string } | undefined)?.code ?? err.message);
    expect([413, 'EPIPE', 'ECONNRESET']).toContain(oversize);
    const wrongType = await post('reservation=1', 'application/x-www-form-urlencoded');
    expect(wrongType.status).toBe(415);
    expect(wrongType.headers.get('content-type')).toMatch(/application\/problem\+json/);
    await wrongType.arrayBuffer();
    expect(target().runner.child.exitCode).toBeNull();
    // and it still takes entries afterwards
    expect((await post('[]')).status).toBe(204);
  });

  it('listens on loopback only', async () => {
    const port = new URL(target().url).port;
    const { networkInterfaces } = await import('node:os');
    const external = Object.values(networkInterfaces()).flat().find((i) => i && i.family === 'IPv4' && !i.internal);
    if (!external) return expect(external).toBeUndefined();
    await expect(fetch(`http://${external.address}:${port}/budget/usage`, { method: 'POST', body: '[]', signal: AbortSignal.timeout(2_000) })).rejects.toThrow();
  });
});
