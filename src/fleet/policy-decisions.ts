/**
 * The policy decision log: one structured JSON line per denial or audit hit,
 * in the daemon's log (component `policy`, msg `policy decision`), for a
 * SIEM or an auditor to collect. Fields:
 *
 *   decision   deny | audit | cleared (a standing violation that ended)
 *   source     placement (a candidate a deny rule excluded while this node
 *              scheduled a VM) | audit (the continuous audit of placed VMs)
 *   vm, region, provider, operation, policy, rule, effect, message,
 *   policyVersion, and generation (audit) or error (a condition that could
 *   not be evaluated)
 *
 * Who logs what, so that the federation logs each event once: a placement
 * denial is logged by the node that scheduled the request, once per
 * (region, provider, rule) per request (a re-plan does not repeat it); an
 * audit hit is logged by the daemon of the VM's region, when the violation
 * appears and when it clears, never again while it stands.
 *
 * placementDenials is pure; PolicyDecisionLog writes the lines.
 */
import type { Logger } from '../log.ts';
import type { PolicyOperation } from '../policy/document.ts';
import type { PolicyHit } from '../policy/evaluate.ts';
import type { PlacementDecision } from './placement.ts';
import type { PolicyViolation } from './policy-audit.ts';

export const POLICY_DECISION_MSG = 'policy decision';
/** At most this many placement denials are logged per request; the rest are counted in one line (1 000 regions would flood the log). */
export const MAX_DENIAL_LINES_PER_REQUEST = 32;

export interface PlacementDenial {
  readonly region: string;
  readonly provider: string;
  readonly hit: PolicyHit;
}

/** The deny hits of every candidate a placement decision excluded by policy, in region then provider order. */
export function placementDenials(decision: PlacementDecision): PlacementDenial[] {
  const out: PlacementDenial[] = [];
  for (const c of decision.candidates) {
    const providers = c.status === 'excluded' ? c.providers : c.otherProviders;
    for (const p of providers) {
      if (!('filter' in p) || p.filter !== 'policy' || p.denials === undefined) continue;
      for (const hit of p.denials) out.push({ region: c.region, provider: p.provider, hit });
    }
  }
  return out;
}

function hitFields(hit: PolicyHit): Record<string, string> {
  return { policy: hit.policy, rule: hit.rule, effect: hit.effect, message: hit.message, ...(hit.error === undefined ? {} : { error: hit.error }) };
}

/** Placement denials of one scheduling request: each logged once however often the request re-plans. */
export class RequestDenials {
  readonly #log: PolicyDecisionLog;
  readonly #vm: string;
  readonly #operation: PolicyOperation;
  readonly #seen = new Set<string>();
  #suppressed = 0;

  constructor(log: PolicyDecisionLog, vm: string, operation: PolicyOperation) {
    this.#log = log;
    this.#vm = vm;
    this.#operation = operation;
  }

  record(decision: PlacementDecision, policyVersion: number): void {
    for (const d of placementDenials(decision)) {
      const key = `${d.region}\u0000${d.provider}\u0000${d.hit.policy}\u0000${d.hit.rule}`;
      if (this.#seen.has(key)) continue;
      this.#seen.add(key);
      if (this.#seen.size > MAX_DENIAL_LINES_PER_REQUEST) this.#suppressed++;
      else this.#log.placementDenied(this.#vm, this.#operation, d, policyVersion);
    }
  }

  /** Says how many denials were left out, if any. */
  finish(): void {
    if (this.#suppressed > 0) this.#log.suppressed(this.#vm, this.#suppressed);
  }
}

export class PolicyDecisionLog {
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  placementDenied(vm: string, operation: PolicyOperation, d: PlacementDenial, policyVersion: number): void {
    this.#log.info({ decision: 'deny', source: 'placement', vm, region: d.region, provider: d.provider, operation, ...hitFields(d.hit), policyVersion }, POLICY_DECISION_MSG);
  }

  suppressed(vm: string, count: number): void {
    this.#log.info({ vm, suppressed: count }, `policy decisions: ${count} more placement denials of ${vm} not logged (at most ${MAX_DENIAL_LINES_PER_REQUEST} per request)`);
  }

  /** A violation that appeared (`deny` or `audit`, its effect) or `cleared`. */
  audit(v: PolicyViolation, change: 'appeared' | 'cleared', policyVersion: number): void {
    const { vm, region, provider, generation, operation, policy, rule, effect, message, error } = v;
    this.#log.info(
      { decision: change === 'cleared' ? 'cleared' : effect, source: 'audit', vm, region, provider, generation, operation, policy, rule, effect, message, ...(error === undefined ? {} : { error }), policyVersion },
      POLICY_DECISION_MSG,
    );
  }
}
