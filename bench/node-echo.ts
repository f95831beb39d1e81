// The Node floor for `npm run bench:runner`: a server that does nothing but
// what every Node runner must do per call: read a frame from the socket, take
// the call's id, write back a canned answer. No plugins, no checks. What it
// costs per call is what Node's sockets cost; a Node runner cannot go below it.
//
//   node dist/bench/node-echo.js SOCKET
import { chmodSync, existsSync, unlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import * as flatbuffers from 'flatbuffers';
import { FrameDecoder, RpcType, encodeHttpReqCallResponseFrame, encodeFrame, encodePrepareConfResponse } from '../plugins/protocol/index.js';
import { Req } from '../plugins/protocol/generated/a6/httpreq-call/req.js';

const socketPath = process.argv[2];
if (!socketPath) throw new Error('usage: node-echo SOCKET');
if (existsSync(socketPath)) unlinkSync(socketPath);
const prepared = encodeFrame(RpcType.PrepareConf, encodePrepareConfResponse({ confToken: 1 }));

createServer((socket) => {
  const decoder = new FrameDecoder();
  socket.on('data', (chunk: Buffer) => {
    for (const frame of decoder.push(chunk)) {
      if (frame.type === RpcType.PrepareConf) socket.write(prepared);
      else socket.write(encodeHttpReqCallResponseFrame({ id: Req.getRootAsReq(new flatbuffers.ByteBuffer(frame.payload)).id(), action: null }));
    }
  });
  socket.on('error', () => socket.destroy());
}).listen(socketPath, () => chmodSync(socketPath, 0o766));
process.on('SIGTERM', () => process.exit(0));
