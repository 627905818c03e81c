/**
 * Deterministic simulation of the fleet's control plane: the scheduler, the
 * fleet state machine and the per-region reconciler cores together, in
 * virtual time from one seeded PRNG (test/sim/prng.ts), against simulated
 * providers, with region crashes, partitions and provider failures.
 *
 * The model:
 * - The federation log is one FleetStateMachine. A proposal (a plan's
 *   commands, or an operator's) commits after a random delay, its commands
 *   contiguous and in order; proposals from different regions interleave, so
 *   schedulers race for capacity and generations and the state machine
 *   checks each plan at commit (optimistic concurrency). Only a region that
 *   is up and can see the log proposes.
 * - Schedulers run in several regions at once. Each takes create requests
 *   from clients, plans on the log's state at plan time with the real
 *   placement, and re-plans on refusals (src/fleet/scheduler.ts). A request
 *   whose scheduler crashed is re-sent by its client to another scheduler
 *   region (a client retry); the re-plan finds its create already applied.
 * - Every region has a reconciler and one or two simulated providers.
 *   Provider operations take virtual time and fail with seeded
 *   probabilities (capacity errors on create, internal errors on any
 *   operation); hosts fail (a running instance stops by itself). The
 *   reconciler runs every ~passEveryMs on the log's current state while the
 *   region sees the log; a partitioned region keeps running on the view it
 *   had when it lost the log (frozen: it restarts its VMs from it, and knows
 *   nothing of reassignments meanwhile); a crashed region does nothing,
 *   loses its reconciler memory and in-flight bookkeeping, and its
 *   provider's instances keep running (a daemon crash is not a host crash),
 *   so a restarted region finds its old copies: the stale-copy fencing case.
 * - Operators (in the sim, random commands during chaos): DR-like reassigns
 *   of VMs to another region by placement, mostly away from crashed or
 *   partitioned regions; renewals in place (same region and provider, next
 *   generation: the region must fence its own old copy first); power
 *   changes; deletes.
 * - Then a quiet phase: partitions heal, crashed regions restart, no new
 *   requests, no host failures (provider errors go on); the run ends when
 *   nothing is in flight or after quiesceMs.
 *
 * Invariants, checked after every step (tick) unless said otherwise:
 * 1. Ledger: the log's accounting never over-commits. A shadow ledger is kept
 *    from the accepted commands alone (an assign reserves its spec at its
 *    target and gives back the previous assignment's; a delete gives back);
 *    after every command it must equal the state machine's usage for the
 *    providers touched and stay within each provider's declared limits; at
 *    the end it is recomputed from scratch from the VM records.
 * 2. Generations: every accepted assign of a VM names a generation strictly
 *    above every generation that VM name had before (so no two assignments
 *    of one VM share a generation).
 * 3. Never two running copies of one VM "where both regions acted on the
 *    assignment they saw". Exactly: a copy counts as running when its
 *    instance is pending or running. For every VM with two or more running
 *    copies, every copy but the log's current one (region, provider,
 *    generation) must be *excused*, i.e. its holder region:
 *      - is down or cannot see the log (it acts on the view it had, which
 *        CAP lets it: the log cannot reach it to tell it), or
 *      - has not run a reconcile pass since the copy became stale (the
 *        commit that reassigned or deleted the VM, or the moment the region
 *        came back to the log, whichever is later), or
 *      - has a fencing stop/terminate of that copy in flight, or backing off
 *        after the provider refused one (fencing is retried forever: until
 *        its first pass after the back-off ends), or an operation on that
 *        copy (a start issued before the reassignment, a refused stop)
 *        finished and its next pass has not read the outcome yet (one
 *        operation per copy at a time: the fence waits for the start).
 *    So a region that has seen the VM's newer assignment never leaves its
 *    old copy running, and at most one copy is current. And when a region
 *    executes a create or start, the view it acted on assigns exactly that
 *    (region, provider, generation), and its own inventory holds no stale
 *    copy of that VM that may still run (fencing first, checked at the
 *    provider call). Without a lease (odd seeds) this is what the design can
 *    keep: a region that cannot hear the log cannot be told to stop, so
 *    during a partition the new copy is not held back and both run until
 *    the old holder hears the log again.
 *    With a lease (even seeds: ReconcilerOptions.lease, and a watchdog at
 *    each provider that powers off the managed VMs of a region whose daemon
 *    has been down longer than the lease), invariant 3 is strict: the only
 *    excuse left is a fence the provider is still carrying out or refused
 *    (in flight, backing off, outcome unread). So: never two running copies
 *    of one VM, partitions and crashes included.
 * 5. Migrations (src/fleet/migrations.ts, src/migration/coordinator.ts):
 *    operators start cold, warm and (where the on-premises provider is
 *    declared qemu) live migrations of random VMs and cancel some; each
 *    source region runs the real coordinator core for its migrations at
 *    every pass, against simulated transfers (which take time, fail, stall
 *    when the target is unreachable; a live one ends with the source paused
 *    and the target's incoming copy running, as QEMU does), with its
 *    proposals lost now and then (dropped before the log, or the answer
 *    lost), and the source or target region crashed at migration steps. Every
 *    step: the source and target copies of one migration never both run (at
 *    any time, after it ended too), and a cold or warm incoming copy never
 *    runs before cutover; the shadow ledger counts each migration's
 *    reservation (start reserves the target, cutover moves nothing, end
 *    releases the side it held). Every end: completed leaves the VM at the
 *    target, rolled-back at the source; a non-completed end says why. Once
 *    reconciled: no migration is left under way (so no reservation leaks:
 *    invariant 1's recount from the VM records must match the log).
 * 4. Once reconciled (the end of the quiet phase): every VM has at most one
 *    running copy and it is the current one; deleted VMs and stale copies
 *    have no live instance; every accepted create ends running (desired
 *    running: exactly one running current copy; desired stopped: none) or
 *    failed with a reason (its region reports `failed` with the provider's
 *    reason, or its scheduler request failed with the log's reasons);
 *    every client request ended placed or failed with reasons; the injected
 *    orphan copy was reported and is still there.
 */
import { parseFleetCommand, type FleetCommand, type FleetResult } from '../../src/fleet/commands.ts';
import { isCutOver, reservedAt, wantsIncomingCopy, type FleetMigration, type MigrationMode } from '../../src/fleet/migrations.ts';
import {
  EMPTY_COORDINATOR_MEMORY,
  coordinate,
  effectKey,
  type CoordinatorEffect,
  type CoordinatorMemory,
  type CoordinatorOptions,
  type EffectOutcome,
  type SourceCopy,
  type TargetCopy,
  type TransferStatus,
  type TransferStep,
} from '../../src/migration/coordinator.ts';
import { demandOf, RESOURCES, type ResourceAmounts } from '../../src/fleet/ledger.ts';
import { buildPlacementView, place, DEFAULT_PLACEMENT_OPTIONS, type ObservedFleet, type RegionHealth } from '../../src/fleet/placement.ts';
import {
  DEFAULT_RECONCILER_OPTIONS,
  EMPTY_RECONCILER_MEMORY,
  actionKey,
  copyKey,
  isCurrentCopy,
  reconcile,
  type ActionOutcome,
  type DesiredFleetView,
  type ObservedVm,
  type ObservedVmState,
  type ReconcileAction,
  type ReconcilerMemory,
  type ReconcilerOptions,
} from '../../src/fleet/reconciler.ts';
import { judgePlan, planCreate, resolveSchedulerOptions, startScheduling, withPlansInFlight, type SchedulePlan, type SchedulerOptions, type SchedulingProgress } from '../../src/fleet/scheduler.ts';
import { parseFleetVmSpec, type FleetVmSpec } from '../../src/fleet/spec.ts';
import { FleetStateMachine, type FleetVm } from '../../src/fleet/state-machine.ts';
import { EMPTY_DR_MEMORY, stepDr, type DrMemory, type DrOptions } from '../../src/dr/controller.ts';
import type { ReconcilerDrFence } from '../../src/fleet/reconciler.ts';
import { EventQueue } from './events.ts';
import { Prng } from './prng.ts';

const GIB = 1024 ** 3;

export type FleetSimSize = 'small' | 'large';

export interface FleetScenario {
  readonly seed: number;
  readonly size: FleetSimSize;
  readonly regions: number;
  readonly vms: number;
  readonly schedulerRegions: number;
  readonly tickMs: number;
  readonly chaosMs: number;
  readonly quiesceMs: number;
  readonly passEveryMs: number;
  readonly logDelayMs: readonly [number, number];
  readonly opMs: readonly [number, number];
  /** Probabilities per provider operation. */
  readonly failure: { readonly capacity: number; readonly create: number; readonly start: number; readonly stop: number; readonly terminate: number };
  /** Per running instance per second (chaos only). */
  readonly hostFailurePerSecond: number;
  /** Per region per second (chaos only). */
  readonly crashPerSecond: number;
  readonly partitionPerSecond: number;
  readonly downMs: readonly [number, number];
  /** Fleet-wide per second (chaos only). */
  readonly reassignPerSecond: number;
  readonly powerPerSecond: number;
  readonly deletePerSecond: number;
  readonly reconciler: ReconcilerOptions;
  readonly scheduler: SchedulerOptions;
  /** At most this many proposals wait for the log; more are refused (a bounded queue, like the real log's). */
  readonly maxLogQueue: number;
  /** The reconciler core under test (tests swap in a broken one to show the invariants catch it). */
  readonly reconcile?: typeof reconcile;
  /** The coordinator core under test (tests swap in a broken one). */
  readonly coordinate?: typeof coordinate;
  /** Fleet-wide per second (chaos only): migrations started, and cancels of migrations under way. */
  readonly migratePerSecond: number;
  readonly cancelPerSecond: number;
  /** The on-premises provider's declared kind: qemu seeds can migrate live. */
  readonly onPremKind: 'local' | 'qemu';
  /** Per migration step committed (chaos only): the chance that its source or target region crashes right then. */
  readonly migrationCrash: number;
  /** Per coordinator proposal: the chance it is dropped before the log, or its answer lost. */
  readonly proposalLoss: number;
  readonly transferMs: readonly [number, number];
  /** Per transfer step: the chance it fails midway. */
  readonly transferFailure: number;
  readonly coordinator: CoordinatorOptions;
  /** Disaster recovery (every third seed): protected VMs, the DR core in every region, region outages, blips, flapping, slow regions. */
  readonly dr: DrSimOptions | null;
  readonly trace?: (line: string) => void;
}

export interface DrSimOptions {
  readonly options: DrOptions;
  /** The reconciler's self-fencing (also given as reconciler.dr) and the per-guest lease watchdog's deadline (fenceAfterMs). */
  readonly fence: ReconcilerDrFence;
  /** The chance a VM is protected when first placed. */
  readonly protectShare: number;
  /** Per second (chaos only): a region holding protected VMs is lost (crash or cut off) for outageMs. */
  readonly outagePerSecond: number;
  readonly outageMs: readonly [number, number];
  /** Per second (chaos only): a region is cut off for less than (failAfterChecks - 1) checks: it must never be failed over. */
  readonly blipPerSecond: number;
  /** Per second (chaos only): a region starts flapping (cut off, back, cut off, each shorter than the stabilisation window). */
  readonly flapPerSecond: number;
  /** Regions whose provider operations take slowFactor times longer. */
  readonly slowRegions: number;
  readonly slowFactor: number;
  /** The core under test (tests swap in a broken one). */
  readonly controller?: typeof stepDr;
}

export interface FleetSimReport {
  readonly seed: number;
  readonly size: FleetSimSize;
  readonly regions: number;
  readonly requests: number;
  readonly placed: number;
  readonly schedulingFailed: number;
  /** Scheduling failures by code (no_fit, attempts_exhausted, ...). */
  readonly schedulingFailures: Readonly<Record<string, number>>;
  readonly replans: number;
  readonly running: number;
  readonly failedVms: number;
  readonly deleted: number;
  readonly reassigns: number;
  readonly crashes: number;
  readonly partitions: number;
  readonly fences: number;
  /** Steps with two running copies of a VM, every extra one excused. */
  readonly excusedDoubleRuns: number;
  /** The longest time (virtual ms) two copies of one VM ran at once, excused. */
  readonly longestDoubleRunMs: number;
  readonly providerErrors: number;
  readonly hostFailures: number;
  readonly lease: boolean;
  readonly watchdogStops: number;
  readonly orphanReports: number;
  readonly commands: number;
  readonly refusals: number;
  readonly events: number;
  readonly invariantChecks: number;
  readonly virtualMs: number;
  readonly migrations: { readonly started: number; readonly completed: number; readonly rolledBack: number; readonly failed: number; readonly live: number; readonly cancels: number; readonly lostProposals: number; readonly transferFailures: number; readonly liveCompletions: number; readonly targetWaits: number; readonly refusedByTarget: number };
  /** Crashes of a migration's source or target region right at one of its steps, by `phase:side`. */
  readonly migrationCrashes: Readonly<Record<string, number>>;
  readonly dr: DrSimReport | null;
}

export interface DrSimReport {
  readonly protected: number;
  readonly outages: number;
  readonly blips: number;
  readonly flaps: number;
  readonly regionFailures: number;
  readonly failoverProposals: number;
  readonly failovers: number;
  readonly refusedFailovers: number;
  readonly failbacksStarted: number;
  readonly failbacksCompleted: number;
  readonly selfFences: number;
  readonly watchdogStops: number;
  /** Failovers whose copy came up at the DR region, and the longest time from the region's loss to that (virtual ms). */
  readonly recovered: number;
  readonly longestRtoMs: number;
  /** Steps with a protected VM's DR copy held while its lost region's copy was still up (the hold doing its job). */
  readonly holds: number;
}

export class FleetSimFailure extends Error {
  readonly seed: number;
  constructor(seed: number, size: FleetSimSize, at: number, problem: string) {
    super(`fleet simulation seed ${seed} (${size}) failed at ${at} ms: ${problem}\n  replay: FLEET_SIM_SIZE=${size} npm run soak -- fleet --from ${seed} --seeds 1 --trace`);
    this.name = 'FleetSimFailure';
    this.seed = seed;
  }
}

export function fleetScenarioForSeed(seed: number, size: FleetSimSize = 'small', trace?: (line: string) => void): FleetScenario {
  const rng = new Prng(seed ^ 0xf1ee7);
  const small = size === 'small';
  const opMax = rng.pick([800, 2_000, 4_000]);
  const scenario: FleetScenario = {
    seed,
    size,
    regions: small ? rng.between(3, 7) : 200,
    vms: small ? rng.between(20, 60) : 5000,
    schedulerRegions: small ? rng.between(2, 3) : 8,
    tickMs: small ? 100 : 250,
    chaosMs: small ? rng.between(20_000, 35_000) : 120_000,
    quiesceMs: 90_000,
    passEveryMs: 1_000,
    logDelayMs: [50, rng.pick([200, 500, 1_500])],
    opMs: [200, opMax],
    failure: {
      capacity: rng.pick([0, 0.03, 0.1]),
      create: rng.pick([0, 0.05, 0.2]),
      start: rng.pick([0, 0.05, 0.2]),
      stop: rng.pick([0, 0.05, 0.2]),
      terminate: rng.pick([0, 0.05]),
    },
    hostFailurePerSecond: small ? 0.004 : 0.0002,
    crashPerSecond: small ? 0.01 : 0.0005,
    partitionPerSecond: small ? 0.01 : 0.0005,
    downMs: [2_000, 12_000],
    reassignPerSecond: small ? 0.3 : 2,
    powerPerSecond: small ? 0.2 : 1,
    deletePerSecond: small ? 0.1 : 0.5,
    reconciler: leaseFor(seed, { maxAttempts: rng.pick([2, 3, 4]), backoffBaseMs: 500, backoffCapMs: 4_000 }, 1_000, opMax),
    scheduler: resolveSchedulerOptions({ maxAttempts: small ? rng.pick([2, 3, 5]) : 5, placement: DEFAULT_PLACEMENT_OPTIONS, choices: small ? rng.pick([1, 3]) : 3 }),
    maxLogQueue: small ? 64 : 4096,
    migratePerSecond: small ? 0.25 : 1,
    cancelPerSecond: small ? 0.04 : 0.1,
    onPremKind: seed % 4 < 2 ? 'qemu' : 'local',
    migrationCrash: small ? 0.06 : 0.01,
    proposalLoss: 0.05,
    transferMs: [300, rng.pick([2_000, 5_000])],
    transferFailure: rng.pick([0, 0.1, 0.25]),
    // Timeouts short enough that a run exercises them, long enough for a pass, an operation and a report.
    coordinator: { prepareTimeoutMs: 8_000, transferIdleTimeoutMs: 4_000, verifyTimeoutMs: 10_000, cleanupTimeoutMs: 20_000, retryMs: 500, maxAttempts: 3 },
    dr: null,
    ...(trace === undefined ? {} : { trace }),
  };
  return withDr(scenario, opMax);
}

/**
 * Every third seed protects VMs and runs the DR core: checks every second,
 * a region failed after 3; self-fencing after 2 s cut off; the DR copy held
 * for the self-fence, two passes and two provider operations in the slowest
 * region (a start issued just before the fence, then the stop) and a
 * second; failback after 8 s of health. Its own PRNG, so the other seeds'
 * draws do not move.
 */
function withDr(scenario: FleetScenario, opMax: number): FleetScenario {
  if (scenario.seed % 3 !== 0) return scenario;
  const rng = new Prng(scenario.seed ^ 0xd15a57e);
  const options: DrOptions = { checkIntervalMs: 1_000, failAfterChecks: 3, stabilisationMs: 8_000, retryMs: 2_000 };
  const slowFactor = rng.pick([1, 2, 3]);
  const fenceAfterMs = 2_000;
  const fence: ReconcilerDrFence = { fenceAfterMs, fenceHoldMs: fenceAfterMs + 2 * (scenario.passEveryMs + 100 + opMax * slowFactor) + 1_000 };
  const dr: DrSimOptions = {
    options,
    fence,
    protectShare: rng.pick([0.3, 0.6, 1]),
    outagePerSecond: scenario.size === 'small' ? 0.03 : 0.002,
    outageMs: [6_000, 20_000],
    blipPerSecond: scenario.size === 'small' ? 0.03 : 0.002,
    flapPerSecond: scenario.size === 'small' ? 0.01 : 0.001,
    slowRegions: slowFactor === 1 ? 0 : 1,
    slowFactor,
  };
  // Failbacks wait a window after every rolled-back attempt: the quiet phase has room for a few.
  return { ...scenario, dr, quiesceMs: 4 * scenario.quiesceMs, reconciler: { ...scenario.reconciler, dr: fence } };
}

/**
 * Odd seeds run without a lease (a cut-off region keeps its VMs running:
 * invariant 3's excused window), even seeds with one (invariant 3 strict):
 * leaseMs 3 s, and a handoff long enough for the old holder to have stopped
 * its copy either way: the lease, two passes and two provider operations
 * (a start issued just before the lease ran out, then the stop), and a second.
 */
function leaseFor(seed: number, options: ReconcilerOptions, passEveryMs: number, opMaxMs: number): ReconcilerOptions {
  if (seed % 2 !== 0) return options;
  const leaseMs = 3_000;
  return { ...options, lease: { leaseMs, handoffMs: leaseMs + 2 * (passEveryMs + 100 + opMaxMs) + 1_000 } };
}

/** Fleet size: FLEET_SIM_SIZE=small|large (the soak's default is large: 200 regions × 5 000 VMs). */
export function fleetSimSizeFrom(text: string | undefined, fallback: FleetSimSize): FleetSimSize {
  if (text === undefined || text === '') return fallback;
  if (text !== 'small' && text !== 'large') throw new RangeError(`FLEET_SIM_SIZE must be small or large, got ${JSON.stringify(text)}`);
  return text;
}

interface SimInstance {
  readonly provider: string;
  readonly id: string;
  readonly name: string;
  state: ObservedVmState;
  readonly managed: boolean;
  readonly vmName?: string;
  readonly generation?: number;
  readonly token?: string;
  /** A migration's incoming copy (tag dwcp-migration). */
  readonly migration?: string;
  /** Running but paused (a live migration's source after its stop-and-copy): not counted as running. */
  paused: boolean;
}

/** One migration's coordinator in a source region; lost with the daemon. */
interface SimCoordinator {
  memory: CoordinatorMemory;
  readonly inFlight: Set<string>;
  outcomes: EffectOutcome[];
}

/** A transfer step the source daemon runs; lost with it. */
interface SimTransfer {
  readonly id: string;
  readonly step: TransferStep;
  status: 'running' | 'done' | 'failed';
  bytes: number;
  rounds: number;
  progressAt: number;
  readonly doneAt: number;
  readonly failAt: number | null;
  error?: string;
  targetMayRun: boolean;
  downtimeMs?: number;
}

/** What a region last published of its copies (the geo store's fleet records, for other regions' coordinators). */
interface SimReport {
  readonly at: number;
  readonly copies: readonly { readonly provider: string; readonly vmName: string; readonly generation?: number; readonly migration?: string; readonly state: ObservedVmState }[];
}

interface InFlightOp {
  readonly action: ReconcileAction;
  /** The region's incarnation that issued it: a crash forgets it. */
  readonly epoch: number;
}

interface SimRegion {
  readonly name: string;
  readonly providers: readonly string[];
  /** Provider name → instances by id. Survives crashes. */
  readonly instances: Map<string, Map<string, SimInstance>>;
  /** Tokens of creates the provider accepted (idempotency), per provider. */
  readonly tokens: Map<string, string>;
  up: boolean;
  /** Cannot see the log (nor propose) while true. */
  partitioned: boolean;
  /** When the region's down or partition ends (chaos only). */
  until: number;
  /** Incarnation: bumped by each crash; outcomes of older incarnations are dropped. */
  epoch: number;
  memory: ReconcilerMemory;
  outcomes: ActionOutcome[];
  inFlight: Map<string, InFlightOp>;
  nextPassAt: number;
  lastPassAt: number;
  /** The last time the region came back to the log (restart or heal). */
  visibleSince: number;
  /** The last time its view of the log was current (its reconciler's lease input). */
  logSeenAt: number;
  /** When it crashed (the provider watchdog's clock, with a lease). */
  downSince: number;
  /** The view a partitioned region keeps acting on; null when it has none (crashed while cut off). */
  frozen: DesiredFleetView | null;
  /** Status last reported per VM (the observed state the region publishes). */
  readonly statuses: Map<string, { status: string; generation: number; reason?: string }>;
  readonly orphansSeen: Set<string>;
  /** This region's scheduler: the requests it is working on (bounded by the client count). */
  readonly requests: ClientRequest[];
  /** Coordinators of the migrations out of this region, and their transfers (lost on a crash). */
  readonly coordinators: Map<string, SimCoordinator>;
  readonly transfers: Map<string, SimTransfer>;
  /** The migrations as they were when the region lost the log (its coordinators act on them meanwhile). */
  frozenMigrations: readonly FleetMigration[] | null;
  report: SimReport | null;
  /** DR: the core's memory and proposals waiting for the log (lost on a crash), the next check, the last checks' results per region. */
  drMemory: DrMemory;
  readonly drInFlight: Set<string>;
  nextCheckAt: number;
  /** Its last checks of each region: ok, failed, or cut-off (it could not see the log, so its failed checks count for nothing). */
  readonly checks: Map<string, ('ok' | 'failed' | 'cut-off')[]>;
  /** The protected VMs in its view when it crashed (or was cut off without a view): the guests whose leases lapse. */
  protectedAtCrash: ReadonlySet<string>;
  /** Provider operations take slowFactor times longer. */
  slow: boolean;
  /** Flapping until then: cut off again nextFlapAt after each heal. */
  flapUntil: number;
  nextFlapAt: number;
  /** The current cut-off is a blip (shorter than failAfterChecks - 1 checks). */
  blip: boolean;
}

interface ClientRequest {
  readonly id: number;
  progress: SchedulingProgress;
  /** The proposal waiting for the log. */
  waiting: { plan: Extract<SchedulePlan, { kind: 'propose' }>; proposal: number } | null;
}

interface Proposal {
  readonly id: number;
  readonly from: string;
  readonly commands: readonly FleetCommand[];
  readonly onResults: (results: readonly FleetResult[]) => void;
}

type SimEvent =
  | { kind: 'commit'; proposal: Proposal }
  | { kind: 'op'; region: string; action: ReconcileAction; epoch: number; fail: string | null }
  /** A coordinator's operation on its source copy finishing. */
  | { kind: 'mop'; region: string; id: string; effect: CoordinatorEffect; epoch: number; fail: string | null }
  /** A coordinator's proposal that never gets an answer: the error reaches it at this time. */
  | { kind: 'lost'; region: string; id: string; effect: CoordinatorEffect; epoch: number };

function sortedNames(names: Iterable<string>): string[] {
  return [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

export class FleetSimulation {
  readonly #s: FleetScenario;
  readonly #rng: Prng;
  /** Separate streams: adding a draw in one place leaves the others alone. */
  readonly #chaos: Prng;
  readonly #providerRng: Prng;
  readonly #log = new FleetStateMachine();
  readonly #events = new EventQueue<SimEvent>();
  readonly #regions: SimRegion[] = [];
  readonly #byName = new Map<string, SimRegion>();
  /** Region → names of VMs whose assignment names it (tombstones included), kept from accepted commands: where chaos picks VMs from. */
  readonly #assigned = new Map<string, Set<string>>();
  readonly #shadow = new Map<string, { vcpus: number; memoryBytes: number; diskBytes: number; instances: number }>();
  readonly #lastGeneration = new Map<string, number>();
  /** When each VM's assignment last changed or it was deleted: from then on, other copies are stale. */
  readonly #changedAt = new Map<string, number>();
  /** VM name → its instances that are pending or running. */
  readonly #running = new Map<string, Set<SimInstance>>();
  readonly #instanceRegion = new Map<SimInstance, SimRegion>();
  readonly #schedulingFailures = new Map<string, readonly string[]>();
  readonly #failureCodes: Record<string, number> = {};
  readonly #placed = new Set<string>();
  #pendingProposals = 0;
  #now = 0;
  #nextId = 1;
  #requestsMade = 0;
  #pendingClients: ClientRequest[] = [];
  #orphan: { region: string; provider: string; id: string } | null = null;
  /** VM → when its current stretch of two running copies began. */
  readonly #doubleSince = new Map<string, number>();
  #longestDoubleRunMs = 0;
  readonly #counts = {
    replans: 0,
    reassigns: 0,
    crashes: 0,
    partitions: 0,
    fences: 0,
    excusedDoubleRuns: 0,
    providerErrors: 0,
    hostFailures: 0,
    watchdogStops: 0,
    orphanReports: 0,
    commands: 0,
    refusals: 0,
    events: 0,
    invariantChecks: 0,
    deleted: 0,
  };
  readonly #mig = { started: 0, completed: 0, rolledBack: 0, failed: 0, live: 0, cancels: 0, lostProposals: 0, transferFailures: 0, liveCompletions: 0, targetWaits: 0, refusedByTarget: 0 };
  /** `${region}/${migration}`: a target's refusal waiting for the log (one at a time, as the daemon's driver has it). */
  readonly #refusing = new Set<string>();
  readonly #migrationCrashes: Record<string, number> = {};
  /** Every migration the log accepted, by VM: its source and target copies must never both run. */
  readonly #migrationsOf = new Map<string, FleetMigration[]>();
  /** Migrations this run: a separate stream, so the others' draws do not move. */
  readonly #migRng: Prng;
  #chaosOn = false;
  /** DR: its own stream; ground truth of each region's health (up and not cut off) for the DR invariants. */
  readonly #drRng: Prng;
  readonly #unhealthySince = new Map<string, number>();
  readonly #healthySince = new Map<string, number>();
  /** Failovers committed whose DR copy is not running yet. */
  /** When a failover of each VM was last refused for a reason other than losing the race, or could not be proposed (the log's queue full), and when it was protected. */
  readonly #failoverTrouble = new Map<string, number>();
  readonly #protectedAt = new Map<string, number>();
  readonly #recovering = new Map<string, { readonly lostSince: number; readonly committedAt: number; readonly region: string; readonly provider: string; readonly generation: number }>();
  readonly #drCounts = { protected: 0, outages: 0, blips: 0, flaps: 0, regionFailures: 0, failoverProposals: 0, failovers: 0, refusedFailovers: 0, failbacksStarted: 0, failbacksCompleted: 0, selfFences: 0, watchdogStops: 0, recovered: 0, longestRtoMs: 0, holds: 0 };

  constructor(scenario: FleetScenario) {
    this.#s = scenario;
    this.#rng = new Prng(scenario.seed);
    this.#chaos = this.#rng.fork();
    this.#providerRng = this.#rng.fork();
    this.#migRng = this.#rng.fork();
    this.#drRng = new Prng(scenario.seed ^ 0x0dd15a5);
  }

  /** Any error of a run, the state machine's own invariant errors included, comes out as a FleetSimFailure naming the seed. */
  run(): FleetSimReport {
    try {
      return this.#run();
    } catch (error) {
      if (error instanceof FleetSimFailure) throw error;
      throw new FleetSimFailure(this.#s.seed, this.#s.size, this.#now, `unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    }
  }

  #run(): FleetSimReport {
    const s = this.#s;
    this.#setUp();
    const chaosTicks = Math.ceil(s.chaosMs / s.tickMs);
    const createTicks = Math.ceil(chaosTicks * 0.7);
    let owed = 0;
    this.#chaosOn = true;
    for (let tick = 0; tick < chaosTicks; tick++) {
      this.#now += s.tickMs;
      if (tick < createTicks) {
        owed += s.vms / createTicks;
        while (owed >= 1 && this.#requestsMade < s.vms) {
          owed -= 1;
          this.#newRequest();
        }
      }
      this.#chaosStep();
      this.#step(true);
    }
    while (this.#requestsMade < s.vms) this.#newRequest();
    this.#chaosOn = false;
    // Quiet phase: everyone back, no new trouble but provider errors.
    for (const r of this.#regions) {
      if (!r.up) this.#restart(r);
      if (r.partitioned) this.#heal(r);
    }
    const chaosEnd = this.#now;
    const end = this.#now + s.quiesceMs;
    let quietSince = -1;
    while (this.#now < end) {
      this.#now += s.tickMs;
      this.#step(false);
      if (this.#settled()) {
        if (quietSince < 0) quietSince = this.#now;
        // Two pass intervals of nothing to do: every reconciler has looked and found nothing.
        // DR seeds wait out a stabilisation window first, so failbacks start (and settle) before the end.
        // And a protected VM moved at the end of the chaos is held for fenceHoldMs before it starts.
        const drQuiet = s.dr === null ? 0 : Math.max(s.dr.options.stabilisationMs + 4 * s.dr.options.checkIntervalMs, s.dr.fence.fenceHoldMs + 3 * s.passEveryMs);
        if (this.#now - quietSince >= 3 * s.passEveryMs && this.#now - chaosEnd >= drQuiet) break;
      } else quietSince = -1;
    }
    this.#checkFinal();
    return this.#report();
  }

  // Set-up.

  #setUp(): void {
    const s = this.#s;
    const rng = this.#rng;
    // About 1.2 times the mean demand (3 vCPUs a VM): full enough that late requests meet full regions.
    const perRegionVcpus = Math.max(8, Math.ceil((s.vms * 3 * 1.2) / s.regions));
    for (let i = 0; i < s.regions; i++) {
      const name = `r${String(i).padStart(3, '0')}`;
      const vcpus = Math.max(4, Math.round(perRegionVcpus * (0.5 + rng.next())));
      const providers: { name: string; kind: 'local' | 'qemu' | 'aws'; capacity?: object; quota?: object; prices: object; spot?: boolean }[] = [
        { name: 'local', kind: s.onPremKind, capacity: { vcpus, memoryBytes: vcpus * 3 * GIB, diskBytes: vcpus * 100 * GIB }, prices: { vcpuHourUsd: 0.01 + rng.int(30) / 1000, memoryGiBHourUsd: 0.002 } },
      ];
      if (rng.chance(0.3)) {
        providers.push({ name: 'cloud', kind: 'aws', quota: { vcpus: Math.ceil(vcpus / 2), instances: Math.ceil(vcpus / 6) }, prices: { vcpuHourUsd: 0.03 + rng.int(30) / 1000, memoryGiBHourUsd: 0.004 }, spot: rng.chance(0.3) });
      }
      const register = parseFleetCommand({
        kind: 'register-region',
        region: name,
        jurisdiction: rng.pick(['eu', 'us']),
        labels: { tier: rng.pick(['gold', 'silver']) },
        providers,
      });
      const result = this.#log.apply(register);
      if (!result.ok) throw new Error(`set-up: ${result.message}`);
      const region: SimRegion = {
        name,
        providers: providers.map((p) => p.name).sort(),
        instances: new Map(providers.map((p) => [p.name, new Map()])),
        tokens: new Map(),
        up: true,
        partitioned: false,
        until: 0,
        epoch: 0,
        memory: EMPTY_RECONCILER_MEMORY,
        outcomes: [],
        inFlight: new Map(),
        nextPassAt: rng.int(s.passEveryMs),
        lastPassAt: -1,
        visibleSince: 0,
        logSeenAt: 0,
        downSince: 0,
        frozen: null,
        statuses: new Map(),
        orphansSeen: new Set(),
        requests: [],
        coordinators: new Map(),
        transfers: new Map(),
        frozenMigrations: null,
        report: null,
        drMemory: EMPTY_DR_MEMORY,
        drInFlight: new Set(),
        nextCheckAt: rng.int(1_000),
        checks: new Map(),
        protectedAtCrash: new Set(),
        slow: i < (s.dr?.slowRegions ?? 0),
        flapUntil: 0,
        nextFlapAt: 0,
        blip: false,
      };
      this.#regions.push(region);
      this.#byName.set(name, region);
      this.#healthySince.set(name, 0);
      this.#assigned.set(name, new Set());
      for (const p of providers) this.#shadow.set(`${name}/${p.name}`, { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 });
    }
    // An orphan: a managed copy whose VM the log never heard of. It must be reported and left alone.
    const home = rng.pick(this.#regions);
    const orphan: SimInstance = { provider: 'local', id: 'i-orphan', name: 'ghost', state: 'running', managed: true, vmName: 'ghost', generation: 3, paused: false };
    home.instances.get('local')?.set(orphan.id, orphan);
    this.#instanceRegion.set(orphan, home);
    this.#orphan = { region: home.name, provider: 'local', id: orphan.id };
    // And an unmanaged instance, which the reconciler must not even look at.
    const stray: SimInstance = { provider: 'local', id: 'i-stray', name: 'by-hand', state: 'running', managed: false, paused: false };
    rng.pick(this.#regions).instances.get('local')?.set(stray.id, stray);
  }

  #randomSpec(name: string): FleetVmSpec {
    const rng = this.#rng;
    const vcpus = rng.pick([1, 1, 2, 2, 2, 4, 4, 8]);
    const constraints: Record<string, unknown> = {};
    const roll = rng.next();
    if (roll < 0.1) constraints['jurisdictions'] = [rng.pick(['eu', 'us'])];
    else if (roll < 0.15) constraints['antiAffinityGroup'] = `aa${rng.int(3)}`;
    else if (roll < 0.25) constraints['spreadGroup'] = `sp${rng.int(3)}`;
    else if (roll < 0.3) constraints['regionLabels'] = { tier: 'gold' };
    return parseFleetVmSpec({ name, vcpus, memoryBytes: vcpus * rng.pick([1, 2, 2, 4]) * GIB, image: 'base', spot: rng.chance(0.2), priority: rng.int(1000), constraints });
  }

  #newRequest(): void {
    const id = this.#requestsMade++;
    const spec = this.#randomSpec(`vm${String(id).padStart(5, '0')}`);
    const request: ClientRequest = { id, progress: startScheduling({ spec, power: 'running' }), waiting: null };
    this.#pendingClients.push(request);
    this.#handOut();
  }

  /** Clients send waiting requests to a scheduler region that is up and sees the log (the first schedulerRegions regions, by turns). */
  #handOut(): void {
    if (this.#pendingClients.length === 0) return;
    const schedulers = this.#regions.slice(0, this.#s.schedulerRegions).filter((r) => r.up && !r.partitioned);
    if (schedulers.length === 0) return;
    for (const request of this.#pendingClients) schedulers[request.id % schedulers.length]?.requests.push(request);
    this.#pendingClients = [];
  }

  // One step.

  #step(chaos: boolean): void {
    const s = this.#s;
    this.#counts.events++;
    // The log commits what is due, then providers finish what is due, both in time order.
    for (;;) {
      const next = this.#events.pop();
      if (next === undefined) break;
      if (next.time > this.#now) {
        this.#events.push(next.time, next.event);
        break;
      }
      this.#counts.events++;
      const e = next.event;
      if (e.kind === 'commit') this.#commit(e.proposal);
      else if (e.kind === 'op') this.#finishOp(e.region, e.action, e.epoch, e.fail);
      else if (e.kind === 'mop') this.#finishMigrationOp(e.region, e.id, e.effect, e.epoch, e.fail);
      else this.#lostAnswer(e.region, e.id, e.effect, e.epoch);
    }
    this.#advanceTransfers();
    if (chaos) this.#hostFailures();
    this.#watchdogs();
    this.#handOut();
    for (const r of this.#regions) if (r.up && !r.partitioned) this.#schedule(r);
    for (const r of this.#regions) {
      if (!r.up || this.#now < r.nextPassAt) continue;
      r.nextPassAt = this.#now + this.#s.passEveryMs - this.#s.tickMs + this.#rng.int(2 * this.#s.tickMs + 1);
      this.#pass(r);
    }
    if (s.dr !== null) {
      for (const r of this.#regions) if (r.up && this.#now >= r.nextCheckAt) this.#drStep(r, s.dr);
      this.#checkRecovery(s.dr);
    }
    this.#checkRunningCopies();
  }

  // The log.

  #propose(from: string, commands: readonly FleetCommand[], onResults: (results: readonly FleetResult[]) => void): number | null {
    if (this.#pendingProposals >= this.#s.maxLogQueue) return null;
    const id = this.#nextId++;
    this.#pendingProposals++;
    const [lo, hi] = this.#s.logDelayMs;
    this.#events.push(this.#now + this.#rng.between(lo, hi), { kind: 'commit', proposal: { id, from, commands, onResults } });
    return id;
  }

  #commit(proposal: Proposal): void {
    this.#pendingProposals--;
    const results = proposal.commands.map((cmd) => this.#apply(cmd));
    proposal.onResults(results);
  }

  #apply(cmd: FleetCommand): FleetResult {
    this.#counts.commands++;
    const name = cmd.kind === 'register-region' || cmd.kind === 'set-policy' || cmd.kind === 'set-budget' || cmd.kind === 'delete-budget' || cmd.kind === 'budget-spent' || cmd.kind === 'set-burst-group' || cmd.kind === 'delete-burst-group' ? null : cmd.kind === 'create' ? cmd.spec.name : 'vm' in cmd ? cmd.vm : (this.#log.migration(cmd.id)?.vm ?? null);
    const before: FleetVm | undefined = name === null ? undefined : this.#log.vm(name);
    const migrationBefore = name === null ? undefined : this.#log.migrationOf(name);
    const result = this.#log.apply(cmd);
    if (!result.ok) {
      this.#counts.refusals++;
      this.#trace(`log ${cmd.kind} ${name ?? ''} refused: ${result.code}${'id' in cmd ? ` (${cmd.id}: ${result.message})` : ''}`);
      return result;
    }
    this.#trace(`log ${cmd.kind} ${name ?? ''}${cmd.kind === 'assign' ? ` -> ${cmd.region}/${cmd.provider} g${cmd.generation}` : cmd.kind === 'set-power' ? ` ${cmd.power}` : ''}${result.migration === undefined ? '' : ` ${result.migration}`}${cmd.kind === 'migration-progress' ? ` ${cmd.phase}${cmd.reason === undefined ? '' : ` (${cmd.reason})`}` : cmd.kind === 'migration-end' ? ` ${cmd.result}${cmd.reason === undefined ? '' : ` (${cmd.reason})`}` : ''}`);
    if (name === null) return result;
    const after = this.#log.vm(name);
    if (after === undefined) return result;
    const old = before?.assignment ?? null;
    switch (cmd.kind) {
      case 'assign': {
        const last = this.#lastGeneration.get(name) ?? 0;
        if (cmd.generation <= last) this.#fail(`invariant 2: ${name} accepted generation ${cmd.generation}, not above its earlier ${last}`);
        this.#lastGeneration.set(name, cmd.generation);
        if (old !== null && before !== undefined && !before.deleted) this.#shadowMove(old.region, old.provider, demandOf(before.spec), -1);
        this.#shadowMove(cmd.region, cmd.provider, demandOf(after.spec), +1);
        if (old !== null) this.#shadowAgrees(old.region, old.provider);
        this.#shadowAgrees(cmd.region, cmd.provider);
        if (old !== null) this.#assigned.get(old.region)?.delete(name);
        this.#assigned.get(cmd.region)?.add(name);
        this.#changedAt.set(name, this.#now);
        this.#maybeProtect(after, cmd.region);
        break;
      }
      case 'delete':
        if (before !== undefined && !before.deleted) {
          this.#counts.deleted++;
          if (old !== null) {
            this.#shadowMove(old.region, old.provider, demandOf(before.spec), -1);
            this.#shadowAgrees(old.region, old.provider);
          }
          if (migrationBefore !== undefined) this.#migrationEnded(migrationBefore, demandOf(before.spec));
          this.#changedAt.set(name, this.#now);
        }
        break;
      case 'migration-start': {
        const m = this.#log.migrationOf(name);
        if (m === undefined || old === null || result.migration !== m.id) return this.#fail(`migration-start of ${name} accepted but no migration is recorded`);
        const last = this.#lastGeneration.get(name) ?? 0;
        if (m.target.generation <= last) this.#fail(`invariant 2: ${name}'s migration ${m.id} took generation ${m.target.generation}, not above its earlier ${last}`);
        this.#lastGeneration.set(name, m.target.generation);
        this.#shadowMove(m.target.region, m.target.provider, demandOf(after.spec), +1);
        this.#shadowAgrees(m.target.region, m.target.provider);
        let list = this.#migrationsOf.get(name);
        if (list === undefined) this.#migrationsOf.set(name, (list = []));
        list.push(m);
        this.#mig.started++;
        if (m.mode === 'live') this.#mig.live++;
        if (m.purpose === 'failback') this.#drCounts.failbacksStarted++;
        this.#crashAtStep(m, 'prepare');
        break;
      }
      case 'migration-progress':
        if (migrationBefore !== undefined && cmd.phase !== migrationBefore.phase) {
          // Rolling back: the incoming copy is stale from now on.
          if (cmd.phase === 'rolling-back') this.#changedAt.set(name, this.#now);
          this.#crashAtStep(migrationBefore, cmd.phase);
        }
        break;
      case 'migration-cutover': {
        const m = this.#log.migrationOf(name);
        if (m === undefined || migrationBefore === undefined || old === null) return this.#fail(`migration-cutover of ${name} accepted without a migration under way`);
        if (isCutOver(migrationBefore.phase)) break;
        const a = after.assignment;
        if (a?.region !== m.target.region || a.provider !== m.target.provider || a.generation !== m.target.generation) this.#fail(`migration-cutover of ${name} (${m.id}) left it at ${a?.region}/${a?.provider} g${a?.generation}, not at its target`);
        // The ledger's sums do not move: the reservation and the assignment swap sides.
        this.#shadowAgrees(old.region, old.provider);
        this.#shadowAgrees(m.target.region, m.target.provider);
        this.#assigned.get(old.region)?.delete(name);
        this.#assigned.get(m.target.region)?.add(name);
        this.#changedAt.set(name, this.#now);
        this.#crashAtStep(m, 'verify');
        break;
      }
      case 'migration-end': {
        if (migrationBefore === undefined || migrationBefore.id !== cmd.id) break; // a repeat of an end already applied
        const a = after.assignment;
        const want = cmd.result === 'completed' ? migrationBefore.target : cmd.result === 'rolled-back' ? migrationBefore.source : isCutOver(migrationBefore.phase) ? migrationBefore.target : migrationBefore.source;
        if (a?.region !== want.region || a.generation !== want.generation) this.#fail(`${cmd.id} of ${name} ended ${cmd.result} with the VM at ${a?.region} g${a?.generation}, not at ${want.region} g${want.generation}`);
        if (cmd.result !== 'completed' && (cmd.reason ?? '') === '') this.#fail(`${cmd.id} of ${name} ended ${cmd.result} without a reason`);
        this.#migrationEnded(migrationBefore, demandOf(after.spec));
        if (cmd.result === 'completed') this.#mig.completed++;
        if (cmd.result === 'completed' && migrationBefore.purpose === 'failback') this.#drCounts.failbacksCompleted++;
        else if (cmd.result === 'rolled-back') this.#mig.rolledBack++;
        else this.#mig.failed++;
        break;
      }
      case 'failover': {
        if (old === null || before === undefined) return this.#fail(`failover of ${name} accepted for a VM that was not assigned`);
        const a = after.assignment;
        if (a === null || a.generation !== after.generation || a.region !== before.protection?.drRegion) this.#fail(`failover of ${name} left it at ${a?.region} g${a?.generation}, not at its DR region ${before.protection?.drRegion}`);
        const last = this.#lastGeneration.get(name) ?? 0;
        if (a === null || a.generation <= last) this.#fail(`invariant 2: ${name}'s failover took generation ${a?.generation}, not above its earlier ${last}`);
        this.#lastGeneration.set(name, a.generation);
        // The migration under way ends first (its reservation released), then the assignment moves; compared once all moved.
        const held = migrationBefore === undefined ? null : reservedAt(migrationBefore);
        if (held !== null) this.#shadowMove(held.region, held.provider, demandOf(before.spec), -1);
        this.#shadowMove(old.region, old.provider, demandOf(before.spec), -1);
        this.#shadowMove(a.region, a.provider, demandOf(after.spec), +1);
        for (const at of [...(held === null ? [] : [held]), old, a]) this.#shadowAgrees(at.region, at.provider);
        this.#assigned.get(old.region)?.delete(name);
        this.#assigned.get(a.region)?.add(name);
        this.#changedAt.set(name, this.#now);
        this.#drCounts.failovers++;
        this.#recovering.set(name, { lostSince: this.#unhealthySince.get(old.region) ?? this.#now, committedAt: this.#now, region: a.region, provider: a.provider, generation: a.generation });
        break;
      }
      case 'protect':
        if (before?.protection === null) {
          this.#drCounts.protected++;
          this.#protectedAt.set(name, this.#now);
        }
        break;
      case 'create':
        // A new incarnation over a tombstone is unassigned: the old copy's region no longer holds it.
        if (old !== null) this.#assigned.get(old.region)?.delete(name);
        this.#changedAt.set(name, this.#now);
        break;
      default:
        break;
    }
    return result;
  }

  /** DR seeds: an operator protects a share of the VMs as they are first placed, with a random other region as DR region. */
  #maybeProtect(vm: FleetVm, region: string): void {
    const dr = this.#s.dr;
    if (dr === null || vm.protection !== null || vm.generation !== 1 || !this.#drRng.chance(dr.protectShare)) return;
    const others = this.#regions.filter((r) => r.name !== region);
    if (others.length === 0) return;
    const drRegion = this.#drRng.pick(others).name;
    this.#propose(region, [parseFleetCommand({ kind: 'protect', vm: vm.name, drRegion, failback: this.#drRng.chance(0.8) ? 'auto' : 'manual' })], () => undefined);
  }

  /** A migration ended (or its VM was deleted): the shadow ledger gives back the side it held; its incoming copy is stale from now on. */
  #migrationEnded(m: FleetMigration, demand: ResourceAmounts): void {
    const held = reservedAt(m);
    this.#shadowMove(held.region, held.provider, demand, -1);
    this.#shadowAgrees(held.region, held.provider);
    this.#changedAt.set(m.vm, this.#now);
  }

  /** During chaos, a migration step committed: now and then its source or target region crashes right at it. */
  #crashAtStep(m: FleetMigration, phase: string): void {
    if (!this.#chaosOn || !this.#migRng.chance(this.#s.migrationCrash)) return;
    const side = this.#migRng.chance(0.5) ? 'source' : 'target';
    const r = this.#byName.get(m[side].region);
    if (r === undefined || !r.up) return;
    const key = `${phase}:${side}`;
    this.#migrationCrashes[key] = (this.#migrationCrashes[key] ?? 0) + 1;
    this.#crash(r, this.#now + this.#migRng.between(this.#s.downMs[0], this.#s.downMs[1]));
  }

  /** Invariant 1, per command: the shadow ledger moves with the accepted command and stays within the limits (#shadowAgrees then compares it with the machine's). */
  #shadowMove(region: string, provider: string, demand: ResourceAmounts, sign: 1 | -1): void {
    this.#counts.invariantChecks++;
    const key = `${region}/${provider}`;
    const shadow = this.#shadow.get(key);
    const limits = this.#log.region(region)?.providers.find((p) => p.name === provider)?.limits;
    if (shadow === undefined || limits === undefined) return this.#fail(`invariant 1: ${key} is not registered`);
    for (const r of RESOURCES) {
      shadow[r] += sign * demand[r];
      const limit = limits[r];
      if (shadow[r] < 0) this.#fail(`invariant 1: ${key} ${r} usage went negative (${shadow[r]})`);
      if (sign > 0 && limit !== null && shadow[r] > limit) this.#fail(`invariant 1: ${key} over-committed: ${r} ${shadow[r]} above ${limit}`);
    }
  }

  #shadowAgrees(region: string, provider: string): void {
    const key = `${region}/${provider}`;
    const shadow = this.#shadow.get(key);
    const usage = this.#log.usage(region, provider);
    if (shadow === undefined || usage === undefined) return this.#fail(`invariant 1: ${key} is not registered`);
    for (const r of RESOURCES) if (usage[r] !== shadow[r]) this.#fail(`invariant 1: ${key} ${r}: the log accounts ${usage[r]}, the accepted commands ${shadow[r]}`);
  }

  // Schedulers.

  #health(): ObservedFleet {
    const health = new Map<string, RegionHealth>();
    for (const r of this.#regions) if (!r.up || r.partitioned) health.set(r.name, { phi: 12, suspected: true });
    return { health };
  }

  #schedule(region: SimRegion): void {
    if (region.requests.length === 0) return;
    let observed: ObservedFleet | null = null;
    // Plans on the log's state with its own unanswered plans counted as used (withPlansInFlight): a real scheduler's view.
    const inFlight = region.requests.flatMap((r) => (r.waiting === null ? [] : [{ region: r.waiting.plan.region, provider: r.waiting.plan.provider, spec: r.progress.request.spec }]));
    for (const request of [...region.requests]) {
      if (request.waiting !== null) continue;
      observed ??= this.#health();
      const plan = planCreate(request.progress, withPlansInFlight(this.#log, inFlight), observed, this.#s.scheduler, this.#rng.next());
      if (plan.kind === 'failed') {
        this.#finishRequest(region, request, plan.code, plan.reasons);
        continue;
      }
      if (plan.kind === 'placed') {
        this.#placed.add(plan.vm);
        region.requests.splice(region.requests.indexOf(request), 1);
        continue;
      }
      const proposal = this.#propose(region.name, plan.commands, (results) => this.#judge(region, request, plan, results));
      if (proposal === null) {
        // The log's queue is full: the plan was never proposed; try again next step.
        continue;
      }
      request.waiting = { plan, proposal };
      inFlight.push({ region: plan.region, provider: plan.provider, spec: request.progress.request.spec });
    }
  }

  #judge(region: SimRegion, request: ClientRequest, plan: Extract<SchedulePlan, { kind: 'propose' }>, results: readonly FleetResult[]): void {
    // A scheduler that crashed or was cut off never hears the answer; its client re-sent the request elsewhere.
    if (request.waiting?.proposal === undefined || !region.requests.includes(request)) return;
    request.waiting = null;
    const verdict = judgePlan(plan, results, this.#s.scheduler);
    if (verdict.kind === 'placed') {
      this.#placed.add(verdict.vm);
      region.requests.splice(region.requests.indexOf(request), 1);
      this.#trace(`${region.name} placed ${verdict.vm} at ${verdict.region}/${verdict.provider} g${verdict.generation}`);
    } else if (verdict.kind === 'replan') {
      this.#counts.replans++;
      request.progress = verdict.progress;
    } else this.#finishRequest(region, request, verdict.code, verdict.reasons);
  }

  #finishRequest(region: SimRegion, request: ClientRequest, code: string, reasons: readonly string[]): void {
    region.requests.splice(region.requests.indexOf(request), 1);
    this.#failureCodes[code] = (this.#failureCodes[code] ?? 0) + 1;
    if (reasons.length === 0) this.#fail(`scheduler failed ${request.progress.request.spec.name} without a reason`);
    this.#schedulingFailures.set(request.progress.request.spec.name, reasons);
    this.#trace(`${region.name} failed to place ${request.progress.request.spec.name}: ${reasons.join(' | ')}`);
  }

  // Reconcilers.

  #liveView(): DesiredFleetView {
    return this.#log;
  }

  /** What a region keeps of the log when it loses it: the VMs it holds or has copies of, as they were. */
  #freeze(r: SimRegion): DesiredFleetView {
    const names = new Set(this.#assigned.get(r.name) ?? []);
    for (const byId of r.instances.values()) for (const inst of byId.values()) if (inst.vmName !== undefined) names.add(inst.vmName);
    const vms = new Map<string, FleetVm>();
    for (const name of names) {
      const vm = this.#log.vm(name);
      if (vm !== undefined) vms.set(name, vm);
    }
    const assigned = sortedNames([...vms.values()].filter((vm) => vm.assignment?.region === r.name).map((vm) => vm.name)).map((name) => vms.get(name) as FleetVm);
    const migrations = new Map(this.#log.migrations().map((m) => [m.vm, m]));
    const into = this.#log.migrationsInto(r.name);
    return { vm: (name) => vms.get(name), vmsAssignedTo: (region) => (region === r.name ? assigned : []), migrationOf: (vm) => migrations.get(vm), migrationsInto: (region) => (region === r.name ? into : []) };
  }

  #observed(r: SimRegion): ObservedVm[] {
    const out: ObservedVm[] = [];
    for (const byId of r.instances.values()) {
      for (const inst of byId.values()) {
        out.push({
          provider: inst.provider,
          id: inst.id,
          name: inst.name,
          state: inst.state,
          managed: inst.managed,
          ...(inst.vmName === undefined ? {} : { vmName: inst.vmName }),
          ...(inst.generation === undefined ? {} : { generation: inst.generation }),
          ...(inst.migration === undefined ? {} : { migration: inst.migration }),
        });
      }
    }
    return out;
  }

  #pass(r: SimRegion): void {
    const view = r.partitioned ? r.frozen : this.#liveView();
    if (view === null) return; // restarted while cut off: no view of desired state at all, so it acts on nothing
    const outcomes = r.outcomes;
    r.outcomes = [];
    const observed = this.#observed(r);
    if (!r.partitioned) r.logSeenAt = this.#now;
    const { actions, memory } = (this.#s.reconcile ?? reconcile)({ region: r.name, desired: view, observed, memory: r.memory, outcomes, inFlight: new Set(r.inFlight.keys()), now: this.#now, options: this.#s.reconciler, logSeenAt: r.logSeenAt });
    r.memory = memory;
    r.lastPassAt = this.#now;
    for (const action of actions) this.#execute(r, view, action);
    // What the region publishes of its copies (the geo store is not the log: it reaches others unless the region is cut off).
    if (!r.partitioned) r.report = { at: this.#now, copies: this.#observed(r).filter((c) => c.managed && c.vmName !== undefined).map((c) => ({ provider: c.provider, vmName: c.vmName ?? '', state: c.state, ...(c.generation === undefined ? {} : { generation: c.generation }), ...(c.migration === undefined ? {} : { migration: c.migration }) })) };
    this.#coordinate(r, view);
  }

  // Migrations.

  /** Runs the coordinator of every migration out of this region on the region's view of the log (frozen while cut off). */
  #coordinate(r: SimRegion, view: DesiredFleetView): void {
    const migrations = (r.partitioned ? (r.frozenMigrations ?? []) : this.#log.migrations()).filter((m) => m.source.region === r.name);
    const live = new Set(migrations.map((m) => m.id));
    for (const id of r.coordinators.keys()) if (!live.has(id)) r.coordinators.delete(id);
    for (const id of r.transfers.keys()) if (!live.has(id)) r.transfers.delete(id);
    for (const m of migrations) {
      let c = r.coordinators.get(m.id);
      if (c === undefined) r.coordinators.set(m.id, (c = { memory: EMPTY_COORDINATOR_MEMORY, inFlight: new Set(), outcomes: [] }));
      const outcomes = c.outcomes;
      c.outcomes = [];
      const result = (this.#s.coordinate ?? coordinate)({
        migration: m,
        power: view.vm(m.vm)?.power ?? 'running',
        observed: { source: this.#sourceCopy(r, m), target: this.#targetCopy(m), transfer: this.#transferStatus(r, m.id) },
        memory: c.memory,
        outcomes,
        inFlight: c.inFlight,
        now: this.#now,
        options: this.#s.coordinator,
      });
      if (m.phase === 'rolling-back' && result.memory.targetMayRun && result.effects.length === 0 && c.memory.phase === 'rolling-back') this.#mig.targetWaits++;
      c.memory = result.memory;
      for (const effect of result.effects) this.#runEffect(r, m, c, effect);
    }
  }

  #sourceCopy(r: SimRegion, m: FleetMigration): SourceCopy {
    const inst = r.instances.get(m.source.provider);
    for (const i of inst?.values() ?? []) {
      if (i.managed && i.vmName === m.vm && i.generation === m.source.generation && i.state !== 'terminated') return { state: i.state, paused: i.paused };
    }
    return 'absent';
  }

  /** The target's copy as its last report shows it: tagged with the migration before cutover, at the target generation after. */
  #targetCopy(m: FleetMigration): TargetCopy {
    const report = this.#byName.get(m.target.region)?.report ?? null;
    if (report === null) return { state: null, asOf: 0 };
    const staleAfter = 3 * this.#s.passEveryMs;
    if (this.#now - report.at > staleAfter) return { state: null, asOf: report.at };
    const copy = report.copies.find((c) => c.vmName === m.vm && c.provider === m.target.provider && c.generation === m.target.generation && (isCutOver(m.phase) || c.migration === m.id));
    return { state: copy?.state ?? 'absent', asOf: report.at };
  }

  #transferStatus(r: SimRegion, id: string): TransferStatus | null {
    const t = r.transfers.get(id);
    if (t === undefined) return null;
    return { step: t.step, status: t.status, bytes: t.bytes, rounds: t.rounds, progressAt: t.progressAt, targetMayRun: t.targetMayRun, ...(t.error === undefined ? {} : { error: t.error }), ...(t.downtimeMs === undefined ? {} : { downtimeMs: t.downtimeMs }) };
  }

  #runEffect(r: SimRegion, m: FleetMigration, c: SimCoordinator, effect: CoordinatorEffect): void {
    const key = effectKey(effect);
    if (c.inFlight.has(key)) this.#fail(`${r.name}'s coordinator of ${m.id} issued ${effect.kind} while its ${key} was in flight`);
    this.#trace(`${r.name} coordinator ${m.id} ${effect.kind}${effect.kind === 'start-transfer' ? ` ${effect.step}` : effect.kind === 'propose' ? ` ${effect.command.kind}${'phase' in effect.command ? ` ${effect.command.phase}` : 'result' in effect.command ? ` ${effect.command.result}` : ''}` : ''}`);
    const rng = this.#migRng;
    const epoch = r.epoch;
    switch (effect.kind) {
      case 'propose': {
        c.inFlight.add(key);
        const lose = r.partitioned ? 'before' : rng.chance(this.#s.proposalLoss) ? (rng.chance(0.5) ? 'before' : 'answer') : null;
        const lost = () => {
          this.#mig.lostProposals++;
          this.#events.push(this.#now + 3_000, { kind: 'lost', region: r.name, id: m.id, effect, epoch });
        };
        if (lose === 'before') return lost();
        const proposal = this.#propose(r.name, [parseFleetCommand(effect.command)], (results) => {
          if (lose === 'answer') return lost();
          if (r.epoch !== epoch) return;
          c.inFlight.delete(key);
          const result = results[0];
          c.outcomes.push({ effect, result: result?.ok === true ? 'ok' : 'refused', ...(result !== undefined && !result.ok ? { error: `${result.code}: ${result.message}` } : {}), at: this.#now });
        });
        if (proposal === null) lost();
        return;
      }
      case 'stop-source':
      case 'resume-source': {
        c.inFlight.add(key);
        const inst = [...(r.instances.get(m.source.provider)?.values() ?? [])].find((i) => i.managed && i.vmName === m.vm && i.generation === m.source.generation && i.state !== 'terminated');
        const f = this.#s.failure;
        let fail: string | null = null;
        if (inst === undefined) fail = `the source copy of ${m.vm} is gone`;
        else if (effect.kind === 'stop-source') {
          if (inst.state !== 'running') fail = `IncorrectInstanceState: ${inst.id} is ${inst.state}`;
          else if (this.#providerRng.chance(f.stop)) fail = `InternalError: stop of ${inst.id} failed`;
          else this.#setState(r, inst, 'stopping');
        } else if (inst.paused) {
          // Resuming a paused source (QEMU's cont) is immediate.
        } else if (inst.state !== 'stopped') fail = `IncorrectInstanceState: ${inst.id} is ${inst.state}`;
        else if (this.#providerRng.chance(f.start)) fail = `InternalError: start of ${inst.id} failed`;
        else this.#setState(r, inst, 'pending');
        this.#events.push(this.#opTime(r), { kind: 'mop', region: r.name, id: m.id, effect, epoch, fail });
        return;
      }
      case 'start-transfer': {
        const [lo, hi] = this.#s.transferMs;
        const duration = rng.between(lo, hi);
        const failAt = rng.chance(this.#s.transferFailure) ? this.#now + rng.int(duration) : null;
        r.transfers.set(m.id, { id: m.id, step: effect.step, status: 'running', bytes: 0, rounds: 0, progressAt: this.#now, doneAt: this.#now + duration, failAt, targetMayRun: false });
        c.outcomes.push({ effect, result: 'ok', at: this.#now });
        return;
      }
      case 'cancel-transfer': {
        const t = r.transfers.get(m.id);
        if (t !== undefined && t.status === 'running') {
          t.status = 'failed';
          t.error = 'cancelled';
        }
        c.outcomes.push({ effect, result: 'ok', at: this.#now });
        return;
      }
    }
  }

  /** A coordinator's operation on its source copy finished (the provider finishes it whether or not the daemon is still there). */
  #finishMigrationOp(regionName: string, id: string, effect: CoordinatorEffect, epoch: number, fail: string | null): void {
    const r = this.#byName.get(regionName);
    if (r === undefined) return;
    if (fail === null) {
      const m = this.#log.migration(id) ?? r.frozenMigrations?.find((x) => x.id === id);
      const inst = m === undefined ? undefined : [...(r.instances.get(m.source.provider)?.values() ?? [])].find((i) => i.managed && i.vmName === m.vm && i.generation === m.source.generation);
      if (inst !== undefined) {
        if (effect.kind === 'stop-source' && inst.state === 'stopping') this.#setState(r, inst, 'stopped');
        if (effect.kind === 'resume-source' && inst.paused) this.#setState(r, inst, 'running');
        else if (effect.kind === 'resume-source' && inst.state === 'pending') this.#setState(r, inst, 'running');
      }
    } else this.#counts.providerErrors++;
    const c = r.coordinators.get(id);
    if (epoch !== r.epoch || c === undefined) return;
    c.inFlight.delete(effectKey(effect));
    c.outcomes.push({ effect, result: fail === null ? 'ok' : 'error', ...(fail === null ? {} : { error: fail }), at: this.#now });
  }

  #lostAnswer(regionName: string, id: string, effect: CoordinatorEffect, epoch: number): void {
    const r = this.#byName.get(regionName);
    const c = r?.coordinators.get(id);
    if (r === undefined || c === undefined || epoch !== r.epoch) return;
    c.inFlight.delete(effectKey(effect));
    c.outcomes.push({ effect, result: 'error', error: 'the log did not answer', at: this.#now });
  }

  /** Transfers move on: progress, fail, stall without the target, complete (a live one pausing the source and running the target's copy). */
  #advanceTransfers(): void {
    for (const r of this.#regions) {
      if (!r.up) continue;
      for (const t of r.transfers.values()) {
        if (t.status !== 'running') continue;
        const m = this.#log.migration(t.id) ?? r.frozenMigrations?.find((x) => x.id === t.id);
        const target = m === undefined ? undefined : this.#byName.get(m.target.region);
        if (m === undefined || target === undefined || !target.up || target.partitioned || r.partitioned) {
          // The stream rides the mesh between the two daemons: no progress without both.
          continue;
        }
        if (t.failAt !== null && this.#now >= t.failAt) {
          t.status = 'failed';
          t.error = 'the stream to the target broke';
          this.#mig.transferFailures++;
          continue;
        }
        t.bytes += 1 + this.#migRng.int(1 << 20);
        t.rounds += t.step === 'final' ? 0 : 1;
        t.progressAt = this.#now;
        if (this.#now < t.doneAt) continue;
        if (t.step === 'live') {
          const src = [...(r.instances.get(m.source.provider)?.values() ?? [])].find((i) => i.managed && i.vmName === m.vm && i.generation === m.source.generation);
          const dst = [...(target.instances.get(m.target.provider)?.values() ?? [])].find((i) => i.migration === m.id && i.generation === m.target.generation);
          if (src === undefined || src.state !== 'running' || src.paused || dst === undefined || dst.state !== 'stopped') {
            t.status = 'failed';
            t.error = `the live transfer could not complete (source ${src?.state ?? 'gone'}, target ${dst?.state ?? 'gone'})`;
            continue;
          }
          // QEMU's stop-and-copy: the source pauses, the target runs the guest.
          this.#setState(r, src, 'running', true);
          this.#setState(target, dst, 'running');
          t.targetMayRun = true;
          t.downtimeMs = this.#migRng.between(20, 300);
          this.#mig.liveCompletions++;
          this.#trace(`${r.name} live transfer of ${m.id} completed: ${r.name}/${src.id} paused, ${target.name}/${dst.id} runs`);
          // The riskiest moment: both daemons hold a copy that can run. Crash one of them often here.
          if (this.#chaosOn && this.#migRng.chance(0.3)) {
            const side = this.#migRng.chance(0.5) ? 'source' : 'target';
            const victim = side === 'source' ? r : target;
            this.#migrationCrashes[`live-completed:${side}`] = (this.#migrationCrashes[`live-completed:${side}`] ?? 0) + 1;
            t.status = 'done';
            this.#crash(victim, this.#now + this.#migRng.between(this.#s.downMs[0], this.#s.downMs[1]));
            continue;
          }
        }
        t.status = 'done';
      }
    }
  }

  /** Chaos: an operator migrates a random VM to another region, or cancels a migration under way. */
  #migrationChaos(operator: string): void {
    const s = this.#s;
    const rng = this.#migRng;
    const seconds = s.tickMs / 1000;
    if (rng.chance(s.migratePerSecond * seconds)) {
      const region = rng.pick(this.#regions);
      const names = sortedNames(this.#assigned.get(region.name) ?? []);
      const vm = names.length === 0 ? undefined : this.#log.vm(rng.pick(names));
      const a = vm?.assignment ?? null;
      const targets = this.#regions.filter((t) => t.name !== region.name);
      if (vm !== undefined && !vm.deleted && a !== null && a.provider === 'local' && targets.length > 0) {
        const mode: MigrationMode = s.onPremKind === 'qemu' ? rng.pick(['live', 'live', 'live', 'warm', 'cold'] as const) : rng.pick(['warm', 'cold'] as const);
        const target = rng.pick(targets);
        this.#trace(`operator migrates ${vm.name} (${mode}) from ${a.region} to ${target.name}`);
        this.#propose(operator, [parseFleetCommand({ kind: 'migration-start', vm: vm.name, generation: a.generation, region: target.name, provider: 'local', mode, at: this.#now })], () => undefined);
      }
    }
    if (rng.chance(s.cancelPerSecond * seconds)) {
      const under = this.#log.migrations().filter((m) => !isCutOver(m.phase) && m.phase !== 'rolling-back');
      if (under.length > 0) {
        const m = rng.pick(under);
        this.#mig.cancels++;
        this.#trace(`operator cancels ${m.id}`);
        this.#propose(operator, [parseFleetCommand({ kind: 'migration-progress', id: m.id, phase: 'rolling-back', reason: 'cancelled by operator', at: this.#now })], () => undefined);
      }
    }
  }

  #execute(r: SimRegion, view: DesiredFleetView, action: ReconcileAction): void {
    switch (action.kind) {
      case 'status':
        r.statuses.set(action.vm, { status: action.status, generation: action.generation, ...(action.reason === undefined ? {} : { reason: action.reason }) });
        if (action.status === 'failed' && (action.reason === undefined || action.reason === '')) this.#fail(`${r.name} reported ${action.vm} failed without a reason`);
        this.#trace(`${r.name} status ${action.vm} g${action.generation} ${action.status}${action.reason === undefined ? '' : ` (${action.reason})`}`);
        return;
      case 'refuse-migration': {
        const key = `${r.name}/${action.migration}`;
        if (this.#refusing.has(key)) return;
        if (action.reason === '') this.#fail(`${r.name} refused ${action.migration} without a reason`);
        this.#trace(`${r.name} refuses ${action.migration} (${action.vm}): ${action.reason}`);
        this.#mig.refusedByTarget++;
        this.#refusing.add(key);
        const proposal = this.#propose(r.name, [parseFleetCommand({ kind: 'migration-progress', id: action.migration, phase: 'rolling-back', from: 'prepare', reason: `${r.name} could not prepare a copy of ${action.vm}: ${action.reason}`, at: this.#now })], () => this.#refusing.delete(key));
        if (proposal === null) this.#refusing.delete(key);
        return;
      }
      case 'orphan':
        this.#counts.orphanReports++;
        r.orphansSeen.add(copyKey(action.provider, action.id));
        if (action.id === 'i-stray') this.#fail(`${r.name} reported the unmanaged instance as an orphan`);
        return;
      default:
        break;
    }
    const key = actionKey(action);
    if (key === null) return;
    if (r.inFlight.has(key)) this.#fail(`${r.name} issued ${key} while it was in flight`);
    if (action.kind === 'create' || action.kind === 'start') this.#checkSanctioned(r, view, action);
    if (action.kind === 'terminate' && action.id === 'i-orphan') this.#fail(`${r.name} terminated the orphan`);
    if ((action.kind === 'stop' && action.fence !== undefined) || action.kind === 'terminate') this.#counts.fences++;
    if (action.kind === 'stop' && action.fence === 'self-fence') this.#drCounts.selfFences++;
    this.#trace(`${r.name} ${action.kind} ${action.vm}${'id' in action ? ` ${action.provider}/${action.id}` : ` ${action.provider}`} g${action.generation}${action.kind === 'stop' && action.fence !== undefined ? ` (fence: ${action.fence})` : action.kind === 'terminate' ? ` (${action.reason})` : ''}`);
    r.inFlight.set(key, { action, epoch: r.epoch });
    this.#startOp(r, action);
  }

  /** Invariant 3 at the provider call: a start or create only for the generation the region's view holds, and fencing first. */
  #checkSanctioned(r: SimRegion, view: DesiredFleetView, action: Extract<ReconcileAction, { kind: 'create' | 'start' }>): void {
    this.#counts.invariantChecks++;
    const vm = view.vm(action.vm);
    if (action.kind === 'create' && action.incoming !== undefined) {
      // A migration's incoming copy: only for the migration the view has under way into here, at the generation it took.
      const m = view.migrationOf(action.vm);
      const t = m?.target;
      if (m === undefined || m.id !== action.incoming || !wantsIncomingCopy(m.phase) || t?.region !== r.name || t.provider !== action.provider || t.generation !== action.generation) {
        this.#fail(`invariant 5: ${r.name} creates an incoming copy of ${action.vm} for ${action.incoming} g${action.generation}, but its view has ${m === undefined ? 'no migration' : `${m.id} ${m.phase} to ${m.target.region} g${m.target.generation}`}`);
      }
      return;
    }
    const a = vm?.assignment ?? null;
    if (vm === undefined || vm.deleted || a === null || a.region !== r.name || a.provider !== action.provider || a.generation !== action.generation) {
      this.#fail(`invariant 3: ${r.name} ${action.kind}s ${action.vm} g${action.generation} on ${action.provider}, but its view assigns ${a === null ? 'nothing' : `${a.region}/${a.provider} g${a.generation}`}${vm?.deleted === true ? ' (deleted)' : ''}`);
    }
    for (const byId of r.instances.values()) {
      for (const inst of byId.values()) {
        if (inst.vmName !== action.vm || !inst.managed) continue;
        const mayRun = inst.state === 'running' || inst.state === 'pending' || inst.state === 'stopping';
        const current = isCurrentCopy(r.name, vm, { provider: inst.provider, id: inst.id, name: inst.name, state: inst.state, managed: true, ...(inst.generation === undefined ? {} : { generation: inst.generation }) });
        if (mayRun && !current) this.#fail(`invariant 3: ${r.name} ${action.kind}s ${action.vm} g${action.generation} while its stale copy ${inst.provider}/${inst.id} (g${inst.generation ?? '?'}) is ${inst.state}`);
      }
    }
  }

  // Providers.

  #setState(r: SimRegion, inst: SimInstance, state: ObservedVmState, paused = false): void {
    inst.state = state;
    inst.paused = state === 'running' && paused;
    if (inst.vmName === undefined || !inst.managed) return;
    let set = this.#running.get(inst.vmName);
    if ((state === 'running' || state === 'pending') && !inst.paused) {
      if (set === undefined) this.#running.set(inst.vmName, (set = new Set()));
      set.add(inst);
      this.#instanceRegion.set(inst, r);
    } else if (set !== undefined) {
      set.delete(inst);
      if (set.size === 0) this.#running.delete(inst.vmName);
    }
  }

  #opTime(r?: SimRegion): number {
    const [lo, hi] = this.#s.opMs;
    const factor = r?.slow === true ? (this.#s.dr?.slowFactor ?? 1) : 1;
    return this.#now + this.#providerRng.between(lo, hi) * factor;
  }

  #startOp(r: SimRegion, action: ReconcileAction): void {
    const rng = this.#providerRng;
    const f = this.#s.failure;
    let fail: string | null = null;
    switch (action.kind) {
      case 'create': {
        if (r.tokens.has(action.token)) break; // an idempotent retry: the same instance, nothing new
        if (rng.chance(f.capacity)) fail = `InsufficientInstanceCapacity: ${r.name}/${action.provider} has no capacity for ${action.spec.vcpus} vCPUs`;
        else if (rng.chance(f.create)) fail = `InternalError: launch of ${action.vm} failed`;
        else {
          const inst: SimInstance = {
            provider: action.provider,
            id: `i-${this.#nextId++}`,
            name: action.vm,
            state: 'pending',
            managed: true,
            vmName: action.vm,
            generation: action.generation,
            token: action.token,
            ...(action.incoming === undefined ? {} : { migration: action.incoming }),
            paused: false,
          };
          r.instances.get(action.provider)?.set(inst.id, inst);
          r.tokens.set(action.token, inst.id);
          // A migration's incoming copy is prepared, not booted: stopped from the start.
          this.#setState(r, inst, action.incoming === undefined ? 'pending' : 'stopped');
        }
        break;
      }
      case 'start': {
        const inst = r.instances.get(action.provider)?.get(action.id);
        if (inst === undefined || inst.state !== 'stopped') fail = `IncorrectInstanceState: ${action.id} is ${inst?.state ?? 'gone'}`;
        else if (rng.chance(f.start)) fail = `InternalError: start of ${action.id} failed`;
        else this.#setState(r, inst, 'pending');
        break;
      }
      case 'stop': {
        const inst = r.instances.get(action.provider)?.get(action.id);
        if (inst === undefined || inst.state !== 'running') fail = `IncorrectInstanceState: ${action.id} is ${inst?.state ?? 'gone'}`;
        else if (rng.chance(f.stop)) fail = `InternalError: stop of ${action.id} failed`;
        else this.#setState(r, inst, 'stopping');
        break;
      }
      case 'terminate': {
        const inst = r.instances.get(action.provider)?.get(action.id);
        if (inst === undefined) break; // already gone: terminating twice is fine
        if (rng.chance(f.terminate)) fail = `InternalError: terminate of ${action.id} failed`;
        // A stopped instance stays stopped until it is gone; a running one shuts down.
        else if (inst.state !== 'stopped') this.#setState(r, inst, 'stopping');
        break;
      }
      default:
        return;
    }
    if (fail !== null) this.#counts.providerErrors++;
    if (fail !== null && action.kind !== 'terminate') this.#recovering.delete(action.vm);
    this.#events.push(this.#opTime(r), { kind: 'op', region: r.name, action, epoch: r.epoch, fail });
  }

  #finishOp(regionName: string, action: ReconcileAction, epoch: number, fail: string | null): void {
    const r = this.#byName.get(regionName);
    if (r === undefined) return;
    // The provider finishes whatever it accepted, whether or not the daemon that asked is still there.
    if (fail === null) {
      if (action.kind === 'create') {
        const id = r.tokens.get(action.token);
        const inst = id === undefined ? undefined : r.instances.get(action.provider)?.get(id);
        if (inst !== undefined && inst.state === 'pending') this.#setState(r, inst, 'running');
      } else if (action.kind === 'start' || action.kind === 'stop' || action.kind === 'terminate') {
        const inst = r.instances.get(action.provider)?.get(action.id);
        if (inst !== undefined) {
          if (action.kind === 'start' && inst.state === 'pending') this.#setState(r, inst, 'running');
          if (action.kind === 'stop' && inst.state === 'stopping') this.#setState(r, inst, 'stopped');
          if (action.kind === 'terminate') {
            this.#setState(r, inst, 'terminated');
            r.instances.get(action.provider)?.delete(action.id);
            if (inst.token !== undefined) r.tokens.delete(inst.token);
          }
        }
      }
    }
    if (epoch !== r.epoch) return; // the daemon that asked crashed since: nobody hears the answer
    const key = actionKey(action);
    if (key !== null) r.inFlight.delete(key);
    r.outcomes.push({ action, ok: fail === null, ...(fail === null ? {} : { error: fail }), at: this.#now });
  }

  #hostFailures(): void {
    const p = (this.#s.hostFailurePerSecond * this.#s.tickMs) / 1000;
    const rng = this.#chaos;
    for (const [, set] of this.#running) {
      for (const inst of set) {
        if (inst.state !== 'running' || !rng.chance(p)) continue;
        const r = this.#instanceRegion.get(inst);
        if (r === undefined) continue;
        this.#counts.hostFailures++;
        this.#trace(`${r.name} host failure: ${inst.provider}/${inst.id} (${inst.vmName ?? ''}) stopped`);
        this.#setState(r, inst, 'stopped');
      }
    }
  }

  /**
   * With a lease, the provider's watchdog powers off the managed VMs of a
   * region whose daemon has been down longer than the lease (a daemon that
   * crashed cannot stop them itself). A hard power-off: it does not fail.
   */
  #watchdogs(): void {
    this.#guestLeases();
    const lease = this.#s.reconciler.lease;
    if (lease === undefined) return;
    for (const r of this.#regions) {
      if (r.up || this.#now - r.downSince <= lease.leaseMs) continue;
      for (const byId of r.instances.values()) {
        for (const inst of byId.values()) {
          if (!inst.managed || (inst.state !== 'running' && inst.state !== 'pending')) continue;
          this.#counts.watchdogStops++;
          this.#trace(`${r.name} watchdog powers off ${inst.provider}/${inst.id} (${inst.vmName ?? ''})`);
          this.#setState(r, inst, 'stopped');
        }
      }
    }
  }

  /**
   * DR: each protected guest holds a lease its daemon renews; when the
   * daemon has been down (or up without any view of the log) longer than
   * fenceAfterMs, the guest's watchdog stops it. A hard stop: it does not fail.
   */
  #guestLeases(): void {
    const dr = this.#s.dr;
    if (dr === null) return;
    for (const r of this.#regions) {
      if ((r.up && !(r.partitioned && r.frozen === null)) || this.#now - r.downSince <= dr.fence.fenceAfterMs) continue;
      for (const byId of r.instances.values()) {
        for (const inst of byId.values()) {
          if (!inst.managed || inst.vmName === undefined || !r.protectedAtCrash.has(inst.vmName) || (inst.state !== 'running' && inst.state !== 'pending')) continue;
          this.#drCounts.watchdogStops++;
          this.#trace(`${r.name} lease watchdog stops ${inst.provider}/${inst.id} (${inst.vmName})`);
          this.#setState(r, inst, 'stopped');
        }
      }
    }
  }

  // Chaos.

  #chaosStep(): void {
    const s = this.#s;
    const rng = this.#chaos;
    const seconds = s.tickMs / 1000;
    for (const r of this.#regions) {
      if (!r.up) {
        if (this.#now >= r.until) this.#restart(r);
        continue;
      }
      if (r.partitioned) {
        if (this.#now >= r.until) {
          this.#heal(r);
          // Back for less than the stabilisation window, then cut off again.
          if (r.flapUntil > this.#now && s.dr !== null) r.nextFlapAt = this.#now + this.#drRng.between(s.dr.options.checkIntervalMs, s.dr.options.stabilisationMs / 2);
        }
        continue;
      }
      if (rng.chance(s.crashPerSecond * seconds)) this.#crash(r, this.#now + rng.between(s.downMs[0], s.downMs[1]));
      else if (rng.chance(s.partitionPerSecond * seconds)) this.#partition(r, this.#now + rng.between(s.downMs[0], s.downMs[1]));
    }
    if (s.dr !== null) this.#drChaos(s.dr);
    const operator = this.#regions.find((r) => r.up && !r.partitioned);
    if (operator === undefined) return;
    this.#migrationChaos(operator.name);
    if (rng.chance(s.reassignPerSecond * seconds)) this.#reassign(operator.name);
    if (rng.chance(s.powerPerSecond * seconds)) {
      const vm = this.#randomVm();
      if (vm !== undefined) this.#propose(operator.name, [{ kind: 'set-power', vm: vm.name, power: rng.chance(0.6) ? 'stopped' : 'running' }], () => undefined);
    }
    if (rng.chance(s.deletePerSecond * seconds)) {
      const vm = this.#randomVm();
      if (vm !== undefined) this.#propose(operator.name, [{ kind: 'delete', vm: vm.name }], () => undefined);
    }
  }

  /** A random live, assigned VM: from a crashed or cut-off region most of the time (the DR case), else anywhere. */
  #randomVm(preferTroubled = false): FleetVm | undefined {
    const rng = this.#chaos;
    const troubled = this.#regions.filter((r) => (!r.up || r.partitioned) && (this.#assigned.get(r.name)?.size ?? 0) > 0);
    const pool = preferTroubled && troubled.length > 0 && rng.chance(0.8) ? troubled : this.#regions;
    const region = rng.pick(pool);
    const names = sortedNames(this.#assigned.get(region.name) ?? []);
    if (names.length === 0) return undefined;
    const vm = this.#log.vm(rng.pick(names));
    return vm === undefined || vm.deleted ? undefined : vm;
  }

  #reassign(from: string): void {
    const vm = this.#randomVm(true);
    if (vm === undefined || vm.assignment === null) return;
    if (this.#chaos.chance(0.25)) {
      // A fresh copy in place (an operator replacing a wedged VM): the same region and provider, the next generation,
      // so the region holds a stale copy of a VM assigned to itself and must fence it before creating the new one.
      const { region, provider } = vm.assignment;
      this.#counts.reassigns++;
      this.#trace(`operator renews ${vm.name} in place at ${region}/${provider} g${vm.generation + 1}`);
      this.#propose(from, [{ kind: 'assign', vm: vm.name, region, provider, generation: vm.generation + 1 }], () => undefined);
      return;
    }
    const decision = place(vm.spec, buildPlacementView(this.#log, this.#health()), DEFAULT_PLACEMENT_OPTIONS);
    if (!decision.ok) return;
    const target = [decision.choice, ...decision.alternatives].find((c) => c.region !== vm.assignment?.region);
    if (target === undefined) return;
    this.#counts.reassigns++;
    this.#trace(`operator reassigns ${vm.name} from ${vm.assignment.region} to ${target.region}/${target.provider} g${vm.generation + 1}`);
    this.#propose(from, [{ kind: 'assign', vm: vm.name, region: target.region, provider: target.provider, generation: vm.generation + 1 }], () => undefined);
  }

  #dropScheduling(r: SimRegion): void {
    // Its clients time out and re-send to another scheduler; a late answer to this one is ignored (#judge).
    for (const request of r.requests) {
      request.waiting = null;
      this.#pendingClients.push(request);
    }
    r.requests.length = 0;
  }

  #crash(r: SimRegion, until: number): void {
    this.#counts.crashes++;
    this.#trace(`${r.name} crashed until ${until}`);
    r.protectedAtCrash = this.#protectedInView(r);
    r.up = false;
    r.downSince = this.#now;
    r.until = until;
    r.epoch++;
    r.memory = EMPTY_RECONCILER_MEMORY;
    r.outcomes = [];
    r.inFlight.clear();
    r.frozen = null;
    r.frozenMigrations = null;
    // The coordinators and the transfers they ran die with the daemon (a live migration's stream through it breaks).
    r.coordinators.clear();
    r.transfers.clear();
    r.drMemory = EMPTY_DR_MEMORY;
    r.drInFlight.clear();
    r.checks.clear();
    this.#dropScheduling(r);
    this.#healthChanged(r);
  }

  #restart(r: SimRegion): void {
    this.#trace(`${r.name} restarted${r.partitioned ? ' (cut off)' : ''}`);
    r.up = true;
    r.visibleSince = this.#now;
    r.lastPassAt = -1; // no pass since it came back, even one earlier at this same time
    r.nextPassAt = this.#now;
    r.nextCheckAt = this.#now;
    this.#healthChanged(r);
  }

  #partition(r: SimRegion, until: number): void {
    this.#counts.partitions++;
    this.#trace(`${r.name} cut off from the log until ${until}`);
    r.partitioned = true;
    r.until = until;
    r.frozen = this.#freeze(r);
    r.frozenMigrations = this.#log.migrations();
    r.blip = false;
    this.#dropScheduling(r);
    this.#healthChanged(r);
  }

  #heal(r: SimRegion): void {
    this.#trace(`${r.name} sees the log again`);
    r.partitioned = false;
    r.frozen = null;
    r.frozenMigrations = null;
    r.visibleSince = this.#now;
    r.lastPassAt = -1; // its passes so far used the frozen view
    r.blip = false;
    this.#healthChanged(r);
  }


  // Disaster recovery.

  /**
   * One DR step of a region, at its check interval: it checks every other
   * region (a check fails when either end is down or cut off: the member
   * failure detector hears nothing), runs the DR core on its view, and
   * proposes what the core asks. Invariant DR-2 at each failover proposal:
   * the proposer's own last failAfterChecks checks of that region all failed
   * while it could see the log, and the region is not in a blip.
   */
  #drStep(r: SimRegion, dr: DrSimOptions): void {
    const o = dr.options;
    r.nextCheckAt = this.#now + o.checkIntervalMs;
    const checks = [];
    for (const other of this.#regions) {
      if (other === r) continue;
      const ok = !r.partitioned && other.up && !other.partitioned;
      checks.push({ region: other.name, ok, at: this.#now, ...(ok ? {} : { detail: other.up ? 'cut off' : 'no answer' }) });
      // What the proposer saw (a cut-off checker's failures say nothing of the other end): enough for both DR-2 and DR-4.
      const history = r.checks.get(other.name) ?? [];
      history.push(r.partitioned ? 'cut-off' : ok ? 'ok' : 'failed');
      if (history.length > Math.max(o.failAfterChecks, Math.floor(o.stabilisationMs / o.checkIntervalMs))) history.shift();
      r.checks.set(other.name, history);
    }
    const view = r.partitioned ? { protectedVms: () => [], migrationOf: () => undefined } : this.#log;
    const local = { runningHere: (vm: string, generation: number) => [...r.instances.values()].some((byId) => [...byId.values()].some((i) => i.vmName === vm && i.generation === generation && i.state === 'running')) };
    const result = (dr.controller ?? stepDr)({ self: r.name, now: this.#now, fleet: view, local, checks, logCurrent: !r.partitioned, memory: r.drMemory, inFlight: r.drInFlight, options: o });
    r.drMemory = result.memory;
    for (const effect of result.effects) {
      if (effect.kind === 'region-failed') {
        this.#drCounts.regionFailures++;
        this.#trace(`${r.name} DR: ${effect.region} failed (${effect.detail})`);
        continue;
      }
      if (effect.kind !== 'propose') continue;
      const command = parseFleetCommand(effect.command);
      if (command.kind === 'failover') {
        this.#drCounts.failoverProposals++;
        const seen = (r.checks.get(command.region) ?? []).slice(-o.failAfterChecks);
        if (r.partitioned || seen.length < o.failAfterChecks || seen.some((c) => c !== 'failed')) this.#fail(`invariant DR-2: ${r.name} proposes to fail ${command.vm} over from ${command.region} after its checks [${seen.join(', ')}]${r.partitioned ? ' while cut off' : ''}`);
        const lost = this.#byName.get(command.region);
        if (lost?.blip === true) this.#fail(`invariant DR-2: ${r.name} proposes to fail ${command.vm} over from ${command.region}, which is only cut off for a blip`);
      } else if (command.kind === 'migration-start') {
        // Invariant DR-4: a failback only after every check of its home region in the whole window passed (the ground truth may hide a blip between two checks: no check can see it).
        const window = Math.floor(o.stabilisationMs / o.checkIntervalMs);
        const seen = (r.checks.get(command.region) ?? []).slice(-window);
        const since = this.#healthySince.get(command.region);
        if (seen.length < window || seen.some((c) => c !== 'ok') || since === undefined) this.#fail(`invariant DR-4: ${r.name} fails ${command.vm} back to ${command.region} after its checks [${seen.join(', ')}] (window ${o.stabilisationMs} ms, healthy ${since === undefined ? 'not at all' : `since ${since} ms`})`);
      }
      this.#trace(`${r.name} DR proposes ${command.kind} ${effect.vm}`);
      const epoch = r.epoch;
      const proposal = this.#propose(r.name, [command], ([result]) => {
        if (r.epoch !== epoch) return;
        r.drInFlight.delete(effect.vm);
        if (result !== undefined && !result.ok && command.kind === 'failover' && result.code !== 'stale_generation') {
          this.#drCounts.refusedFailovers++;
          this.#failoverTrouble.set(command.vm, this.#now);
          this.#trace(`${r.name} DR failover of ${command.vm} refused: ${result.code} ${result.message}`);
          this.#recovering.delete(command.vm);
        }
      });
      if (proposal !== null) r.drInFlight.add(effect.vm);
      else this.#failoverTrouble.set(effect.vm, this.#now);
    }
  }

  /** Ground truth of a region's health after it crashed, restarted, was cut off or healed. */
  #healthChanged(r: SimRegion): void {
    const healthy = r.up && !r.partitioned;
    if (healthy && !this.#healthySince.has(r.name)) {
      this.#healthySince.set(r.name, this.#now);
      this.#unhealthySince.delete(r.name);
    } else if (!healthy && !this.#unhealthySince.has(r.name)) {
      this.#unhealthySince.set(r.name, this.#now);
      this.#healthySince.delete(r.name);
    }
  }

  /**
   * Invariant DR-3, every step: a failover the log committed brings its VM
   * up at the DR region within the hold (fenceHoldMs) plus two passes and
   * two provider operations there, unless the DR region stopped being
   * healthy, a provider call for the VM failed there, or the VM moved,
   * stopped or went away meanwhile (then there is no bound to hold it to).
   * The RTO (from the region's loss to the DR copy running) is recorded.
   */
  #checkRecovery(dr: DrSimOptions): void {
    // Detection is a matter of whole checks: looked at once per check interval.
    if (this.#now % dr.options.checkIntervalMs < this.#s.tickMs) this.#checkDetection(dr);
    const [, opMax] = this.#s.opMs;
    const bound = dr.fence.fenceHoldMs + 2 * (this.#s.passEveryMs + this.#s.tickMs) + 2 * opMax * dr.slowFactor + 1_000;
    for (const [name, f] of this.#recovering) {
      const vm = this.#log.vm(name);
      const a = vm?.assignment ?? null;
      const region = this.#byName.get(f.region);
      if (vm === undefined || vm.deleted || vm.power !== 'running' || a?.region !== f.region || a.generation !== f.generation || region === undefined || this.#unhealthySince.has(f.region)) {
        this.#recovering.delete(name);
        continue;
      }
      const running = [...(this.#running.get(name) ?? [])].some((i) => this.#instanceRegion.get(i) === region && i.generation === f.generation && i.state === 'running');
      if (running) {
        this.#recovering.delete(name);
        this.#drCounts.recovered++;
        this.#drCounts.longestRtoMs = Math.max(this.#drCounts.longestRtoMs, this.#now - f.lostSince);
        continue;
      }
      const lost = [...(this.#running.get(name) ?? [])].some((i) => this.#instanceRegion.get(i) !== region);
      if (lost) this.#drCounts.holds++;
      if (this.#now - f.committedAt > bound) this.#fail(`invariant DR-3: ${name} failed over to ${f.region} g${f.generation} at ${f.committedAt} ms and is not running there ${this.#now - f.committedAt} ms later (bound ${bound} ms)`);
    }
  }

  /**
   * Invariant DR-3, detection: a protected VM whose region has been lost
   * (down or cut off) since u, whose DR region has been healthy since
   * before u (so its DR core has checked the lost region all along), is
   * failed over by u + (failAfterChecks + 1) checks + retryMs + the log's
   * delay, unless its failover was refused (the DR region full, say) or
   * could not be proposed, or the VM changed meanwhile.
   */
  #checkDetection(dr: DrSimOptions): void {
    const o = dr.options;
    const slack = (o.failAfterChecks + 1) * o.checkIntervalMs + o.retryMs + this.#s.logDelayMs[1] + 2 * this.#s.tickMs;
    for (const vm of this.#log.protectedVms()) {
      const a = vm.assignment;
      const p = vm.protection;
      if (a === null || p === null || a.region === p.drRegion) continue;
      const u = this.#unhealthySince.get(a.region);
      const healthyDr = this.#healthySince.get(p.drRegion);
      if (u === undefined || healthyDr === undefined || healthyDr > u - o.checkIntervalMs || this.#now <= u + slack) continue;
      if ((this.#changedAt.get(vm.name) ?? 0) > u - o.checkIntervalMs || (this.#protectedAt.get(vm.name) ?? 0) > u - o.checkIntervalMs || (this.#failoverTrouble.get(vm.name) ?? -1) >= u) continue;
      this.#fail(`invariant DR-3: ${vm.name} at ${a.region} g${a.generation} (lost since ${u} ms) is not failed over to ${p.drRegion} (healthy since ${healthyDr} ms) within ${slack} ms`);
    }
  }

  /** Whether region r's view holds the VM as protected: what its self-fencing and its guests' leases act on. */
  #knewProtected(r: SimRegion, name: string): boolean {
    if (this.#s.dr === null) return false;
    if (!r.up || (r.partitioned && r.frozen === null)) return r.protectedAtCrash.has(name);
    if (r.partitioned) return (r.frozen?.vm(name)?.protection ?? null) !== null;
    return (this.#log.vm(name)?.protection ?? null) !== null;
  }

  /** The protected VMs in r's view now (when its daemon dies, their guests' leases start to lapse). */
  #protectedInView(r: SimRegion): ReadonlySet<string> {
    if (r.partitioned && r.frozen === null) return r.protectedAtCrash;
    const out = new Set<string>();
    for (const byId of r.instances.values()) {
      for (const inst of byId.values()) {
        if (inst.vmName === undefined) continue;
        const vm = r.partitioned ? r.frozen?.vm(inst.vmName) : this.#log.vm(inst.vmName);
        if ((vm?.protection ?? null) !== null) out.add(inst.vmName);
      }
    }
    return out;
  }

  /** DR chaos: long outages of regions holding protected VMs, blips, flapping. */
  #drChaos(dr: DrSimOptions): void {
    const rng = this.#drRng;
    const seconds = this.#s.tickMs / 1000;
    const healthy = this.#regions.filter((r) => r.up && !r.partitioned);
    const o = dr.options;
    for (const r of healthy) {
      if (r.flapUntil > this.#now && this.#now >= r.nextFlapAt) this.#partition(r, this.#now + rng.between(o.checkIntervalMs, o.stabilisationMs / 2));
    }
    if (healthy.length < 2) return;
    if (rng.chance(dr.outagePerSecond * seconds)) {
      const holders = healthy.filter((r) => this.#log.protectedVms().some((vm) => vm.assignment?.region === r.name));
      if (holders.length > 0) {
        const r = rng.pick(holders);
        this.#drCounts.outages++;
        const until = this.#now + rng.between(dr.outageMs[0], dr.outageMs[1]);
        if (rng.chance(0.5)) this.#crash(r, until);
        else this.#partition(r, until);
      }
    }
    if (rng.chance(dr.blipPerSecond * seconds)) {
      const r = rng.pick(healthy);
      this.#drCounts.blips++;
      // At most failAfterChecks - 1 checks fall inside: failAfterChecks need (failAfterChecks - 1) intervals between the first and the last.
      // A blip only after long enough up that every checker has seen it well (else it extends an outage the checks never saw end).
      const wasUp = this.#now - (this.#healthySince.get(r.name) ?? this.#now) >= 2 * o.checkIntervalMs;
      this.#partition(r, this.#now + rng.between(this.#s.tickMs, (o.failAfterChecks - 1) * o.checkIntervalMs - 2 * this.#s.tickMs));
      r.blip = wasUp;
    }
    if (rng.chance(dr.flapPerSecond * seconds)) {
      const r = rng.pick(healthy);
      this.#drCounts.flaps++;
      r.flapUntil = this.#now + 3 * o.stabilisationMs;
      this.#partition(r, this.#now + rng.between(o.checkIntervalMs, o.stabilisationMs / 2));
    }
  }

  // Invariants.

  /**
   * Invariant 5, every step: a migration's source and target copies never
   * both run (at any time: after it ended too), and a cold or warm incoming
   * copy never runs before cutover. No excuse: the coordinator stops or
   * pauses the source before the target may run and resumes it only once
   * the target cannot.
   */
  #checkMigrationCopies(name: string, set: ReadonlySet<SimInstance>): void {
    const at = (inst: SimInstance) => `${this.#instanceRegion.get(inst)?.name}/${inst.id}`;
    for (const inst of set) {
      if (inst.migration === undefined) continue;
      const m = this.#log.migrationOf(name);
      if (m !== undefined && m.id === inst.migration && m.mode !== 'live' && !isCutOver(m.phase)) this.#fail(`invariant 5: the incoming copy ${at(inst)} of ${name} runs before ${m.id} (${m.mode}, ${m.phase}) cut over`);
    }
    if (set.size < 2) return;
    for (const m of this.#migrationsOf.get(name) ?? []) {
      this.#counts.invariantChecks++;
      const side = (inst: SimInstance, end: FleetMigration['source']) => this.#instanceRegion.get(inst)?.name === end.region && inst.provider === end.provider && inst.generation === end.generation;
      const source = [...set].find((i) => side(i, m.source));
      const target = [...set].find((i) => side(i, m.target));
      if (source !== undefined && target !== undefined) {
        const now = this.#log.migration(m.id);
        this.#fail(`invariant 5: ${name} runs both copies of ${m.id} (${m.mode}; now ${now === undefined ? 'forgotten' : now.result === null ? now.phase : `ended ${now.result}`}): the source ${at(source)} g${m.source.generation} and the target ${at(target)} g${m.target.generation}`);
      }
    }
  }

  /** Invariant 3, every step: every running copy but the current one is excused. */
  #checkRunningCopies(): void {
    for (const [name, since] of this.#doubleSince) {
      if ((this.#running.get(name)?.size ?? 0) >= 2) continue;
      this.#longestDoubleRunMs = Math.max(this.#longestDoubleRunMs, this.#now - since);
      this.#doubleSince.delete(name);
    }
    for (const [name, set] of this.#running) {
      this.#checkMigrationCopies(name, set);
      if (set.size < 2) continue;
      if (!this.#doubleSince.has(name)) this.#doubleSince.set(name, this.#now);
      this.#counts.invariantChecks++;
      const vm = this.#log.vm(name);
      let current = 0;
      let excused = 0;
      for (const inst of set) {
        const r = this.#instanceRegion.get(inst);
        if (r === undefined) continue;
        const copy: ObservedVm = { provider: inst.provider, id: inst.id, name: inst.name, state: inst.state, managed: true, ...(inst.generation === undefined ? {} : { generation: inst.generation }) };
        if (isCurrentCopy(r.name, vm, copy)) {
          current++;
          continue;
        }
        const staleSince = Math.max(this.#changedAt.get(name) ?? 0, r.visibleSince);
        const key = copyKey(inst.provider, inst.id);
        // A refused fence the reconciler has not read yet, or one it backs off from, is still being worked on.
        // (Backing off lasts until the first pass after retryAt: passes are periodic, not timed to the back-off.)
        const backingOff = r.lastPassAt < (r.memory.attempts.get(key)?.retryAt ?? -1) || r.outcomes.some((o) => actionKey(o.action) === key);
        // With a lease nothing excuses a stale copy but a fence the provider is slow to carry out or refused.
        // A protected VM known as such where its stale copy runs: its region fenced itself (cut off) or its guest's lease lapsed (daemon down).
        const fencedByDr = (!r.up || r.partitioned) && this.#knewProtected(r, name);
        const unreachable = this.#s.reconciler.lease === undefined && !fencedByDr && (!r.up || r.partitioned || r.lastPassAt < staleSince);
        if (unreachable || r.inFlight.has(key) || backingOff) {
          excused++;
          continue;
        }
        const a = vm?.assignment ?? null;
        this.#fail(
          `invariant 3: ${name} runs ${set.size} copies; ${r.name}'s ${inst.provider}/${inst.id} (g${inst.generation ?? '?'}, ${inst.state}) is stale ` +
            `(the log: ${vm === undefined ? 'no VM' : vm.deleted ? 'deleted' : a === null ? 'unassigned' : `${a.region}/${a.provider} g${a.generation}`}, since ${staleSince} ms) ` +
            (this.#s.reconciler.lease === undefined ? `and ${r.name} passed at ${r.lastPassAt} ms without fencing it` : `and with a lease the new copy must not run before the old one is fenced (${r.name} ${r.up ? (r.partitioned ? 'cut off' : 'up') : 'down'}, passed at ${r.lastPassAt} ms)`),
        );
      }
      if (current > 1) this.#fail(`invariant 3: ${name} has ${current} running copies at its current generation`);
      if (excused > 0) this.#counts.excusedDoubleRuns++;
    }
  }

  #settled(): boolean {
    if (this.#pendingProposals > 0 || this.#pendingClients.length > 0 || this.#log.migrations().length > 0) return false;
    for (const r of this.#regions) {
      if (r.inFlight.size > 0 || r.requests.length > 0 || r.outcomes.length > 0) return false;
      for (const record of r.memory.attempts.values()) if (!record.failed && record.retryAt > this.#now - this.#s.passEveryMs) return false;
      // A handoff still holding a start back is work to come.
      const lease = this.#s.reconciler.lease;
      if (lease !== undefined) for (const seen of r.memory.firstSeen.values()) if (seen.generation > 1 && seen.at + lease.handoffMs > this.#now - this.#s.passEveryMs) return false;
    }
    return true;
  }

  /** Invariants 1, 4 and 5, once reconciled. */
  #checkFinal(): void {
    this.#counts.invariantChecks++;
    for (const m of this.#log.migrations()) this.#fail(`invariant 5: ${m.id} of ${m.vm} is still under way (${m.phase}) once reconciled: its reservation at ${reservedAt(m).region} leaks`);
    // 1: the ledger from scratch.
    const usage = new Map<string, { vcpus: number; memoryBytes: number; diskBytes: number; instances: number }>();
    const vms = this.#log.vms();
    for (const vm of vms) {
      if (vm.deleted || vm.assignment === null) continue;
      const key = `${vm.assignment.region}/${vm.assignment.provider}`;
      const sum = usage.get(key) ?? { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };
      const d = demandOf(vm.spec);
      for (const res of RESOURCES) sum[res] += d[res];
      usage.set(key, sum);
    }
    for (const region of this.#log.regions()) {
      for (const p of region.providers) {
        const key = `${region.name}/${p.name}`;
        const want = usage.get(key) ?? { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 };
        const have = this.#log.usage(region.name, p.name);
        for (const res of RESOURCES) {
          if (have?.[res] !== want[res]) this.#fail(`invariant 1 (final): ${key} ${res}: the log accounts ${have?.[res]}, its VMs sum to ${want[res]}`);
          const limit = p.limits[res];
          if (limit !== null && want[res] > limit) this.#fail(`invariant 1 (final): ${key} over-committed: ${res} ${want[res]} above ${limit}`);
        }
      }
    }
    // The log's per-region index (what reconcilers read) agrees with the accepted commands.
    for (const r of this.#regions) {
      const fromLog = this.#log.vmsAssignedTo(r.name).map((vm) => vm.name).join(',');
      const fromCommands = sortedNames(this.#assigned.get(r.name) ?? []).join(',');
      if (fromLog !== fromCommands) this.#fail(`the log's index of ${r.name} lists [${fromLog}], the accepted commands [${fromCommands}]`);
    }
    // 4: every copy accounted for.
    const copies = new Map<string, { r: SimRegion; inst: SimInstance }[]>();
    for (const r of this.#regions) {
      for (const byId of r.instances.values()) {
        for (const inst of byId.values()) {
          if (!inst.managed || inst.vmName === undefined) continue;
          let list = copies.get(inst.vmName);
          if (list === undefined) copies.set(inst.vmName, (list = []));
          list.push({ r, inst });
        }
      }
    }
    for (const [name, list] of copies) {
      if (name === 'ghost') continue;
      const vm = this.#log.vm(name);
      for (const { r, inst } of list) {
        const current = isCurrentCopy(r.name, vm, { provider: inst.provider, id: inst.id, name: inst.name, state: inst.state, managed: true, ...(inst.generation === undefined ? {} : { generation: inst.generation }) });
        if (!current) this.#fail(`invariant 4: ${r.name} still holds a stale copy ${inst.provider}/${inst.id} of ${name} (g${inst.generation ?? '?'}, ${inst.state}) once reconciled`);
      }
    }
    for (const vm of vms) {
      if (vm.deleted) continue;
      const a = vm.assignment;
      if (a === null) {
        if (!this.#schedulingFailures.has(vm.name)) this.#fail(`invariant 4: ${vm.name} was created and never placed, and no scheduler failed it with a reason`);
        continue;
      }
      const list = copies.get(vm.name) ?? [];
      const running = list.filter((c) => c.inst.state === 'running');
      const status = this.#byName.get(a.region)?.statuses.get(vm.name);
      const failed = status?.status === 'failed' && status.generation === a.generation && (status.reason ?? '') !== '';
      if (vm.power === 'running') {
        if (running.length !== 1 && !failed) {
          this.#fail(`invariant 4: ${vm.name} (assigned ${a.region}/${a.provider} g${a.generation}, desired running) has ${running.length} running copies and is not reported failed (status ${status === undefined ? 'none' : `${status.status} g${status.generation}`}; copies ${list.map((c) => `${c.r.name}/${c.inst.id}:${c.inst.state}`).join(', ') || 'none'})`);
        }
      } else if (running.length !== 0) this.#fail(`invariant 4: ${vm.name} is desired stopped and has ${running.length} running copies`);
    }
    // Every client request ended.
    for (const r of this.#regions) if (r.requests.length > 0) this.#fail(`invariant 4: ${r.name} still works on ${r.requests.length} requests`);
    if (this.#pendingClients.length > 0) this.#fail(`invariant 4: ${this.#pendingClients.length} requests never reached a scheduler`);
    for (let id = 0; id < this.#requestsMade; id++) {
      const name = `vm${String(id).padStart(5, '0')}`;
      if (!this.#placed.has(name) && !this.#schedulingFailures.has(name)) this.#fail(`invariant 4: request for ${name} neither placed nor failed`);
    }
    // The orphan: reported, and still there.
    if (this.#orphan !== null) {
      const home = this.#byName.get(this.#orphan.region);
      if (home?.instances.get(this.#orphan.provider)?.get(this.#orphan.id) === undefined) this.#fail('invariant 4: the orphan copy was deleted');
      if (home?.orphansSeen.has(copyKey(this.#orphan.provider, this.#orphan.id)) !== true) this.#fail('invariant 4: the orphan copy was never reported');
    }
  }

  #report(): FleetSimReport {
    let running = 0;
    let failedVms = 0;
    for (const r of this.#regions) {
      for (const byId of r.instances.values()) for (const inst of byId.values()) if (inst.managed && inst.state === 'running' && inst.vmName !== 'ghost') running++;
      for (const status of r.statuses.values()) if (status.status === 'failed') failedVms++;
    }
    const c = this.#counts;
    return {
      seed: this.#s.seed,
      size: this.#s.size,
      regions: this.#s.regions,
      requests: this.#requestsMade,
      placed: this.#placed.size,
      schedulingFailed: this.#schedulingFailures.size,
      schedulingFailures: Object.fromEntries(Object.entries(this.#failureCodes).sort(([a], [b]) => (a < b ? -1 : 1))),
      replans: c.replans,
      running,
      failedVms,
      deleted: c.deleted,
      reassigns: c.reassigns,
      crashes: c.crashes,
      partitions: c.partitions,
      fences: c.fences,
      excusedDoubleRuns: c.excusedDoubleRuns,
      longestDoubleRunMs: this.#longestDoubleRunMs,
      providerErrors: c.providerErrors,
      hostFailures: c.hostFailures,
      lease: this.#s.reconciler.lease !== undefined,
      watchdogStops: c.watchdogStops,
      orphanReports: c.orphanReports,
      commands: c.commands,
      refusals: c.refusals,
      events: c.events,
      invariantChecks: c.invariantChecks,
      virtualMs: this.#now,
      migrations: { ...this.#mig },
      migrationCrashes: Object.fromEntries(Object.entries(this.#migrationCrashes).sort(([a], [b]) => (a < b ? -1 : 1))),
      dr: this.#s.dr === null ? null : { ...this.#drCounts },
    };
  }

  #trace(line: string): void {
    this.#s.trace?.(`${String(this.#now).padStart(7)} ${line}`);
  }

  #fail(problem: string): never {
    throw new FleetSimFailure(this.#s.seed, this.#s.size, this.#now, problem);
  }
}

/** Runs one seed; throws FleetSimFailure naming the seed and the replay command. */
export function runFleetSeed(seed: number, size: FleetSimSize = 'small', trace?: (line: string) => void): FleetSimReport {
  return new FleetSimulation(fleetScenarioForSeed(seed, size, trace)).run();
}
