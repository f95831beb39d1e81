// A loopback TCP proxy whose link can be cut and restored, to take etcd away
// from one client while everything else keeps talking to it. Two ways to
// lose the link: cut() closes the connections (a crashed peer: the client
// sees a reset at once), blackhole() keeps them open and stops forwarding
// (a peer cut off the network: packets vanish and nothing tells the client).
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface TcpProxy {
  url: string;
  port: number;
  /** Drops every open connection and refuses new ones. */
  cut(): void;
  /** Stops forwarding bytes on open connections, and accepts new ones that never reach the target; nothing is closed. */
  blackhole(): void;
  /** Forwards again: connections held by blackhole() are closed (the peer has long forgotten them), new ones go through. */
  restore(): void;
  /** Bytes sent from the target to clients so far: which proxy carries a stream. */
  readonly bytesToClients: number;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let mode: 'forward' | 'cut' | 'blackhole' = 'forward';
  let bytesToClients = 0;
  const silence = (socket: Socket) => {
    socket.unpipe();
    socket.removeAllListeners('data');
    socket.pause();
  };
  const server: Server = createServer((client) => {
    if (mode === 'cut') {
      client.destroy();
      return;
    }
    sockets.add(client);
    client.on('error', () => client.destroy()).on('close', () => sockets.delete(client));
    if (mode === 'blackhole') {
      // Accepted and then silent, as a SYN that got through and nothing after.
      client.pause();
      return;
    }
    const upstream = connect(target.port, target.host);
    sockets.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    upstream.on('data', (chunk: Buffer) => (bytesToClients += chunk.length));
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get bytesToClients() {
      return bytesToClients;
    },
    cut() {
      mode = 'cut';
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    blackhole() {
      mode = 'blackhole';
      for (const socket of sockets) silence(socket);
    },
    restore() {
      if (mode === 'blackhole') {
        for (const socket of sockets) socket.destroy();
        sockets.clear();
      }
      mode = 'forward';
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

export function hostPort(url: string): { host: string; port: number } {
  const parsed = new URL(url);
  return { host: parsed.hostname, port: Number(parsed.port) };
}
