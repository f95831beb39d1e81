// A stub of an OpenAI-compatible LLM API, for tests and the local demo (the
// real LLM is external). It records what it received, so tests can check
// which credential reached it, and answers chat completions with a canned
// reply. It checks nothing itself unless told which keys are valid.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LlmStubRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface LlmStub {
  url: string;
  port: number;
  requests: LlmStubRequest[];
  /** Only these `Authorization: Bearer` keys are accepted (all when empty). */
  acceptKeys(keys: string[]): void;
  close(): Promise<void>;
}

export async function startLlmStub(port = 0, host = '127.0.0.1'): Promise<LlmStub> {
  const requests: LlmStubRequest[] = [];
  let accepted: string[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      const send = (status: number, payload: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(payload));
      const key = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (accepted.length > 0 && (!key || !accepted.includes(key))) {
        send(401, { error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' } });
        return;
      }
      const path = (req.url ?? '').split('?')[0]!;
      if (req.method === 'GET' && path.endsWith('/v1/models')) {
        send(200, { object: 'list', data: [{ id: 'gpt-4o-mini', object: 'model' }, { id: 'llama-3', object: 'model' }] });
        return;
      }
      if (req.method === 'POST' && path.endsWith('/v1/chat/completions')) {
        let model = 'unknown';
        try {
          model = (JSON.parse(body) as { model?: string }).model ?? model;
        } catch {
          send(400, { error: { message: 'invalid JSON body', type: 'invalid_request_error' } });
          return;
        }
        send(200, {
          id: `chatcmpl-stub-${requests.length}`,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'This is the LLM stub answering.' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 1, completion_tokens: 7, total_tokens: 8 },
        });
        return;
      }
      send(404, { error: { message: `no route ${req.method} ${path}`, type: 'invalid_request_error' } });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://${host}:${actual}`,
    port: actual,
    requests,
    acceptKeys(keys) {
      accepted = keys;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
