#!/usr/bin/env node
// gatehouse: operator commands. `gatehouse routes ...` (cli.ts) puts the
// routes in APISIX; `gatehouse policy ...` (tools/policy-cli) keeps policies
// as code against the CMS.
import { runCli, terminalConfirm } from './cli.js';
import { runPolicyCli } from '../policy-cli/cli.js';

const argv = process.argv.slice(2);
const io = { env: process.env, out: (text: string) => process.stdout.write(text), err: (text: string) => process.stderr.write(text) };
const confirm = terminalConfirm();
const running = argv[0] === 'policy' ? runPolicyCli(argv.slice(1), io) : runCli(argv, { ...io, ...(confirm ? { confirm } : {}) });
running.then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`gatehouse: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
