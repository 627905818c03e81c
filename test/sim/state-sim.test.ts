/**
 * The deterministic simulation of the geo-distributed store over a couple of
 * hundred seeds (3 and 5 regions alternate; every fifth seed pushes each
 * message through the wire encoding). STATE_SIM_SEEDS runs more, and
 * `npm run soak -- state` thousands; a failing seed reports itself and how to
 * replay it. The last test checks the runs exercised what they claim to
 * (partitions, crashes, failed quorums, deltas that arrived early, rounds cut
 * short by their byte budget, expired entries collected), so the simulator
 * cannot go quietly toothless.
 */
import { describe, expect, it } from 'vitest';
import { CONVERGENCE_BOUND_MS, StateSimFailure, StateSimulation, stateScenarioForSeed, type StateSimReport } from './state-cluster.ts';

const SEEDS = Number(process.env['STATE_SIM_SEEDS'] ?? 200);
const reports: StateSimReport[] = [];

describe('geo state deterministic simulation', () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}`, () => {
      reports.push(new StateSimulation(stateScenarioForSeed(seed)).run());
    });
  }

  it('replays a seed exactly', () => {
    const a = new StateSimulation(stateScenarioForSeed(6)).run();
    const b = new StateSimulation(stateScenarioForSeed(6)).run();
    expect(b).toEqual(a);
    expect(new StateSimulation(stateScenarioForSeed(8)).run()).not.toEqual(a);
  });

  it('names the seed and the replay command when a run fails', () => {
    const failure = new StateSimFailure(42, 1234, 'regions did not converge');
    expect(failure.message).toContain('state simulation seed 42 failed at 1234 ms: regions did not converge');
    expect(failure.message).toContain('npm run soak -- state --from 42 --seeds 1');
  });

  it('the runs exercised partitions, crashes, failed quorums, early deltas, cut-short rounds and expiry', () => {
    expect(reports).toHaveLength(SEEDS);
    const sum = (pick: (r: StateSimReport) => number): number => reports.reduce((total, r) => total + pick(r), 0);
    expect(sum((r) => r.partitions)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.crashes)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.quorumFailures)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.quorumReadsChecked)).toBeGreaterThan(10 * SEEDS);
    expect(sum((r) => r.behind)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.truncatedRounds)).toBeGreaterThan(SEEDS / 4);
    expect(sum((r) => r.gcDropped)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.acked)).toBeGreaterThan(50 * SEEDS);
    expect(sum((r) => r.invariantChecks)).toBeGreaterThan(50 * SEEDS);
    for (const level of ['quorum', 'local', 'eventual'] as const) expect(sum((r) => r.writes[level])).toBeGreaterThan(20 * SEEDS);
    expect(reports.filter((r) => r.wire).length).toBeGreaterThan(SEEDS / 10);
    expect(reports.some((r) => r.regions === 5) && reports.some((r) => r.regions === 3)).toBe(true);
    for (const r of reports) expect(r.convergenceMs).toBeLessThanOrEqual(CONVERGENCE_BOUND_MS);
  });
});
