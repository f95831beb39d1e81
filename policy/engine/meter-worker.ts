// The metering worker (metering.ts): rewrites policy wasm (meter.ts) off the
// request thread. binaryen is loaded and warmed up as the worker starts; the
// client sends one job at a time and the wasm travels both ways as a
// transferred ArrayBuffer.
import { constants, setPriority } from 'node:os';
import { parentPort } from 'node:worker_threads';
import { meterPolicyWasm, warmUpMetering } from './meter.js';

export interface MeteringRequest {
  id: number;
  wasm: ArrayBuffer;
}

export type MeteringAnswer = { id: number; ok: true; wasm: ArrayBuffer } | { id: number; ok: false; error: string };

// Background work: where both want a core, the request thread comes first. On Linux this
// lowers this thread's priority only (elsewhere it would be the whole process's: left alone).
if (process.platform === 'linux') {
  try {
    setPriority(constants.priority.PRIORITY_BELOW_NORMAL);
  } catch {
    // not allowed here: metering runs at the process's priority
  }
}

const warm = warmUpMetering().catch(() => undefined);

parentPort!.on('message', (request: MeteringRequest) => {
  void warm
    .then(() => meterPolicyWasm(new Uint8Array(request.wasm)))
    .then(
      (metered) => {
        // emitBinary hands back a fresh array of exactly the module's bytes: its buffer moves as is.
        const buffer = metered.byteOffset === 0 && metered.byteLength === metered.buffer.byteLength ? metered.buffer : metered.slice().buffer;
        parentPort!.postMessage({ id: request.id, ok: true, wasm: buffer as ArrayBuffer } satisfies MeteringAnswer, [buffer as ArrayBuffer]);
      },
      (error: unknown) => {
        const text = error instanceof Error ? (error.cause instanceof Error ? `${error.message}: ${error.cause.message}` : error.message) : String(error);
        parentPort!.postMessage({ id: request.id, ok: false, error: text } satisfies MeteringAnswer);
      },
    );
});
