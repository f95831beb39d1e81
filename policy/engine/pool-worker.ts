// One evaluation worker of the EvaluationPool (pool.ts). It keeps its own
// engines (an EngineCache within its share of the budget) and the sources
// it was sent, and answers one message at a time: evaluations run
// synchronously here, off the request thread, so the pool can stop this
// worker when one runs past its deadline.
import { parentPort, workerData } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { EngineCache, type EngineSource } from './cache.js';
import { EvaluationBudgetError } from './index.js';
import { warmUpMetering } from './meter.js';
import { meterOnThisThread } from './metering.js';

export interface WorkerSettings {
  cacheBytes: number;
  memoryMaxBytes: number;
  /** Each evaluation's fuel (null: modules not metered). */
  fuel: number | null;
}

export type WorkerRequest =
  | { type: 'eval'; id: number; key: string; entrypoint: string; input: ArrayBuffer | null; source?: EngineSource }
  | { type: 'prepare'; id: number; key: string; source: EngineSource }
  | { type: 'stats'; id: number };

/** Sent ahead of an eval's answer when its engine must be built first, and once it is: the deadline is the evaluation's, not the build's. */
export type WorkerNotice = { id: number; notice: 'building' | 'started' } | { id: 0; notice: 'ready' };

export type WorkerAnswer =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: string; needSource?: true; unloadable?: true; outOfMemory?: true; outOfFuel?: true };

/** What the engine throws when an evaluation needs more linear memory than the instance's maximum. */
const OUT_OF_MEMORY = /opa_malloc: failed|Maximum memory size exceeded|WebAssembly\.Memory\.grow/;

// This thread is off the request path already: it meters its modules itself (warm before its first job).
meterOnThisThread();
const settings = workerData as WorkerSettings;
const engines = new EngineCache({ budgetBytes: settings.cacheBytes, maxMemoryBytes: settings.memoryMaxBytes, fuel: settings.fuel });
/** Sources by engine key; wasm buffers are shared between keys of one module. */
const sources = new LRUCache<string, EngineSource>({ max: 50_000 });

async function handle(message: WorkerRequest): Promise<WorkerAnswer> {
  if (message.type === 'stats') return { id: message.id, ok: true, result: engines.stats };
  if (message.source) sources.set(message.key, message.source);
  const source = sources.get(message.key);
  if (!source) return { id: message.id, ok: false, error: 'source not known here', needSource: true };
  const building = message.type === 'eval' && !engines.ready(source);
  if (building) notify({ id: message.id, notice: 'building' });
  let engine;
  try {
    engine = await engines.engine(source);
  } catch (error) {
    // With its cause (why the SDK refused the wasm or the data), as the engine said it.
    const text = error instanceof Error ? (error.cause instanceof Error ? `${error.message}: ${error.cause.message}` : error.message) : String(error);
    return { id: message.id, ok: false, error: text, unloadable: true };
  }
  if (message.type === 'prepare') return { id: message.id, ok: true, result: null };
  if (building) notify({ id: message.id, notice: 'started' });
  try {
    // The input arrives as JSON bytes, which the engine reads as is.
    return { id: message.id, ok: true, result: engine.evaluate(message.input ?? undefined, message.entrypoint) };
  } catch (error) {
    // Out of fuel, out of memory, or aborted: this instance's heap is suspect.
    engines.discard(source);
    const text = error instanceof Error ? error.message : String(error);
    if (error instanceof EvaluationBudgetError) return { id: message.id, ok: false, error: text, outOfFuel: true };
    return { id: message.id, ok: false, error: text, ...(OUT_OF_MEMORY.test(text) ? { outOfMemory: true as const } : {}) };
  }
}

function notify(notice: WorkerNotice): void {
  parentPort!.postMessage(notice);
}

// One message at a time, in order; the first once metering is warm (the pool sends none before 'ready').
let queue: Promise<void> = (settings.fuel === null ? Promise.resolve() : warmUpMetering().catch(() => undefined)).then(() =>
  notify({ id: 0, notice: 'ready' }),
);
parentPort!.on('message', (message: WorkerRequest) => {
  queue = queue.then(async () => parentPort!.postMessage(await handle(message)));
});
