#!/usr/bin/env node
// gatehouse: operator commands. See cli.ts for `gatehouse routes`.
import { runCli, terminalConfirm } from './cli.js';

const confirm = terminalConfirm();
runCli(process.argv.slice(2), {
  env: process.env,
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  ...(confirm ? { confirm } : {}),
}).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`gatehouse: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
