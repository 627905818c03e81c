/**
 * Planning a migration, for `dwcpctl vm migrate` and its `--dry-run`: from
 * the request (VM, target region, optional provider, mode, max downtime)
 * and this node's replica of the desired state, the migration-start command
 * to propose, and the plan in words (the steps, the reservation, what was
 * checked). A pure function.
 *
 * The check is the state machine's own (FleetState.migrationStartRefusal:
 * the same code the log runs at apply), so a dry run that passes proposes a
 * command the log accepts on the same state, and one that fails says the
 * log's reason: compatibility ("not supported for provider X"), policy,
 * constraints, anti-affinity, capacity, the per-region bound.
 *
 * The target provider, when not named: the target region's providers of the
 * source provider's kind, the first (by name) the check accepts; the first
 * of them when none does (its refusal is the answer); any provider when the
 * region has none of that kind (the answer is then "not supported").
 */
import type { FleetRejectCode } from '../fleet/commands.ts';
import { demandOf, formatAmount, RESOURCES } from '../fleet/ledger.ts';
import type { MigrationMode, MigrationStartCommand } from '../fleet/migrations.ts';
import type { FleetState } from '../fleet/state-machine.ts';

export interface MigrationRequest {
  readonly vm: string;
  readonly region: string;
  /** A provider of the target region; absent: chosen (see the header). */
  readonly provider?: string;
  readonly mode: MigrationMode;
  readonly maxDowntimeMs?: number;
  /** A DR failback (the log checks it goes back where the VM failed over from, as policy operation failback). */
  readonly purpose?: 'failback';
}

export type MigrationPlan =
  | { readonly ok: true; readonly command: MigrationStartCommand; readonly lines: readonly string[] }
  | { readonly ok: false; readonly code: FleetRejectCode; readonly message: string; readonly lines: readonly string[] };

export function planMigration(state: FleetState, request: MigrationRequest, now: number): MigrationPlan {
  const vm = state.vm(request.vm);
  if (vm === undefined) return { ok: false, code: 'unknown_vm', message: `no VM named ${request.vm}`, lines: [] };
  const a = vm.assignment;
  const sourceKind = a === null ? undefined : state.region(a.region)?.providers.find((p) => p.name === a.provider)?.kind;
  const region = state.region(request.region);
  const candidates = request.provider !== undefined ? [request.provider] : (region?.providers ?? []).filter((p) => p.kind === sourceKind).map((p) => p.name);
  if (candidates.length === 0) candidates.push(region?.providers[0]?.name ?? 'local');
  const commandFor = (provider: string): MigrationStartCommand => ({
    kind: 'migration-start',
    vm: request.vm,
    generation: a?.generation ?? 1,
    region: request.region,
    provider,
    mode: request.mode,
    ...(request.maxDowntimeMs === undefined ? {} : { maxDowntimeMs: request.maxDowntimeMs }),
    ...(request.purpose === undefined ? {} : { purpose: request.purpose }),
    at: now,
  });
  const tried = candidates.map((provider) => ({ command: commandFor(provider), refusal: state.migrationStartRefusal(commandFor(provider)) }));
  const chosen = tried.find((t) => t.refusal === null) ?? tried[0];
  if (chosen === undefined) return { ok: false, code: 'unknown_region', message: `no region named ${request.region} is registered`, lines: [] };
  const { command } = chosen;
  const head = a === null ? `${vm.name}: ${request.mode} migration to ${command.region}/${command.provider}` : `${vm.name}: ${request.mode} migration from ${a.region}/${a.provider} (generation ${a.generation}) to ${command.region}/${command.provider} (generation ${vm.generation + 1})`;
  if (chosen.refusal !== null) return { ok: false, code: chosen.refusal.code, message: chosen.refusal.message, lines: [head, `refused (${chosen.refusal.code}): ${chosen.refusal.message}`] };
  if (a === null) throw new Error('a migration the state machine accepts has an assignment');
  const source = a.region;
  const target = command.region;
  const transfer =
    request.mode === 'live'
      ? `QEMU copies memory and disk while ${vm.name} runs, then pauses it for at most ${request.maxDowntimeMs === undefined ? 'its default downtime' : `${request.maxDowntimeMs} ms`} while ${target} takes over`
      : request.mode === 'warm'
        ? `copy the disk in rounds of deltas while ${vm.name} runs, stop it at ${source}, copy the last delta`
        : `stop ${vm.name} at ${source}, then copy its disk in one transfer`;
  const recordLevel = sourceKind === 'local' ? ' (local VMs are records: a record-level move, no bytes)' : '';
  const demand = demandOf(vm.spec);
  const free = freeAt(state, target, command.provider);
  const lines = [
    head,
    `  1. prepare: ${target} creates the incoming copy, prepared and not started`,
    `  2. transfer: ${transfer}${recordLevel}`,
    `  3. cutover: the log moves ${vm.name} to ${target}/${command.provider} at generation ${vm.generation + 1} (policy and constraints checked again)`,
    `  4. verify: ${target} reports ${vm.name} ${vm.power === 'running' ? 'running' : 'stopped'}`,
    `  5. clean up: ${source} fences its old copy`,
    `  any step before cutover can roll back: ${target} tears its copy down first, then ${vm.name} ${request.mode === 'live' ? 'resumes' : 'starts again'} at ${source}`,
    `reserves ${RESOURCES.filter((r) => r !== 'instances' && demand[r] > 0).map((r) => formatAmount(r, demand[r])).join(', ')} at ${target}/${command.provider} while it runs${free === null ? '' : ` (${free})`}`,
    `checked: ${sourceKind ?? '?'} → ${region?.providers.find((p) => p.name === command.provider)?.kind ?? '?'} supports ${request.mode}; constraints, anti-affinity and policy at ${target}; migrations under way (${source} ${under(state, source)}, ${target} ${under(state, target)}); capacity`,
  ];
  return { ok: true, command, lines };
}

function under(state: FleetState, region: string): string {
  const n = state.migrations().filter((m) => m.source.region === region || m.target.region === region).length;
  return `${n} of ${state.region(region)?.maxMigrations ?? '?'}`;
}

/** The target's free vCPUs before the reservation, in words; null when the provider declares no vCPU limit. */
function freeAt(state: FleetState, region: string, provider: string): string | null {
  const limit = state.region(region)?.providers.find((p) => p.name === provider)?.limits.vcpus ?? null;
  const used = state.usage(region, provider);
  if (limit === null || used === undefined) return null;
  return `${formatAmount('vcpus', limit - used.vcpus)} of ${limit} free there before it`;
}
