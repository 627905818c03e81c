/**
 * Metrics of the continuous policy audit, computed at scrape time from the
 * auditor's latest audit (src/fleet/policy-auditor.ts):
 *
 *   dwcp_policy_violations{policy,effect}  placed VMs breaking a rule of that
 *                                          policy now, by effect (deny, audit)
 *   dwcp_policy_version                    the policy version audited against
 *
 * Invariant: label sets are bounded (the set's policies, at most 64, times
 * two effects); every policy of the current set is exported with both
 * effects, zeroes included, so a violation that clears reads 0 rather than
 * vanishing. The whole fleet as this node sees it: nodes with the same log
 * export the same values (sum over one node, not over all).
 */
import { Gauge, type Registry } from 'prom-client';
import type { PolicyAudit } from './policy-auditor.ts';

export const VIOLATION_EFFECTS = ['deny', 'audit'] as const;

export interface PolicyMetrics {
  violations: Gauge<'policy' | 'effect'>;
  version: Gauge;
  /** Where the gauges read the audit from at scrape time; until set they export nothing. */
  setSource(audit: () => PolicyAudit): void;
}

export function createPolicyMetrics(registers: Registry[]): PolicyMetrics {
  let source: (() => PolicyAudit) | null = null;
  const violations = new Gauge({
    name: 'dwcp_policy_violations',
    help: 'Placed VMs of the fleet that break a rule of the policy now (continuous audit, as this node sees the fleet), by policy and effect (deny, audit).',
    labelNames: ['policy', 'effect'],
    registers,
    collect() {
      this.reset();
      if (source === null) return;
      const audit = source();
      const counts = new Map<string, number>();
      for (const v of audit.violations) counts.set(`${v.policy}\u0000${v.effect}`, (counts.get(`${v.policy}\u0000${v.effect}`) ?? 0) + 1);
      for (const policy of audit.policies) for (const effect of VIOLATION_EFFECTS) this.set({ policy, effect }, counts.get(`${policy}\u0000${effect}`) ?? 0);
    },
  });
  const version = new Gauge({
    name: 'dwcp_policy_version',
    help: "The fleet's policy version in this node's replica of the federation log (0: none set).",
    registers,
    collect() {
      if (source !== null) this.set(source().version);
    },
  });
  return {
    violations,
    version,
    setSource(audit) {
      source = audit;
    },
  };
}
