// pino to stderr: APISIX logs the runner's stdout and stderr at warn level,
// so stdout stays quiet and credentials are redacted wherever they appear.
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
  return pino(
    { name, level, redact: { paths: REDACTED_PATHS, censor: '[redacted]' } },
    pino.destination({ fd: 2, sync: false }),
  );
}
