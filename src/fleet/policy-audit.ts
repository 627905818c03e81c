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
import type { FleetState } from './state-machine.ts';

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

/** Every violation of `evaluator` by the placed VMs of `state` (its own policy set, or a proposed one). */
export function auditFleet(state: FleetState, evaluator: PolicyEvaluator): PolicyViolation[] {
  if (evaluator.ruleCount === 0) return [];
  const out: PolicyViolation[] = [];
  for (const vm of state.vms()) {
    const a = vm.assignment;
    if (a === null || vm.deleted) continue;
    const region = state.region(a.region);
    const provider = region?.providers.find((p) => p.name === a.provider);
    if (region === undefined || provider === undefined) continue;
    const operation = firstAssignmentOperation(vm.spec);
    const verdict = evaluator.evaluate({ vm: policyVmOf(vm.spec), region: policyRegionOf(region, provider), cost: hourlyUsd(vm.spec, provider.prices), operation });
    for (const hit of verdict.denials) out.push(violation(vm.name, a.region, a.provider, a.generation, operation, hit, 'deny'));
    for (const hit of verdict.audits) out.push(violation(vm.name, a.region, a.provider, a.generation, operation, hit, 'audit'));
  }
  return out;
}
