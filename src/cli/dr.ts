/**
 * dwcpctl's disaster recovery (src/admin/dr-service.ts, docs/dr.md):
 *
 *   dwcpctl vm protect NAME --dr-region R [--dr-provider P] [--rpo 5m] [--rto 10m]
 *       [--retention 7d] [--failback auto|manual] [--json]
 *   dwcpctl vm unprotect NAME [--json]
 *   dwcpctl dr status [VM]... [--json]
 *   dwcpctl dr test VM [--json] [--timeout 10m]
 *
 * `vm protect` stores the protection in desired state (the log checks the DR
 * region, its provider and the policies, operation failover) and prints the
 * VM's DR status. `dr status` lists every protected VM: its state, where it
 * runs, its DR region, the newest backup at the DR region and the RPO now
 * against the target (a VM over its RPO is marked and makes the command
 * exit 1, so scripts and checks can use it), and the last measured RTO.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { DrVmStatusInfo } from '../admin/schema.ts';
import type { Command, CommandContext } from './command.ts';
import { durationFlag, requiredFlag, singleFlag, subcommandError, UsageError } from './command.ts';
import { formatDuration, formatJson, renderFields, renderTable } from './format.ts';
import { DR_FAILBACK_MODES, DR_RETENTION_RANGE_MS, DR_RPO_RANGE_MS, DR_RTO_RANGE_MS } from '../fleet/protection.ts';

/** The flags `vm protect` adds to the vm command. */
export const PROTECT_OPTIONS = {
  'dr-region': { type: 'string' },
  'dr-provider': { type: 'string' },
  rpo: { type: 'string' },
  rto: { type: 'string' },
  retention: { type: 'string' },
  failback: { type: 'string' },
} as const satisfies ParseArgsOptionsConfig;

const COMMIT_TIMEOUT_MS = 60_000;

function seconds(ms: string | null): string {
  return ms === null ? '-' : formatDuration(Number(ms) / 1000);
}

function rpoCell(s: DrVmStatusInfo): string {
  const now = s.rpo_now_ms === null ? 'no backup' : seconds(s.rpo_now_ms);
  return `${now} / ${seconds(s.rpo_target_ms)}${s.rpo_over ? ' OVER' : ''}`;
}

export function formatDrStatus(list: readonly DrVmStatusInfo[]): string {
  if (list.length === 0) return '(no protected VMs: protect one with dwcpctl vm protect NAME --dr-region R)\n';
  return renderTable(
    ['VM', 'STATE', 'REGION', 'DR REGION', 'LAST BACKUP', 'RPO NOW/TARGET', 'RTO TARGET', 'LAST RTO', 'FAILBACK'],
    list.map((s) => [s.vm, s.state, s.region === '' ? '-' : `${s.region} g${s.generation}`, `${s.dr_region}/${s.dr_provider}`, s.last_backup_at ?? '-', rpoCell(s), seconds(s.rto_target_ms), seconds(s.rto_measured_ms), s.failback]),
  );
}

export function formatDrVm(s: DrVmStatusInfo): string {
  return renderFields([
    ['VM', s.vm],
    ['State', s.state],
    ['Region', s.region === '' ? '(unplaced)' : `${s.region} (generation ${s.generation})`],
    ['DR region', `${s.dr_region}/${s.dr_provider}`],
    ['Last backup', s.last_backup_at ?? '(none)'],
    ['RPO', rpoCell(s)],
    ['RTO target', seconds(s.rto_target_ms)],
    ['Retention', seconds(s.retention_ms)],
    ['Failback', s.failback],
    ...(s.failed_over_from === null ? [] : [['Failed over from', `${s.failed_over_from} at ${s.failed_over_at ?? '?'}: ${s.failover_reason ?? ''}`] as const]),
    ...(s.rto_measured_ms === null ? [] : [['Last RTO', seconds(s.rto_measured_ms)] as const]),
    ...(s.restored_backup === null ? [] : [['Restored backup', `${s.restored_backup} taken ${s.restored_backup_at ?? '?'} (data loss ${seconds(s.data_loss_ms)})`] as const]),
  ]);
}

function oneName(ctx: CommandContext, sub: string): string {
  const [name, extra] = ctx.args.slice(1);
  if (name === undefined || extra !== undefined) throw new UsageError(`${sub.startsWith('dr ') ? sub : `vm ${sub}`} takes one argument, the managed VM's name`);
  return name;
}

function timeout(ctx: CommandContext): number {
  return ctx.flags.timeout === undefined ? COMMIT_TIMEOUT_MS : ctx.timeoutMs;
}

/** `vm protect NAME --dr-region R ...`: every flag checked here, by name, before the daemon is asked. */
export async function protectVm(ctx: CommandContext): Promise<void> {
  const name = oneName(ctx, 'protect');
  const { flags } = ctx;
  const drRegion = requiredFlag(flags, 'dr-region', 'the region the VM fails over to');
  const failback = singleFlag(flags, 'failback') ?? '';
  if (failback !== '' && !(DR_FAILBACK_MODES as readonly string[]).includes(failback)) throw new UsageError(`--failback: ${JSON.stringify(failback)} is not one of ${DR_FAILBACK_MODES.join(', ')}`);
  const ms = (flag: string, range: readonly [number, number]): number => {
    const raw = singleFlag(flags, flag);
    return raw === undefined ? 0 : durationFlag(flag, raw, range[0], range[1]);
  };
  const request = { vm: name, dr_region: drRegion, dr_provider: singleFlag(flags, 'dr-provider') ?? '', rpo_ms: ms('rpo', DR_RPO_RANGE_MS), rto_ms: ms('rto', DR_RTO_RANGE_MS), retention_ms: ms('retention', DR_RETENTION_RANGE_MS), failback, timeout_ms: timeout(ctx) };
  const s = await (await ctx.admin()).dr.protect(request);
  ctx.io.stdout(ctx.json ? formatJson(s) : `${s.vm} protected: fails over to ${s.dr_region}/${s.dr_provider} (rpo ${seconds(s.rpo_target_ms)}, rto ${seconds(s.rto_target_ms)}, failback ${s.failback})\n`);
}

export async function unprotectVm(ctx: CommandContext): Promise<void> {
  const name = oneName(ctx, 'unprotect');
  const s = await (await ctx.admin()).dr.unprotect({ vm: name, timeout_ms: timeout(ctx) });
  ctx.io.stdout(ctx.json ? formatJson(s) : `${s.vm} unprotected (it stays in ${s.region === '' ? 'no region' : s.region})\n`);
}

/** `dr test NAME`: the daemon restores, boots, measures and tears down; this prints it and fails unless production was left alone. */
async function drTest(ctx: CommandContext): Promise<void> {
  const name = oneName(ctx, 'dr test');
  const t = await (await ctx.admin()).dr.test({ vm: name, timeout_ms: ctx.flags.timeout === undefined ? 0 : ctx.timeoutMs });
  ctx.io.stdout(
    ctx.json
      ? formatJson(t)
      : `dr test of ${t.vm}: ${t.test_vm} at ${t.region}/${t.provider}, restored from ${t.restored_from}, network ${t.network}\n` +
          `  running after ${seconds(t.rto_ms)} (restore and boot; a real failover adds detection and the fence hold)\n` +
          `  liveness: ${t.liveness}\n` +
          `  ${t.torn_down ? 'torn down' : 'NOT torn down yet (deleted; its region has not terminated it)'}; production ${t.vm} ${t.production_untouched ? 'untouched' : 'CHANGED during the test'}\n`,
  );
  if (!t.torn_down || !t.production_untouched) throw new Error(`dr test of ${t.vm}: ${!t.torn_down ? `${t.test_vm} is not torn down yet` : `${t.vm}'s record changed during the test`}`);
}

async function dr(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  if (sub === 'test') return drTest(ctx);
  if (sub !== 'status') throw subcommandError('dr', 'status or test', sub);
  const res = await (await ctx.admin()).dr.status(ctx.args.slice(1));
  ctx.io.stdout(ctx.json ? formatJson(res) : res.vms.length === 1 && ctx.args.length === 2 ? formatDrVm(res.vms[0] as DrVmStatusInfo) : formatDrStatus(res.vms));
  const over = res.vms.filter((s) => s.rpo_over && s.state !== 'unprotected');
  if (over.length > 0) throw new Error(`${over.length} VM${over.length === 1 ? ' is' : 's are'} over the RPO target: ${over.map((s) => s.vm).join(', ')}`);
}

export const DR_COMMAND: Command = {
  name: 'dr',
  args: 'status [VM]... | test VM',
  summary: 'disaster recovery: the DR state of protected VMs (protect one with vm protect), exiting 1 when a VM is over its RPO target; test VM: an isolated copy restored in the DR region, booted, measured, torn down',
  run: dr,
};
