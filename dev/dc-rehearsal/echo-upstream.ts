#!/usr/bin/env node
// The RAG application's place in the rehearsal: answers every request with
// the datacenter it runs in, so that a client behind HAProxy sees who served it.
//   SITE=dc1 PORT=8082 node dist/dev/dc-rehearsal/echo-upstream.js
import { createServer } from 'node:http';

const site = process.env.SITE ?? 'unknown';
const server = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json', 'x-site': site });
    res.end(JSON.stringify({ site, path: req.url, sub: req.headers['x-gatehouse-sub'] ?? null }));
  });
});
server.listen(Number(process.env.PORT ?? 8082), process.env.HOST ?? '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
