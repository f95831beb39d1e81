#!/usr/bin/env node
// gatehouse: the shipped operator command. `gatehouse routes ...`
// (routes/) puts the routes in APISIX; `gatehouse policy ...` (policy/) keeps
// policies as code against the CMS through the one CMS client (cms-client.ts).
import { runCli, terminalConfirm } from './routes/command.js';
import { runPolicyCli } from './policy/command.js';

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
