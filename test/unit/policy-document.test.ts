/** Policy documents: YAML and JSON files, refusals that name the file and field, merging several files into one set. */
import { describe, expect, it } from 'vitest';
import { POLICY_MAX_RULES, PolicyDocumentError, mergePolicyDocuments, parsePolicies, parsePolicyDocument } from '../../src/policy/document.ts';

const yaml = `
policies:
  - name: eu-residency
    rules:
      - name: personal-data-in-eu
        selector: {labels: {data-class: personal}, operations: [place, create], memory: {min: 1GiB}}
        condition: region.jurisdiction == 'eu'
        effect: deny
        message: personal data stays in the EU
`;

function problems(fn: () => unknown): readonly string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PolicyDocumentError);
    return (err as PolicyDocumentError).problems;
  }
  throw new Error('expected a refusal');
}

describe('policy documents', () => {
  it('parses YAML into the normal form (defaults present, selector lists sorted, sizes in bytes)', () => {
    expect(parsePolicyDocument(yaml, 'eu.yaml')).toEqual([
      {
        name: 'eu-residency',
        rules: [
          {
            name: 'personal-data-in-eu',
            selector: { labels: { 'data-class': 'personal' }, operations: ['create', 'place'], memory: { min: 1024 ** 3 } },
            condition: "region.jurisdiction == 'eu'",
            effect: 'deny',
            message: 'personal data stays in the EU',
          },
        ],
      },
    ]);
  });

  it('parses JSON (a subset of YAML) to the same policies', () => {
    const json = JSON.stringify({ policies: parsePolicyDocument(yaml, 'eu.yaml') });
    expect(parsePolicyDocument(json, 'eu.json')).toEqual(parsePolicyDocument(yaml, 'eu.yaml'));
  });

  it('refuses YAML that does not parse, naming the file and the line', () => {
    expect(problems(() => parsePolicyDocument('policies:\n  - name: [unclosed\n', 'bad.yaml'))[0]).toMatch(/^bad\.yaml: not valid YAML: .*line 3/);
    expect(problems(() => parsePolicyDocument('policies: []\npolicies: []\n', 'twice.yaml'))[0]).toMatch(/^twice\.yaml: not valid YAML: Map keys must be unique/);
  });

  it('refuses a malformed document, naming the file and the field', () => {
    expect(problems(() => parsePolicyDocument('rules: []', 'x.yaml'))).toEqual(['x.yaml: policies: missing, expected a list', 'x.yaml: rules: unknown key (not part of the schema)']);
    const bad = yaml.replace('effect: deny', 'effect: block').replace('name: eu-residency', 'name: EU');
    expect(problems(() => parsePolicyDocument(bad, 'x.yaml'))).toEqual([
      'x.yaml: policies[0].name: "EU" is not a lowercase DNS label (a-z, 0-9, "-", at most 63 characters)',
      'x.yaml: policies[0].rules[0].effect: "block" is not one of deny|audit|warn',
    ]);
    expect(problems(() => parsePolicyDocument(yaml.replace('memory: {min: 1GiB}', 'memory: {min: 8GiB, max: 1GiB}'), 'x.yaml'))).toEqual([
      'x.yaml: policies[0].rules[0].selector.memory: {"min":8589934592,"max":1073741824} is not a range whose min is at most its max',
    ]);
    expect(problems(() => parsePolicyDocument(yaml.replace('operations: [place, create]', 'operations: [place, teleport]'), 'x.yaml'))[0]).toContain('selector.operations[1]: "teleport" is not one of create|place|burst|migrate|failover|failback');
    expect(problems(() => parsePolicyDocument(yaml.replace("condition: region.jurisdiction == 'eu'", 'condition: ""'), 'x.yaml'))[0]).toContain('rules[0].condition: "" is too short');
  });

  it('refuses duplicate names: rules within a policy, policies within a set and across files', () => {
    const rule = { name: 'r', condition: 'true', effect: 'deny', message: 'm' };
    expect(problems(() => parsePolicies([{ name: 'p', rules: [rule, rule] }]))).toEqual(['policies[0].rules[1].name: "r" names another rule of this policy too']);
    expect(problems(() => parsePolicies([{ name: 'p', rules: [rule] }, { name: 'p', rules: [rule] }]))).toEqual(['policies[1].name: "p" names another policy of the set too']);
    const doc = parsePolicyDocument(yaml, 'a.yaml');
    expect(problems(() => mergePolicyDocuments([{ source: 'a.yaml', policies: doc }, { source: 'b.yaml', policies: doc }]))).toEqual(['b.yaml: policy eu-residency is also defined in a.yaml']);
  });

  it('bounds the set: rules in all, and a document\'s size', () => {
    const rules = Array.from({ length: 64 }, (_, i) => ({ name: `r${i}`, condition: 'true', effect: 'deny', message: 'm' }));
    const policies = Array.from({ length: 5 }, (_, i) => ({ name: `p${i}`, rules }));
    expect(problems(() => parsePolicies(policies))).toEqual([`policies: "320 rules" are more than the ${POLICY_MAX_RULES} a policy set may hold`]);
    expect(problems(() => parsePolicyDocument(`# ${'x'.repeat(300 * 1024)}\npolicies: []`, 'big.yaml'))).toEqual(['big.yaml: larger than 262144 bytes']);
  });

  it('merges several files in order', () => {
    const a = parsePolicyDocument(yaml, 'a.yaml');
    const b = parsePolicyDocument(yaml.replace('name: eu-residency', 'name: other'), 'b.yaml');
    expect(mergePolicyDocuments([{ source: 'a.yaml', policies: a }, { source: 'b.yaml', policies: b }]).map((p) => p.name)).toEqual(['eu-residency', 'other']);
  });
});
