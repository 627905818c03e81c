/**
 * Which guests' leases this region renews and which it drops, after a read
 * that proved its view of the federation log current (the per-guest lease:
 * src/cloud/qemu/guest-lease.ts). Pure: desired state, this region's copies
 * and the deadline in; per provider, the leases to renew and to drop out.
 *
 * Invariants:
 * - Renewed: the current copy (the assignment's generation) of a protected
 *   VM assigned here. Only these may keep running through a lost daemon.
 * - Dropped: copies of VMs that are not protected (unprotected, deleted, or
 *   unknown to desired state): their watchdog idles, as before protection.
 * - Neither: any other copy of a protected VM (a stale one, or a migration's
 *   incoming copy before its cutover, whose assignment is still at the
 *   source): its lease, if any, is left to lapse,
 *   so a copy the log moved away is killed even if this daemon dies before
 *   fencing it.
 * - The deadline is when the log was last known current plus leaseMs, never
 *   the time of the renewal: a daemon that renews late renews no further.
 */
import type { ObservedVm } from '../fleet/reconciler.ts';
import type { FleetVm } from '../fleet/state-machine.ts';

export interface LeaseRenewal {
  readonly untilMs: number;
  readonly vm: string;
}

export interface ProviderLeases {
  readonly renew: Map<string, LeaseRenewal>;
  readonly release: string[];
}

export interface LeasePlanInput {
  readonly region: string;
  readonly state: { vm(name: string): Pick<FleetVm, 'name' | 'deleted' | 'protection' | 'assignment'> | undefined };
  /** This region's copies (its inventory), of the providers that hold leases. */
  readonly copies: readonly ObservedVm[];
  /** When this node's view of the log was last known current. */
  readonly logSeenAt: number;
  readonly leaseMs: number;
}

export function leasePlan(input: LeasePlanInput): Map<string, ProviderLeases> {
  const untilMs = input.logSeenAt + input.leaseMs;
  const plan = new Map<string, ProviderLeases>();
  const of = (provider: string): ProviderLeases => {
    let p = plan.get(provider);
    if (p === undefined) plan.set(provider, (p = { renew: new Map(), release: [] }));
    return p;
  };
  for (const copy of input.copies) {
    if (!copy.managed || copy.state === 'terminated') continue;
    const vm = copy.vmName === undefined ? undefined : input.state.vm(copy.vmName);
    if (vm === undefined || vm.deleted || vm.protection === null) {
      of(copy.provider).release.push(copy.id);
      continue;
    }
    const a = vm.assignment;
    if (a !== null && a.region === input.region && copy.generation === a.generation) of(copy.provider).renew.set(copy.id, { untilMs, vm: vm.name });
  }
  return plan;
}
