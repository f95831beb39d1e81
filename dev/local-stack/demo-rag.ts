// A stand-in for the RAG application in the local demo: it answers every
// request with the identity the gateway forwarded, so a curl shows what the
// upstream sees (and that spoofed identity headers never arrive).
import { createServer, type Server } from 'node:http';

export function startDemoRag(port: number, host = '127.0.0.1'): Promise<Server> {
  const server = createServer((req, res) => {
    const body = JSON.stringify({
      service: 'demo RAG application (stand-in)',
      method: req.method,
      path: req.url,
      caller: {
        sub: req.headers['x-gatehouse-sub'] ?? null,
        role: req.headers['x-gatehouse-role'] ?? null,
        project: req.headers['x-gatehouse-project'] ?? null,
      },
      answer: 'Gatehouse let this request through.',
    });
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end(body);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}
