/**
 * FleetScheduler: the driver of the scheduler core (scheduler.ts) on this
 * node. `vm create --placement auto` lands here: it plans on this node's
 * replica of the desired state and its observed view (health, RTT), commits
 * the plan's commands to the federation log, and re-plans on fresh state when
 * the log refuses the plan because another scheduler got there first. Any
 * region can schedule; none is special.
 *
 * Invariants:
 * - The log decides: a plan is only a proposal, checked at apply against the
 *   capacity ledger and generations, so racing schedulers never over-commit.
 * - A request that ends failed after its create was accepted deletes that
 *   VM again (and purges the unassigned tombstone): no unplaced VM is left
 *   behind to hold the name.
 * - Re-plans read state that includes the refusal (the port resolves a
 *   commit only once this node's replica applied it).
 */
import type { Counter, Histogram } from 'prom-client';
import type { FleetResult, PowerState } from './commands.ts';
import type { FleetLog } from './log.ts';
import { buildPlacementView, place, type ObservedFleet, type PlacementDecision } from './placement.ts';
import { judgePlan, planCreate, startScheduling, type SchedulerFailureCode, type SchedulerOptions } from './scheduler.ts';
import type { FleetVmSpec } from './spec.ts';
import type { FleetState } from './state-machine.ts';
import { firstAssignmentOperation } from './policy-check.ts';
import { RequestDenials, type PolicyDecisionLog } from './policy-decisions.ts';

export interface SchedulerMetrics {
  /** dwcp_fleet_placements_total{result}: placed | failed */
  readonly placements: Pick<Counter<'result'>, 'inc'>;
  /** dwcp_fleet_placement_duration_seconds: one pure placement decision. */
  readonly placementDuration: Pick<Histogram, 'observe'>;
}

export interface FleetSchedulerOptions {
  readonly log: FleetLog;
  /** Health and RTT as this node sees them now. */
  readonly observed: () => ObservedFleet;
  readonly options: SchedulerOptions;
  readonly metrics: SchedulerMetrics;
  /** Where the candidates a deny rule excluded are logged (src/fleet/policy-decisions.ts); absent: nowhere. */
  readonly decisions?: PolicyDecisionLog;
}

export type ScheduleOutcome =
  | { readonly ok: true; readonly vm: string; readonly region: string; readonly provider: string; readonly generation: number; readonly decision: PlacementDecision; readonly attempts: number }
  | { readonly ok: false; readonly code: SchedulerFailureCode; readonly reasons: readonly string[]; readonly decision?: PlacementDecision };

export class FleetScheduler {
  readonly #o: FleetSchedulerOptions;

  constructor(options: FleetSchedulerOptions) {
    this.#o = options;
  }

  /**
   * The options for a plan on `state`: RTT is scored from this node's region
   * once the log knows it; before its declaration commits, from nowhere
   * (an origin placement does not know is an unknown region, not a reason to
   * refuse every request).
   */
  #options(state: FleetState): SchedulerOptions {
    const { origin } = this.#o.options.placement;
    if (origin === null || state.region(origin) !== undefined) return this.#o.options;
    return { ...this.#o.options, placement: { ...this.#o.options.placement, origin: null } };
  }

  /** Placement alone, on the current view: `--dry-run`, `--explain` and `dwcpctl place`. */
  place(spec: FleetVmSpec): PlacementDecision {
    const started = performance.now();
    const state = this.#o.log.state;
    const decision = place(spec, buildPlacementView(state, this.#o.observed()), this.#options(state).placement);
    this.#o.metrics.placementDuration.observe((performance.now() - started) / 1000);
    return decision;
  }

  /** Plans, commits and re-plans until the VM is assigned, or fails with every plan's reason. */
  async create(spec: FleetVmSpec, power: PowerState, timeoutMs: number, operation?: 'burst'): Promise<ScheduleOutcome> {
    const denials = this.#o.decisions === undefined ? null : new RequestDenials(this.#o.decisions, spec.name, operation ?? firstAssignmentOperation(spec));
    try {
      return await this.#create(spec, power, timeoutMs, denials, operation);
    } finally {
      denials?.finish();
    }
  }

  async #create(spec: FleetVmSpec, power: PowerState, timeoutMs: number, denials: RequestDenials | null, operation: 'burst' | undefined): Promise<ScheduleOutcome> {
    const deadline = performance.now() + timeoutMs;
    let progress = startScheduling(operation === undefined ? { spec, power } : { spec, power, operation });
    let created = false;
    let lastDecision: PlacementDecision | undefined;
    for (;;) {
      const started = performance.now();
      const state = this.#o.log.state;
      const plan = planCreate(progress, state, this.#o.observed(), this.#options(state));
      this.#o.metrics.placementDuration.observe((performance.now() - started) / 1000);
      const decided = plan.kind === 'propose' ? plan.decision : plan.kind === 'failed' ? plan.decision : undefined;
      if (denials !== null && decided !== undefined && state.policy.evaluator.ruleCount > 0) denials.record(decided, state.policy.version);
      if (plan.kind === 'failed') return this.#fail(spec.name, created, plan.code, plan.reasons, plan.decision ?? lastDecision, deadline);
      if (plan.kind === 'placed') {
        // A retry of a request whose earlier plan went through: the VM is ours and placed.
        this.#o.metrics.placements.inc({ result: 'placed' });
        return { ok: true, vm: plan.vm, region: plan.region, provider: plan.provider, generation: plan.generation, decision: lastDecision ?? this.place(spec), attempts: progress.attempts };
      }
      lastDecision = plan.decision;
      const results: (FleetResult | undefined)[] = [];
      for (const command of plan.commands) {
        // Whole milliseconds: the log's deadlines are timers.
        const remaining = Math.ceil(deadline - performance.now());
        if (remaining <= 0) break;
        const result = await this.#o.log.commit(command, remaining);
        results.push(result);
        if (command.kind === 'create' && result.ok) created = true;
        if (!result.ok && !(command.kind === 'create' && result.code === 'name_taken')) break;
      }
      const verdict = judgePlan(plan, results, this.#o.options);
      if (verdict.kind === 'placed') {
        this.#o.metrics.placements.inc({ result: 'placed' });
        return { ok: true, vm: verdict.vm, region: verdict.region, provider: verdict.provider, generation: verdict.generation, decision: plan.decision, attempts: plan.progress.attempts };
      }
      if (verdict.kind === 'failed') return this.#fail(spec.name, created, verdict.code, verdict.reasons, lastDecision, deadline);
      if (performance.now() >= deadline) {
        return this.#fail(spec.name, created, 'attempts_exhausted', [...verdict.progress.reasons, `${spec.name}: no plan committed within ${timeoutMs} ms`], lastDecision, deadline);
      }
      progress = verdict.progress;
    }
  }

  async #fail(vm: string, created: boolean, code: SchedulerFailureCode, reasons: readonly string[], decision: PlacementDecision | undefined, deadline: number): Promise<ScheduleOutcome> {
    this.#o.metrics.placements.inc({ result: 'failed' });
    if (created) {
      // Best effort within the request's time: a VM left unplaced would only hold its name.
      const remaining = Math.max(1000, Math.ceil(deadline - performance.now()));
      const deleted = await this.#o.log.commit({ kind: 'delete', vm }, remaining).catch(() => null);
      if (deleted?.ok === true) await this.#o.log.commit({ kind: 'purge', vm }, remaining).catch(() => null);
    }
    return { ok: false, code, reasons, ...(decision === undefined ? {} : { decision }) };
  }
}
