// The ext-plugin wire protocol: framing, message shapes and their codecs.
// This module is the only place that knows about FlatBuffers.
export * from './frame.js';
export * from './messages.js';
export * from './codec.js';
export * from './connection.js';
