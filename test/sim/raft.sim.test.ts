/**
 * The deterministic Raft simulation over a few hundred seeds (3- and 5-node
 * clusters alternate). A failing seed reports itself and how to replay it;
 * the soak (`npm run soak -- raft`) runs thousands. The last test checks the
 * runs actually exercised what they claim to, so the simulator cannot go
 * quietly toothless.
 */
import { describe, expect, it } from 'vitest';
import type { SimReport } from './cluster.ts';
import { RaftSimulation, SimFailure, scenarioForSeed } from './cluster.ts';

const SEEDS = Number(process.env['RAFT_SIM_SEEDS'] ?? 300);
const reports: SimReport[] = [];

describe('raft deterministic simulation', () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}`, () => {
      reports.push(new RaftSimulation(scenarioForSeed(seed)).run());
    });
  }

  it('replays a seed exactly', () => {
    const a = new RaftSimulation(scenarioForSeed(8)).run();
    const b = new RaftSimulation(scenarioForSeed(8)).run();
    expect(b).toEqual(a);
    expect(new RaftSimulation(scenarioForSeed(10)).run()).not.toEqual(a);
  });

  it('names the seed and the replay command when a run fails', () => {
    const failure = new SimFailure(42, 1234, 'log matching: ...');
    expect(failure.message).toContain('seed 42 failed at 1234 ms: log matching');
    expect(failure.message).toContain('npm run soak -- raft --from 42 --seeds 1');
  });

  it('the runs exercised crashes, elections, snapshots, membership changes, transfers, unknown outcomes and pipelined writes', () => {
    expect(reports).toHaveLength(SEEDS);
    const total = (field: keyof SimReport): number => reports.reduce((sum, r) => sum + Number(r[field]), 0);
    expect(total('crashes')).toBeGreaterThan(SEEDS);
    expect(total('leaderTerms')).toBeGreaterThan(3 * SEEDS);
    expect(total('snapshotsInstalled')).toBeGreaterThan(SEEDS);
    expect(total('configChanges')).toBeGreaterThan(SEEDS / 2);
    expect(total('transfers')).toBeGreaterThan(SEEDS / 2);
    expect(total('unknown')).toBeGreaterThan(0);
    // Asynchronous storage: later Readys overtook writes still under way, and acks/votes waited for them.
    expect(total('pipelinedReadys')).toBeGreaterThan(100 * SEEDS);
    expect(total('heldMessages')).toBeGreaterThan(100 * SEEDS);
    expect(total('heldReadys')).toBeGreaterThan(10 * SEEDS);
    expect(Math.max(...reports.map((r) => r.maxQueuedWrites))).toBeGreaterThan(5);
    expect(total('puts')).toBeGreaterThan(100 * SEEDS);
    expect(total('gets')).toBeGreaterThan(100 * SEEDS);
    expect(Math.max(...reports.map((r) => r.livenessMs))).toBeLessThan(3000);
  });
});
