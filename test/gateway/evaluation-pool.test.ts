// The evaluation pool closed while it works: jobs still waiting are refused,
// and an answer that arrives after the close starts nothing (it used to
// take the next tenant in turn from queues the close had emptied, and threw).
// And an evaluation asked not to wait is refused where its tenant holds its share.
import { afterAll, describe, expect, it } from 'vitest';
import { RegoCompiler } from '../../cms/rego-compiler.js';
import { DEFAULT_POLICY_MEMORY_MAX_BYTES } from '../../policy/engine/index.js';
import { EvaluationWouldWaitError } from '../../policy/engine/evaluation.js';
import { EvaluationPool } from '../../policy/engine/pool.js';
import { sha256Hex } from '../../policy/store/index.js';
import { NESTED_LOOP_REGO, opaPath } from '../support/policies.js';

// n = 500: about 100 ms, stopped by its fuel a little before; a small n: at once.
const REGO = NESTED_LOOP_REGO;

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
process.on('unhandledRejection', onUnhandled);
afterAll(() => {
  process.off('unhandledRejection', onUnhandled);
});

describe('evaluation pool', () => {
  it('closed with an answer on its way and jobs waiting: the waiting are refused, the answer starts nothing', async () => {
    const { wasm, entrypoint } = await new RegoCompiler({ opaPath }).compile(REGO, '{}');
    const target = { source: { wasmSha256: sha256Hex(wasm), wasm: new Uint8Array(wasm), dataSha256: sha256Hex('{}'), dataText: '{}' }, entrypoint };
    for (let round = 0; round < 3; round++) {
      const pool = new EvaluationPool({ workers: 2, timeoutMs: 5000, cacheBytes: 64 * 1024 * 1024, memoryMaxBytes: DEFAULT_POLICY_MEMORY_MAX_BYTES });
      // Warm: the engine built in both workers.
      await pool.prepare(target);
      const small = { request: { query: { n: '10' } } };
      await expect(pool.evaluate('b', target, small)).resolves.toMatchObject({ allow: true });
      // One job of tenant a running, a second waiting behind it (a tenant holds at most one of two workers), and b's.
      const running = pool.evaluate('a', target, { request: { query: { n: '500' } } }).catch((error: unknown) => error);
      const waiting = pool.evaluate('a', target, small).catch((error: unknown) => error);
      const other = pool.evaluate('b', target, small).catch((error: unknown) => error);
      await other;
      // Hold this thread while the worker finishes and posts its answer, then close before that answer is read.
      const until = performance.now() + 500;
      while (performance.now() < until);
      const closing = pool.close();
      expect(await waiting).toBeInstanceOf(Error);
      expect(((await waiting) as Error).message).toMatch(/closed/);
      await closing;
      // Whatever became of the running job, nothing may be thrown unhandled afterwards.
      await Promise.race([running, new Promise((resolve) => setTimeout(resolve, 200))]);
    }
    expect(unhandled).toEqual([]);
  }, 60_000);

  it('asked not to wait, refuses at once a tenant that holds its share; serves another', async () => {
    const { wasm, entrypoint } = await new RegoCompiler({ opaPath }).compile(REGO, '{}');
    const target = { source: { wasmSha256: sha256Hex(wasm), wasm: new Uint8Array(wasm), dataSha256: sha256Hex('{}'), dataText: '{}' }, entrypoint };
    const pool = new EvaluationPool({ workers: 2, timeoutMs: 5000, cacheBytes: 64 * 1024 * 1024, memoryMaxBytes: DEFAULT_POLICY_MEMORY_MAX_BYTES });
    try {
      await pool.prepare(target);
      const small = { request: { query: { n: '10' } } };
      // Tenant a holds one of the two workers, its share.
      const running = pool.evaluate('a', target, { request: { query: { n: '500' } } });
      await expect(pool.evaluate('a', target, small, { wait: false })).rejects.toBeInstanceOf(EvaluationWouldWaitError);
      await expect(pool.evaluate('b', target, small, { wait: false })).resolves.toMatchObject({ allow: true });
      await running.catch(() => undefined); // stopped by its fuel or not: its worker is free either way
      // Its share free again, a is served without waiting.
      await expect(pool.evaluate('a', target, small, { wait: false })).resolves.toMatchObject({ allow: true });
    } finally {
      await pool.close();
    }
  }, 60_000);
});
