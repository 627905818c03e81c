/**
 * The scheduler as a pure core: turns a create request into a plan (the
 * create and assign commands to propose to the fleet log), chosen by
 * placement on this scheduler's view, and judges what the log said about the
 * plan: placed, re-plan on fresh state, or failed with the reasons.
 *
 * Schedulers run in any region, optimistically (Nomad's plan applier without
 * a leader region): a plan is made on a view that may already be stale, and
 * the log's state machine checks it at apply (capacity ledger, generations,
 * anti-affinity). A refusal that another plan can cause (capacity taken,
 * generation taken, the anti-affinity slot taken, the region re-declared) is
 * re-planned on fresh state, at most maxAttempts plans in all; any other
 * refusal fails at once. A failure carries every attempt's reason.
 *
 * Invariants:
 * - Pure: state and observed views are inputs; no clock, no randomness.
 * - A plan's assign names a generation one above the highest the VM ever had
 *   in the state it was planned on, so two plans made on the same state for
 *   one VM cannot both be accepted (the state machine refuses the second as
 *   stale_generation), and generations only grow.
 * - A re-plan after the create was accepted plans the assign alone: the VM
 *   exists unassigned with this request's spec, and creating it again would
 *   be refused as name_taken. A VM of that name and spec that is placed
 *   already is this request done (a client's retry after its scheduler
 *   died): `placed`. A VM of that name with another spec is somebody
 *   else's: the request fails with name_taken.
 * - The scheduler never proposes what placement did not choose: the
 *   assignment is placement's choice on the given view, policies included
 *   (the view carries the log's policy set). The assign names its operation
 *   (create when the spec pins one region, else place), which placement
 *   evaluated and the state machine re-checks. A policy_denied refusal means
 *   the policy set changed after the plan was made (a new version came
 *   first): re-planned on fresh state like a capacity race.
 * - A scheduler with several plans in flight plans on withPlansInFlight(state,
 *   its plans): capacity its own unanswered plans will take counts as used,
 *   so its plans do not all race for the same cheapest slot. This is only
 *   advice to placement; the log's ledger remains the judge.
 */
import { canonicalJson, type FleetCommand, type FleetRejectCode, type FleetResult, type PowerState } from './commands.ts';
import { DEFAULT_PLACEMENT_OPTIONS, buildPlacementView, place, type ObservedFleet, type PlacementDecision, type PlacementOptions, type ScoredCandidate } from './placement.ts';
import { RESOURCES, demandOf, type ResourceAmounts } from './ledger.ts';
import type { FleetVmSpec } from './spec.ts';
import { firstAssignmentOperation } from './policy-check.ts';
import type { FleetState } from './state-machine.ts';

export const DEFAULT_SCHEDULER_ATTEMPTS = 5;
/** The most plans one request may make: a bound on how long a busy fleet can keep a request re-planning. */
export const SCHEDULER_MAX_ATTEMPTS = 100;

/** Refusals another scheduler's plan can cause: worth a re-plan on fresh state. */
export const REPLAN_CODES: readonly FleetRejectCode[] = ['insufficient_capacity', 'stale_generation', 'anti_affinity', 'constraint_violated', 'unknown_provider', 'name_taken', 'policy_denied'];

export interface CreateRequest {
  readonly spec: FleetVmSpec;
  readonly power: PowerState;
  /** `burst`: the burst driver's replica (policies and hard budgets see a burst); absent: create or place, from the spec. */
  readonly operation?: 'burst';
}

export interface SchedulerOptions {
  /** Plans in all, the first included. */
  readonly maxAttempts: number;
  readonly placement: PlacementOptions;
  /**
   * Choose among placement's best this many (1 to 3: the choice and its two
   * alternatives), by the caller's draw. 1: always placement's choice. More
   * spreads concurrent schedulers that see the same state over several good
   * regions instead of all racing for the one best slot ("power of two
   * choices"), at the price of a slightly worse score per decision.
   */
  readonly choices: number;
}

export const DEFAULT_SCHEDULER_OPTIONS: SchedulerOptions = { maxAttempts: DEFAULT_SCHEDULER_ATTEMPTS, placement: DEFAULT_PLACEMENT_OPTIONS, choices: 1 };

/** Where a request stands between plans. */
export interface SchedulingProgress {
  readonly request: CreateRequest;
  /** Plans made so far. */
  readonly attempts: number;
  /** One line per refused plan, oldest first. */
  readonly reasons: readonly string[];
}

export type SchedulerFailureCode = FleetRejectCode | 'no_fit' | 'too_large' | 'unknown_region' | 'attempts_exhausted';

export type SchedulePlan =
  | {
      readonly kind: 'propose';
      /** In log order: [create, assign], or [assign] when the VM exists already. */
      readonly commands: readonly FleetCommand[];
      readonly region: string;
      readonly provider: string;
      readonly generation: number;
      readonly decision: Extract<PlacementDecision, { ok: true }>;
      readonly progress: SchedulingProgress;
    }
  /** The VM already exists with this very spec and is placed: an earlier plan of this request (or a client's retry of it) went through. */
  | { readonly kind: 'placed'; readonly vm: string; readonly region: string; readonly provider: string; readonly generation: number }
  | { readonly kind: 'failed'; readonly code: SchedulerFailureCode; readonly reasons: readonly string[]; readonly decision?: PlacementDecision };

export type PlanVerdict =
  | { readonly kind: 'placed'; readonly vm: string; readonly region: string; readonly provider: string; readonly generation: number }
  | { readonly kind: 'replan'; readonly progress: SchedulingProgress }
  | { readonly kind: 'failed'; readonly code: SchedulerFailureCode; readonly reasons: readonly string[] };

export function startScheduling(request: CreateRequest): SchedulingProgress {
  return { request, attempts: 0, reasons: [] };
}

export function resolveSchedulerOptions(partial: Partial<SchedulerOptions> = {}): SchedulerOptions {
  const options = { ...DEFAULT_SCHEDULER_OPTIONS, ...partial };
  if (!Number.isSafeInteger(options.maxAttempts) || options.maxAttempts < 1 || options.maxAttempts > SCHEDULER_MAX_ATTEMPTS) {
    throw new RangeError(`scheduler maxAttempts: ${options.maxAttempts} is not an integer from 1 to ${SCHEDULER_MAX_ATTEMPTS}`);
  }
  if (!Number.isSafeInteger(options.choices) || options.choices < 1 || options.choices > 3) throw new RangeError(`scheduler choices: ${options.choices} is not 1, 2 or 3`);
  return options;
}

/**
 * The next plan for a request, on `state` (this scheduler's latest view of
 * the log) and `observed` (health and RTT). Fails when attempts are spent,
 * when the name belongs to another VM, or when nothing fits. `draw`, in
 * [0, 1), picks among the best options.choices candidates (randomness is
 * the caller's: the same draw gives the same plan).
 */
export function planCreate(progress: SchedulingProgress, state: FleetState, observed: ObservedFleet = {}, options: SchedulerOptions = DEFAULT_SCHEDULER_OPTIONS, draw = 0): SchedulePlan {
  const { spec, power } = progress.request;
  if (progress.attempts >= options.maxAttempts) {
    return { kind: 'failed', code: 'attempts_exhausted', reasons: [...progress.reasons, `${spec.name}: gave up after ${progress.attempts} plans`] };
  }
  const existing = state.vm(spec.name);
  let createFirst = true;
  if (existing !== undefined && !existing.deleted) {
    const sameSpec = canonicalJson(existing.spec) === canonicalJson(spec);
    if (sameSpec && existing.assignment !== null) {
      // Creating is idempotent per (name, spec): a retried request whose first plan went through is done.
      const a = existing.assignment;
      return { kind: 'placed', vm: spec.name, region: a.region, provider: a.provider, generation: a.generation };
    }
    if (!sameSpec || existing.assignment !== null) {
      const where = existing.assignment === null ? 'with another spec' : `assigned to ${existing.assignment.region}/${existing.assignment.provider}`;
      return { kind: 'failed', code: 'name_taken', reasons: [...progress.reasons, `a VM named ${spec.name} already exists ${where}`] };
    }
    // Our own create went through on an earlier plan; only the assignment is left.
    createFirst = false;
  }
  const operation = progress.request.operation ?? firstAssignmentOperation(spec);
  const decision = place(spec, buildPlacementView(state, observed), progress.request.operation === undefined ? options.placement : { ...options.placement, operation });
  if (!decision.ok) return { kind: 'failed', code: decision.code, reasons: [...progress.reasons, decision.message], decision };
  const best = [decision.choice, ...decision.alternatives].slice(0, options.choices);
  const choice: ScoredCandidate = best[Math.min(best.length - 1, Math.floor(Math.max(0, draw) * best.length))] ?? decision.choice;
  const generation = (existing?.generation ?? 0) + 1;
  const assign: FleetCommand = { kind: 'assign', vm: spec.name, region: choice.region, provider: choice.provider, generation, operation };
  const commands: FleetCommand[] = createFirst ? [{ kind: 'create', spec, power }, assign] : [assign];
  return {
    kind: 'propose',
    commands,
    region: choice.region,
    provider: choice.provider,
    generation,
    decision,
    progress: { request: progress.request, attempts: progress.attempts + 1, reasons: progress.reasons },
  };
}

/**
 * What the log's results for a proposed plan mean. `results` are in the
 * plan's command order; a missing result (the log never answered) counts
 * as a refusal to re-plan on fresh state, which is safe: a plan that did go
 * through makes the re-plan fail with name_taken naming where it went.
 */
export function judgePlan(plan: Extract<SchedulePlan, { kind: 'propose' }>, results: readonly (FleetResult | undefined)[], options: SchedulerOptions = DEFAULT_SCHEDULER_OPTIONS): PlanVerdict {
  const { progress } = plan;
  const name = progress.request.spec.name;
  let failure: Extract<FleetResult, { ok: false }> | null = null;
  let unanswered = false;
  for (let i = 0; i < plan.commands.length && failure === null; i++) {
    const result = results[i];
    if (result === undefined) unanswered = true;
    // A refused create is fine when the VM is ours from an earlier plan; the assign's result decides.
    else if (!result.ok && !(plan.commands[i]?.kind === 'create' && result.code === 'name_taken')) failure = result;
  }
  const assigned = results[plan.commands.length - 1];
  if (failure === null && !unanswered && assigned !== undefined && assigned.ok) {
    return { kind: 'placed', vm: name, region: plan.region, provider: plan.provider, generation: plan.generation };
  }
  const line = failure === null ? `plan ${progress.attempts} (${plan.region}/${plan.provider}): the log did not answer` : `plan ${progress.attempts} (${plan.region}/${plan.provider}): ${failure.code}: ${failure.message}`;
  const reasons = [...progress.reasons, line];
  if (failure !== null && !REPLAN_CODES.includes(failure.code)) return { kind: 'failed', code: failure.code, reasons };
  if (progress.attempts >= options.maxAttempts) return { kind: 'failed', code: 'attempts_exhausted', reasons: [...reasons, `${name}: gave up after ${progress.attempts} plans`] };
  return { kind: 'replan', progress: { request: progress.request, attempts: progress.attempts, reasons } };
}

/** A plan this scheduler proposed and has not heard back about. */
export interface PlanInFlight {
  readonly region: string;
  readonly provider: string;
  readonly spec: FleetVmSpec;
}

/**
 * `state` with the capacity of this scheduler's unanswered plans counted as
 * used (usage and regionUsage); everything else reads through. O(plans) to
 * build, O(1) per read.
 */
export function withPlansInFlight(state: FleetState, plans: Iterable<PlanInFlight>): FleetState {
  const extra = new Map<string, Record<(typeof RESOURCES)[number], number>>();
  const byRegion = new Map<string, Record<(typeof RESOURCES)[number], number>>();
  const add = (map: Map<string, Record<(typeof RESOURCES)[number], number>>, key: string, demand: ResourceAmounts): void => {
    let sum = map.get(key);
    if (sum === undefined) map.set(key, (sum = { vcpus: 0, memoryBytes: 0, diskBytes: 0, instances: 0 }));
    for (const r of RESOURCES) sum[r] += demand[r];
  };
  for (const plan of plans) {
    const demand = demandOf(plan.spec);
    add(extra, `${plan.region}\u0000${plan.provider}`, demand);
    add(byRegion, plan.region, demand);
  }
  if (extra.size === 0) return state;
  const plus = (base: ResourceAmounts, more: ResourceAmounts | undefined): ResourceAmounts => {
    if (more === undefined) return base;
    return { vcpus: base.vcpus + more.vcpus, memoryBytes: base.memoryBytes + more.memoryBytes, diskBytes: base.diskBytes + more.diskBytes, instances: base.instances + more.instances };
  };
  return {
    limits: state.limits,
    get regionCount() {
      return state.regionCount;
    },
    get vmCount() {
      return state.vmCount;
    },
    get applied() {
      return state.applied;
    },
    get policy() {
      return state.policy;
    },
    burstGroups: () => state.burstGroups(),
    budgets: () => state.budgets(),
    regions: () => state.regions(),
    region: (name) => state.region(name),
    vms: () => state.vms(),
    vm: (name) => state.vm(name),
    vmsAssignedTo: (region) => state.vmsAssignedTo(region),
    protectedVms: () => state.protectedVms(),
    usage: (region, provider) => {
      const base = state.usage(region, provider);
      return base === undefined ? undefined : plus(base, extra.get(`${region}\u0000${provider}`));
    },
    regionUsage: (region) => plus(state.regionUsage(region), byRegion.get(region)),
    groupCounts: (kind, group) => state.groupCounts(kind, group),
    migrations: () => state.migrations(),
    migrationHistory: () => state.migrationHistory(),
    migration: (id) => state.migration(id),
    migrationOf: (vm) => state.migrationOf(vm),
    migrationsInto: (region) => state.migrationsInto(region),
    migrationStartRefusal: (cmd) => state.migrationStartRefusal(cmd),
  };
}
