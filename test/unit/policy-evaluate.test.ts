/**
 * Evaluating policies: polarity (a rule fires when its condition is false),
 * a rule that errors fires with its effect (never a silent allow), selectors,
 * the order of hits, determinism, and that sharing outcomes among candidates
 * (PolicyScope) never changes a verdict (property, seeded).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compilePolicySet } from '../../src/policy/compile.ts';
import { POLICY_OPERATIONS, parsePolicies, type PolicyEffect, type PolicyOperation } from '../../src/policy/document.ts';
import { ALLOWED } from '../../src/policy/evaluate.ts';
import { GIB, evaluatorOf, regionFacts, verdict, vmFacts } from './policy-fixtures.ts';

describe('polarity and effects', () => {
  it('a rule fires when its condition is false; deny refuses, audit and warn allow and are reported', () => {
    const evaluator = evaluatorOf([
      { condition: "region.jurisdiction == 'eu'", message: 'EU only' },
      { condition: 'cost <= 0.5', effect: 'audit', message: 'dear' },
      { condition: 'vm.vcpus <= 1', effect: 'warn', message: 'big' },
    ]);
    expect(verdict(evaluator, { cost: 0.1, vm: vmFacts({ vcpus: 1 }) })).toBe(ALLOWED);
    expect(verdict(evaluator, { region: regionFacts({ jurisdiction: 'us' }), cost: 1, vm: vmFacts({ vcpus: 4 }) })).toEqual({
      allowed: false,
      denials: [{ policy: 'p', rule: 'r1', effect: 'deny', message: 'EU only' }],
      audits: [{ policy: 'p', rule: 'r2', effect: 'audit', message: 'dear' }],
      warnings: [{ policy: 'p', rule: 'r3', effect: 'warn', message: 'big' }],
    });
    expect(verdict(evaluator, { cost: 1 })).toMatchObject({ allowed: true, denials: [], audits: [{ rule: 'r2' }] });
  });

  it.each<[PolicyEffect, object]>([
    ['deny', { allowed: false, denials: [expect.objectContaining({ error: 'No such key: owner' })] }],
    ['audit', { allowed: true, audits: [expect.objectContaining({ error: 'No such key: owner' })] }],
    ['warn', { allowed: true, warnings: [expect.objectContaining({ error: 'No such key: owner' })] }],
  ])('a %s rule whose condition errors fires as its effect says, saying why', (effect, expected) => {
    const evaluator = evaluatorOf([{ condition: "vm.labels['owner'] != ''", effect, message: 'needs an owner' }]);
    const v = verdict(evaluator);
    expect(v).toMatchObject(expected);
    const hit = [...v.denials, ...v.audits, ...v.warnings][0];
    expect(hit?.message).toBe('needs an owner (the condition could not be evaluated: No such key: owner)');
    // With the label the condition evaluates, and holds.
    expect(verdict(evaluator, { vm: vmFacts({ labels: { owner: 'ops' } }) })).toBe(ALLOWED);
  });

  it('errors of other kinds fire too: division by zero, a missing region label through dot access', () => {
    expect(verdict(evaluatorOf([{ condition: 'vm.vcpus / (vm.vcpus - 2) > 0' }]))).toMatchObject({ allowed: false, denials: [{ error: 'division by zero' }] });
    expect(verdict(evaluatorOf([{ condition: "region.labels.tier == 'gold'" }]))).toMatchObject({ allowed: false, denials: [{ error: 'No such key: tier' }] });
    // has() is how a condition asks without erroring.
    expect(verdict(evaluatorOf([{ condition: "!has(region.labels.tier) || region.labels.tier == 'gold'" }]))).toBe(ALLOWED);
  });

  it('reports hits in the set\'s order, policy by policy and rule by rule, whatever the evaluation order', () => {
    const policies = parsePolicies([
      { name: 'zeta', rules: [{ name: 'a', condition: 'cost < 0.0', effect: 'deny', message: 'z-a' }, { name: 'b', condition: "region.name == 'x'", effect: 'deny', message: 'z-b' }] },
      { name: 'alpha', rules: [{ name: 'c', condition: 'vm.vcpus > 100', effect: 'deny', message: 'a-c' }] },
    ]);
    const v = compilePolicySet({ version: 1, policies }).evaluate({ vm: vmFacts(), region: regionFacts(), cost: 1, operation: 'place' });
    expect(v.denials.map((h) => h.message)).toEqual(['z-a', 'z-b', 'a-c']);
  });

  it('is deterministic: the same inputs give the same verdict, call after call and compile after compile', () => {
    const rules = [{ condition: "region.jurisdiction == 'eu'" }, { condition: 'cost <= 0.5', effect: 'audit' as const }, { condition: "vm.labels['x'] == 'y'", effect: 'warn' as const }];
    const a = evaluatorOf(rules);
    const b = evaluatorOf(rules);
    const input = { vm: vmFacts(), region: regionFacts({ jurisdiction: 'us' }), cost: 2, operation: 'migrate' as const };
    const first = a.evaluate(input);
    for (let i = 0; i < 20; i++) {
      expect(a.evaluate(input)).toEqual(first);
      expect(b.evaluate(input)).toEqual(first);
    }
  });
});

describe('selectors', () => {
  const fires = (selector: object, vm = vmFacts(), operation: PolicyOperation = 'place'): boolean => !verdict(evaluatorOf([{ selector, condition: 'false' }]), { vm, operation }).allowed;

  it('an empty selector selects every VM', () => {
    expect(fires({})).toBe(true);
  });

  it('labels (exact values), hasLabels (any value), names, spot', () => {
    const pii = vmFacts({ name: 'db1', labels: { 'data-class': 'personal', owner: 'ops' }, spot: true });
    expect(fires({ labels: { 'data-class': 'personal' } }, pii)).toBe(true);
    expect(fires({ labels: { 'data-class': 'public' } }, pii)).toBe(false);
    expect(fires({ labels: { 'data-class': 'personal', owner: 'dev' } }, pii)).toBe(false);
    expect(fires({ hasLabels: ['owner'] }, pii)).toBe(true);
    expect(fires({ hasLabels: ['owner', 'cost-center'] }, pii)).toBe(false);
    expect(fires({ names: ['db1', 'db2'] }, pii)).toBe(true);
    expect(fires({ names: ['web1'] }, pii)).toBe(false);
    expect(fires({ spot: true }, pii)).toBe(true);
    expect(fires({ spot: false }, pii)).toBe(false);
    // A label inherited from Object.prototype is not a label.
    expect(fires({ hasLabels: ['constructor'] }, pii)).toBe(false);
  });

  it('operations, vcpus and memory ranges (sizes as the CLI takes them)', () => {
    expect(fires({ operations: ['failover', 'failback'] }, vmFacts(), 'failover')).toBe(true);
    expect(fires({ operations: ['failover', 'failback'] }, vmFacts(), 'place')).toBe(false);
    expect(fires({ vcpus: { min: 2, max: 4 } }, vmFacts({ vcpus: 4 }))).toBe(true);
    expect(fires({ vcpus: { min: 8 } }, vmFacts({ vcpus: 4 }))).toBe(false);
    expect(fires({ memory: { min: '4GiB' } }, vmFacts({ memoryBytes: 4 * GIB }))).toBe(true);
    expect(fires({ memory: { max: '2GiB' } }, vmFacts({ memoryBytes: 4 * GIB }))).toBe(false);
    expect(fires({ memory: { max: 4 * GIB } }, vmFacts({ memoryBytes: 4 * GIB }))).toBe(true);
  });

  it('a rule whose selector does not match never fires, even when its condition would error', () => {
    expect(verdict(evaluatorOf([{ selector: { labels: { 'data-class': 'personal' } }, condition: "vm.labels['data-class'] == 'x'" }]))).toBe(ALLOWED);
  });
});

describe('sharing outcomes among candidates (property)', () => {
  const conditions = [
    "region.jurisdiction == 'eu'",
    "'hipaa' in region.compliance",
    "!has(region.labels.tier) || region.labels.tier != 'bronze'",
    "region.trust == 'trusted' || region.providerKind != 'aws'",
    'cost <= 0.3',
    "cost <= 1.0 || 'cost-approved-by' in vm.labels",
    "'owner' in vm.tags && 'cost-center' in vm.tags",
    "operation != 'failover' || region.jurisdiction != 'us'",
    "region.name != 'r3' && region.provider != 'spot'",
    "region.labels['tier'] == 'gold'",
    'vm.vcpus <= 4 || !region.spot',
    "region.compliance.exists(c, c == 'pci') || region.jurisdiction == 'us'",
    "[region][0].name != 'r1'",
  ];
  const effects: PolicyEffect[] = ['deny', 'audit', 'warn'];
  const labelSets: Record<string, string>[] = [{}, { owner: 'a' }, { owner: 'a', 'cost-center': 'c' }, { 'data-class': 'personal' }, { 'cost-approved-by': 'cfo', owner: 'b' }];
  const selectors: { hasLabels?: string[]; operations?: PolicyOperation[] }[] = [{}, { hasLabels: ['owner'] }, { operations: ['failover', 'place'] }];
  const regionLabels: Record<string, string>[] = [{}, { tier: 'gold' }, { tier: 'bronze' }];
  const regionArb = fc.record({
    name: fc.constantFrom('r1', 'r2', 'r3', 'r4'),
    provider: fc.constantFrom('local', 'spot'),
    providerKind: fc.constantFrom('local', 'aws', 'gcp'),
    spot: fc.boolean(),
    trust: fc.constantFrom('trusted' as const, 'untrusted' as const, 'unknown' as const),
    jurisdiction: fc.constantFrom('eu', 'us', ''),
    compliance: fc.subarray(['gdpr', 'hipaa', 'pci']),
    labels: fc.constantFrom(...regionLabels),
  });

  it('a scope over many candidates gives exactly the verdicts of evaluating each rule on each candidate afresh', () => {
    const seed = Number(process.env['POLICY_SEED'] ?? Date.now() % 2 ** 31);
    try {
      fc.assert(
        fc.property(
          fc.array(fc.record({ condition: fc.constantFrom(...conditions), effect: fc.constantFrom(...effects), selector: fc.constantFrom(...selectors) }), { minLength: 1, maxLength: 12 }),
          fc.constantFrom(...labelSets),
          fc.integer({ min: 1, max: 8 }),
          fc.constantFrom(...POLICY_OPERATIONS),
          fc.array(fc.tuple(regionArb, fc.double({ min: 0, max: 2, noNaN: true })), { minLength: 1, maxLength: 20 }),
          (rules, labels, vcpus, operation, candidates) => {
            const evaluator = evaluatorOf(rules);
            const vm = vmFacts({ labels, vcpus });
            const scope = evaluator.forVm(vm, operation);
            for (const [regionInput, cost] of candidates) {
              const region = regionFacts(regionInput);
              expect(scope.evaluate(region, cost)).toEqual(evaluator.evaluate({ vm, region, cost, operation }));
            }
          },
        ),
        { seed, numRuns: 300 },
      );
    } catch (err) {
      throw new Error(`policy sharing property failed with seed ${seed} (replay: POLICY_SEED=${seed}): ${err instanceof Error ? err.message : String(err)}`);
    }
  });
});
