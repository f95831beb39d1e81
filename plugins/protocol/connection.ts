// A socket carrying ext-plugin frames, with an awaitable "next frame". Both
// ends use it: the runner (which must wait for ExtraInfo answers mid-call)
// and the APISIX side (the runner's protocol tests and benchmarks).
import type { Socket } from 'node:net';
import { FrameDecoder, encodeFrame, type Frame, type RpcType } from './frame.js';

export class ConnectionClosedError extends Error {
  constructor(message = 'connection closed') {
    super(message);
    this.name = 'ConnectionClosedError';
  }
}

export class FrameConnection {
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame[] = [];
  private waiter: { resolve: (f: Frame) => void; reject: (e: Error) => void } | null = null;
  private closedWith: Error | null = null;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      for (const frame of this.decoder.push(chunk)) this.deliver(frame);
    });
    socket.on('error', (err) => this.close(err));
    socket.on('close', () => this.close(new ConnectionClosedError()));
  }

  /** The next frame from the peer; rejects if the connection closes first. */
  next(): Promise<Frame> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closedWith) return Promise.reject(this.closedWith);
    if (this.waiter) return Promise.reject(new Error('FrameConnection.next() called concurrently'));
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Resolves once the frame is handed to the kernel. */
  send(type: RpcType, payload: Uint8Array): Promise<void> {
    const frame = encodeFrame(type, payload);
    return new Promise((resolve, reject) => {
      if (this.closedWith || this.socket.destroyed) {
        reject(this.closedWith ?? new ConnectionClosedError());
        return;
      }
      this.socket.write(frame, (err) => (err ? reject(err) : resolve()));
    });
  }

  /**
   * Writes a whole frame (see encodeFrame) without waiting for the kernel:
   * the runner's answers. A write that fails closes the connection, which the
   * next read reports. Throws at once on a connection already closed.
   */
  write(frame: Uint8Array): void {
    if (this.closedWith || this.socket.destroyed) throw this.closedWith ?? new ConnectionClosedError();
    this.socket.write(frame);
  }

  /** Bytes of a frame that has started to arrive but is not complete. */
  get partialBytes(): number {
    return this.decoder.pendingBytes;
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  destroy(): void {
    this.socket.destroy();
    this.close(new ConnectionClosedError());
  }

  private deliver(frame: Frame): void {
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter.resolve(frame);
    } else {
      this.queue.push(frame);
    }
  }

  private close(err: Error): void {
    if (this.closedWith) return;
    this.closedWith = err;
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.reject(err);
  }
}
