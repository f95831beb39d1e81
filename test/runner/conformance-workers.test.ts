// The conformance suite (conformance.test.ts), word for word, against a
// runner of three worker processes: one socket, tokens issued by the primary
// and valid on every worker, whichever worker a connection lands on.
process.env.CONFORMANCE_RUNNER_WORKERS = '3';
await import('./conformance.test.js');
