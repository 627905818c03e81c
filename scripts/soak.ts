/**
 * Long runs of the deterministic simulators: `npm run soak -- raft|pbft|state|fleet|policy [--seeds N]
 * [--from S] [--trace]`. The fleet runs at 200 regions × 5 000 VMs unless
 * FLEET_SIM_SIZE=small (the size `npm test` runs). `policy` runs one world of 100 random
 * (spec, plan) cases per seed against its policy set (test/sim/policy-enforcement.ts):
 * `--seeds 1000` is the 100 000 cases. Seeds run in order from S; the first failure prints
 * its seed and replay command and exits non-zero. --trace prints every event
 * of the run (use with --seeds 1 to replay a failure).
 */
import { parseArgs } from 'node:util';
import { RaftSimulation, SimFailure, scenarioForSeed } from '../test/sim/cluster.ts';
import { PbftSimFailure, PbftSimulation, pbftScenarioForSeed } from '../test/sim/pbft-cluster.ts';
import { StateSimFailure, StateSimulation, stateScenarioForSeed } from '../test/sim/state-cluster.ts';
import { FleetSimFailure, FleetSimulation, fleetScenarioForSeed, fleetSimSizeFrom } from '../test/sim/fleet-harness.ts';
import { PolicyEnforcementFailure, runPolicySeed } from '../test/sim/policy-enforcement.ts';

/** Each simulator: run one seed (throwing its failure type, whose message names the seed and the replay command). */
const SIMULATORS: Record<string, { run(seed: number, trace?: (line: string) => void): { events: number }; failure: new (...args: never[]) => Error }> = {
  raft: { run: (seed, trace) => new RaftSimulation(scenarioForSeed(seed, trace)).run(), failure: SimFailure },
  pbft: { run: (seed, trace) => new PbftSimulation(pbftScenarioForSeed(seed, trace)).run(), failure: PbftSimFailure },
  state: { run: (seed, trace) => new StateSimulation(stateScenarioForSeed(seed, trace)).run(), failure: StateSimFailure },
  fleet: { run: (seed, trace) => new FleetSimulation(fleetScenarioForSeed(seed, fleetSimSizeFrom(process.env['FLEET_SIM_SIZE'], 'large'), trace)).run(), failure: FleetSimFailure },
  policy: {
    run: (seed) => {
      const report = runPolicySeed(seed);
      return { ...report, events: report.assigns };
    },
    failure: PolicyEnforcementFailure,
  },
};

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    seeds: { type: 'string', default: '2000' },
    from: { type: 'string', default: '1' },
    trace: { type: 'boolean', default: false },
  },
});

function integer(name: string, text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    console.error(`soak: --${name} must be a non-negative integer, got ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return value;
}

const target = positionals[0] ?? '';
const simulator = SIMULATORS[target];
if (simulator === undefined) {
  console.error(`soak: unknown simulator ${JSON.stringify(target)}; available: ${Object.keys(SIMULATORS).join(', ')}`);
  process.exit(2);
}
const seeds = integer('seeds', values.seeds);
const from = integer('from', values.from);
const trace = values.trace ? (line: string): void => console.log(line) : undefined;

const started = performance.now();
let events = 0;
for (let seed = from; seed < from + seeds; seed++) {
  try {
    const report = simulator.run(seed, trace);
    events += report.events;
    if (trace !== undefined || seeds <= 20) console.log(JSON.stringify(report));
  } catch (error) {
    if (error instanceof simulator.failure) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  if ((seed - from + 1) % 100 === 0) {
    const seconds = (performance.now() - started) / 1000;
    console.log(`soak ${target}: ${seed - from + 1}/${seeds} seeds ok (${seconds.toFixed(1)} s, ${events} events)`);
  }
}
const seconds = (performance.now() - started) / 1000;
console.log(`soak ${target}: ${seeds} seeds from ${from} ok in ${seconds.toFixed(1)} s (${events} events)`);
