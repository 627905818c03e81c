/**
 * BurstDriver: runs the burst core (core.ts) for the burst groups whose home
 * is this node's region, every `evaluateIntervalMs`, and carries its
 * decisions out through the fleet's normal paths:
 * - home replicas: created (unassigned) when missing, then assigned home by
 *   the scheduler when home has room; while it has none they stay queued;
 * - scale-out: each new burst replica is scheduled with operation `burst`
 *   (placement picks the cloud: cost-aware, policy-checked, hard budgets
 *   respected; the log re-checks it);
 * - scale-in: the newest burst replicas are deleted; their regions'
 *   reconcilers terminate them and purge the records.
 *
 * Invariants:
 * - Only the home region's node drives a group (the group names its home;
 *   every other node skips it), so two nodes never decide for one group.
 * - Ticks never overlap (a PassLoop runs them); a failed tick (no sample, a log refusal, no cloud
 *   fit) is logged and counted and the next tick starts from the log again:
 *   the log, not this driver's memory, says which replicas exist.
 * - The core's memory (windows, last decisions) is this process's: after a
 *   restart the windows start over (a burst comes one window later than it
 *   might have, never sooner) and the cooldown counts from the restart.
 */
import type { Logger } from '../log.ts';
import { PassLoop } from '../driver/pass-loop.ts';
import type { FleetCommandInput, FleetResult, PowerState } from '../fleet/commands.ts';
import type { ScheduleOutcome } from '../fleet/fleet-scheduler.ts';
import type { FleetVmSpec } from '../fleet/spec.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import type { BurstSettings } from './config.ts';
import { EMPTY_BURST_STATE, evaluateBurst, type BurstCoreState, type BurstDecision, type GroupInput } from './core.ts';
import { burstReplicaName, groupReplicas, homeReplicaName, normaliseBurstGroup, replicaSpec, type BurstGroupSpec } from './group.ts';
import { canonicalJson } from '../fleet/commands.ts';
import type { BurstMetrics } from './metrics.ts';
import type { BurstGroupStatus } from './status.ts';
import type { RegionSample } from './windows.ts';

export interface BurstDriverOptions {
  /** This node's fleet region (its node name). */
  readonly region: string;
  readonly settings: BurstSettings;
  readonly state: () => FleetState;
  /** This region's load now (home-load.ts), or null when nothing reports. */
  readonly sample: () => Promise<RegionSample | null>;
  /** The scheduler (seat.create): places a VM, with operation burst for burst replicas. */
  readonly schedule: (spec: FleetVmSpec, power: PowerState, timeoutMs: number, operation?: 'burst') => Promise<ScheduleOutcome>;
  readonly commit: (command: FleetCommandInput, timeoutMs: number) => Promise<FleetResult>;
  readonly commitTimeoutMs: number;
  readonly metrics: BurstMetrics;
  readonly log: Logger;
  readonly now?: () => number;
}

interface Outcome {
  readonly decision: BurstDecision;
  readonly vms: readonly string[];
  readonly outcome: string;
}

export class BurstDriver {
  readonly #o: BurstDriverOptions;
  readonly #now: () => number;
  #core: BurstCoreState = EMPTY_BURST_STATE;
  readonly #last = new Map<string, Outcome>();
  readonly #loop: PassLoop;
  #stopped = false;
  #driven = new Set<string>();

  constructor(options: BurstDriverOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#loop = new PassLoop({
      pass: () => this.#tick(),
      intervalMs: options.settings.evaluateIntervalMs,
      onError: (err) => options.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'burst evaluation failed; retrying on the next tick'),
    });
  }

  /** Proposes the configured groups the log does not hold as configured (once the log answers), then ticks. */
  start(ready: () => Promise<void>): void {
    this.#loop.start();
    void ready()
      .then(() => this.#seed())
      .catch((err: unknown) => this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'burst groups from the config not proposed'));
  }

  async #seed(): Promise<void> {
    for (const g of this.#o.settings.groups) {
      if (this.#stopped) return;
      const held = this.#o.state().burstGroups().find((x) => x.name === g.name);
      if (held !== undefined && canonicalJson(held) === canonicalJson(normaliseBurstGroup(g))) continue;
      const result = await this.#o.commit({ kind: 'set-burst-group', group: g }, this.#o.commitTimeoutMs);
      if (result.ok) this.#o.log.info({ group: g.name, home: g.home, min: g.min, max: g.max }, 'burst group from the config set in the federation log');
      else this.#o.log.warn({ group: g.name, code: result.code, reason: result.message }, 'burst group from the config refused by the federation log');
    }
    this.#loop.kick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop.stop();
  }

  #groups(): BurstGroupSpec[] {
    return this.#o.state().burstGroups().filter((g) => g.home === this.#o.region);
  }

  async #tick(): Promise<void> {
    const groups = this.#groups();
    this.#forget(groups);
    if (groups.length === 0) return;
    for (const g of groups) await this.#keepHome(g);
    const sample = await this.#o.sample();
    const state = this.#o.state();
    const inputs: GroupInput[] = groups.map((g) => {
      const r = groupReplicas(state, g.name);
      return { name: g.name, home: g.home, min: g.min, max: g.max, burst: r.burst.map((b) => b.vm.name), queued: r.queued.length };
    });
    const now = this.#now();
    const result = evaluateBurst(this.#core, { nowMs: now, samples: new Map([[this.#o.region, sample]]), groups: inputs }, this.#o.settings);
    this.#core = result.state;
    for (const d of result.decisions) {
      const g = groups.find((x) => x.name === d.group);
      if (g !== undefined) await this.#carryOut(g, d);
    }
    this.#gauges(groups);
  }

  /** Home replicas 1..min exist; queued ones are offered to the scheduler in order until home has no room. */
  async #keepHome(g: BurstGroupSpec): Promise<void> {
    const timeout = this.#o.commitTimeoutMs;
    for (let i = 1; i <= g.min; i++) {
      const name = homeReplicaName(g.name, i);
      const vm = this.#o.state().vm(name);
      if (vm !== undefined && !vm.deleted) continue;
      const result = await this.#o.commit({ kind: 'create', spec: replicaSpec(g, 'home', name), power: 'running' }, timeout);
      if (!result.ok) this.#o.log.warn({ group: g.name, vm: name, code: result.code }, `burst group home replica not created: ${result.message}`);
    }
    for (const vm of groupReplicas(this.#o.state(), g.name).queued) {
      const outcome = await this.#o.schedule(vm.spec, vm.power, this.#o.settings.placeTimeoutMs);
      if (!outcome.ok) break;
      this.#o.log.info({ group: g.name, vm: vm.name, region: outcome.region }, 'burst group home replica placed');
    }
  }

  async #carryOut(g: BurstGroupSpec, d: BurstDecision): Promise<void> {
    const done: string[] = [];
    const failures: string[] = [];
    if (d.kind === 'scale-out') {
      let seq = groupReplicas(this.#o.state(), g.name).nextSeq;
      for (let k = 0; k < d.count; k++, seq++) {
        const name = burstReplicaName(g.name, seq);
        const outcome = await this.#o.schedule(replicaSpec(g, 'burst', name), 'running', this.#o.settings.placeTimeoutMs, 'burst');
        if (outcome.ok) done.push(`${name}@${outcome.region}/${outcome.provider}`);
        else failures.push(`${name}: ${outcome.code}: ${outcome.reasons.at(-1) ?? ''}`);
      }
    } else {
      for (const vm of d.vms) {
        const result = await this.#o.commit({ kind: 'delete', vm }, this.#o.commitTimeoutMs);
        if (result.ok) done.push(vm);
        else failures.push(`${vm}: ${result.code}: ${result.message}`);
      }
    }
    const outcome = failures.length === 0 ? 'ok' : failures.join('; ');
    this.#last.set(g.name, { decision: d, vms: done, outcome });
    this.#o.metrics.decisions.inc({ group: g.name, decision: d.kind, result: failures.length === 0 ? 'ok' : 'failed' });
    const fields = { group: g.name, decision: d.kind, decidedAtMs: d.atMs, reason: d.reason, vms: done, ...(failures.length > 0 ? { failures } : {}) };
    if (failures.length === 0) this.#o.log.info(fields, `burst ${d.kind}: ${d.reason}`);
    else this.#o.log.warn(fields, `burst ${d.kind} not carried out in full: ${outcome}`);
  }

  #gauges(groups: readonly BurstGroupSpec[]): void {
    const state = this.#o.state();
    for (const g of groups) {
      const r = groupReplicas(state, g.name);
      this.#o.metrics.replicas.set({ group: g.name, role: 'home' }, r.home.length);
      this.#o.metrics.replicas.set({ group: g.name, role: 'queued' }, r.queued.length);
      this.#o.metrics.replicas.set({ group: g.name, role: 'burst' }, r.burst.length);
    }
  }

  /** Groups no longer driven here (deleted, or their home changed) lose their series and memory. */
  #forget(groups: readonly BurstGroupSpec[]): void {
    const now = new Set(groups.map((g) => g.name));
    for (const name of this.#driven) {
      if (now.has(name)) continue;
      for (const role of ['home', 'queued', 'burst']) this.#o.metrics.replicas.remove({ group: name, role });
      this.#last.delete(name);
    }
    this.#driven = now;
  }

  /** Every group in the log; windows and decisions for those driven here. */
  status(): BurstGroupStatus[] {
    const state = this.#o.state();
    return state.burstGroups().map((g) => {
      const r = groupReplicas(state, g.name);
      const here = g.home === this.#o.region;
      const w = here ? this.#core.regions.get(g.home) : undefined;
      const memory = here ? this.#core.groups.get(g.name) : undefined;
      const last = this.#last.get(g.name);
      return {
        name: g.name,
        home: g.home,
        min: g.min,
        max: g.max,
        drivenBy: g.home,
        drivenHere: here,
        state: r.burst.length > 0 ? 'burst' : r.queued.length > 0 ? 'queued' : 'steady',
        replicas: { home: r.home.length, queued: r.queued.length, burst: r.burst.length, burstNames: r.burst.map((b) => b.vm.name) },
        windows: w === undefined ? null : { sample: w.last, cpuHighSince: w.cpuHighSince, memoryHighSince: w.memoryHighSince, quietSince: w.quietSince, queue: w.queue },
        last: last === undefined ? null : { kind: last.decision.kind, atMs: last.decision.atMs, reason: last.decision.reason, vms: [...last.vms], outcome: last.outcome },
        holding: memory?.holding ?? null,
      };
    });
  }
}
