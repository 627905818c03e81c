/**
 * The policy language's documents: what an operator writes (a YAML or JSON
 * file of policies, each a list of rules) and the normalised policy list the
 * fleet log carries in a `set-policy` command (src/fleet/commands.ts).
 *
 * A document:
 *
 *   policies:
 *     - name: eu-residency                  # a DNS label, unique in the set
 *       description: Personal data stays in the EU.
 *       rules:
 *         - name: personal-data-in-eu       # a DNS label, unique in its policy
 *           selector: {labels: {data-class: personal}}   # which VMs (selector.ts); {} = every VM
 *           condition: region.jurisdiction == 'eu'        # CEL: what MUST hold (compile.ts)
 *           effect: deny                    # deny | audit | warn
 *           message: personal data stays in EU regions
 *
 * Polarity (the one rule of the language): the condition states what must
 * hold for a selected VM at the candidate region; the rule FIRES when the
 * condition is false (or cannot be evaluated), as in Kubernetes'
 * ValidatingAdmissionPolicy. A rule whose selector does not match the VM (or
 * the operation) never fires. What firing does is the effect: `deny` refuses
 * the placement, `audit` allows it and records it, `warn` allows it and tells
 * the requester.
 *
 * Invariants:
 * - A PolicySpec in memory has passed PoliciesSchema and normalisePolicies:
 *   names are unique where they must be, every bound below holds, selector
 *   lists are sorted and label maps ordered by key, absent optional fields
 *   are left out (never undefined). So two replicas holding "the same"
 *   policies hold the same canonical JSON (the fleet command's encoding).
 * - Schema refusals name the field from the top, in the config's wording
 *   (`policies[0].rules[2].effect: "block" is not one of deny|audit|warn`).
 * - Pure: no I/O. parsePolicyDocument takes the text, the caller reads files.
 *
 * Compiling the conditions (CEL) is compile.ts's; this module checks shape
 * only, so the fleet command's decoder stays cheap.
 */
import { z } from 'zod';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { DwcpError } from '../errors.ts';
import { formatIssue, pathString } from '../config/issues.ts';
import { fleetName } from '../fleet/spec.ts';
import { SelectorSchema, normaliseSelector } from './selector.ts';

export const POLICY_EFFECTS = ['deny', 'audit', 'warn'] as const;
export type PolicyEffect = (typeof POLICY_EFFECTS)[number];

/** The operations a rule sees (`operation` in CEL; selector.operations): every path that chooses or changes a VM's region. */
export const POLICY_OPERATIONS = ['create', 'place', 'burst', 'migrate', 'failover', 'failback'] as const;
export type PolicyOperation = (typeof POLICY_OPERATIONS)[number];

/** Bounds of one policy set: they keep compile and evaluation cost bounded and a set inside one log entry. */
export const POLICY_MAX_POLICIES = 64;
export const POLICY_MAX_RULES_PER_POLICY = 64;
/** Rules across the whole set. */
export const POLICY_MAX_RULES = 256;
export const POLICY_MAX_CONDITION_LENGTH = 2048;
export const POLICY_MAX_MESSAGE_LENGTH = 512;
export const POLICY_MAX_DESCRIPTION_LENGTH = 1024;
/** A document file as read; larger is a mistake (a policy set must fit one 64 KiB log entry anyway). */
export const POLICY_MAX_DOCUMENT_BYTES = 256 * 1024;

const text = (max: number) => z.string().min(1).max(max);

const RuleSchema = z.strictObject({
  name: fleetName,
  /** Which VMs (and operations) the rule applies to; absent or {} = all. */
  selector: SelectorSchema.default({}),
  /** A CEL expression of type bool over vm, region, cost and operation: what must hold. */
  condition: z.string().min(1).max(POLICY_MAX_CONDITION_LENGTH),
  effect: z.enum(POLICY_EFFECTS),
  /** Shown when the rule fires. */
  message: text(POLICY_MAX_MESSAGE_LENGTH),
});

const PolicySchema = z
  .strictObject({
    name: fleetName,
    description: text(POLICY_MAX_DESCRIPTION_LENGTH).optional(),
    rules: z.array(RuleSchema).min(1).max(POLICY_MAX_RULES_PER_POLICY),
  })
  .superRefine((policy, ctx) => {
    const seen = new Set<string>();
    policy.rules.forEach((rule, i) => {
      if (seen.has(rule.name)) ctx.addIssue({ code: 'custom', path: ['rules', i, 'name'], input: rule.name, params: { sentence: true }, message: 'names another rule of this policy too' });
      seen.add(rule.name);
    });
  });

/** The policies of a set, in evaluation order (the order hits are reported in). */
export const PoliciesSchema = z
  .array(PolicySchema)
  .max(POLICY_MAX_POLICIES)
  .superRefine((policies, ctx) => {
    const seen = new Set<string>();
    let rules = 0;
    policies.forEach((policy, i) => {
      if (seen.has(policy.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], input: policy.name, params: { sentence: true }, message: 'names another policy of the set too' });
      seen.add(policy.name);
      rules += policy.rules.length;
    });
    if (rules > POLICY_MAX_RULES) ctx.addIssue({ code: 'custom', path: [], input: `${rules} rules`, params: { sentence: true }, message: `are more than the ${POLICY_MAX_RULES} a policy set may hold` });
  });

/** A policy file: one or more policies. */
export const PolicyDocumentSchema = z.strictObject({ policies: PoliciesSchema });

export type PolicyRuleSpec = z.infer<typeof RuleSchema>;
export type PolicySpec = z.infer<typeof PolicySchema>;
export type PolicySpecInput = z.input<typeof PolicySchema>;

/** A policy set as the fleet holds it: a version (set by the log, only grows) and its policies. */
export interface PolicySet {
  /** 0: no policy was ever set (nothing is denied). */
  readonly version: number;
  readonly policies: readonly PolicySpec[];
}

export const EMPTY_POLICY_SET: PolicySet = Object.freeze({ version: 0, policies: Object.freeze([]) as readonly PolicySpec[] });

/** A malformed policy document or set; each problem names its field (or file and line). */
export class PolicyDocumentError extends DwcpError<'invalid'> {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('invalid', `invalid policy document: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** One shape per policy: defaults present, selector lists sorted, optional fields absent rather than undefined. */
export function normalisePolicies(policies: readonly PolicySpec[]): PolicySpec[] {
  return policies.map((p) => {
    const out: PolicySpec = {
      name: p.name,
      rules: p.rules.map((r) => ({ name: r.name, selector: normaliseSelector(r.selector), condition: r.condition, effect: r.effect, message: r.message })),
    };
    if (p.description !== undefined) out.description = p.description;
    return out;
  });
}

/** Validates a list of policies given as plain data (a command's, a snapshot's); `root` prefixes field paths. Throws PolicyDocumentError. */
export function parsePolicies(input: unknown, root = 'policies'): PolicySpec[] {
  const parsed = PoliciesSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) throw new PolicyDocumentError(parsed.error.issues.map((issue) => formatIssue(issue, (path) => pathString([root, ...path]))));
  return normalisePolicies(parsed.data);
}

/**
 * A policy document from its text (YAML, of which JSON is a subset), as read
 * from `source` (a file name, for messages). Throws PolicyDocumentError
 * naming the source and the line or field.
 */
export function parsePolicyDocument(text: string, source: string): PolicySpec[] {
  if (Buffer.byteLength(text, 'utf8') > POLICY_MAX_DOCUMENT_BYTES) throw new PolicyDocumentError([`${source}: larger than ${POLICY_MAX_DOCUMENT_BYTES} bytes`]);
  let raw: unknown;
  try {
    raw = parseYaml(text, { uniqueKeys: true });
  } catch (err) {
    // The parser's first line (`... at line 3, column 7:`) says where; the source excerpt after it is left out.
    if (err instanceof YAMLParseError) throw new PolicyDocumentError([`${source}: not valid YAML: ${(err.message.split('\n')[0] ?? '').replace(/:$/, '')}`]);
    throw err;
  }
  const parsed = PolicyDocumentSchema.safeParse(raw, { reportInput: true });
  if (!parsed.success) throw new PolicyDocumentError(parsed.error.issues.map((issue) => `${source}: ${formatIssue(issue)}`));
  return normalisePolicies(parsed.data.policies);
}

/**
 * The policies of several documents as one list, in document order (files
 * named in the config, or given to `policy apply`): names must be unique
 * across the documents, and the set's bounds hold for the whole.
 */
export function mergePolicyDocuments(documents: readonly { readonly source: string; readonly policies: readonly PolicySpec[] }[]): PolicySpec[] {
  const where = new Map<string, string>();
  const problems: string[] = [];
  for (const doc of documents) {
    for (const p of doc.policies) {
      const first = where.get(p.name);
      if (first !== undefined) problems.push(`${doc.source}: policy ${p.name} is also defined in ${first}`);
      else where.set(p.name, doc.source);
    }
  }
  if (problems.length > 0) throw new PolicyDocumentError(problems);
  return parsePolicies(documents.flatMap((d) => d.policies));
}
