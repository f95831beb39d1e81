// For tests of APISIX's http-logger: a loopback HTTP server that records the
// log POSTs it receives, and when.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ReceivedLog {
  /** Date.now() when the whole POST had arrived. */
  at: number;
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface LogReceiver {
  /** `http://127.0.0.1:<port>` */
  url: string;
  received: ReceivedLog[];
  /** Answers the next POSTs with these statuses, in order (then 200 again). */
  failNext(...statuses: number[]): void;
  /** Waits this long before answering each POST. */
  setDelay(ms: number): void;
  /** Resolves once `count` POSTs have arrived in all; rejects after `timeoutMs`. */
  waitFor(count: number, timeoutMs?: number): Promise<ReceivedLog[]>;
  close(): Promise<void>;
}

export async function startLogReceiver(): Promise<LogReceiver> {
  const received: ReceivedLog[] = [];
  const statuses: number[] = [];
  let delayMs = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      received.push({ at: Date.now(), method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      const status = statuses.shift() ?? 200;
      setTimeout(() => res.writeHead(status).end(status < 400 ? 'ok' : 'refused'), delayMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    failNext: (...next) => void statuses.push(...next),
    setDelay: (ms) => void (delayMs = ms),
    async waitFor(count, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (received.length < count) {
        if (Date.now() > deadline) throw new Error(`expected ${count} log POSTs within ${timeoutMs} ms, got ${received.length}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return received;
    },
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
