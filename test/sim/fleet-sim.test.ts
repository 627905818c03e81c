/**
 * The fleet's deterministic simulation (test/sim/fleet-harness.ts: the
 * scheduler, the fleet state machine, the reconciler and the migration
 * coordinator cores against simulated providers and transfers, with crashes
 * (some right at migration steps), partitions, provider failures, lost
 * proposals and operators reassigning, migrating and cancelling) over a few
 * hundred small seeds (3 to 7 regions, 20 to 60 VMs each). FLEET_SIM_SEEDS runs more; `npm run soak -- fleet`
 * runs the large fleet (200 regions × 5 000 VMs). A failing seed reports
 * itself and its replay command. The last test checks that the runs
 * exercised what they claim to, so the simulator cannot go quietly toothless.
 */
import { describe, expect, it } from 'vitest';
import { reconcile, type ReconcileInput } from '../../src/fleet/reconciler.ts';
import { coordinate, type CoordinatorInput } from '../../src/migration/coordinator.ts';
import { DEFAULT_DR_OPTIONS, stepDr, type DrInput } from '../../src/dr/controller.ts';
import { FleetSimFailure, FleetSimulation, fleetScenarioForSeed, runFleetSeed, type FleetScenario, type FleetSimReport } from './fleet-harness.ts';

/** Runs seeds with a broken core until one fails; returns the failure's message. */
function firstFailure(broken: typeof reconcile | Pick<FleetScenario, 'reconcile' | 'coordinate'>, seeds: readonly number[] = Array.from({ length: 100 }, (_, i) => i + 1), adjust: (s: FleetScenario) => FleetScenario = (s) => s): string {
  const swap = typeof broken === 'function' ? { reconcile: broken } : broken;
  for (const seed of seeds) {
    try {
      new FleetSimulation(adjust({ ...fleetScenarioForSeed(seed), ...swap })).run();
    } catch (error) {
      if (error instanceof FleetSimFailure) return error.message;
      throw error;
    }
  }
  return 'no seed failed';
}

const SEEDS = Number(process.env['FLEET_SIM_SEEDS'] ?? 300);
const reports: FleetSimReport[] = [];

describe('fleet deterministic simulation', () => {
  it(`runs ${SEEDS} seeds with every invariant holding`, () => {
    // One test for all seeds: a few hundred tiny tests cost more in vitest's bookkeeping than the runs themselves.
    for (let seed = 1; seed <= SEEDS; seed++) reports.push(runFleetSeed(seed));
    // No waits inside: the bound is for a loaded machine (about 20 s on an idle one, half of it the DR seeds with their longer quiet phase).
  }, 180_000);

  it('replays a seed exactly', () => {
    const a = new FleetSimulation(fleetScenarioForSeed(7)).run();
    expect(new FleetSimulation(fleetScenarioForSeed(7)).run()).toEqual(a);
    expect(new FleetSimulation(fleetScenarioForSeed(8)).run()).not.toEqual(a);
  });

  it('catches a reconciler that leaves stale copies running, one that creates before fencing, one that skips the lease handoff, and one that never gives up', () => {
    const noFencing = (input: ReconcileInput) => {
      const result = reconcile(input);
      return { ...result, actions: result.actions.filter((a) => !(a.kind === 'stop' && a.fence === 'reassigned')) };
    };
    // Caught running beside the new copy, or (a live migration's paused source, which does not count as running) left behind once reconciled.
    expect(firstFailure(noFencing)).toMatch(/invariant 3: \S+ runs 2 copies; .* without fencing it|invariant 4: \S+ still holds a stale copy .*, running\) once reconciled/);
    const createsAtOnce = (input: ReconcileInput) =>
      // Shows stale running copies as stopped: the reconciler terminates them and creates the new copy in the same pass.
      reconcile({ ...input, observed: input.observed.map((c) => (c.state === 'running' && input.desired.vm(c.vmName ?? '')?.assignment?.generation !== c.generation ? { ...c, state: 'stopped' as const } : c)) });
    expect(firstFailure(createsAtOnce)).toMatch(/invariant 3: \S+ creates \S+ g\d+ while its stale copy .* is (running|stopping)/);
    const noHandoff = (input: ReconcileInput) => {
      const lease = input.options?.lease;
      return reconcile(lease === undefined || input.options === undefined ? input : { ...input, options: { ...input.options, lease: { ...lease, handoffMs: 0 } } });
    };
    expect(firstFailure(noHandoff)).toMatch(/invariant 3: .* with a lease the new copy must not run before the old one is fenced/);
    const neverFails = (input: ReconcileInput) => reconcile({ ...input, options: { maxAttempts: 1_000_000, backoffBaseMs: 60_000, backoffCapMs: 600_000 } });
    expect(firstFailure(neverFails)).toMatch(/invariant 4: .* is not reported failed/);
  });

  it('catches a coordinator that resumes a live source before the target is down, one that cuts over with the source running, and a reconciler that restarts a migrating source', () => {
    const impatient = (input: CoordinatorInput) => {
      const result = coordinate({ ...input, memory: { ...input.memory, targetMayRun: false } });
      return { ...result, memory: { ...result.memory, targetMayRun: false } };
    };
    expect(firstFailure({ coordinate: impatient })).toMatch(/invariant 5: \S+ runs both copies of m\d+ \(live; now rolling-back\)/);
    const blind = (input: CoordinatorInput) => coordinate({ ...input, observed: { ...input.observed, source: input.observed.source === 'absent' ? 'absent' : { state: 'stopped', paused: false } } });
    expect(firstFailure({ coordinate: blind })).toMatch(/invariant 5: \S+ runs both copies of m\d+/);
    const grabby = (input: ReconcileInput) =>
      reconcile({
        ...input,
        desired: {
          vm: (name) => input.desired.vm(name),
          vmsAssignedTo: (region) => input.desired.vmsAssignedTo(region),
          migrationsInto: (region) => input.desired.migrationsInto(region),
          // The source forgets its VM migrates: it restarts the copy the coordinator stopped.
          migrationOf: (vm) => {
            const m = input.desired.migrationOf(vm);
            return m?.source.region === input.region ? undefined : m;
          },
        },
      });
    expect(firstFailure({ reconcile: grabby })).toMatch(/invariant 5: /);
  });

  it('catches a DR core that fails over after 2 missed checks, one that fails back inside the window, one that never fails over, a reconciler that does not fence itself when cut off, and one that starts a failed-over copy at once', () => {
    const drSeeds = Array.from({ length: 100 }, (_, i) => 3 * (i + 1));
    const withCore = (core: typeof stepDr) => (sc: FleetScenario): FleetScenario => (sc.dr === null ? sc : { ...sc, dr: { ...sc.dr, controller: core } });
    const hasty = (input: DrInput) => stepDr({ ...input, options: { ...(input.options ?? DEFAULT_DR_OPTIONS), failAfterChecks: 2 } });
    expect(firstFailure({}, drSeeds, withCore(hasty))).toMatch(/invariant DR-2: \S+ proposes to fail \S+ over from \S+ after its checks \[(ok|cut-off), failed, failed\]|invariant DR-2: .* only cut off for a blip/);
    const impatient = (input: DrInput) => stepDr({ ...input, options: { ...(input.options ?? DEFAULT_DR_OPTIONS), stabilisationMs: 1_000 } });
    expect(firstFailure({}, drSeeds, withCore(impatient))).toMatch(/invariant DR-4: \S+ fails \S+ back to \S+ after its checks \[.*(failed|cut-off)/);
    const idle = (input: DrInput) => ({ ...stepDr(input), effects: [] });
    expect(firstFailure({}, drSeeds, withCore(idle))).toMatch(/invariant DR-3: \S+ at \S+ g\d+ \(lost since \d+ ms\) is not failed over/);
    const noSelfFence = (input: ReconcileInput) => reconcile(input.options?.dr === undefined ? input : { ...input, options: { ...input.options, dr: { ...input.options.dr, fenceAfterMs: 1e9 } } });
    expect(firstFailure(noSelfFence, drSeeds.filter((seed) => seed % 2 !== 0))).toMatch(/invariant 3: \S+ runs 2 copies/);
    const noHold = (input: ReconcileInput) => reconcile(input.options?.dr === undefined ? input : { ...input, options: { ...input.options, dr: { ...input.options.dr, fenceHoldMs: 0 } } });
    expect(firstFailure(noHold, drSeeds.filter((seed) => seed % 2 !== 0))).toMatch(/invariant 3: \S+ runs 2 copies/);
  }, 120_000);

  it('names the seed and the replay command when a run fails', () => {
    const failure = new FleetSimFailure(42, 'small', 1234, 'two running copies');
    expect(failure.message).toContain('fleet simulation seed 42 (small) failed at 1234 ms: two running copies');
    expect(failure.message).toContain('FLEET_SIM_SIZE=small npm run soak -- fleet --from 42 --seeds 1 --trace');
  });

  it('the runs exercised races, re-plans, fencing, crashes, partitions, provider failures and orphans', () => {
    expect(reports).toHaveLength(SEEDS);
    const sum = (pick: (r: FleetSimReport) => number): number => reports.reduce((total, r) => total + pick(r), 0);
    expect(sum((r) => r.placed)).toBeGreaterThan(20 * SEEDS);
    expect(sum((r) => r.replans)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.schedulingFailed)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.reassigns)).toBeGreaterThan(2 * SEEDS);
    expect(sum((r) => r.fences)).toBeGreaterThan(5 * SEEDS);
    expect(sum((r) => r.excusedDoubleRuns)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.crashes)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.partitions)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.providerErrors)).toBeGreaterThan(3 * SEEDS);
    expect(sum((r) => r.failedVms)).toBeGreaterThan(SEEDS / 10);
    expect(sum((r) => r.hostFailures)).toBeGreaterThan(SEEDS);
    expect(reports.filter((r) => r.lease).length).toBe(Math.floor(SEEDS / 2));
    expect(sum((r) => (r.lease ? r.watchdogStops : 0))).toBeGreaterThan(SEEDS / 10);
    // Without a lease a cut-off region's stale copy runs beside the new one for a while; with one, never.
    expect(sum((r) => (r.lease ? 0 : r.excusedDoubleRuns))).toBeGreaterThan(SEEDS / 2);
    expect(Math.max(...reports.filter((r) => !r.lease).map((r) => r.longestDoubleRunMs))).toBeGreaterThan(5_000);
    expect(sum((r) => r.deleted)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.refusals)).toBeGreaterThan(SEEDS);
    for (const r of reports) expect(r.orphanReports).toBeGreaterThan(0);
    expect(sum((r) => r.running)).toBeGreaterThan(15 * SEEDS);
  });

  it('the DR seeds exercised protection, region failures, failovers and failbacks, blips, flapping, self-fencing, lease watchdogs and the hold', () => {
    const dr = reports.flatMap((r) => (r.dr === null ? [] : [r.dr]));
    expect(dr.length).toBe(Math.floor(SEEDS / 3));
    const sum = (pick: (r: NonNullable<FleetSimReport['dr']>) => number): number => dr.reduce((total, r) => total + pick(r), 0);
    expect(sum((r) => r.protected)).toBeGreaterThan(10 * dr.length);
    expect(sum((r) => r.outages)).toBeGreaterThan(dr.length / 2);
    expect(sum((r) => r.blips)).toBeGreaterThan(dr.length / 2);
    expect(sum((r) => r.flaps)).toBeGreaterThan(dr.length / 10);
    expect(sum((r) => r.regionFailures)).toBeGreaterThan(dr.length);
    expect(sum((r) => r.failovers)).toBeGreaterThan(2 * dr.length);
    expect(sum((r) => r.recovered)).toBeGreaterThan(dr.length);
    expect(sum((r) => r.failbacksStarted)).toBeGreaterThan(dr.length);
    expect(sum((r) => r.failbacksCompleted)).toBeGreaterThan(dr.length);
    expect(sum((r) => r.selfFences)).toBeGreaterThan(dr.length / 2);
    expect(sum((r) => r.watchdogStops)).toBeGreaterThan(dr.length / 2);
    expect(sum((r) => r.holds)).toBeGreaterThan(dr.length / 2);
  });

  it('the runs exercised migrations of every mode and result, cancels, lost proposals, failed transfers, targets that refused (their incoming copy could not be created), live rollbacks that waited for the target, and crashes of both sides at every step', () => {
    const sum = (pick: (r: FleetSimReport) => number): number => reports.reduce((total, r) => total + pick(r), 0);
    expect(sum((r) => r.migrations.started)).toBeGreaterThan(2 * SEEDS);
    expect(sum((r) => r.migrations.completed)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.migrations.rolledBack)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.migrations.failed)).toBeGreaterThan(SEEDS / 10);
    expect(sum((r) => r.migrations.live)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.migrations.liveCompletions)).toBeGreaterThan(SEEDS / 5);
    expect(sum((r) => r.migrations.targetWaits)).toBeGreaterThan(SEEDS / 20);
    expect(sum((r) => r.migrations.cancels)).toBeGreaterThan(SEEDS / 5);
    expect(sum((r) => r.migrations.lostProposals)).toBeGreaterThan(SEEDS / 5);
    expect(sum((r) => r.migrations.transferFailures)).toBeGreaterThan(SEEDS / 10);
    // Targets whose incoming creates kept failing refused their migrations (the provider's injected failures).
    expect(sum((r) => r.migrations.refusedByTarget)).toBeGreaterThan(0);
    const crashes = new Map<string, number>();
    for (const r of reports) for (const [key, n] of Object.entries(r.migrationCrashes)) crashes.set(key, (crashes.get(key) ?? 0) + n);
    for (const phase of ['prepare', 'transfer', 'cutover', 'verify', 'cleanup', 'rolling-back', 'live-completed']) {
      for (const side of ['source', 'target']) expect(crashes.get(`${phase}:${side}`) ?? 0, `crashes of the ${side} at ${phase}`).toBeGreaterThan(0);
    }
  });
});
