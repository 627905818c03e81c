/**
 * dwcpctl's managed VMs: desired state in the federation log, placed by the
 * scheduler of the node asked, run by the reconciler of the region chosen.
 *
 *   dwcpctl vm create NAME --cpu N --memory 4GiB --image IMG [--disk 20GiB]
 *       [--region R | --placement auto] [--constraint K=V]... [--label k=v]...
 *       [--spot] [--priority N] [--stopped] [--dry-run] [--explain] [--json]
 *   dwcpctl place NAME --cpu N --memory 4GiB --image IMG [...]      (a dry run, explained)
 *   dwcpctl vm start|stop|terminate NAME                            (a managed VM by name)
 *   dwcpctl vm list --desired [NAME]... [--json]
 *
 * Constraints (--constraint, repeatable): region=a,b  provider=p,q
 * jurisdiction=eu,us  compliance=gdpr,hipaa  label:KEY=VALUE (a region label)
 * max-price=0.50 ($/h)  max-rtt=REGION:50 (ms)  anti-affinity=GROUP
 * spread=GROUP. --region R is `--constraint region=R`.
 *
 * The spec is checked by the daemon against the fleet's schema; a refusal
 * names the field. This module only turns flags into a spec.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { FleetDesiredVm, FleetPlaceResponse } from '../admin/schema.ts';
import type { CommandContext, FlagValues } from './command.ts';
import { flagStrings, requiredFlag, singleFlag, UsageError } from './command.ts';
import { formatJson, renderTable } from './format.ts';
import { parseSize } from '../fleet/spec.ts';

/** The flags a managed create or a placement takes (merged into the vm command's options). */
export const MANAGED_VM_OPTIONS = {
  cpu: { type: 'string' },
  memory: { type: 'string' },
  disk: { type: 'string' },
  placement: { type: 'string' },
  constraint: { type: 'string', multiple: true },
  priority: { type: 'string' },
  stopped: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  explain: { type: 'boolean' },
  desired: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

const CREATE_TIMEOUT_MS = 60_000;

function size(flag: string, text: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new UsageError(`--${flag}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function pairs(flag: string, values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of values) {
    const eq = raw.indexOf('=');
    if (eq < 1) throw new UsageError(`--${flag} ${JSON.stringify(raw)}: expected KEY=VALUE`);
    out[raw.slice(0, eq)] = raw.slice(eq + 1);
  }
  return out;
}

function names(value: string): string[] {
  return value.split(',').map((v) => v.trim()).filter((v) => v !== '');
}

/** --constraint K=V flags (and --region) as the spec's constraints object. */
export function constraintsFrom(flags: FlagValues): Record<string, unknown> {
  const c: Record<string, unknown> = {};
  const regionLabels: Record<string, string> = {};
  const regions = flagStrings(flags, 'region').flatMap(names);
  for (const raw of flagStrings(flags, 'constraint')) {
    const eq = raw.indexOf('=');
    if (eq < 1) throw new UsageError(`--constraint ${JSON.stringify(raw)}: expected KIND=VALUE (region, provider, jurisdiction, compliance, label:KEY, max-price, max-rtt, anti-affinity, spread)`);
    const kind = raw.slice(0, eq);
    const value = raw.slice(eq + 1);
    if (kind.startsWith('label:')) {
      regionLabels[kind.slice('label:'.length)] = value;
      continue;
    }
    switch (kind) {
      case 'region':
        regions.push(...names(value));
        break;
      case 'provider':
        c.providers = names(value);
        break;
      case 'jurisdiction':
        c.jurisdictions = names(value);
        break;
      case 'compliance':
        c.compliance = names(value);
        break;
      case 'max-price': {
        const usd = Number(value.replace(/^\$/, ''));
        if (!(usd > 0)) throw new UsageError(`--constraint max-price=${value}: expected dollars per hour above 0, e.g. 0.50`);
        c.maxHourlyUsd = usd;
        break;
      }
      case 'max-rtt': {
        const m = /^([^:]+):(\d+(?:\.\d+)?)(ms)?$/.exec(value);
        if (m === null) throw new UsageError(`--constraint max-rtt=${value}: expected REGION:MILLISECONDS, e.g. eu-1:50`);
        c.maxRtt = { region: m[1], ms: Number(m[2]) };
        break;
      }
      case 'anti-affinity':
        c.antiAffinityGroup = value;
        break;
      case 'spread':
        c.spreadGroup = value;
        break;
      default:
        throw new UsageError(`--constraint ${JSON.stringify(raw)}: unknown kind ${kind} (region, provider, jurisdiction, compliance, label:KEY, max-price, max-rtt, anti-affinity, spread)`);
    }
  }
  if (regions.length > 0) c.regions = regions;
  if (Object.keys(regionLabels).length > 0) c.regionLabels = regionLabels;
  return c;
}

/** The spec the flags describe; the daemon validates it. */
export function specFrom(name: string, flags: FlagValues): Record<string, unknown> {
  const placement = singleFlag(flags, 'placement');
  if (placement !== undefined && placement !== 'auto') throw new UsageError(`--placement: ${JSON.stringify(placement)} is not auto (pin a region with --region R)`);
  if (placement === 'auto' && flags.region !== undefined) throw new UsageError('--placement auto and --region exclude each other');
  const cpu = Number(requiredFlag(flags, 'cpu', 'vCPUs, e.g. 2'));
  if (!Number.isInteger(cpu) || cpu < 1) throw new UsageError(`--cpu: ${JSON.stringify(singleFlag(flags, 'cpu'))} is not a whole number of vCPUs from 1`);
  const priorityText = singleFlag(flags, 'priority');
  const priority = priorityText === undefined ? 0 : Number(priorityText);
  if (!Number.isInteger(priority) || priority < 0) throw new UsageError(`--priority: ${JSON.stringify(priorityText)} is not a whole number from 0`);
  const disk = singleFlag(flags, 'disk');
  return {
    name,
    vcpus: cpu,
    memoryBytes: size('memory', requiredFlag(flags, 'memory', 'e.g. 4GiB')),
    ...(disk === undefined ? {} : { diskBytes: size('disk', disk) }),
    image: requiredFlag(flags, 'image', 'the image to boot'),
    labels: pairs('label', flagStrings(flags, 'label')),
    spot: flags.spot === true,
    priority,
    constraints: constraintsFrom(flags),
  };
}

function vmName(ctx: CommandContext, what: string, skip: number): string {
  const [name, extra] = ctx.args.slice(skip);
  if (name === undefined || extra !== undefined) throw new UsageError(`${what} takes one argument, the VM's name`);
  return name;
}

function timeout(ctx: CommandContext): number {
  return ctx.flags.timeout === undefined ? CREATE_TIMEOUT_MS : ctx.timeoutMs;
}

export function formatPlace(res: FleetPlaceResponse): string {
  const head = res.ok ? `would place on ${res.region}/${res.provider}` : `fits nowhere (${res.code}): ${res.message}`;
  return `${[head, ...res.explain].join('\n')}\n`;
}

/** `vm create NAME ...` (managed) and `place NAME ...`. */
export async function createManaged(ctx: CommandContext, dryRun: boolean): Promise<void> {
  // `place NAME` has no subcommand before the name; `vm create NAME` has one.
  if (!dryRun && ctx.args.length === 1) {
    throw new UsageError('vm create needs a NAME (a managed VM: NAME --cpu N --memory SIZE --image I) or --type (one unmanaged instance: --provider P --type T --image I)');
  }
  const name = dryRun ? vmName(ctx, 'place', 0) : vmName(ctx, 'vm create', 1);
  const spec = specFrom(name, ctx.flags);
  const fleet = (await ctx.admin()).fleet;
  if (dryRun || ctx.flags['dry-run'] === true) {
    const res = await fleet.place({ spec_json: JSON.stringify(spec) });
    ctx.io.stdout(ctx.json ? formatJson({ ...res, decision: JSON.parse(res.decision_json) as unknown, decision_json: undefined }) : formatPlace(res));
    if (!res.ok) throw new Error(`${name} fits nowhere (${res.code}): ${res.message}`);
    return;
  }
  const res = await fleet.create({ spec_json: JSON.stringify(spec), power: ctx.flags.stopped === true ? 'stopped' : 'running', timeout_ms: timeout(ctx) });
  if (ctx.json) {
    ctx.io.stdout(formatJson(res));
    return;
  }
  const retried = res.attempts > 1 ? ` after ${res.attempts} plans` : '';
  ctx.io.stdout(`${res.vm} placed on ${res.region}/${res.provider} (generation ${res.generation})${retried}\n`);
  if (ctx.flags.explain === true) ctx.io.stdout(`${res.explain.join('\n')}\n`);
}

/** `vm start|stop|terminate NAME` for a managed VM; false when NAME is no desired VM (the caller treats it as an instance ID). */
export async function powerManaged(ctx: CommandContext, sub: 'start' | 'stop' | 'terminate'): Promise<boolean> {
  const name = ctx.args[1];
  if (name === undefined || ctx.args.length > 2) return false;
  const fleet = (await ctx.admin()).fleet;
  const found = await fleet.listDesired([name]).catch(() => []);
  if (found.length === 0 || found[0]?.deleted === true) return false;
  const res =
    sub === 'terminate'
      ? await fleet.delete({ vm: name, timeout_ms: timeout(ctx) })
      : await fleet.setPower({ vm: name, power: sub === 'start' ? 'running' : 'stopped', timeout_ms: timeout(ctx) });
  ctx.io.stdout(ctx.json ? formatJson(res) : `${res.name} ${sub === 'terminate' ? 'deleted from desired state' : `desired ${res.power}`} (${res.region || 'unplaced'}; now ${res.status})\n`);
  return true;
}

export function formatDesired(vms: readonly FleetDesiredVm[]): string {
  if (vms.length === 0) return '(no managed VMs)\n';
  return renderTable(
    ['NAME', 'REGION', 'PROVIDER', 'GEN', 'VCPU', 'MEMORY', 'POWER', 'STATUS'],
    vms.map((v) => [
      v.deleted ? `${v.name} (deleted)` : v.name,
      v.region || '-',
      v.provider || '-',
      v.generation,
      String(v.vcpus),
      `${Math.round(Number(v.memory_bytes) / 1024 ** 2)} MiB`,
      v.power,
      v.reason === null ? v.status : `${v.status}: ${v.reason}`,
    ]),
  );
}

/** `vm list --desired [NAME]...` */
export async function listDesired(ctx: CommandContext): Promise<void> {
  const vms = await (await ctx.admin()).fleet.listDesired(ctx.args.slice(1));
  ctx.io.stdout(ctx.json ? formatJson({ vms }) : formatDesired(vms));
}
