export * from './client.js';
export * from './store-errors.js';
export * from './config.js';
