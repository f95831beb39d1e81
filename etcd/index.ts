export * from './client.js';
export * from './store-errors.js';
