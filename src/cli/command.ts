/**
 * What a dwcpctl command is: a row of the command table with its flags and a
 * run function that gets parsed arguments and a lazily connected admin
 * client. Kept apart from main.ts so command modules do not import the entry
 * point.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { AdminClient } from '../admin/client.ts';
import { DwcpError } from '../errors.ts';

export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
}

export type FlagValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface CommandContext {
  /** Positional arguments after the command name (e.g. a subcommand and its key). */
  args: string[];
  /** Values of global and command-specific flags, by long name. */
  flags: FlagValues;
  json: boolean;
  /** --timeout, parsed (or its default): each call's deadline, and a request's own timeout on the daemon. */
  timeoutMs: number;
  /** The admin client, connected on first use (the socket is only resolved then). */
  admin(): Promise<AdminClient>;
  env: NodeJS.ProcessEnv;
  io: CliIo;
}

export interface Command {
  name: string;
  /** One line for the help text. */
  summary: string;
  /** Argument synopsis after the name, for the help text; commands without it take no arguments. */
  args?: string;
  /** Flags only this command accepts. */
  options?: ParseArgsOptionsConfig;
  run(ctx: CommandContext): Promise<void> | void;
}

/** A mistake in how dwcpctl was invoked: exit 2 with the usage hint. */
export class UsageError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

/** `command` given no subcommand, or one it does not have (`expected`: the ones it has, in words). */
export function subcommandError(command: string, expected: string, got: string | undefined): UsageError {
  return new UsageError(`${command} needs a subcommand: ${expected}${got === undefined ? '' : ` (got ${JSON.stringify(got)})`}`);
}

/** Exactly the positional arguments `names` after the subcommand. */
export function positional(ctx: CommandContext, sub: string, names: readonly string[]): string[] {
  const given = ctx.args.slice(1);
  if (given.length !== names.length) {
    throw new UsageError(`${sub} takes ${names.length === 0 ? 'no arguments' : names.join(' ')} (got ${given.length} argument${given.length === 1 ? '' : 's'})`);
  }
  return given;
}


const DURATION_UNITS_MS: Readonly<Record<string, number>> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A duration flag in milliseconds: `500ms`, `2s`, `1.5m`, `1h`, `7d`, or a plain
 * whole number of milliseconds (what these flags took before units, so
 * scripts keep working). Refused, naming the flag, outside [min, max] or when
 * it is not a whole number of milliseconds.
 */
export function durationFlag(flag: string, raw: unknown, min: number, max: number): number {
  const m = typeof raw === 'string' ? /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(raw) : null;
  const ms = m ? Number(m[1]) * (DURATION_UNITS_MS[m[2] ?? 'ms'] ?? NaN) : NaN;
  if (!(Number.isSafeInteger(ms) && ms >= min && ms <= max)) {
    throw new UsageError(`--${flag}: ${JSON.stringify(raw)} is not a duration from ${min} ms to ${max} ms (e.g. 500ms, 2s, 1m, or milliseconds)`);
  }
  return ms;
}

/** Every string value of a flag that may repeat (none: []). */
export function flagStrings(flags: FlagValues, name: string): string[] {
  const raw = flags[name];
  if (raw === undefined) return [];
  return (Array.isArray(raw) ? raw : [raw]).filter((v): v is string => typeof v === 'string');
}

/** Refuses flags of the command that the subcommand `sub` does not take. */
export function notForThis(ctx: CommandContext, sub: string, flags: readonly string[]): void {
  for (const f of flags) if (ctx.flags[f] !== undefined) throw new UsageError(`--${f} does not apply to ${sub}`);
}

/** A flag given at most once. */
export function singleFlag(flags: FlagValues, name: string): string | undefined {
  const values = flagStrings(flags, name);
  if (values.length > 1) throw new UsageError(`--${name} given ${values.length} times; give it once`);
  return values[0];
}

/** A flag that must be given once, non-empty; `what` says what it takes. */
export function requiredFlag(flags: FlagValues, name: string, what: string): string {
  const value = singleFlag(flags, name);
  if (value === undefined || value === '') throw new UsageError(`--${name} is required (${what})`);
  return value;
}
