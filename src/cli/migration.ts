/**
 * dwcpctl's migrations (src/admin/migration-service.ts):
 *
 *   dwcpctl vm migrate NAME --to REGION [--provider P] [--mode live|warm|cold]
 *       [--max-downtime 300ms] [--dry-run] [--detach] [--json]
 *   dwcpctl migration list [VM]... [--json]
 *   dwcpctl migration status ID [--json]
 *   dwcpctl migration cancel ID [--json]
 *
 * `vm migrate` starts the migration and follows it to its end, one line per
 * change (phase, bytes, what the coordinator waits for; `--json`: one JSON
 * object per line), and exits 0 when it completed, 1 when it rolled back or
 * failed (with the log's reason). `--detach` returns once it is started;
 * `--dry-run` prints the plan (the checks are the log's own) and starts
 * nothing, exiting 1 when the log would refuse it.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { MigrationInfo } from '../admin/schema.ts';
import type { Command, CommandContext } from './command.ts';
import { durationFlag, positional, requiredFlag, singleFlag, subcommandError, UsageError } from './command.ts';
import { formatJson, renderFields, renderTable } from './format.ts';

/** The flags `vm migrate` adds to the vm command (--provider and --dry-run it shares). */
export const MIGRATE_OPTIONS = {
  to: { type: 'string' },
  mode: { type: 'string' },
  'max-downtime': { type: 'string' },
  detach: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

const START_TIMEOUT_MS = 60_000;
/** How long `vm migrate` follows a migration unless --timeout says otherwise. */
const FOLLOW_TIMEOUT_MS = 30 * 60_000;
const FOLLOW_POLL_MS = 250;
const MODES = ['live', 'warm', 'cold'];

function bytes(text: string): string {
  const n = Number(text);
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function outcome(m: MigrationInfo): string {
  return m.result ?? m.phase;
}

/** `m3 web1 cold dc1 → dc2: transfer (0 B) — waiting for the final transfer to start` */
function progressLine(m: MigrationInfo): string {
  const detail = m.result !== null ? (m.reason === null ? '' : `: ${m.reason}`) : m.waiting === null ? '' : ` — waiting for ${m.waiting}`;
  const downtime = m.downtime_ms === null ? '' : `, downtime ${m.downtime_ms} ms`;
  return `${m.id} ${m.vm} ${m.mode} ${m.source_region} → ${m.target_region}: ${outcome(m)} (${bytes(m.bytes)}${downtime})${detail}`;
}

export function formatMigrations(list: readonly MigrationInfo[]): string {
  if (list.length === 0) return '(no migrations)\n';
  return renderTable(
    ['ID', 'VM', 'MODE', 'FROM', 'TO', 'STATE', 'BYTES', 'DOWNTIME', 'STARTED', 'REASON'],
    list.map((m) => [
      m.id,
      m.vm,
      m.mode,
      `${m.source_region}/${m.source_provider} g${m.source_generation}`,
      `${m.target_region}/${m.target_provider} g${m.target_generation}`,
      outcome(m),
      bytes(m.bytes),
      m.downtime_ms === null ? '-' : `${m.downtime_ms} ms`,
      m.started_at,
      m.reason ?? '',
    ]),
  );
}

export function formatMigration(m: MigrationInfo): string {
  return renderFields([
    ['ID', m.id],
    ['VM', m.vm],
    ['Mode', m.max_downtime_ms === null ? m.mode : `${m.mode} (max downtime ${m.max_downtime_ms} ms)`],
    ['From', `${m.source_region}/${m.source_provider} (generation ${m.source_generation})`],
    ['To', `${m.target_region}/${m.target_provider} (generation ${m.target_generation})`],
    ['Phase', m.phase],
    ['Result', m.result ?? '(under way)'],
    ...(m.reason === null ? [] : [['Reason', m.reason] as const]),
    ['Bytes', `${bytes(m.bytes)}${m.rounds > 0 ? ` in ${m.rounds} rounds` : ''}`],
    ['Downtime', m.downtime_ms === null ? '-' : `${m.downtime_ms} ms`],
    ['Started', m.started_at],
    ['Updated', m.updated_at],
    ...(m.ended_at === null ? [] : [['Ended', m.ended_at] as const]),
    ...(m.waiting === null ? [] : [['Waiting for', m.waiting] as const]),
    ...(m.transfer_step === null ? [] : [['Transfer', `${m.transfer_step} ${m.transfer_status ?? ''} (${bytes(m.transfer_bytes ?? '0')})`] as const]),
  ]);
}

/** `vm migrate NAME --to REGION ...` */
export async function migrateVm(ctx: CommandContext): Promise<void> {
  const [name, extra] = ctx.args.slice(1);
  if (name === undefined || extra !== undefined) throw new UsageError('vm migrate takes one argument, the managed VM\'s name');
  const { flags } = ctx;
  const region = requiredFlag(flags, 'to', 'the target region');
  const mode = singleFlag(flags, 'mode') ?? 'cold';
  if (!MODES.includes(mode)) throw new UsageError(`--mode: ${JSON.stringify(mode)} is not one of ${MODES.join(', ')}`);
  const rawDowntime = singleFlag(flags, 'max-downtime');
  if (rawDowntime !== undefined && mode !== 'live') throw new UsageError(`--max-downtime: only a live migration has a downtime limit (--mode is ${mode})`);
  const maxDowntimeMs = rawDowntime === undefined ? 0 : durationFlag('max-downtime', rawDowntime, 1, 3_600_000);
  await startAndFollow(ctx, { vm: name, region, mode, maxDowntimeMs, purpose: '' });
}

/**
 * `vm failback NAME [--mode warm|cold|live] [--detach] [--dry-run]`: a
 * failed-over VM goes home (where it failed over from) by a migration with
 * purpose failback, warm unless --mode says otherwise; the log checks it is
 * failed over and goes exactly there, as policy operation failback.
 */
export async function failbackVm(ctx: CommandContext): Promise<void> {
  const [name, extra] = ctx.args.slice(1);
  if (name === undefined || extra !== undefined) throw new UsageError('vm failback takes one argument, the failed-over VM\'s name');
  if (ctx.flags.to !== undefined) throw new UsageError('--to: a failback goes where the VM failed over from; use vm migrate to go elsewhere');
  const mode = singleFlag(ctx.flags, 'mode') ?? 'warm';
  if (!MODES.includes(mode)) throw new UsageError(`--mode: ${JSON.stringify(mode)} is not one of ${MODES.join(', ')}`);
  await startAndFollow(ctx, { vm: name, region: '', mode, maxDowntimeMs: 0, purpose: 'failback' });
}

/** Starts (or plans, --dry-run) a migration, then follows it unless --detach. */
async function startAndFollow(ctx: CommandContext, m: { vm: string; region: string; mode: string; maxDowntimeMs: number; purpose: string }): Promise<void> {
  const { flags } = ctx;
  const name = m.vm;
  const dryRun = flags['dry-run'] === true;
  const client = (await ctx.admin()).migration;
  const res = await client.start({
    vm: name,
    region: m.region,
    provider: singleFlag(flags, 'provider') ?? '',
    mode: m.mode,
    max_downtime_ms: m.maxDowntimeMs,
    dry_run: dryRun,
    timeout_ms: ctx.flags.timeout === undefined ? START_TIMEOUT_MS : ctx.timeoutMs,
    purpose: m.purpose,
  });
  if (dryRun) {
    ctx.io.stdout(ctx.json ? formatJson(res) : `${res.plan.join('\n')}\n`);
    if (!res.ok) throw new Error(`${name} would not migrate (${res.code}): ${res.message}`);
    return;
  }
  const started = res.migration;
  if (started === null) throw new Error(`${name}: the daemon started no migration`);
  // --json: one JSON object per line (the plan and the record, then the record at each change).
  if (ctx.json) ctx.io.stdout(`${JSON.stringify({ plan: res.plan, migration: started })}\n`);
  else ctx.io.stdout(`${res.plan.join('\n')}\nstarted ${started.id}\n`);
  if (flags.detach === true) return;
  await follow(ctx, started);
}

/** Follows a migration until it ends, printing each change; fails unless it completed. */
async function follow(ctx: CommandContext, first: MigrationInfo): Promise<void> {
  const client = (await ctx.admin()).migration;
  const deadline = Date.now() + (ctx.flags.timeout === undefined ? FOLLOW_TIMEOUT_MS : ctx.timeoutMs);
  let last = ctx.json ? JSON.stringify(first) : '';
  let m = first;
  for (;;) {
    const line = ctx.json ? JSON.stringify(m) : progressLine(m);
    if (line !== last) ctx.io.stdout(`${line}\n`);
    last = line;
    if (m.result !== null) break;
    if (Date.now() >= deadline) throw new Error(`${m.id} is still under way (${m.phase}); follow it with dwcpctl migration status ${m.id}`);
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS));
    m = await client.status({ id: m.id, timeout_ms: 0 });
  }
  if (m.result !== 'completed') throw new Error(`${m.id} ${m.result}: ${m.reason ?? 'no reason recorded'}`);
}

async function migration(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = (await ctx.admin()).migration;
  switch (sub) {
    case 'list': {
      const list = await client.list(ctx.args.slice(1));
      ctx.io.stdout(ctx.json ? formatJson({ migrations: list }) : formatMigrations(list));
      return;
    }
    case 'status':
    case 'cancel': {
      const [id] = positional(ctx, `migration ${sub}`, ['ID']);
      const request = { id: id ?? '', timeout_ms: ctx.flags.timeout === undefined ? 0 : ctx.timeoutMs };
      const m = sub === 'status' ? await client.status(request) : await client.cancel(request);
      ctx.io.stdout(ctx.json ? formatJson(m) : sub === 'status' ? formatMigration(m) : `${m.id} ${m.vm}: rolling back (${m.reason ?? 'cancelled'})\n`);
      return;
    }
    default:
      throw subcommandError('migration', 'list, status or cancel', sub);
  }
}

export const MIGRATION_COMMAND: Command = {
  name: 'migration',
  args: 'list [VM]... | status ID | cancel ID',
  summary: 'VM migrations between regions: list them, show one, cancel one that has not cut over (it rolls back); start one with vm migrate',
  run: migration,
};
