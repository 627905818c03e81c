/**
 * Continuous audit, the pure part: which placed VMs a policy set flags
 * where they are now. A policy version that tightens after the fact does not
 * move or refuse VMs already assigned (the state machine checks assignments
 * as they are made); it shows here, as violations, so an operator sees what
 * the new rules forbid (`dwcpctl policy violations`) and what a proposed
 * version would forbid before applying it (`dwcpctl policy test`).
 *
 * A violation is a deny or audit hit of a live (not deleted), assigned VM at
 * its assigned (region, provider), at the $/h that provider declares, under
 * the operation the VM's first assignment counts as (create when its spec
 * pins one region, else place: src/fleet/policy-check.ts): "would this VM
 * be allowed there if it were placed now". Warn hits are for the requester
 * at placement time, not violations.
 *
 * Invariants: pure and deterministic (the state and the evaluator in, the
 * violations out, sorted by VM name, then denials before audits, each in
 * the set's rule order), so
 * every node with the same log answers alike. A VM whose region or provider
 * is not registered (cannot happen while the ledger holds it) is skipped.
 */
import type { PolicyEffect, PolicyOperation } from '../policy/document.ts';
import type { PolicyEvaluator, PolicyHit } from '../policy/evaluate.ts';
import { hourlyUsd } from './ledger.ts';
import { firstAssignmentOperation, policyRegionOf, policyVmOf } from './policy-check.ts';
import type { FleetAssignment, FleetRegion, FleetState, FleetVm } from './state-machine.ts';

export interface PolicyViolation {
  readonly vm: string;
  readonly region: string;
  readonly provider: string;
  readonly generation: number;
  readonly operation: PolicyOperation;
  readonly policy: string;
  readonly rule: string;
  /** deny: an enforced rule the VM now breaks; audit: a recorded one. */
  readonly effect: Extract<PolicyEffect, 'deny' | 'audit'>;
  readonly message: string;
  /** Set when the condition could not be evaluated (the rule fired because of that). */
  readonly error?: string;
}

/** What identifies one standing violation across audits: the same VM copy breaking the same rule the same way. */
export function violationKey(v: PolicyViolation): string {
  return [v.vm, v.region, v.provider, v.generation, v.operation, v.policy, v.rule, v.effect].join('\u0000');
}

function violation(vm: string, region: string, provider: string, generation: number, operation: PolicyOperation, hit: PolicyHit, effect: 'deny' | 'audit'): PolicyViolation {
  return { vm, region, provider, generation, operation, policy: hit.policy, rule: hit.rule, effect, message: hit.message, ...(hit.error === undefined ? {} : { error: hit.error }) };
}

/** One VM's judgement, with what it was judged on (all immutable objects of the state machine, compared by identity). */
interface Judged {
  readonly spec: unknown;
  readonly assignment: unknown;
  readonly region: unknown;
  readonly evaluator: PolicyEvaluator;
  readonly violations: readonly PolicyViolation[];
}

/**
 * What the previous audit judged, by VM name: a VM whose spec, assignment,
 * region declaration and policy set are the same objects as then is not
 * evaluated again (the state machine replaces these objects when they
 * change, and a verdict is a function of them alone). Owned by one caller;
 * each audit keeps only the VMs it saw, so the memo is bounded by the fleet.
 */
export class AuditMemo {
  judged = new Map<string, Judged>();
}

const NONE: readonly PolicyViolation[] = Object.freeze([]);

/**
 * Every violation of `evaluator` by the placed VMs of `state` (its own
 * policy set, or a proposed one). With a memo, VMs unchanged since the
 * previous audit with it reuse their judgement: same answer, less work.
 */
export function auditFleet(state: FleetState, evaluator: PolicyEvaluator, memo?: AuditMemo): PolicyViolation[] {
  const run = new AuditRun(state, evaluator, memo);
  run.step(Number.POSITIVE_INFINITY);
  return run.finish();
}

/** Passing over a VM whose judgement the memo holds costs this fraction of judging one (measured: ~0.7 us against ~10 us with 50 rules). */
const VISITS_PER_JUDGEMENT = 16;

/**
 * One audit done in steps, so a driver can yield between them (a full
 * audit of 100 000 VMs takes about a second): the VM list is taken when the
 * run starts (a consistent snapshot of records, each immutable), regions
 * are looked up as the steps go. Stepped to the end, it answers exactly as
 * auditFleet does; the memo is updated by finish() only.
 */
export class AuditRun {
  readonly #state: FleetState;
  readonly #evaluator: PolicyEvaluator;
  readonly #memo: AuditMemo | undefined;
  readonly #vms: readonly FleetVm[];
  #next = 0;
  readonly #out: PolicyViolation[] = [];
  readonly #judged = new Map<string, Judged>();

  constructor(state: FleetState, evaluator: PolicyEvaluator, memo?: AuditMemo) {
    this.#state = state;
    this.#evaluator = evaluator;
    this.#memo = memo;
    this.#vms = evaluator.ruleCount === 0 ? [] : state.vms();
  }

  get done(): boolean {
    return this.#next >= this.#vms.length;
  }

  /** Goes on until done or about `budget` VMs were judged afresh (memo hits count 1/16); returns whether done. */
  step(budget: number): boolean {
    const evaluator = this.#evaluator;
    let spent = 0;
    while (this.#next < this.#vms.length && spent < budget) {
      const vm = this.#vms[this.#next++] as FleetVm;
      const a = vm.assignment;
      if (a === null || vm.deleted) continue;
      const region = this.#state.region(a.region);
      if (region === undefined) continue;
      const before = this.#memo?.judged.get(vm.name);
      let judged: Judged;
      if (before !== undefined && before.spec === vm.spec && before.assignment === a && before.region === region && before.evaluator === evaluator) {
        judged = before;
        spent += 1 / VISITS_PER_JUDGEMENT;
      } else {
        judged = { spec: vm.spec, assignment: a, region, evaluator, violations: judge(vm.name, vm.spec, a, region, evaluator) };
        spent += 1;
      }
      if (this.#memo !== undefined) this.#judged.set(vm.name, judged);
      for (const v of judged.violations) this.#out.push(v);
    }
    return this.done;
  }

  /** The violations, once done; keeps this run's judgements in the memo. */
  finish(): PolicyViolation[] {
    if (!this.done) throw new Error('AuditRun.finish: the run is not done (step it to the end first)');
    if (this.#memo !== undefined) this.#memo.judged = this.#judged;
    return this.#out;
  }
}

function judge(name: string, spec: FleetVm['spec'], a: FleetAssignment, region: FleetRegion, evaluator: PolicyEvaluator): readonly PolicyViolation[] {
  const provider = region.providers.find((p) => p.name === a.provider);
  if (provider === undefined) return NONE;
  const operation = firstAssignmentOperation(spec);
  const verdict = evaluator.evaluate({ vm: policyVmOf(spec), region: policyRegionOf(region, provider), cost: hourlyUsd(spec, provider.prices), operation });
  if (verdict.allowed && verdict.audits.length === 0) return NONE;
  return [
    ...verdict.denials.map((hit) => violation(name, a.region, a.provider, a.generation, operation, hit, 'deny')),
    ...verdict.audits.map((hit) => violation(name, a.region, a.provider, a.generation, operation, hit, 'audit')),
  ];
}
