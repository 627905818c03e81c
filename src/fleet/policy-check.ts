/**
 * Where the fleet meets the policy evaluator (src/policy/): the facts a
 * policy sees of a fleet VM and of a candidate (region, provider), which
 * operation an assignment is, and the sentence a denial is refused with.
 * Placement (filter `policy`) and the state machine (at apply, for every
 * assignment) both go through here, so they ask the evaluator the same
 * question about the same facts and cannot disagree.
 *
 * Operations: a VM's first assignment (of this incarnation) is `create` when
 * its spec pins exactly one region (`vm create --region R`: the operator
 * chose where), else `place` (the scheduler chose); `burst` may be either a
 * first assignment or a move (the burst controller's, a later issue); any
 * other move of an assigned VM is `migrate`, `failover` or `failback`. The
 * state machine refuses an assign whose declared operation contradicts this
 * (a plan cannot dodge a rule by calling a placement a failover it is not),
 * and derives it when the command leaves it out.
 *
 * Pure: no I/O, no clock.
 */
import { PolicyRegion, PolicyVm, type PolicyTrust } from '../policy/facts.ts';
import type { PolicyOperation } from '../policy/document.ts';
import { formatHit, type PolicyVerdict } from '../policy/evaluate.ts';
import type { ProviderFacts, RegionFacts } from './ledger.ts';
import type { FleetVmSpec } from './spec.ts';

/** A region as policies need it: the declared facts, and the node's trust when the region declared it. */
export interface PolicyRegionSource extends RegionFacts {
  readonly trust?: 'trusted' | 'untrusted' | null;
}

export function policyVmOf(spec: FleetVmSpec): PolicyVm {
  return new PolicyVm(spec);
}

export function policyRegionOf(region: PolicyRegionSource, provider: ProviderFacts): PolicyRegion {
  const trust: PolicyTrust = region.trust ?? 'unknown';
  return new PolicyRegion({
    name: region.name,
    provider: provider.name,
    providerKind: provider.kind,
    spot: provider.spot,
    trust,
    jurisdiction: region.jurisdiction ?? '',
    compliance: region.compliance,
    labels: region.labels,
  });
}

/** The operation of a VM's first assignment: `create` when the spec pins one region, else `place`. */
export function firstAssignmentOperation(spec: FleetVmSpec): 'create' | 'place' {
  return spec.constraints.regions?.length === 1 ? 'create' : 'place';
}

const MOVES: readonly PolicyOperation[] = ['migrate', 'failover', 'failback', 'burst'];

/**
 * The operation an assign counts as: the declared one when it fits the VM's
 * state, else a sentence saying why it does not. `assigned`: the VM has a
 * current assignment (this is a move).
 */
export function assignmentOperation(spec: FleetVmSpec, assigned: boolean, declared: PolicyOperation | undefined): { readonly ok: true; readonly operation: PolicyOperation } | { readonly ok: false; readonly problem: string } {
  if (assigned) {
    if (declared === undefined) return { ok: true, operation: 'migrate' };
    if (MOVES.includes(declared)) return { ok: true, operation: declared };
    return { ok: false, problem: `operation ${declared} is for a VM's first assignment, and ${spec.name} is assigned already (a move is migrate, failover, failback or burst)` };
  }
  const first = firstAssignmentOperation(spec);
  if (declared === undefined || declared === first || declared === 'burst') return { ok: true, operation: declared ?? first };
  if (declared === 'create' || declared === 'place') {
    return { ok: false, problem: `operation ${declared} does not fit ${spec.name}'s spec: a first assignment is create when the spec pins exactly one region, else place (here: ${first})` };
  }
  return { ok: false, problem: `operation ${declared} moves an assigned VM, and ${spec.name} is not assigned yet` };
}

/** `denied by policy eu-residency rule personal-data-in-eu: personal data stays in the EU (and 2 more rules)`. */
export function describeDenial(verdict: PolicyVerdict): string {
  const [first] = verdict.denials;
  if (first === undefined) return 'allowed';
  const more = verdict.denials.length - 1;
  return `denied by ${formatHit(first)}${more > 0 ? ` (and ${more} more rule${more === 1 ? '' : 's'}: ${verdict.denials.slice(1).map((h) => `${h.policy}/${h.rule}`).join(', ')})` : ''}`;
}
