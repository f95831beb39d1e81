// What every `gatehouse` command shares: where it reads and writes (so tests
// run it in process), its exit codes, and how it reads its flags.
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** Exit codes, the same for every command: scripts and CI steps branch on them. */
export const EXIT = { ok: 0, failed: 1, usage: 2, refused: 3, conflict: 4, notEnforced: 5, differs: 6 } as const;

export interface CliIo {
  env: NodeJS.ProcessEnv;
  out: (text: string) => void;
  err: (text: string) => void;
  /** The directory relative paths start from (default: the process's). */
  cwd?: string;
  /** Asks a yes/no question; absent when there is no terminal to ask on. */
  confirm?: (question: string) => Promise<boolean>;
}

/** The flags and positionals of `argv`; null (with the usage on stderr) when they do not parse. */
export function parseFlags<const O extends NonNullable<ParseArgsConfig['options']>>(argv: string[], options: O, usage: string, io: CliIo) {
  try {
    return parseArgs({ args: argv, allowPositionals: true, strict: true, options });
  } catch (error) {
    io.err(`${(error as Error).message}\n${usage}`);
    return null;
  }
}
