// The floor for the runner benchmark: a Node process that answers every
// frame on a Unix socket with a fixed small frame, doing nothing else.
import { createServer } from 'node:net';
import { FrameDecoder, RpcType, encodeFrame, encodeHttpReqCallResponse } from '../plugins/protocol/index.js';

const socketPath = process.argv[2];
if (!socketPath) throw new Error('usage: floor-echo-server <socket path>');
const answer = encodeFrame(RpcType.HTTPReqCall, encodeHttpReqCallResponse({ id: 0, action: null }));

createServer((socket) => {
  const decoder = new FrameDecoder();
  socket.on('data', (chunk: Buffer) => {
    for (const _frame of decoder.push(chunk)) socket.write(answer);
  });
  socket.on('error', () => socket.destroy());
}).listen({ path: socketPath, backlog: 4096 }, () => process.stderr.write('ready\n'));
