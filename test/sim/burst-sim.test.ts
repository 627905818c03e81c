/**
 * The burst core in the seeded simulator (burst-harness.ts): step, sawtooth
 * and noisy loads over many seeds keep the three invariants (zero
 * oscillation, a decision within one tick of the trigger window, never a
 * target the policy denies), and each invariant's checker is shown to catch
 * a broken core (a mutation). A failure prints the seed and load to replay.
 */
import { describe, expect, it } from 'vitest';
import { BurstSettingsSchema, type BurstThresholds } from '../../src/burst/config.ts';
import { LOADS, runBurstSim, type BurstSimOptions } from './burst-harness.ts';

const SEEDS = Number(process.env.BURST_SIM_SEEDS ?? 40);
const BASE_SEED = Number(process.env.BURST_SIM_SEED ?? 0x5eed);
const TICK = 30_000;
const T: BurstThresholds = BurstSettingsSchema.parse({});

function run(o: Partial<BurstSimOptions> & Pick<BurstSimOptions, 'seed' | 'load'>) {
  return runBurstSim({ tickMs: TICK, ticks: 600, thresholds: T, ...o });
}

describe('burst core in the simulator', () => {
  for (const load of LOADS) {
    it(`${load} load: zero oscillation, decisions within one tick, only allowed targets`, () => {
      let decisions = 0;
      let scaleIns = 0;
      for (let s = 0; s < SEEDS; s++) {
        const seed = BASE_SEED + s;
        const r = run({ seed, load });
        if (r.violations.length > 0) throw new Error(`seed ${seed} (load ${load}; replay with BURST_SIM_SEED=${seed} BURST_SIM_SEEDS=1): ${r.violations.slice(0, 5).join('\n')}`);
        decisions += r.decisions.length;
        scaleIns += r.decisions.filter((d) => d.kind === 'scale-in').length;
        for (const p of r.placements) expect(p, `seed ${seed}`).toBe('aws-eu/aws');
      }
      // The loads do make the core act, both ways.
      expect(decisions).toBeGreaterThan(SEEDS);
      expect(scaleIns).toBeGreaterThan(0);
    });
  }

  it('a step bursts after the 5-minute window, caps at max, and comes back newest first after the cooldown', () => {
    const r = run({ seed: 1, load: 'step' });
    const first = r.decisions[0];
    // The step starts at tick 20; CPU is high from then: the window is 10 ticks, so tick 30.
    expect(first).toMatchObject({ kind: 'scale-out', atMs: 1_000_000 + 30 * TICK, trigger: 'cpu' });
    expect(r.maxBurst).toBeGreaterThan(1);
    const ins = r.decisions.filter((d) => d.kind === 'scale-in');
    expect(ins.length).toBe(r.maxBurst);
    // The first scale-in comes a full cooldown after the load fell (tick 120) at the earliest.
    expect(ins[0]?.atMs).toBeGreaterThanOrEqual(1_000_000 + 120 * TICK + T.cooldownMs);
  });

  describe('each invariant catches a broken core', () => {
    function violationsOf(o: Partial<BurstSimOptions>, kind: string): string[] {
      const found: string[] = [];
      for (const load of LOADS) for (let s = 0; s < 10; s++) found.push(...run({ seed: BASE_SEED + s, load, ...o }).violations.filter((v) => v.startsWith(kind)));
      return found;
    }

    it('oscillation: a core that cools down for a quarter of the cooldown', () => {
      expect(violationsOf({ coreThresholds: { ...T, cooldownMs: T.cooldownMs / 4 } }, 'oscillation').length).toBeGreaterThan(0);
    });

    it('latency: a core whose CPU window is two ticks too long', () => {
      expect(violationsOf({ coreThresholds: { ...T, scaleOut: { ...T.scaleOut, cpuForMs: T.scaleOut.cpuForMs + 2 * TICK } } }, 'latency').length).toBeGreaterThan(0);
    });

    it('policy: bursts planned without the burst operation (policies for bursts not asked)', () => {
      expect(violationsOf({ burstOperation: false }, 'policy').length).toBeGreaterThan(0);
    });
  });
});
