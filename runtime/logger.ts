// Every service's logger: pino, JSON lines on stderr, credentials redacted
// wherever they appear. stderr because APISIX logs its runner's stdout and
// stderr at warn level: stdout stays quiet.
import { pino, type Logger } from 'pino';

export const REDACTED_PATHS = [
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'token',
  '*.token',
  'secret',
  '*.secret',
  'password',
  '*.password',
];

/** A logger at `level` (the service's LOG_LEVEL, read by its configuration module). */
export function createLogger(name: string, level = 'info'): Logger {
  return pino({ name, level, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } }, pino.destination({ fd: 2, sync: false }));
}
