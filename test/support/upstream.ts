// A recording HTTP upstream on loopback for tests: keeps every request it
// gets (method, url, headers, raw header lines, body) and answers with
// whatever the test configures.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface RecordedRequest {
  method: string;
  /** The request target as received: path and query, still encoded. */
  url: string;
  headers: IncomingHttpHeaders;
  /** Header lines as sent, names in their original case, repeated names kept. */
  rawHeaders: [string, string][];
  body: Buffer;
}

export interface UpstreamAnswer {
  status?: number;
  headers?: Record<string, string | string[]>;
  body?: string | Buffer;
  /** Wait this long before answering (to test timeouts). */
  delayMs?: number;
}

export type Responder = (request: RecordedRequest) => UpstreamAnswer;

export interface RecordingUpstream {
  url: string;
  port: number;
  requests: RecordedRequest[];
  /** The last request, or an error when none arrived. */
  last(): RecordedRequest;
  /** Replaces how the upstream answers. */
  respondWith(answer: UpstreamAnswer | Responder): void;
  reset(): void;
  close(): Promise<void>;
}

export async function startRecordingUpstream(answer: UpstreamAnswer | Responder = { status: 200, body: 'upstream ok' }, port = 0): Promise<RecordingUpstream> {
  let responder: Responder = typeof answer === 'function' ? answer : () => answer;
  const requests: RecordedRequest[] = [];

  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const rawHeaders: [string, string][] = [];
      for (let i = 0; i < req.rawHeaders.length; i += 2) rawHeaders.push([req.rawHeaders[i]!, req.rawHeaders[i + 1]!]);
      const recorded: RecordedRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders,
        body: Buffer.concat(chunks),
      };
      requests.push(recorded);
      const reply = responder(recorded);
      const write = () => {
        res.statusCode = reply.status ?? 200;
        for (const [name, value] of Object.entries(reply.headers ?? {})) res.setHeader(name, value);
        res.end(reply.body ?? '');
      };
      if (reply.delayMs) setTimeout(write, reply.delayMs);
      else write();
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const actualPort = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${actualPort}`,
    port: actualPort,
    requests,
    last() {
      const request = requests[requests.length - 1];
      if (!request) throw new Error('the upstream received no request');
      return request;
    },
    respondWith(next) {
      responder = typeof next === 'function' ? next : () => next;
    },
    reset() {
      requests.length = 0;
    },
    close() {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
