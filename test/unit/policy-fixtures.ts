/**
 * Builders for the policy tests: facts with small readable defaults, and
 * one-policy sets, always through the real parsers and compiler.
 */
import { compilePolicySet } from '../../src/policy/compile.ts';
import { parsePolicies, type PolicyOperation, type PolicySpecInput } from '../../src/policy/document.ts';
import type { PolicyEvaluator, PolicyVerdict } from '../../src/policy/evaluate.ts';
import { PolicyRegion, PolicyVm, type PolicyRegionInput, type PolicyVmInput } from '../../src/policy/facts.ts';

export const GIB = 1024 ** 3;

export function vmFacts(extra: Partial<PolicyVmInput> = {}): PolicyVm {
  return new PolicyVm({ name: 'web1', vcpus: 2, memoryBytes: 4 * GIB, diskBytes: 0, image: 'base', spot: false, priority: 0, labels: {}, ...extra });
}

export function regionFacts(extra: Partial<PolicyRegionInput> = {}): PolicyRegion {
  return new PolicyRegion({ name: 'eu-west', provider: 'local', providerKind: 'local', spot: false, trust: 'trusted', jurisdiction: 'eu', compliance: ['gdpr'], labels: {}, ...extra });
}

type RuleInput = PolicySpecInput['rules'][number];

/** One policy `p` whose rules default to deny with message `rule N fired`. */
export function evaluatorOf(rules: (Partial<RuleInput> & { condition: string })[], version = 1): PolicyEvaluator {
  const policies = parsePolicies([{ name: 'p', rules: rules.map((r, i) => ({ name: `r${i + 1}`, effect: 'deny', message: `rule ${i + 1} fired`, ...r })) }]);
  return compilePolicySet({ version, policies });
}

export function verdict(evaluator: PolicyEvaluator, inputs: { vm?: PolicyVm; region?: PolicyRegion; cost?: number; operation?: PolicyOperation } = {}): PolicyVerdict {
  return evaluator.evaluate({ vm: inputs.vm ?? vmFacts(), region: inputs.region ?? regionFacts(), cost: inputs.cost ?? 0.1, operation: inputs.operation ?? 'place' });
}
