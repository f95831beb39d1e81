// A free TCP port on the host, for a server that must be told its port
// before it starts (nginx cannot listen on port 0 and report it; a runner's
// metrics and settle ports come from its environment). The port is not held:
// until its server binds it, the kernel may offer it again, and a second
// server told the same port would take it first (a runner's /readyz then
// answered by nginx). So one process never hands out the same port twice.
import { createServer } from 'node:net';

const handedOut = new Set<number>();

function unboundPort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      server.close(() => (address && typeof address === 'object' ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = await unboundPort(host);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error('no free port that this process has not handed out already');
}
