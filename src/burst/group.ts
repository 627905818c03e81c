/**
 * A burst group: a home (trusted, on-premises) region, a VM template, `min`
 * replicas wanted at home and at most `max` replicas in all, home and
 * burst. Kept in the federation log (`set-burst-group`,
 * `delete-burst-group`), so every node knows the same groups; the home
 * region's node drives each (src/burst/driver.ts).
 *
 * Replicas are ordinary fleet VMs, so placement, policy, budgets, the
 * reconciler and cost tracking treat them like any other:
 * - home replicas `<group>-h<i>` (i = 1..min), pinned to the home region's
 *   on-premises providers (kinds local and qemu; operation `create`). When home has no room, the record is created
 *   unassigned and waits: it is *queued* (the queue trigger counts these),
 *   never failed.
 * - burst replicas `<group>-b<seq>`, placed by the scheduler in the clouds
 *   (providers of kind aws or gcp unless the template names providers) with
 *   operation `burst`, so policies and hard budgets see them as bursts. The
 *   sequence only grows, so the newest replica is the highest number: what
 *   scale-in removes first.
 * Both carry the label `dwcp-burst-group=<group>` and `dwcp-burst-role`
 * (`home` or `burst`).
 *
 * Pure: schemas and functions of the fleet state, no I/O.
 */
import { z } from 'zod';
import { FleetVmSpecSchema, fleetName, normaliseSpec, type FleetVmSpec } from '../fleet/spec.ts';
import type { FleetState, FleetVm } from '../fleet/state-machine.ts';

export const MAX_BURST_GROUPS = 256;
export const MAX_BURST_REPLICAS = 10_000;
/** Leaves room for `-b<seq>` in a 63-character VM name. */
export const MAX_BURST_GROUP_NAME = 48;
export const BURST_GROUP_LABEL = 'dwcp-burst-group';
export const BURST_ROLE_LABEL = 'dwcp-burst-role';
/** Where burst replicas go unless the template names providers: the clouds. */
export const BURST_PROVIDER_KINDS = ['aws', 'gcp'] as const;
/** Where home replicas go: the home region's on-premises capacity (a home node may configure cloud providers too). */
export const HOME_PROVIDER_KINDS = ['local', 'qemu'] as const;

export const BurstGroupSpecSchema = z
  .strictObject({
    name: fleetName.max(MAX_BURST_GROUP_NAME),
    /** The home region (a fleet region: the node name). */
    home: fleetName,
    /** Every replica's spec but its name. */
    template: FleetVmSpecSchema.omit({ name: true }),
    /** Replicas kept at home (queued while home is full). */
    min: z.number().int().min(0).max(MAX_BURST_REPLICAS),
    /** Replicas at most, home and burst together. */
    max: z.number().int().min(1).max(MAX_BURST_REPLICAS),
  })
  .superRefine((g, ctx) => {
    if (g.max < g.min) ctx.addIssue({ code: 'custom', path: ['max'], input: g.max, params: { sentence: true }, message: `is below min (${g.min})` });
    if (g.template.constraints.regions !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['template', 'constraints', 'regions'], input: g.template.constraints.regions, params: { sentence: true }, message: 'may not be set: home replicas go to home, burst replicas where placement puts them' });
    }
    for (const key of [BURST_GROUP_LABEL, BURST_ROLE_LABEL]) {
      if (key in g.template.labels) ctx.addIssue({ code: 'custom', path: ['template', 'labels', key], input: g.template.labels[key], params: { sentence: true }, message: 'is set by the burst driver, not the template' });
    }
  });

export type BurstGroupSpec = z.infer<typeof BurstGroupSpecSchema>;
export type BurstGroupSpecInput = z.input<typeof BurstGroupSpecSchema>;

export type BurstRole = 'home' | 'burst';

/** One burst group's replicas as the log holds them. */
export interface GroupReplicas {
  /** Home replicas assigned (to any region: a home replica moved away still counts as placed). */
  readonly home: readonly FleetVm[];
  /** Home replicas created but unassigned: waiting for home capacity. */
  readonly queued: readonly FleetVm[];
  /** Live burst replicas, oldest (lowest sequence) first. */
  readonly burst: readonly { readonly vm: FleetVm; readonly seq: number }[];
  /** The next burst sequence number: above every burst replica's the log holds, live or not. */
  readonly nextSeq: number;
}

export function homeReplicaName(group: string, i: number): string {
  return `${group}-h${i}`;
}

export function burstReplicaName(group: string, seq: number): string {
  return `${group}-b${seq}`;
}

/** The spec of a replica: the template, the name, the group's labels; home replicas pinned home, burst replicas kept to the clouds. */
export function replicaSpec(group: BurstGroupSpec, role: BurstRole, name: string): FleetVmSpec {
  const t = group.template;
  const constraints = { ...t.constraints };
  if (role === 'home') {
    constraints.regions = [group.home];
    constraints.providers ??= [...HOME_PROVIDER_KINDS];
  } else {
    constraints.providers ??= [...BURST_PROVIDER_KINDS];
  }
  return normaliseSpec({ ...t, name, labels: { ...t.labels, [BURST_GROUP_LABEL]: group.name, [BURST_ROLE_LABEL]: role }, constraints });
}

/**
 * The group's replicas in `state`. Only VMs carrying the group's label and
 * role count (a VM an operator named `web-b3` by hand is not a replica).
 * Scans every VM: call once per tick, not per decision.
 */
export function groupReplicas(state: Pick<FleetState, 'vms'>, group: string): GroupReplicas {
  const home: FleetVm[] = [];
  const queued: FleetVm[] = [];
  const burst: { vm: FleetVm; seq: number }[] = [];
  let nextSeq = 1;
  const burstName = new RegExp(`^${group}-b([0-9]+)$`);
  for (const vm of state.vms()) {
    if (vm.spec.labels[BURST_GROUP_LABEL] !== group) continue;
    const role = vm.spec.labels[BURST_ROLE_LABEL];
    if (role === 'burst') {
      const m = burstName.exec(vm.name);
      if (m === null) continue;
      const seq = Number(m[1]);
      nextSeq = Math.max(nextSeq, seq + 1);
      if (!vm.deleted) burst.push({ vm, seq });
    } else if (role === 'home' && !vm.deleted) {
      (vm.assignment === null ? queued : home).push(vm);
    }
  }
  burst.sort((a, b) => a.seq - b.seq);
  return { home, queued, burst, nextSeq };
}

/** One group, one shape (the template normalised as a spec is), so one command has one encoding. */
export function normaliseBurstGroup(g: BurstGroupSpec): BurstGroupSpec {
  const { name: _name, ...template } = normaliseSpec({ ...g.template, name: g.name });
  return { name: g.name, home: g.home, template, min: g.min, max: g.max };
}
