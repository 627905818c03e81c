/**
 * What a dwcpctl command is: a row of the command table with its flags and a
 * run function that gets parsed arguments and a lazily connected admin
 * client. Kept apart from main.ts so command modules do not import the entry
 * point.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { AdminClient } from '../admin/client.ts';

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
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

