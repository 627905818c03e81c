/**
 * The placement bench: the pure function place() (src/fleet/placement.ts)
 * on generated fleets of 20, 200 and 1 000 regions holding 100 000 existing
 * VMs, with specs carrying 5 constraints (jurisdictions, compliance, max $/h,
 * max RTT to a named region, an anti-affinity group), under both strategies.
 * Reports decisions per second and p50/p99 per decision against the issue's
 * floor (≥ 1 000 decisions/s and p99 ≤ 5 ms at 1 000 regions), without
 * policies and with each --rules count (default 0 and 50): the policy set of
 * bench/policy.ts (every rule applies to every VM), put into the fleet by a
 * set-policy through the state machine, so placement filters through the
 * log's own compiled evaluator.
 *
 * Invariants:
 * - The fleet is built through the fleet state machine's own apply (register
 *   every region, create and assign every VM), so the view placement reads is
 *   exactly what the log would hold, and the ledger's checks run on it.
 * - Everything is generated from --seed: same seed, same fleet, same specs,
 *   same decisions.
 * - The view is built once per fleet (its cost is reported as view_build_ms)
 *   and not changed by the decisions: each decision is a dry run on the same
 *   state, which is what a scheduler does per request before proposing.
 * - Each case runs --warmup decisions first (JIT), then --decisions timed one
 *   by one with process.hrtime.bigint (wall clock: on a loaded machine the
 *   tail includes waiting for a core, which cpu_ms_per_decision, the process
 *   CPU time over the loop, does not).
 */
import { Prng } from '../test/sim/prng.ts';
import type { FleetCommand, RegionProviderDeclaration } from '../src/fleet/commands.ts';
import { parseFleetCommand } from '../src/fleet/commands.ts';
import type { ObservedFleet, PlacementStrategy, PlacementView } from '../src/fleet/placement.ts';
import { PLACEMENT_STRATEGIES, buildPlacementView, place, resolvePlacementOptions } from '../src/fleet/placement.ts';
import type { FleetVmSpec } from '../src/fleet/spec.ts';
import { constraintCount, parseFleetVmSpec } from '../src/fleet/spec.ts';
import { FleetStateMachine } from '../src/fleet/state-machine.ts';
import { defineBench, FlagError, intFlag, machineFacts, progress, quantile, renderTable, significant } from './run.ts';
import { benchPolicies } from './policy.ts';

const GIB = 1024 ** 3;
const FLOOR_DECISIONS_PER_S = 1000;
const FLOOR_P99_MS = 5;
const FLOOR_REGIONS = 1000;
const JURISDICTIONS = ['eu', 'us', 'ap', 'sa'] as const;
const COMPLIANCE = ['gdpr', 'hipaa', 'soc2', 'pci'] as const;
const ANTI_AFFINITY_GROUPS = 1000;

export interface PlacementBenchOptions {
  regions: number[];
  /** Policy rule counts, one set of cases each (0: no policy). */
  rules: number[];
  vms: number;
  decisions: number;
  warmup: number;
  seed: number;
}

export interface BenchFleet {
  state: FleetStateMachine;
  view: PlacementView;
  /** Health and RTT, to rebuild the view after a policy change. */
  observed: ObservedFleet;
  regionNames: string[];
  /** Time to apply every register-region, create and assign. */
  setupMs: number;
  viewBuildMs: number;
}

function regionName(i: number): string {
  return `r${String(i).padStart(4, '0')}`;
}

/**
 * A fleet of `regionCount` regions (an on-premises `local` provider each,
 * every other region also a spot `aws` provider with a quota) holding
 * `vmCount` VMs spread evenly, each region about 60 % full; health and a full
 * RTT matrix from the seed. Exported for the smoke test and simulators.
 */
export function buildBenchFleet(regionCount: number, vmCount: number, seed: number): BenchFleet {
  const rng = new Prng(seed);
  const started = performance.now();
  const state = new FleetStateMachine({ maxRegions: Math.max(regionCount, 1), maxVms: Math.max(vmCount, 1) });
  const perRegion = Math.ceil(vmCount / regionCount);
  const regionNames: string[] = [];
  for (let i = 0; i < regionCount; i++) {
    const name = regionName(i);
    regionNames.push(name);
    // Existing VMs average 2.5 vCPUs and 5 GiB: size the region so they fill about 60 %.
    const vcpus = Math.ceil((perRegion * 2.5) / 0.6) + 64;
    const providers: RegionProviderDeclaration[] = [
      {
        name: 'local',
        kind: 'local',
        spot: false,
        capacity: { vcpus, memoryBytes: vcpus * 2 * GIB, diskBytes: vcpus * 40 * GIB },
        prices: { vcpuHourUsd: significant(0.01 + rng.next() * 0.03, 3), memoryGiBHourUsd: significant(0.001 + rng.next() * 0.004, 3) },
      },
    ];
    if (i % 2 === 1) {
      providers.push({ name: 'aws', kind: 'aws', spot: true, quota: { vcpus: 512, instances: 256 }, prices: { vcpuHourUsd: significant(0.005 + rng.next() * 0.01, 3), memoryGiBHourUsd: 0.001 } });
    }
    const compliance = COMPLIANCE.filter(() => rng.chance(0.5));
    const cmd = parseFleetCommand({
      kind: 'register-region',
      region: name,
      jurisdiction: rng.pick(JURISDICTIONS),
      compliance,
      labels: { tier: rng.pick(['gold', 'silver', 'bronze']) },
      providers,
    });
    expectOk(state.apply(cmd), name);
  }
  for (let v = 0; v < vmCount; v++) {
    const vm = `vm-${v}`;
    const spec: FleetVmSpec = {
      name: vm,
      vcpus: 1 + rng.int(4),
      memoryBytes: (1 + rng.int(9)) * GIB,
      diskBytes: 20 * GIB,
      image: 'base',
      labels: {},
      spot: false,
      priority: rng.int(1001),
      constraints: v % 10 === 0 ? { antiAffinityGroup: `aa-${v % ANTI_AFFINITY_GROUPS}` } : v % 10 === 1 ? { spreadGroup: `sg-${v % 7}` } : {},
    };
    expectOk(state.apply({ kind: 'create', spec, power: 'running' } satisfies FleetCommand), vm);
    // Round robin; anti-affinity members move on to the next region that has none of their group.
    let r = v % regionCount;
    const group = spec.constraints.antiAffinityGroup;
    for (let tries = 0; group !== undefined && tries < regionCount && state.groupCounts('anti-affinity', group).has(regionName(r)); tries++) r = (r + 1) % regionCount;
    const result = state.apply({ kind: 'assign', vm, region: regionName(r), provider: 'local', generation: 1 });
    // A full or anti-affine region leaves the VM unplaced, as a real fleet would have some.
    if (!result.ok && result.code !== 'insufficient_capacity' && result.code !== 'anti_affinity') expectOk(result, vm);
  }
  const setupMs = performance.now() - started;
  const rtt = new Map<string, Map<string, number>>();
  const coords = regionNames.map(() => [rng.next() * 200, rng.next() * 100] as const);
  regionNames.forEach((from, i) => {
    const row = new Map<string, number>();
    regionNames.forEach((to, j) => {
      const [ax, ay] = coords[i] as readonly [number, number];
      const [bx, by] = coords[j] as readonly [number, number];
      row.set(to, significant(Math.hypot(ax - bx, ay - by) + 0.5, 3));
    });
    rtt.set(from, row);
  });
  const health = new Map(regionNames.map((name) => [name, { phi: significant(rng.next() * 3, 3), suspected: rng.chance(0.01) }]));
  const viewStarted = performance.now();
  const observed: ObservedFleet = { health, rttMs: rtt };
  const view = buildPlacementView(state, observed);
  return { state, view, observed, regionNames, setupMs, viewBuildMs: performance.now() - viewStarted };
}

function expectOk(result: ReturnType<FleetStateMachine['apply']>, what: string): void {
  if (!result.ok) throw new Error(`bench fleet: ${what}: ${result.code}: ${result.message}`);
}

/** Specs with exactly 5 constraints, origin and RTT bound drawn per spec. */
export function benchSpecs(regionNames: readonly string[], count: number, seed: number): FleetVmSpec[] {
  const rng = new Prng(seed ^ 0x5eed);
  const specs: FleetVmSpec[] = [];
  for (let i = 0; i < count; i++) {
    const spec = parseFleetVmSpec({
      name: `new-${i}`,
      vcpus: 1 + rng.int(4),
      memoryBytes: (1 + rng.int(8)) * GIB,
      diskBytes: 20 * GIB,
      image: 'base',
      spot: rng.chance(0.3),
      priority: rng.int(1001),
      constraints: {
        jurisdictions: ['eu', 'us'],
        compliance: [rng.pick(COMPLIANCE)],
        maxHourlyUsd: 0.5,
        maxRtt: { region: rng.pick(regionNames), ms: 120 },
        antiAffinityGroup: `aa-${rng.int(ANTI_AFFINITY_GROUPS)}`,
      },
    });
    if (constraintCount(spec) !== 5) throw new Error('bench spec: expected 5 constraints');
    specs.push(spec);
  }
  return specs;
}

interface CaseResult {
  regions: number;
  strategy: PlacementStrategy;
  /** Policy rules in force (all apply to every spec). */
  rules: number;
  vms: number;
  vms_assigned: number;
  constraints: number;
  decisions: number;
  placed: number;
  refused: number;
  decisions_per_s: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  /** Process CPU time (user + system) over the timed loop, per decision: wall-clock minus waiting for a core on a loaded machine. */
  cpu_ms_per_decision: number;
  setup_ms: number;
  view_build_ms: number;
}

/** Puts a policy set of `rules` rules (bench/policy.ts's mix; 0: none) into the fleet through the state machine, and rebuilds the view on it. */
function setBenchPolicy(fleet: BenchFleet, rules: number): void {
  const result = fleet.state.apply({ kind: 'set-policy', version: fleet.state.policy.version + 1, policies: rules === 0 ? [] : benchPolicies(rules) });
  if (!result.ok) throw new Error(`bench policy: ${result.message}`);
  const started = performance.now();
  fleet.view = buildPlacementView(fleet.state, fleet.observed);
  fleet.viewBuildMs = performance.now() - started;
}

/** Times `options.decisions` decisions on the fleet's current view. */
function timeDecisions(fleet: BenchFleet, specs: readonly FleetVmSpec[], strategy: PlacementStrategy, options: PlacementBenchOptions) {
  const placementOptions = resolvePlacementOptions({ strategy });
  for (let i = 0; i < options.warmup; i++) place(specs[i % specs.length] as FleetVmSpec, fleet.view, placementOptions);
  const times: number[] = [];
  let placed = 0;
  const cpuBefore = process.cpuUsage();
  const started = process.hrtime.bigint();
  for (let i = 0; i < options.decisions; i++) {
    const t0 = process.hrtime.bigint();
    const decision = place(specs[i % specs.length] as FleetVmSpec, fleet.view, placementOptions);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    if (decision.ok) placed++;
  }
  const totalMs = Number(process.hrtime.bigint() - started) / 1e6;
  const cpu = process.cpuUsage(cpuBefore);
  return {
    decisions: options.decisions,
    placed,
    refused: options.decisions - placed,
    decisions_per_s: significant(options.decisions / (totalMs / 1000)),
    p50_ms: significant(quantile(times, 0.5)),
    p99_ms: significant(quantile(times, 0.99)),
    max_ms: significant(Math.max(...times)),
    cpu_ms_per_decision: significant((cpu.user + cpu.system) / 1000 / options.decisions),
  };
}

async function runPlacementBench(options: PlacementBenchOptions): Promise<object> {
  const cases: CaseResult[] = [];
  for (const regionCount of options.regions) {
    progress(`placement: building ${regionCount} regions with ${options.vms} VMs`);
    const fleet = buildBenchFleet(regionCount, options.vms, options.seed);
    const assigned = fleet.state.regions().reduce((n, r) => n + fleet.state.regionUsage(r.name).instances, 0);
    const specs = benchSpecs(fleet.regionNames, Math.min(1000, options.decisions), options.seed);
    for (const rules of options.rules) {
      setBenchPolicy(fleet, rules);
      for (const strategy of PLACEMENT_STRATEGIES) {
        const timed = timeDecisions(fleet, specs, strategy, options);
        cases.push({
          regions: regionCount,
          strategy,
          rules,
          vms: options.vms,
          vms_assigned: assigned,
          constraints: 5,
          ...timed,
          setup_ms: significant(fleet.setupMs),
          view_build_ms: significant(fleet.viewBuildMs),
        });
        // Let the stderr progress through between cases.
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
  }
  progress(
    renderTable(
      ['regions', 'strategy', 'rules', 'decisions/s', 'p50 ms', 'p99 ms', 'cpu ms', 'placed', 'view ms'],
      cases.map((c) => [String(c.regions), c.strategy, String(c.rules), String(c.decisions_per_s), String(c.p50_ms), String(c.p99_ms), String(c.cpu_ms_per_decision), `${c.placed}/${c.decisions}`, String(c.view_build_ms)]),
    ),
  );
  const atFloor = cases.filter((c) => c.regions === FLOOR_REGIONS);
  return {
    bench: 'placement',
    ...machineFacts(),
    options: { regions: options.regions, rules: options.rules, vms: options.vms, decisions: options.decisions, warmup: options.warmup, seed: options.seed, constraints: 5 },
    cases,
    floor: {
      regions: FLOOR_REGIONS,
      decisions_per_s: FLOOR_DECISIONS_PER_S,
      p99_ms: FLOOR_P99_MS,
      /** null when no case ran at the floor's region count. */
      met: atFloor.length === 0 ? null : atFloor.every((c) => c.decisions_per_s >= FLOOR_DECISIONS_PER_S && c.p99_ms <= FLOOR_P99_MS),
    },
  };
}

export const placementBench = defineBench<PlacementBenchOptions>({
  flags: {
    regions: { default: '20,200,1000', description: 'region counts, comma-separated' },
    rules: { default: '0,50', description: 'policy rule counts, comma-separated (0: no policy); each applies to every spec' },
    vms: { default: '100000', description: 'existing VMs in the fleet' },
    decisions: { default: '5000', description: 'timed decisions per case' },
    warmup: { default: '500', description: 'untimed decisions per case before timing' },
    seed: { default: '1', description: 'seed of the generated fleet and specs' },
  },
  parse: (flags) => {
    const regions = (flags.regions ?? '').split(',').map((t) => Number(t.trim()));
    for (const n of regions) {
      if (!Number.isInteger(n) || n < 1 || n > 5000) throw new FlagError('regions', `region counts must be whole numbers from 1 to 5000, got "${flags.regions}"`);
    }
    const rules = (flags.rules ?? '').split(',').map((t) => Number(t.trim()));
    for (const n of rules) {
      if (!Number.isInteger(n) || n < 0 || n > 256) throw new FlagError('rules', `rule counts must be whole numbers from 0 to 256, got "${flags.rules}"`);
    }
    return { regions, rules, vms: intFlag(flags, 'vms', 0), decisions: intFlag(flags, 'decisions'), warmup: intFlag(flags, 'warmup', 0), seed: intFlag(flags, 'seed', 0) };
  },
  run: runPlacementBench,
});
