/**
 * The DR controller as a pure core: given this region's name, the time,
 * desired state (the protected VMs), the region health checks this node ran
 * since the last step, whether this node's view of the federation log is
 * current, its own memory and the proposals still in flight, it returns
 * the log commands to propose (failovers, failback migrations), the events
 * worth a log line and a metric, and its updated memory. The driver
 * (src/dr/driver.ts) runs the checks every checkIntervalMs and proposes; the
 * fleet simulation (test/sim/fleet-harness.ts) runs this same core.
 *
 * Rules:
 * - Detection. A region is *failed* after failAfterChecks consecutive failed
 *   checks (default 3, one every 5 s); one good check clears the count.
 *   While this node's own view of the log is not current, it counts nothing
 *   and forgets its counts (its checks fail because it is cut off).
 *   So a region that missed failAfterChecks - 1 checks is never failed over.
 * - Failover. For every protected VM assigned to a failed region (and not
 *   already failed over), whose DR region is this one or not failed itself,
 *   this node proposes `failover` naming the generation it sees. Any
 *   surviving region may; the log takes one (the others are refused
 *   stale_generation). A node proposes only while its own view of the log is
 *   current (a node cut off from the majority sees every region fail and
 *   must not act on it), one proposal per VM at a time, again after
 *   retryMs if it was lost or refused.
 * - Split brain is not this core's to prevent: the region reconciler is
 *   (src/fleet/reconciler.ts, options.dr). A region whose view of the log is
 *   older than fenceAfterMs stops its protected VMs on its own, and the DR
 *   region starts a failed-over copy only fenceHoldMs (> fenceAfterMs plus a
 *   pass and a stop) after it first saw the failover, which came after the
 *   last contact anyone had with the lost region. A lost region that can
 *   still hear the log fences its copy by the generation instead.
 * - Failback (failback auto). The DR region's node (where the failed-over VM
 *   runs, so where a migration's coordinator runs) proposes a warm migration
 *   home (purpose failback), once the failed-over copy runs here, when the
 *   home region has passed every check for
 *   stabilisationMs, counted from the later of its first good check after a
 *   failure and when this node first saw the VM failed over. Any failed
 *   check restarts the window, so a region that flaps (up, down, up within
 *   the window) never brings a VM back and never causes a ping-pong; a
 *   failback that rolls back waits another full window from its end.
 *
 * Deterministic: no clock, no randomness, VMs visited by name, regions by
 * name; memory is bounded by the regions and the protected VMs (entries of
 * VMs no longer protected are dropped each step).
 */
import type { FleetCommandInput } from '../fleet/commands.ts';
import type { FleetMigration } from '../fleet/migrations.ts';
import { isFailedOver } from '../fleet/protection.ts';
import type { FleetVm } from '../fleet/state-machine.ts';

export interface DrOptions {
  /** How often each region is checked. */
  readonly checkIntervalMs: number;
  /** Consecutive failed checks after which a region is failed. */
  readonly failAfterChecks: number;
  /** How long a region must pass every check before its VMs fail back. */
  readonly stabilisationMs: number;
  /** A lost or refused proposal is made again after this long. */
  readonly retryMs: number;
}

export const DEFAULT_DR_OPTIONS: DrOptions = { checkIntervalMs: 5_000, failAfterChecks: 3, stabilisationMs: 600_000, retryMs: 10_000 };

/** One health check of a region, run by this node: the member failure detector, the region's report, its provider's health. */
export interface RegionCheck {
  readonly region: string;
  readonly ok: boolean;
  readonly at: number;
  /** Why it failed, for the log line (`no ping answer for 5.1 s`). */
  readonly detail?: string;
}

export interface RegionHealth {
  readonly consecutiveFailures: number;
  /** The first failed check of the current run of failures; null while passing. */
  readonly firstFailedAt: number | null;
  readonly lastOkAt: number | null;
  /** The first good check after the last failure (or the first ever); null while failing. */
  readonly healthySince: number | null;
  readonly failed: boolean;
}

export interface DrVmMemory {
  /** When this node last proposed for the VM (a retry waits retryMs). */
  readonly proposedAt: number | null;
  /** When this node first saw the VM failed over at its current generation, and that generation. */
  readonly failedOverSeen: { readonly generation: number; readonly at: number } | null;
}

export interface DrMemory {
  readonly regions: ReadonlyMap<string, RegionHealth>;
  readonly vms: ReadonlyMap<string, DrVmMemory>;
}

export const EMPTY_DR_MEMORY: DrMemory = { regions: new Map(), vms: new Map() };

/** What the core reads of desired state. */
export interface DrFleetView {
  /** The protected, live VMs (any order; the core sorts). */
  protectedVms(): readonly FleetVm[];
  migrationOf(vm: string): FleetMigration | undefined;
}

/** What this node sees of its own region's copies: a failback waits until the failed-over copy runs here (there is nothing to move before). */
export interface DrLocalView {
  runningHere(vm: string, generation: number): boolean;
}

export interface DrInput {
  readonly self: string;
  readonly now: number;
  readonly fleet: DrFleetView;
  readonly local: DrLocalView;
  /** Checks run since the last step, any order. */
  readonly checks: readonly RegionCheck[];
  /** Whether this node's view of the federation log is current (it hears the majority). */
  readonly logCurrent: boolean;
  readonly memory: DrMemory;
  /** VMs with a proposal of this node still waiting for the log's answer. */
  readonly inFlight: ReadonlySet<string>;
  readonly options?: DrOptions;
}

export type DrEffect =
  | { readonly kind: 'propose'; readonly vm: string; readonly command: FleetCommandInput; readonly why: 'failover' | 'failback' }
  | { readonly kind: 'region-failed'; readonly region: string; readonly firstFailedAt: number; readonly detail: string }
  | { readonly kind: 'region-recovered'; readonly region: string };

export interface DrResult {
  readonly effects: readonly DrEffect[];
  readonly memory: DrMemory;
}

const HEALTHY: RegionHealth = { consecutiveFailures: 0, firstFailedAt: null, lastOkAt: null, healthySince: null, failed: false };
const NO_VM_MEMORY: DrVmMemory = { proposedAt: null, failedOverSeen: null };

function byName(a: { readonly name: string }, b: { readonly name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** Folds one check into a region's health; the effect when the region just failed or recovered. */
export function foldCheck(health: RegionHealth, check: RegionCheck, failAfterChecks: number): { health: RegionHealth; effect: DrEffect | null } {
  if (check.ok) {
    const next: RegionHealth = { consecutiveFailures: 0, firstFailedAt: null, lastOkAt: check.at, healthySince: health.healthySince ?? check.at, failed: false };
    return { health: next, effect: health.failed ? { kind: 'region-recovered', region: check.region } : null };
  }
  const consecutiveFailures = health.consecutiveFailures + 1;
  const firstFailedAt = health.firstFailedAt ?? check.at;
  const failed = consecutiveFailures >= failAfterChecks;
  const next: RegionHealth = { consecutiveFailures, firstFailedAt, lastOkAt: health.lastOkAt, healthySince: null, failed };
  const effect: DrEffect | null = failed && !health.failed ? { kind: 'region-failed', region: check.region, firstFailedAt, detail: `${consecutiveFailures} consecutive failed checks${check.detail === undefined ? '' : ` (last: ${check.detail})`}` } : null;
  return { health: next, effect };
}

export function stepDr(input: DrInput): DrResult {
  const options = input.options ?? DEFAULT_DR_OPTIONS;
  const { self, now } = input;
  const effects: DrEffect[] = [];
  const regions = new Map(input.memory.regions);
  // Cut off from the log, this node's failed checks say more about itself than about the others: it forgets the counts and starts afresh when back.
  if (!input.logCurrent) {
    for (const [name, h] of regions) regions.set(name, { ...HEALTHY, lastOkAt: h.lastOkAt });
  } else for (const check of [...input.checks].sort((a, b) => a.at - b.at || (a.region < b.region ? -1 : a.region > b.region ? 1 : 0))) {
    if (check.region === self) continue; // a node does not judge its own region: the others do
    const folded = foldCheck(regions.get(check.region) ?? HEALTHY, check, options.failAfterChecks);
    regions.set(check.region, folded.health);
    if (folded.effect !== null) effects.push(folded.effect);
  }

  const failed = (region: string): boolean => region !== self && (regions.get(region)?.failed ?? false);
  const vms = new Map<string, DrVmMemory>();
  for (const vm of [...input.fleet.protectedVms()].sort(byName)) {
    const p = vm.protection;
    const a = vm.assignment;
    if (p === null || a === null || vm.deleted) continue;
    const previous = input.memory.vms.get(vm.name) ?? NO_VM_MEMORY;
    const failedOver = isFailedOver(p, a);
    const migration = input.fleet.migrationOf(vm.name);
    // The window counts from when this node first saw the VM failed over, and again from the end of every failback attempt.
    const seen = !failedOver ? null : previous.failedOverSeen?.generation === a.generation && migration === undefined ? previous.failedOverSeen : { generation: a.generation, at: now };
    let proposedAt = previous.proposedAt;
    vms.set(vm.name, { proposedAt, failedOverSeen: seen });
    if (!input.logCurrent || input.inFlight.has(vm.name)) continue;
    if (proposedAt !== null && now < proposedAt + options.retryMs) continue;
    let effect: DrEffect | null = null;
    if (!failedOver && a.region !== p.drRegion && failed(a.region) && !failed(p.drRegion)) {
      const health = regions.get(a.region) ?? HEALTHY;
      effect = {
        kind: 'propose',
        vm: vm.name,
        why: 'failover',
        command: { kind: 'failover', vm: vm.name, region: a.region, generation: a.generation, reason: `${a.region} failed ${health.consecutiveFailures} consecutive checks (seen from ${self})`, since: health.firstFailedAt ?? now, at: now },
      };
    } else if (failedOver && seen !== null && self === p.drRegion && p.failback === 'auto' && migration === undefined && input.local.runningHere(vm.name, a.generation)) {
      const from = p.failedOver?.from;
      const home = from === undefined ? undefined : regions.get(from.region);
      const since = home?.healthySince ?? null;
      if (from !== undefined && since !== null && !failed(from.region) && now - Math.max(since, seen.at) >= options.stabilisationMs) {
        effect = { kind: 'propose', vm: vm.name, why: 'failback', command: { kind: 'migration-start', vm: vm.name, generation: a.generation, region: from.region, provider: from.provider, mode: 'warm', purpose: 'failback', at: now } };
      }
    }
    if (effect !== null) {
      effects.push(effect);
      proposedAt = now;
      vms.set(vm.name, { proposedAt, failedOverSeen: seen });
    }
  }
  return { effects, memory: { regions, vms } };
}
