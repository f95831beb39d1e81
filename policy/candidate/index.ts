/**
 * Policy candidates on the gateways: a version stored beside the live one
 * (policy/store/names.ts, keys.ts) that gateways evaluate in the shadow of
 * the live version's decisions, never enforcing it (shadow.ts), or enforce
 * for a stable share of callers (canary.ts), and what each gateway saw of it,
 * told to etcd for the CMS (report.ts).
 */
export * from './canary.js';
export * from './shadow.js';
export * from './report.js';
