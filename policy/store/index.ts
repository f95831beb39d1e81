/**
 * Gatehouse policies in etcd: the key layout (pure functions, safe for the
 * gateway's watcher to import) and the store operations used by the CMS.
 */
export * from './names.js';
export * from './keys.js';
export * from './metadata.js';
export * from './store.js';
export * from './scan.js';
