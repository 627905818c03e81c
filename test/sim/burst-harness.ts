/**
 * The burst simulator: the pure burst core (src/burst/core.ts) driven tick
 * by tick against a seeded load on a home region, its decisions carried out
 * on a real FleetStateMachine through the real scheduler core (placement
 * with operation `burst`), and three invariants checked on the trace by code
 * that does not share the core's logic:
 * - oscillation: no scale-out and scale-in of the group less than the
 *   cooldown apart, in either order;
 * - latency: once a trigger has held for its window (counted from its run's
 *   start or the last scale-out, whichever is later), with room and the
 *   cooldown since the last scale-in passed, a scale-out comes on that tick
 *   or the next (within one evaluation tick);
 * - policy: every burst replica is placed where the policy set allows it
 *   under operation `burst` and no spent hard budget refuses it.
 * The load feeds back: each burst replica takes its vCPUs of demand off the
 * home region, as a replica behind a load balancer would.
 */
import { parseFleetCommand, type FleetCommand } from '../../src/fleet/commands.ts';
import { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { planCreate, startScheduling, type SchedulerOptions, DEFAULT_SCHEDULER_OPTIONS } from '../../src/fleet/scheduler.ts';
import { hourlyUsd } from '../../src/fleet/ledger.ts';
import { hardBudgetDenial } from '../../src/fleet/budgets.ts';
import { policyRegionOf, policyVmOf } from '../../src/fleet/policy-check.ts';
import { EMPTY_BURST_STATE, evaluateBurst, type BurstCoreState, type BurstDecision } from '../../src/burst/core.ts';
import { BurstGroupSpecSchema, burstReplicaName, groupReplicas, replicaSpec, type BurstGroupSpec } from '../../src/burst/group.ts';
import type { BurstThresholds } from '../../src/burst/config.ts';
import { Prng } from './prng.ts';

const GIB = 1024 ** 3;
export const LOADS = ['step', 'sawtooth', 'noisy'] as const;
export type LoadKind = (typeof LOADS)[number];

export interface BurstSimOptions {
  readonly seed: number;
  readonly load: LoadKind;
  readonly tickMs: number;
  readonly ticks: number;
  /** What the checker holds the core to. */
  readonly thresholds: BurstThresholds;
  /** What the core is given (a mutation check hands it broken ones); default: thresholds. */
  readonly coreThresholds?: BurstThresholds;
  /** The scheduler's options (a mutation check drops the `burst` operation through `operation`). */
  readonly scheduler?: SchedulerOptions;
  /** false: burst replicas are planned as ordinary placements (a mutation: policies for `burst` are not asked). */
  readonly burstOperation?: boolean;
}

export interface BurstSimResult {
  readonly decisions: readonly BurstDecision[];
  readonly violations: readonly string[];
  readonly maxBurst: number;
  readonly placements: readonly string[];
}

const HOME_VCPUS = 8;
const REPLICA_VCPUS = 2;

export const SIM_GROUP: BurstGroupSpec = BurstGroupSpecSchema.parse({
  name: 'web',
  home: 'dc1',
  template: { vcpus: REPLICA_VCPUS, memoryBytes: 2 * GIB, image: 'base', labels: { 'data-class': 'personal' } },
  min: 4,
  max: 12,
});

/** A home region, a cheap US cloud region that policy forbids for personal data bursts, a dearer EU one, and a spent hard budget on a third. */
export function simFleet(): FleetStateMachine {
  const m = new FleetStateMachine();
  const commands: FleetCommand[] = [
    parseFleetCommand({ kind: 'register-region', region: 'dc1', trust: 'trusted', jurisdiction: 'eu', providers: [{ name: 'local', kind: 'local', capacity: { vcpus: HOME_VCPUS, memoryBytes: 64 * GIB, diskBytes: 1000 * GIB }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0.001 } }] }),
    parseFleetCommand({ kind: 'register-region', region: 'gcp-us', trust: 'untrusted', jurisdiction: 'us', providers: [{ name: 'gcp', kind: 'gcp', prices: { vcpuHourUsd: 0.02, memoryGiBHourUsd: 0.002 } }] }),
    parseFleetCommand({ kind: 'register-region', region: 'aws-eu', trust: 'untrusted', jurisdiction: 'eu', providers: [{ name: 'aws', kind: 'aws', prices: { vcpuHourUsd: 0.05, memoryGiBHourUsd: 0.005 } }] }),
    parseFleetCommand({ kind: 'register-region', region: 'aws-eu2', trust: 'untrusted', jurisdiction: 'eu', providers: [{ name: 'aws2', kind: 'aws', prices: { vcpuHourUsd: 0.03, memoryGiBHourUsd: 0.003 } }] }),
    parseFleetCommand({
      kind: 'set-policy',
      version: 1,
      policies: [{ name: 'residency', rules: [{ name: 'bursts-stay-in-eu', selector: { labels: { 'data-class': 'personal' }, operations: ['burst'] }, condition: "region.jurisdiction == 'eu'", effect: 'deny', message: 'personal data bursts only into EU regions' }] }],
    }),
    parseFleetCommand({ kind: 'set-budget', budget: { name: 'eu2-cap', limitUsd: 10, scope: 'region=aws-eu2', hard: true } }),
    parseFleetCommand({ kind: 'budget-spent', name: 'eu2-cap', month: '2026-12' }),
    parseFleetCommand({ kind: 'set-burst-group', group: SIM_GROUP }),
  ];
  for (let i = 1; i <= SIM_GROUP.min; i++) {
    const name = `web-h${i}`;
    commands.push(parseFleetCommand({ kind: 'create', spec: replicaSpec(SIM_GROUP, 'home', name) }), parseFleetCommand({ kind: 'assign', vm: name, region: 'dc1', provider: 'local', generation: 1 }));
  }
  for (const c of commands) {
    const r = m.apply(c);
    if (!r.ok) throw new Error(`sim fleet: ${c.kind}: ${r.message}`);
  }
  return m;
}

/** Demand on the group in vCPUs at tick i (before burst replicas take their share), and memory pressure 0..1. */
function loadAt(kind: LoadKind, i: number, prng: Prng, state: { level: number }): { demand: number; memory: number; queued: number } {
  switch (kind) {
    case 'step': {
      // Low, a long high step, low again: bursts then a paced scale-in.
      const high = i >= 20 && i < 120;
      return { demand: high ? 20 : 3, memory: 0.5, queued: 0 };
    }
    case 'sawtooth': {
      // Ramps from idle to 2.5× home over 40 ticks, then drops at once: the shape that makes naive autoscalers flap.
      const phase = i % 40;
      return { demand: (phase / 40) * 2.5 * HOME_VCPUS, memory: 0.3 + (phase / 40) * 0.65, queued: 0 };
    }
    case 'noisy': {
      // A random walk with spikes and occasional queue bursts.
      state.level = Math.min(2.5 * HOME_VCPUS, Math.max(0, state.level + (prng.next() - 0.5) * 4));
      const spike = prng.chance(0.05) ? prng.next() * HOME_VCPUS : 0;
      const queued = prng.chance(0.03) ? 150 : 0;
      return { demand: state.level + spike, memory: Math.min(1, 0.4 + prng.next() * 0.55), queued };
    }
  }
}

export function runBurstSim(o: BurstSimOptions): BurstSimResult {
  const prng = new Prng(o.seed);
  const fleet = simFleet();
  const t = o.thresholds;
  const coreT = o.coreThresholds ?? t;
  const scheduler = o.scheduler ?? DEFAULT_SCHEDULER_OPTIONS;
  let core: BurstCoreState = EMPTY_BURST_STATE;
  const decisions: BurstDecision[] = [];
  const violations: string[] = [];
  const placements: string[] = [];
  const walk = { level: 4 };
  let maxBurst = 0;
  // The checker's own record: run starts per trigger, last decisions, when a scale-out became due.
  let cpuRun: number | null = null;
  let memRun: number | null = null;
  let lastOut: number | null = null;
  let lastIn: number | null = null;
  let dueSince: number | null = null;
  for (let i = 0; i < o.ticks; i++) {
    const now = 1_000_000 + i * o.tickMs;
    const replicas = groupReplicas(fleet, SIM_GROUP.name);
    const burstCount = replicas.burst.length;
    const load = loadAt(o.load, i, prng, walk);
    const cpu = Math.min(1, Math.max(0, load.demand - burstCount * REPLICA_VCPUS) / HOME_VCPUS);
    const memory = Math.max(0, load.memory - burstCount * 0.05);
    const result = evaluateBurst(
      core,
      { nowMs: now, samples: new Map([['dc1', { atMs: now, cpu, memory }]]), groups: [{ name: SIM_GROUP.name, home: SIM_GROUP.home, min: SIM_GROUP.min, max: SIM_GROUP.max, burst: replicas.burst.map((b) => b.vm.name), queued: load.queued }] },
      coreT,
    );
    core = result.state;

    // Checker: is a scale-out due on this tick by the rule, independently of the core?
    cpuRun = cpu > t.scaleOut.cpuAbove ? (cpuRun ?? now) : null;
    memRun = memory > t.scaleOut.memoryAbove ? (memRun ?? now) : null;
    const from = (run: number | null): number | null => (run === null ? null : Math.max(run, lastOut ?? run));
    const cpuFrom = from(cpuRun);
    const memFrom = from(memRun);
    const triggered = (cpuFrom !== null && now - cpuFrom >= t.scaleOut.cpuForMs) || (memFrom !== null && now - memFrom >= t.scaleOut.memoryForMs) || load.queued > t.scaleOut.queueAbove;
    const eligible = triggered && burstCount < SIM_GROUP.max - SIM_GROUP.min && (lastIn === null || now - lastIn >= t.cooldownMs);
    dueSince = eligible ? (dueSince ?? now) : null;

    let out = false;
    for (const d of result.decisions) {
      decisions.push(d);
      if (d.kind === 'scale-out') {
        out = true;
        if (lastIn !== null && now - lastIn < t.cooldownMs) violations.push(`oscillation: scale-out at ${now} only ${now - lastIn} ms after the scale-in at ${lastIn} (cooldown ${t.cooldownMs} ms)`);
        lastOut = now;
        for (let k = 0; k < d.count; k++) {
          const name = burstReplicaName(SIM_GROUP.name, groupReplicas(fleet, SIM_GROUP.name).nextSeq);
          const spec = replicaSpec(SIM_GROUP, 'burst', name);
          const plan = planCreate(startScheduling(o.burstOperation === false ? { spec, power: 'running' } : { spec, power: 'running', operation: 'burst' }), fleet, {}, scheduler);
          if (plan.kind !== 'propose') continue;
          for (const c of plan.commands) fleet.apply(c);
          const vm = fleet.vm(name);
          if (vm?.assignment == null) continue;
          const region = fleet.region(vm.assignment.region);
          const provider = region?.providers.find((p) => p.name === vm.assignment?.provider);
          if (region === undefined || provider === undefined) continue;
          placements.push(`${region.name}/${provider.name}`);
          const verdict = fleet.policy.evaluator.evaluate({ vm: policyVmOf(vm.spec), region: policyRegionOf(region, provider), cost: hourlyUsd(vm.spec, provider.prices), operation: 'burst' });
          if (!verdict.allowed) violations.push(`policy: burst replica ${name} placed on ${region.name}/${provider.name}, which the policy denies for bursts`);
          const spent = hardBudgetDenial(fleet.budgets(), 'burst', { region: region.name, provider: provider.name, labels: vm.spec.labels });
          if (spent !== null) violations.push(`budget: burst replica ${name} placed on ${region.name}/${provider.name}: ${spent}`);
          if (region.name === SIM_GROUP.home) violations.push(`placement: burst replica ${name} placed at home`);
        }
      } else {
        if (lastOut !== null && now - lastOut < t.cooldownMs) violations.push(`oscillation: scale-in at ${now} only ${now - lastOut} ms after the scale-out at ${lastOut} (cooldown ${t.cooldownMs} ms)`);
        lastIn = now;
        const newest = replicas.burst.slice(-d.vms.length).map((b) => b.vm.name).reverse();
        if (JSON.stringify(newest) !== JSON.stringify(d.vms)) violations.push(`scale-in at ${now} removes ${d.vms.join(',')}, not the newest ${newest.join(',')}`);
        for (const vm of d.vms) {
          fleet.apply(parseFleetCommand({ kind: 'delete', vm }));
          fleet.apply(parseFleetCommand({ kind: 'purge', vm }));
        }
      }
    }
    if (out) dueSince = null;
    else if (dueSince !== null && now - dueSince >= o.tickMs) {
      violations.push(`latency: a scale-out was due at ${dueSince} (trigger window held, room, cooldown passed) and none came by ${now}`);
      dueSince = null;
    }
    const after = groupReplicas(fleet, SIM_GROUP.name).burst.length;
    if (after > SIM_GROUP.max - SIM_GROUP.min) violations.push(`bounds: ${after} burst replicas, above max − min = ${SIM_GROUP.max - SIM_GROUP.min}`);
    maxBurst = Math.max(maxBurst, after);
  }
  return { decisions, violations, maxBurst, placements };
}
