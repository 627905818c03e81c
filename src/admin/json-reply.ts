/**
 * A JSON payload inside an admin reply, checked against its schema (the
 * services that carry their views as JSON: cost, burst), so callers get a
 * typed value or an error saying what the daemon sent.
 */
import { DwcpError } from '../errors.ts';
import type { z } from 'zod';

export function parseReply<T>(schema: z.ZodType<T>, text: string | undefined, what: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(text ?? '');
  } catch {
    throw new DwcpError('internal', `the daemon sent a ${what} that is not JSON`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw new DwcpError('internal', `the daemon sent a ${what} this dwcpctl does not understand: ${parsed.error.issues[0]?.message ?? ''}`);
  return parsed.data;
}
