#!/usr/bin/env node
/**
 * dwcpctl: the operator's command line for a local dwcpd, over the admin
 * socket.
 *
 *   dwcpctl [--socket PATH] [--timeout DURATION] <command> [--json]
 *
 * Contract with scripts: exit 0 on success; on failure exactly one line
 * "dwcpctl: <reason>" on stderr and exit 1; a usage error (unknown command or
 * flag, bad flag value) exits 2 with a short usage hint. Global flags may come
 * before or after the command.
 *
 * Commands are rows of COMMANDS (status, members, kv, raft, pbft, vm, place,
 * fleet, migration, policy, dr, cost, burst, blob, cache, image, crdt, state, version, help); each brings its own flags and
 * positional arguments (kv-raft.ts, pbft.ts, vm.ts, blob.ts, image.ts, state.ts, migration.ts, policy.ts, dr.ts), so a
 * new command adds a row and nothing else changes.
 */
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';
import { connectAdmin, type AdminClient } from '../admin/client.ts';
import { DwcpError } from '../errors.ts';
import { durationFlag, UsageError, type CliIo, type Command, type FlagValues } from './command.ts';
import { formatJson, formatMembers, formatStatus, wrapText } from './format.ts';
import { KV_COMMAND, RAFT_COMMAND } from './kv-raft.ts';
import { PBFT_COMMAND } from './pbft.ts';
import { PLACE_COMMAND, VM_COMMAND } from './vm.ts';
import { BUDGET_COMMAND, COST_COMMAND } from './cost.ts';
import { BURST_COMMAND } from './burst.ts';
import { FLEET_COMMAND } from './fleet.ts';
import { MIGRATION_COMMAND } from './migration.ts';
import { DR_COMMAND } from './dr.ts';
import { BLOB_COMMAND, CACHE_COMMAND } from './blob.ts';
import { IMAGE_COMMAND } from './image.ts';
import { POLICY_COMMAND } from './policy.ts';
import { CRDT_COMMAND, STATE_COMMAND } from './state.ts';
import { VERSION } from '../daemon/version.ts';
import { defaultAdminSocket } from '../config/paths.ts';

const DEFAULT_TIMEOUT_MS = 5000;
const MAX_TIMEOUT_MS = 3_600_000;
const USAGE = 'usage: dwcpctl [--socket PATH] [--timeout DURATION] <command> [--json]';

const GLOBAL_OPTIONS = {
  socket: { type: 'string' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsOptionsConfig;

export { UsageError } from './command.ts';
export type { CliIo, Command, CommandContext, FlagValues } from './command.ts';

export const COMMANDS: readonly Command[] = [
  {
    name: 'status',
    summary: 'this node and every configured member',
    async run(ctx) {
      const s = await (await ctx.admin()).status();
      ctx.io.stdout(ctx.json ? formatJson(s) : formatStatus(s));
    },
  },
  {
    name: 'members',
    summary: 'the configured members: connection, RTT and link mode',
    async run(ctx) {
      const m = await (await ctx.admin()).members();
      ctx.io.stdout(ctx.json ? formatJson(m) : formatMembers(m.members));
    },
  },
  KV_COMMAND,
  RAFT_COMMAND,
  PBFT_COMMAND,
  VM_COMMAND,
  PLACE_COMMAND,
  FLEET_COMMAND,
  MIGRATION_COMMAND,
  POLICY_COMMAND,
  DR_COMMAND,
  COST_COMMAND,
  BUDGET_COMMAND,
  BURST_COMMAND,
  BLOB_COMMAND,
  CACHE_COMMAND,
  IMAGE_COMMAND,
  CRDT_COMMAND,
  STATE_COMMAND,
  {
    name: 'version',
    summary: 'print the dwcpctl version',
    run(ctx) {
      ctx.io.stdout(ctx.json ? formatJson({ version: VERSION }) : `dwcpctl ${VERSION}\n`);
    },
  },
  {
    name: 'help',
    summary: 'show this help',
    async run(ctx) {
      ctx.io.stdout(await helpText(ctx.env));
    },
  },
];

/** Help lines are wrapped to the terminal ($COLUMNS), at most HELP_MAX_COLUMNS and never narrower than HELP_MIN_COLUMNS. */
const HELP_MAX_COLUMNS = 100;
const HELP_MIN_COLUMNS = 40;

export async function helpText(env: NodeJS.ProcessEnv): Promise<string> {
  const columns = Number(env.COLUMNS);
  const width = Number.isInteger(columns) && columns > 0 ? Math.max(HELP_MIN_COLUMNS, Math.min(columns, HELP_MAX_COLUMNS)) : HELP_MAX_COLUMNS;
  // Synopsis on its own line, the summary indented under it: a long synopsis never pushes the text off screen.
  const commands = COMMANDS.flatMap((c) => [
    ...wrapText(c.args ? `${c.name} ${c.args}` : c.name, width, '  ', '      '),
    ...wrapText(c.summary, width, '      ', '      '),
  ]);
  return [
    USAGE,
    '',
    'Talks to the local dwcpd over its admin socket.',
    '',
    'Commands:',
    ...commands,
    '',
    'Global flags (before or after the command):',
    ...globalFlag('--socket PATH', `admin socket (env DWCP_SOCKET; default ${await resolveSocket(undefined, env)})`, width),
    ...globalFlag('--timeout D', `deadline for each call: 500ms, 2s, 1m or plain milliseconds (default ${DEFAULT_TIMEOUT_MS / 1000}s)`, width),
    ...globalFlag('--json', 'print JSON (snake_case fields as in the admin API) instead of tables', width),
    ...globalFlag('-h, --help', 'show this help', width),
    '',
  ].join('\n');
}

/** A global flag's help: the flag in a fixed column, its text beside it, wrapped under the text. */
function globalFlag(flag: string, text: string, width: number): string[] {
  const FLAG_COLUMN = 16;
  const [first = '', ...rest] = wrapText(text, width - FLAG_COLUMN - 2, '', '');
  return [`  ${flag.padEnd(FLAG_COLUMN)}${first}`, ...rest.map((line) => `${' '.repeat(FLAG_COLUMN + 2)}${line}`)];
}

/** parseArgs errors carry a long explanation; keep the part an operator needs. */
function usageErrorFrom(err: unknown): UsageError {
  const e = err as NodeJS.ErrnoException;
  const quoted = /'([^']+)'/.exec(e.message ?? '')?.[1];
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && quoted) return new UsageError(`unknown flag ${quoted}`);
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && quoted) return new UsageError(`flag ${quoted.split(' ')[0]} needs a value`);
  return new UsageError(String(e.message ?? err).split('. ')[0] ?? 'bad arguments');
}

function parse(argv: string[], options: ParseArgsOptionsConfig, strict: boolean): { values: FlagValues; positionals: string[] } {
  try {
    return parseArgs({ args: argv, options, strict, allowPositionals: true });
  } catch (err) {
    throw usageErrorFrom(err);
  }
}

function parseTimeout(raw: string | boolean | (string | boolean)[] | undefined): number {
  return raw === undefined ? DEFAULT_TIMEOUT_MS : durationFlag('timeout', raw, 1, MAX_TIMEOUT_MS);
}

/** --socket, else $DWCP_SOCKET, else the daemon's built-in default. */
async function resolveSocket(raw: string | boolean | (string | boolean)[] | undefined, env: NodeJS.ProcessEnv): Promise<string> {
  if (raw === undefined) return env.DWCP_SOCKET || defaultAdminSocket(env);
  if (typeof raw !== 'string' || raw === '') throw new UsageError('--socket needs a path');
  return raw;
}

/** Runs one invocation and returns its exit code; never throws. */
export async function main(argv: string[], env: NodeJS.ProcessEnv, io: CliIo): Promise<number> {
  let client: AdminClient | null = null;
  try {
    // First pass only finds the command, so that the second can hold it to its own flags.
    const first = parse(argv, GLOBAL_OPTIONS, false);
    const name = first.positionals[0];
    if (first.values.help === true) {
      io.stdout(await helpText(env));
      return 0;
    }
    if (name === undefined) throw new UsageError('no command given');
    const command = COMMANDS.find((c) => c.name === name);
    if (command === undefined) throw new UsageError(`unknown command ${JSON.stringify(name)}`);
    const { values, positionals } = parse(argv, { ...GLOBAL_OPTIONS, ...command.options }, true);
    const args = positionals.slice(1);
    if (command.args === undefined && args.length > 0) throw new UsageError(`${command.name} takes no arguments (got ${JSON.stringify(args[0])})`);
    const timeoutMs = parseTimeout(values.timeout);
    await command.run({
      args,
      flags: values,
      json: values.json === true,
      timeoutMs,
      admin: async () => (client ??= connectAdmin(await resolveSocket(values.socket, env), { timeoutMs })),
      env,
      io,
    });
    return 0;
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`dwcpctl: ${err.message}\n${USAGE}\nRun 'dwcpctl help' for the commands.\n`);
      return 2;
    }
    const reason = err instanceof Error ? err.message : String(err);
    // Whether a retry may help is the daemon's structured verdict (AdminClientError.retryable, read from the status trailers), not part of its text.
    const retry = err instanceof DwcpError && err.retryable ? ' (retryable)' : '';
    io.stderr(`dwcpctl: ${reason.replace(/\s*\n\s*/g, '; ')}${retry}\n`);
    return 1;
  } finally {
    // The cast undoes TypeScript's narrowing to null: the assignment happens inside a closure.
    (client as AdminClient | null)?.close();
  }
}

if (import.meta.main) {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    // `dwcpctl status | head` closing the pipe early is not a failure.
    if (err.code !== 'EPIPE') throw err;
  });
  process.exitCode = await main(process.argv.slice(2), process.env, {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
  });
}
