/**
 * The deterministic Byzantine PBFT simulation over a couple of hundred seeds
 * (4 replicas, every eighth seed 7; mostly f Byzantine members, every fifth
 * seed fewer). PBFT_SIM_SEEDS runs more; a failing seed reports itself and
 * how to replay it. The last test checks the runs actually exercised what
 * they claim to (every Byzantine behaviour, view changes, state transfers,
 * restarts, full buffers), so the simulator cannot go quietly toothless.
 */
import { describe, expect, it } from 'vitest';
import { BEHAVIOURS } from './pbft-byzantine.ts';
import type { PbftSimReport } from './pbft-cluster.ts';
import { PbftSimFailure, PbftSimulation, pbftScenarioForSeed } from './pbft-cluster.ts';

const SEEDS = Number(process.env['PBFT_SIM_SEEDS'] ?? 200);
const reports: PbftSimReport[] = [];

describe('pbft Byzantine deterministic simulation', () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}`, () => {
      reports.push(new PbftSimulation(pbftScenarioForSeed(seed)).run());
    });
  }

  it('replays a seed exactly', () => {
    const a = new PbftSimulation(pbftScenarioForSeed(7)).run();
    const b = new PbftSimulation(pbftScenarioForSeed(7)).run();
    expect(b).toEqual(a);
    expect(new PbftSimulation(pbftScenarioForSeed(9)).run()).not.toEqual(a);
  });

  it('names the seed and the replay command when a run fails', () => {
    const failure = new PbftSimFailure(42, 1234, 'agreement: ...');
    expect(failure.message).toContain('pbft simulation seed 42 failed at 1234 ms: agreement');
    expect(failure.message).toContain('npm run soak -- pbft --from 42 --seeds 1');
  });

  it('the runs exercised every Byzantine behaviour, view changes, state transfer, restarts and full buffers', () => {
    expect(reports).toHaveLength(SEEDS);
    const sum = (pick: (r: PbftSimReport) => number): number => reports.reduce((total, r) => total + pick(r), 0);
    const kinds = new Set(reports.flatMap((r) => r.byzantine.map((b) => b.split(':')[1])));
    for (const behaviour of BEHAVIOURS) expect(kinds).toContain(behaviour);
    expect(reports.some((r) => r.nodes === 7 && r.byzantine.length === 2)).toBe(true);
    for (const kind of ['equivocation', 'bad_signature', 'wrong_sender', 'digest_mismatch', 'bad_request', 'invalid_certificate', 'buffer_full', 'stale_view', 'outside_watermarks'] as const) {
      expect(sum((r) => r.drops[kind]), kind).toBeGreaterThan(0);
    }
    expect(sum((r) => r.forgedReplies)).toBeGreaterThan(0);
    // The pipelined write contract was exercised: Readys taken over queued writes, crashes losing some.
    expect(sum((r) => r.pipelinedReadys)).toBeGreaterThan(100 * SEEDS);
    expect(sum((r) => r.lostWrites)).toBeGreaterThan(SEEDS / 4);
    expect(sum((r) => r.viewChanges)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.installs)).toBeGreaterThan(SEEDS / 2);
    expect(sum((r) => r.restarts)).toBeGreaterThan(SEEDS);
    expect(sum((r) => r.accepted)).toBeGreaterThan(20 * SEEDS);
    // Floods reached the per-peer bound and never passed it.
    expect(Math.max(...reports.map((r) => r.maxFutureHeld))).toBe(64);
    expect(Math.max(...reports.map((r) => r.maxCheckpointVotesHeld))).toBeLessThanOrEqual(5);
    for (const r of reports) expect(r.livenessMs).toBeLessThanOrEqual(r.livenessBoundMs);
  });
});
