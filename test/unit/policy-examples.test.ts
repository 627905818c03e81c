/**
 * The shipped example policies (config/policies/): each parses, compiles
 * and decides as its comments say; all of them together form one valid set.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compilePolicySet } from '../../src/policy/compile.ts';
import { mergePolicyDocuments, parsePolicyDocument, type PolicyOperation } from '../../src/policy/document.ts';
import type { PolicyEvaluator, PolicyVerdict } from '../../src/policy/evaluate.ts';
import type { PolicyRegion, PolicyVm } from '../../src/policy/facts.ts';
import { regionFacts, vmFacts } from './policy-fixtures.ts';

const DIR = new URL('../../config/policies/', import.meta.url).pathname;

function example(file: string): PolicyEvaluator {
  return compilePolicySet({ version: 1, policies: parsePolicyDocument(readFileSync(`${DIR}${file}`, 'utf8'), file) });
}

function decide(evaluator: PolicyEvaluator, vm: PolicyVm, region: PolicyRegion = regionFacts(), cost = 0.1, operation: PolicyOperation = 'place'): PolicyVerdict {
  return evaluator.evaluate({ vm, region, cost, operation });
}

const eu = regionFacts({ name: 'dc1', jurisdiction: 'eu' });
const us = regionFacts({ name: 'dc2', jurisdiction: 'us', compliance: ['hipaa', 'soc2'] });
const undeclared = regionFacts({ name: 'dc3', jurisdiction: '' });

describe('config/policies', () => {
  it('holds the four examples, and together they compile as one set', () => {
    const files = readdirSync(DIR).filter((f) => f.endsWith('.yaml')).sort();
    expect(files).toEqual(['cost-cap.yaml', 'eu-residency.yaml', 'hipaa.yaml', 'required-tags.yaml']);
    const policies = mergePolicyDocuments(files.map((f) => ({ source: f, policies: parsePolicyDocument(readFileSync(`${DIR}${f}`, 'utf8'), f) })));
    expect(compilePolicySet({ version: 1, policies }).ruleCount).toBe(5);
  });

  it('eu-residency: data-class=personal only in jurisdiction eu; other VMs anywhere', () => {
    const policy = example('eu-residency.yaml');
    const pii = vmFacts({ labels: { 'data-class': 'personal' } });
    expect(decide(policy, pii, eu).allowed).toBe(true);
    expect(decide(policy, pii, us)).toMatchObject({ allowed: false, denials: [{ policy: 'eu-residency', rule: 'personal-data-in-eu', message: 'VMs labelled data-class=personal run only in regions of jurisdiction eu' }] });
    expect(decide(policy, pii, undeclared).allowed).toBe(false);
    for (const operation of ['create', 'burst', 'migrate', 'failover', 'failback'] as const) expect(decide(policy, pii, us, 0.1, operation).allowed).toBe(false);
    expect(decide(policy, vmFacts({ labels: { 'data-class': 'public' } }), us).allowed).toBe(true);
    expect(decide(policy, vmFacts(), us).allowed).toBe(true);
  });

  it('required-tags: new VMs need owner and cost-center; moves of older VMs are not held to it', () => {
    const policy = example('required-tags.yaml');
    const tagged = vmFacts({ labels: { owner: 'alice', 'cost-center': 'cc-42' } });
    expect(decide(policy, tagged).allowed).toBe(true);
    expect(decide(policy, vmFacts({ labels: { owner: 'alice' } }))).toMatchObject({ allowed: false, denials: [{ rule: 'owner-and-cost-center' }] });
    expect(decide(policy, vmFacts(), eu, 0.1, 'create').allowed).toBe(false);
    expect(decide(policy, vmFacts(), eu, 0.1, 'failover').allowed).toBe(true);
    expect(decide(policy, vmFacts(), eu, 0.1, 'migrate').allowed).toBe(true);
  });

  it('cost-cap: over $2/h denied unless approved; over $0.50/h audited', () => {
    const policy = example('cost-cap.yaml');
    expect(decide(policy, vmFacts(), eu, 0.5)).toBe(decide(policy, vmFacts(), eu, 0.1));
    expect(decide(policy, vmFacts(), eu, 0.5).allowed).toBe(true);
    expect(decide(policy, vmFacts(), eu, 1.5)).toMatchObject({ allowed: true, denials: [], audits: [{ rule: 'review-above-50-cents' }] });
    expect(decide(policy, vmFacts(), eu, 2.5)).toMatchObject({ allowed: false, denials: [{ rule: 'at-most-2-usd-per-hour' }], audits: [{ rule: 'review-above-50-cents' }] });
    expect(decide(policy, vmFacts({ labels: { 'cost-approved-by': 'cfo' } }), eu, 2.5)).toMatchObject({ allowed: true, audits: [{ rule: 'review-above-50-cents' }] });
  });

  it('hipaa: compliance=hipaa only in regions with the hipaa mark', () => {
    const policy = example('hipaa.yaml');
    const phi = vmFacts({ labels: { compliance: 'hipaa' } });
    expect(decide(policy, phi, us).allowed).toBe(true);
    expect(decide(policy, phi, eu)).toMatchObject({ allowed: false, denials: [{ policy: 'hipaa', rule: 'hipaa-regions-only' }] });
    expect(decide(policy, vmFacts(), eu).allowed).toBe(true);
  });
});
