// The stand-in passes an upstream's body to the client as it arrives, as
// nginx's proxy does, and in ext-plugin-post-resp as APISIX 3.9.1 does:
// streamed after HTTPRespCall unless the runner read the body (RespBody),
// which takes it whole first.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { startStandin, type StandinHandle } from '../../tools/apisix-standin/index.js';
import { FakeRunner, reply } from './fake-runner.js';
import { startSlowUpstream, timedRead, type SlowUpstream } from './slow-upstream.js';

const PIECES = ['data: 0\n\n', 'data: 1\n\n', 'data: 2\n\n', 'data: 3\n\n', 'data: [DONE]\n\n'];
const DELAY_MS = 80;

let dir: string;
let fake: FakeRunner;
let upstream: SlowUpstream;
let standin: StandinHandle | null = null;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'standin-streaming-'));
  fake = await FakeRunner.start();
  upstream = await startSlowUpstream({ headers: { 'content-type': 'text/event-stream' }, pieces: PIECES, delayMs: DELAY_MS });
});

afterEach(async () => {
  await standin?.stop();
  standin = null;
  await fake.close();
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(phase: 'ext-plugin-pre-req' | 'ext-plugin-post-resp' | null): Promise<StandinHandle> {
  const lines = ['routes:', '  - id: s', '    uri: /*'];
  if (phase) lines.push('    plugins:', `      ${phase}:`, '        conf:', '          - name: fake', `            value: '{}'`);
  lines.push('    upstream:', '      nodes:', `        "127.0.0.1:${upstream.port}": 1`, '#END', '');
  const routesPath = join(dir, 'apisix.yaml');
  writeFileSync(routesPath, lines.join('\n'));
  standin = await startStandin({ routesPath, runnerSocketPath: fake.socketPath, reloadIntervalMs: null, readTimeoutMs: 2000, logger: pino({ level: 'silent' }) });
  return standin;
}

async function fetchTimed(path = '/s') {
  const res = await fetch(`${standin!.url}${path}`);
  const read = await timedRead(res.body!);
  return { res, ...read, writes: upstream.writes.at(-1)! };
}

describe('streaming through the stand-in', () => {
  it('passes each piece on as the upstream writes it, behind ext-plugin-pre-req too', async () => {
    for (const phase of [null, 'ext-plugin-pre-req'] as const) {
      await start(phase);
      const { res, text, reads, writes } = await fetchTimed();
      expect(text).toBe(PIECES.join(''));
      expect(res.headers.get('transfer-encoding')).toBe('chunked');
      expect(res.headers.get('content-type')).toBe('text/event-stream');
      // The first piece reached the client before the upstream wrote its last one.
      expect(reads[0]!).toBeLessThan(writes.at(-1)!);
      expect(reads.length).toBeGreaterThanOrEqual(PIECES.length - 1);
      await standin!.stop();
      standin = null;
    }
  });

  it("keeps the upstream's content-length, and adds no content type the upstream did not send", async () => {
    upstream.answer = { headers: { 'content-length': '11' }, pieces: ['hello', ' world'], delayMs: 10 };
    await start(null);
    const { res, text } = await fetchTimed();
    expect(text).toBe('hello world');
    expect(res.headers.get('content-length')).toBe('11');
    expect(res.headers.get('content-type')).toBeNull();
  });

  it('stops reading the upstream when the client goes away', async () => {
    await start(null);
    const controller = new AbortController();
    const res = await fetch(`${standin!.url}/s`, { signal: controller.signal });
    const reader = res.body!.getReader();
    await reader.read();
    controller.abort();
    await new Promise((r) => setTimeout(r, DELAY_MS * 2));
    expect(upstream.closedEarly.at(-1)).toBe(true);
    expect(upstream.writes.at(-1)!.length).toBeLessThan(PIECES.length);
  });

  it('cuts the client connection when the upstream fails midway', async () => {
    upstream.answer = { ...upstream.answer, failAfter: 2 };
    await start(null);
    const res = await fetch(`${standin!.url}/s`);
    expect(res.status).toBe(200);
    await expect(timedRead(res.body!)).rejects.toThrow();
  });
});

describe('ext-plugin-post-resp', () => {
  it('streams the body after HTTPRespCall when the runner does not read it', async () => {
    fake.onRespCall = (req) => reply.respCall({ id: req.id, status: 0, headers: [{ name: 'content-type', value: 'text/event-stream' }], body: null });
    await start('ext-plugin-post-resp');
    const { text, reads, writes } = await fetchTimed();
    expect(text).toBe(PIECES.join(''));
    expect(fake.respCalls).toHaveLength(1);
    expect(reads[0]!).toBeLessThan(writes.at(-1)!);
  });

  it('buffers the whole body when the runner reads it, and still sends it', async () => {
    let seen: string | null = null;
    fake.onRespCall = async (req, ctx) => {
      const body = await ctx.ask({ type: 'respBody' });
      seen = body === null ? null : Buffer.from(body).toString();
      return reply.respCall({ id: req.id, status: 0, headers: [], body: null });
    };
    await start('ext-plugin-post-resp');
    const { res, text, reads, writes } = await fetchTimed();
    expect(seen).toBe(PIECES.join(''));
    expect(text).toBe(PIECES.join(''));
    // Nothing reached the client before the upstream had finished.
    expect(reads[0]!).toBeGreaterThanOrEqual(writes.at(-1)!);
    // No headers from the runner: the upstream's minus APISIX's exclusion list, then nginx's default type.
    expect(res.headers.get('content-type')).toBe('text/plain; charset=utf-8');
  });

  it("a body the runner returns replaces the upstream's", async () => {
    fake.onRespCall = async (req, ctx) => {
      await ctx.ask({ type: 'respBody' });
      return reply.respCall({ id: req.id, status: 201, headers: [], body: new TextEncoder().encode('replaced') });
    };
    await start('ext-plugin-post-resp');
    const { res, text } = await fetchTimed();
    expect(res.status).toBe(201);
    expect(text).toBe('replaced');
  });
});
