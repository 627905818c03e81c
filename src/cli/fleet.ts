/**
 * dwcpctl's view of the whole fleet, answered by any node from its copy of
 * the geo store's observed records (src/admin/fleet-service.ts):
 *
 *   dwcpctl fleet status [--json]
 *   dwcpctl vm list --all [--region R]... [--label k=v]... [--json]
 *
 * A region whose report is not current (suspected down, or older than
 * fleet.staleAfterMs) shows its VMs as `unknown`, with the report's age in
 * the AGE column: never its last state as if it were current.
 */
import type { FleetRegion, FleetStatusResponse, FleetVm } from '../admin/schema.ts';
import type { Command, CommandContext, FlagValues } from './command.ts';
import { flagStrings, UsageError, subcommandError } from './command.ts';
import { formatDuration, formatJson, formatPhi, renderTable } from './format.ts';

const UNKNOWN = '-';

export function labelFlags(flags: FlagValues): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of flagStrings(flags, 'label')) {
    const eq = raw.indexOf('=');
    if (eq < 1) throw new UsageError(`--label ${JSON.stringify(raw)}: expected KEY=VALUE`);
    out[raw.slice(0, eq)] = raw.slice(eq + 1);
  }
  return out;
}

function age(seconds: number | null): string {
  return seconds === null ? 'never' : `${formatDuration(seconds)} ago`;
}

function gib(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function usage(used: string, total: string | null): string {
  return total === null ? used : `${used}/${total}`;
}

function percent(fraction: number | null): string {
  return fraction === null ? UNKNOWN : `${Math.round(fraction * 100)}%`;
}

function health(r: FleetRegion): string {
  if (r.health === 'self') return 'self';
  return r.phi === null ? r.health : `${r.health} (phi ${formatPhi(r.phi)})`;
}

function report(r: FleetRegion): string {
  if (r.report === 'none') return 'none';
  const when = age(r.report_age_seconds);
  return r.report === 'current' ? when : `${r.report.toUpperCase()}, ${when}`;
}

export function formatFleetStatus(s: FleetStatusResponse): string {
  if (s.regions.length === 0) return '(no regions)\n';
  return renderTable(
    ['REGION', 'LOCATION', 'HEALTH', 'PROVIDERS', 'VMS', 'VCPU', 'VCPU BUSY', 'MEMORY GIB', '$/H', 'REPORT'],
    s.regions.map((r) => [
      r.self ? `${r.region} (this node)` : r.region,
      r.location ?? UNKNOWN,
      health(r),
      r.providers.map((p) => (p.last_error === null ? p.name : `${p.name} (sync failed)`)).join(',') || UNKNOWN,
      r.vms_by_state.map((c) => `${c.state}=${c.count}`).join(' ') || '0',
      usage(String(r.vcpus_used), r.vcpus_total === null ? null : String(r.vcpus_total)),
      r.vcpus_busy === null ? UNKNOWN : r.vcpus_busy.toFixed(1),
      usage(gib(r.memory_gib_used), r.memory_gib_total === null ? null : gib(r.memory_gib_total)),
      `$${r.price_per_hour.toFixed(4)}`,
      report(r),
    ]),
  );
}

export function formatFleetVms(vms: readonly FleetVm[]): string {
  if (vms.length === 0) return '(no instances)\n';
  return renderTable(
    ['REGION', 'PROVIDER', 'ID', 'NAME', 'TYPE', 'STATE', 'VCPU', 'MEMORY', 'CPU', 'MEM USED', '$/H', 'AGE'],
    vms.map((v) => [
      v.region,
      v.provider,
      v.id,
      v.name,
      v.type,
      v.state === v.last_state ? v.state : `${v.state} (last: ${v.last_state})`,
      v.vcpus === null ? UNKNOWN : String(v.vcpus),
      v.memory_mib === null ? UNKNOWN : `${gib(v.memory_mib / 1024)} GiB`,
      percent(v.cpu),
      percent(v.memory),
      v.price_per_hour === null ? UNKNOWN : `$${v.price_per_hour.toFixed(4)}`,
      age(v.report_age_seconds),
    ]),
  );
}

/** `vm list --all`: every region's VMs (vm.ts hands over when --all is given). */
export async function listAllVms(ctx: CommandContext): Promise<void> {
  const vms = await (await ctx.admin()).fleet.listVms({ regions: flagStrings(ctx.flags, 'region'), labels: labelFlags(ctx.flags) });
  ctx.io.stdout(ctx.json ? formatJson({ vms }) : formatFleetVms(vms));
}

async function fleet(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  if (sub !== 'status') throw subcommandError('fleet', 'status', sub);
  if (ctx.args.length > 1) throw new UsageError(`fleet status takes no arguments (got ${JSON.stringify(ctx.args[1])})`);
  const res = await (await ctx.admin()).fleet.status();
  if (ctx.json) {
    ctx.io.stdout(formatJson(res));
    return;
  }
  ctx.io.stdout(formatFleetStatus(res));
  if (res.orphans.length > 0) ctx.io.stdout(`\nOrphans (managed by dwcp, no desired VM; never deleted by the fleet):\n${formatFleetVms(res.orphans)}`);
}

export const FLEET_COMMAND: Command = {
  name: 'fleet',
  args: 'status',
  summary: "every region's health (phi), providers, VMs by state, vCPU and memory used/total, $/h and report age, from any node",
  run: fleet,
};
