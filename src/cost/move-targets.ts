/**
 * Where a fleet VM could move for less, as the optimiser's arbitrage rule
 * sees it: every (region, provider) the federation log registers, the VM's
 * $/h there from the provider's declared prices (the same linear model
 * placement scores with, src/fleet/ledger.ts hourlyUsd), and whether the
 * move is allowed: the spec's constraints, then the fleet's policy set for a
 * `migrate` (the checks the state machine applies to a migration-start, so a
 * recommended move is one the log will accept, capacity aside).
 *
 * Pure: reads a FleetState, no I/O.
 */
import { hourlyUsd, providerConstraintProblem, regionConstraintProblem } from '../fleet/ledger.ts';
import { describeDenial, policyRegionOf, policyVmOf } from '../fleet/policy-check.ts';
import type { FleetVmSpec } from '../fleet/spec.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import type { MoveTarget } from './recommend.ts';

export type FleetFacts = Pick<FleetState, 'regions' | 'region' | 'policy'>;

export function moveTargets(state: FleetFacts, spec: FleetVmSpec): MoveTarget[] {
  return state.regions().flatMap((r) => r.providers.filter((p) => !p.spot || spec.spot).map((p) => ({ region: r.name, provider: p.name, kind: p.kind, hourlyUsd: hourlyUsd(spec, p.prices) })));
}

/** Null when the spec may migrate to the target; else why not (constraint or policy denial). */
export function moveRefusal(state: FleetFacts, spec: FleetVmSpec, target: Pick<MoveTarget, 'region' | 'provider'>): string | null {
  const region = state.region(target.region);
  const provider = region?.providers.find((p) => p.name === target.provider);
  if (region === undefined || provider === undefined) return `${target.region}/${target.provider} is not registered`;
  const problem = regionConstraintProblem(spec, region) ?? providerConstraintProblem(spec, provider)?.reason ?? null;
  if (problem !== null) return problem;
  const { evaluator } = state.policy;
  if (evaluator.ruleCount === 0) return null;
  const verdict = evaluator.evaluate({ vm: policyVmOf(spec), region: policyRegionOf(region, provider), cost: hourlyUsd(spec, provider.prices), operation: 'migrate' });
  return verdict.allowed ? null : describeDenial(verdict);
}
