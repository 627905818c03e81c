/**
 * Structured JSON logging (pino) to stdout. One root logger per daemon; modules
 * take a child logger with a `component` field by injection.
 *
 * Secrets never reach the log: anything under a key that names a secret is
 * redacted by pino before serialisation, whatever module logs it.
 */
import { pino, type Logger } from 'pino';
import type { LogLevel } from './config/schema.ts';

export type { Logger };

const SECRET_KEYS = ['privateKey', 'key', 'secret', 'token', 'password', 'credentials', 'authorization', 'sessionToken', 'secretAccessKey'];

export function createLogger(level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`)], censor: '[redacted]' },
    },
    destination ?? pino.destination({ dest: 1, sync: true }),
  );
}
