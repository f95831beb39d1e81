// An upstream that answers with a body written in pieces, a set time apart,
// and records when it wrote each and whether the client side went away:
// what the stand-in's streaming tests hold the client's reads against.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SlowAnswer {
  status?: number;
  headers?: Record<string, string>;
  pieces: string[];
  delayMs: number;
  /** Destroy the connection after this many pieces instead of finishing. */
  failAfter?: number;
}

export interface SlowUpstream {
  port: number;
  /** Per request: Date.now() of each piece written, and whether the connection closed before the end. */
  writes: number[][];
  closedEarly: boolean[];
  answer: SlowAnswer;
  close(): Promise<void>;
}

export async function startSlowUpstream(answer: SlowAnswer): Promise<SlowUpstream> {
  const state: SlowUpstream = { port: 0, writes: [], closedEarly: [], answer, close: async () => undefined };
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => void respond());
    const respond = async () => {
      const { status = 200, headers = {}, pieces, delayMs, failAfter } = state.answer;
      const writes: number[] = [];
      const index = state.writes.push(writes) - 1;
      state.closedEarly[index] = false;
      res.once('close', () => {
        if (!res.writableFinished) state.closedEarly[index] = true;
      });
      res.writeHead(status, headers);
      for (const [i, piece] of pieces.entries()) {
        if (i > 0) await new Promise((r) => setTimeout(r, delayMs));
        if (res.destroyed) return;
        if (failAfter !== undefined && i === failAfter) {
          res.destroy();
          return;
        }
        res.write(piece);
        writes.push(Date.now());
      }
      res.end();
    };
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  state.close = () =>
    new Promise((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return state;
}

/** Reads a fetch body to the end, with the time of every read that returned bytes. */
export async function timedRead(body: AsyncIterable<Uint8Array>): Promise<{ text: string; reads: number[] }> {
  const decoder = new TextDecoder();
  const reads: number[] = [];
  let text = '';
  for await (const chunk of body) {
    reads.push(Date.now());
    text += decoder.decode(chunk, { stream: true });
  }
  return { text: text + decoder.decode(), reads };
}
