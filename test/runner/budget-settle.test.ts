// The runner's settle port (APISIX's http-logger posts LLM responses there):
// bad input gets a clear answer and changes nothing; the runner survives it;
// a post is read as it comes, whatever the size of its answers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SettleBatchReader, SettleFormatError } from '../../plugins/runner/budget-settle.js';
import { startEtcd, type TestEtcd } from '../support/etcd.js';
import { startRunner, type RunnerProcess } from '../support/runner-process.js';
import { freePort } from '../../dev/local-etcd/index.js';

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
    while (
      !(await fetch(url, { method: 'POST', body: '[]', headers: { 'content-type': 'application/json' } }).then(
        (r) => r.ok,
        () => false,
      ))
    ) {
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

  it('answers malformed posts with 400 problem+json, other media types with 415', async () => {
    for (const body of ['{"reservation":', '"text"', '[1, 2]', JSON.stringify({ reservation: 'b'.repeat(32), status: 'two hundred' })]) {
      const res = await post(body);
      expect(res.status, body).toBe(400);
      expect(res.headers.get('content-type'), body).toMatch(/application\/problem\+json/);
      await res.arrayBuffer();
    }
    // Refused at its first character: a 400, or the connection closed while the client still writes.
    const garbage = await post('x'.repeat(33 * 1024 * 1024)).then(
      (res) => res.status,
      (err: Error) => (err.cause as { code?: string } | undefined)?.code ?? err.message,
    );
    expect([400, 'EPIPE', 'ECONNRESET']).toContain(garbage);
    const wrongType = await post('reservation=1', 'application/x-www-form-urlencoded');
    expect(wrongType.status).toBe(415);
    expect(wrongType.headers.get('content-type')).toMatch(/application\/problem\+json/);
    await wrongType.arrayBuffer();
    expect(target().runner.child.exitCode).toBeNull();
    // and it still takes entries afterwards
    expect((await post('[]')).status).toBe(204);
  });

  it('takes a batch of any size whole: long answers of several projects and a small one, past 32 MiB (once refused whole with 413)', async () => {
    const res = await post(bigBatch());
    expect(res.status).toBe(204);
    // Usage nobody can trust changes nothing here either, and the runner lives on.
    const infinite = { reservation: 'c'.repeat(32), status: '200', upstream_status: '200', body: '{"usage":{"prompt_tokens":1e400,"completion_tokens":1}}' };
    expect((await post(JSON.stringify([infinite]))).status).toBe(204);
    expect(target().runner.child.exitCode).toBeNull();
  }, 60_000);

  it('listens on loopback only', async () => {
    const port = new URL(target().url).port;
    const { networkInterfaces } = await import('node:os');
    const external = Object.values(networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal);
    if (!external) return expect(external).toBeUndefined();
    await expect(
      fetch(`http://${external.address}:${port}/budget/usage`, { method: 'POST', body: '[]', signal: AbortSignal.timeout(2_000) }),
    ).rejects.toThrow();
  });
});

/** An SSE answer of about `mb` MiB: one word a chunk, then the usage chunk. */
function longStream(mb: number, usage: { prompt_tokens: number; completion_tokens: number }): string {
  const chunk = `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: ' word'.repeat(40) } }], usage: null })}\n\n`;
  return chunk.repeat(Math.ceil((mb * 1024 * 1024) / chunk.length)) + `data: ${JSON.stringify({ choices: [], usage })}\n\ndata: [DONE]\n\n`;
}

/** Three long streams and a small call of another project, as one http-logger batch (about 37.5 MiB). */
function bigBatch(): string {
  return JSON.stringify([
    ...[1, 2, 3].map((n) => ({
      reservation: String(n).repeat(32),
      status: '200',
      upstream_status: '200',
      body: longStream(11, { prompt_tokens: n, completion_tokens: 1000 * n }),
      route_id: 'llm',
    })),
    {
      reservation: 'd'.repeat(32),
      status: '200',
      upstream_status: '200',
      body: JSON.stringify({ usage: { prompt_tokens: 7, completion_tokens: 5 } }),
      route_id: 'llm',
    },
  ]);
}

describe('SettleBatchReader', () => {
  const read = (text: string, size: number) => {
    const reader = new SettleBatchReader();
    for (let i = 0; i < text.length; i += size) reader.push(text.slice(i, i + size));
    reader.end();
    return reader.entries;
  };

  it('reduces each entry of a batch of any size to what settling needs, read in pieces', () => {
    const batch = bigBatch();
    expect(batch.length).toBeGreaterThan(32 * 1024 * 1024);
    const entries = read(batch, 65_536);
    expect(entries).toEqual([
      { reservation: '1'.repeat(32), status: 200, upstreamStatus: '200', usage: { kind: 'usage', prompt: 1, completion: 1000 } },
      { reservation: '2'.repeat(32), status: 200, upstreamStatus: '200', usage: { kind: 'usage', prompt: 2, completion: 2000 } },
      { reservation: '3'.repeat(32), status: 200, upstreamStatus: '200', usage: { kind: 'usage', prompt: 3, completion: 3000 } },
      { reservation: 'd'.repeat(32), status: 200, upstreamStatus: '200', usage: { kind: 'usage', prompt: 7, completion: 5 } },
    ]);
  });

  it('reads one entry, an array, or entries a line each (concat_method new_line), escapes split anywhere; skips entries without a reservation', () => {
    const entry = {
      body: 'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}\n\n\u00e9 \ud83d\ude00 "quoted" \\',
      status: 499,
      reservation: 'e'.repeat(32),
      extra: { nested: ['a', { b: '}' }] },
      n: -1.5e3,
      t: true,
    };
    // Escaped as cjson writes: slashes too, and non-ASCII as \\u escapes.
    const json = JSON.stringify(entry)
      .replace(/\//g, '\\/')
      .replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
    const expected = { reservation: 'e'.repeat(32), status: 499, upstreamStatus: null, usage: { kind: 'usage', prompt: 2, completion: 3 } };
    for (const size of [1, 2, 5, 1_000]) {
      expect(read(json, size), `one, in ${size}`).toEqual([expected]);
      expect(read(`[${json}, {"status": "200"}, {"reservation": "short", "status": "x"}]`, size), `array, in ${size}`).toEqual([expected]);
      expect(read(`${json}\n${json}\n`, size), `lines, in ${size}`).toEqual([expected, expected]);
    }
    expect(read('[]', 1)).toEqual([]);
    expect(read(JSON.stringify({ reservation: 'f'.repeat(32), status: '502', upstream_status: '502, 504' }), 3)).toEqual([
      { reservation: 'f'.repeat(32), status: 502, upstreamStatus: '502, 504', usage: { kind: 'none' } },
    ]);
  });

  it('keeps what it read whole when what follows is malformed', () => {
    const reader = new SettleBatchReader();
    const good = JSON.stringify({ reservation: 'a'.repeat(32), status: '200', body: '{"usage":{"prompt_tokens":1,"completion_tokens":2}}' });
    for (const broken of ['{"reservation":', '"text"', '1', `{"reservation": "${'b'.repeat(32)}", "status": "two hundred"}`, '{"a" 1}', '{"a": "\\x"}']) {
      const r = new SettleBatchReader();
      expect(() => {
        r.push(`[${good}, ${broken}]`);
        r.end();
      }, broken).toThrow(SettleFormatError);
      expect(
        r.entries.map((e) => e.reservation),
        broken,
      ).toEqual(['a'.repeat(32)]);
    }
    expect(() => reader.end()).toThrow(SettleFormatError);
  });
});
