/**
 * The policy evaluator: a compiled policy set (compile.ts builds it) asked
 * "may this VM go to this candidate under this operation?".
 *
 *   const evaluator = compilePolicySet({ version, policies });   // once per version
 *   evaluator.evaluate({ vm, region, cost, operation })          // one (VM, candidate)
 *   const scope = evaluator.forVm(vm, operation);                // many candidates for one VM
 *   scope.evaluate(region, cost)                                 //   (placement)
 *
 * A verdict: `allowed` (no deny rule fired), and the hits by effect, each
 * naming the policy and rule with the rule's message, in the set's order
 * (policy by policy, rule by rule).
 *
 * Rules (document.ts has the language): a rule applies when its selector
 * matches the VM and operation; it fires when its condition is false, or
 * when the condition cannot be evaluated (a missing map key, a division by
 * zero, a non-bool result): an error is never an allow. A rule that errors
 * fires with its effect, its message, and `error` saying what went wrong, so
 * a deny rule that errors denies.
 *
 * Invariants:
 * - Deterministic: a verdict is a function of the compiled set and the
 *   inputs only (no clock, no randomness; the hit order is the set's order).
 *   The fleet state machine relies on this to re-check every assignment
 *   identically on every replica.
 * - Sharing outcomes never changes them: a scope evaluates a rule that reads
 *   neither `region` nor `cost` once (its outcome cannot differ between
 *   candidates), and a rule that reads only some region fields once per
 *   distinct value of those fields (PolicyRegion.key), which is what keeps
 *   placement over 1 000 regions with 50 rules inside its budget. Rules that
 *   read `cost` or the whole `region` run per candidate.
 *   test/unit/policy-evaluate.test.ts checks a scope's verdicts equal
 *   evaluate()'s, which shares nothing.
 * - Bounded: at most POLICY_MAX_RULES rules per call, each bounded by
 *   compile.ts's static limits.
 */
import type { PolicyEffect, PolicyOperation } from './document.ts';
import type { PolicyInput, PolicyRegion, PolicyVm, RegionField } from './facts.ts';
import type { SelectorMatch } from './selector.ts';

/** What a condition reads (compile.ts's analysis). */
export interface RuleReads {
  readonly vm: boolean;
  readonly operation: boolean;
  readonly cost: boolean;
  /** The region fields read, sorted; 'all' when `region` is used other than by a field name. */
  readonly region: readonly RegionField[] | 'all';
}

export interface CompiledRule {
  /** Position in the set (policy by policy, rule by rule): the order hits are reported in. */
  readonly ordinal: number;
  readonly policy: string;
  readonly rule: string;
  readonly effect: PolicyEffect;
  readonly message: string;
  readonly selector: SelectorMatch;
  readonly program: (context: object) => unknown;
  readonly reads: RuleReads;
}

/** A rule that fired. */
export interface PolicyHit {
  readonly policy: string;
  readonly rule: string;
  readonly effect: PolicyEffect;
  /** The rule's message; when the condition errored, followed by what went wrong. */
  readonly message: string;
  /** Set when the condition could not be evaluated (the rule fired because of that). */
  readonly error?: string;
}

export interface PolicyVerdict {
  /** No deny rule fired. */
  readonly allowed: boolean;
  readonly denials: readonly PolicyHit[];
  readonly audits: readonly PolicyHit[];
  readonly warnings: readonly PolicyHit[];
}

interface HitWithOrdinal extends PolicyHit {
  readonly ordinal: number;
}

const NO_HITS: readonly HitWithOrdinal[] = Object.freeze([]);
/** The verdict when no rule fires: shared, since most candidates get it. */
export const ALLOWED: PolicyVerdict = Object.freeze({ allowed: true, denials: NO_HITS, audits: NO_HITS, warnings: NO_HITS });

/** `policy eu-residency rule personal-data-in-eu: personal data stays in EU regions`. */
export function formatHit(hit: PolicyHit): string {
  return `policy ${hit.policy} rule ${hit.rule}: ${hit.message}`;
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const summary = 'summary' in err && typeof err.summary === 'string' && err.summary !== '' ? err.summary : err.message;
    return summary.split('\n')[0] ?? summary;
  }
  return String(err);
}

function fire(rule: CompiledRule, error?: string): HitWithOrdinal {
  if (error === undefined) return { ordinal: rule.ordinal, policy: rule.policy, rule: rule.rule, effect: rule.effect, message: rule.message };
  return { ordinal: rule.ordinal, policy: rule.policy, rule: rule.rule, effect: rule.effect, message: `${rule.message} (the condition could not be evaluated: ${error})`, error };
}

/** One rule on one context: null when the condition holds. */
function run(rule: CompiledRule, context: object): HitWithOrdinal | null {
  let result: unknown;
  try {
    result = rule.program(context);
  } catch (err) {
    return fire(rule, errorText(err));
  }
  if (result === true) return null;
  if (result === false) return fire(rule);
  return fire(rule, `it evaluated to ${typeof result}, not a bool`);
}

function verdictOf(hits: HitWithOrdinal[]): PolicyVerdict {
  if (hits.length === 0) return ALLOWED;
  hits.sort((a, b) => a.ordinal - b.ordinal);
  const denials: PolicyHit[] = [];
  const audits: PolicyHit[] = [];
  const warnings: PolicyHit[] = [];
  for (const { ordinal: _, ...hit } of hits) (hit.effect === 'deny' ? denials : hit.effect === 'audit' ? audits : warnings).push(hit);
  return { allowed: denials.length === 0, denials, audits, warnings };
}

interface RuleGroup {
  /** The fields, comma-joined: names the group and its composite key. */
  readonly signature: string;
  readonly fields: readonly RegionField[];
  readonly rules: CompiledRule[];
  readonly memo: Map<string, readonly HitWithOrdinal[]>;
}

/** The rules that apply to one VM under one operation, evaluated against candidates one by one. */
export class PolicyScope {
  readonly #vm: PolicyVm;
  readonly #operation: PolicyOperation;
  /** Rules that read neither region nor cost: evaluated on the first candidate, their hits reused. */
  readonly #fixedRules: CompiledRule[] = [];
  #fixedHits: readonly HitWithOrdinal[] | null = null;
  /** Rules that read the same region fields (and not cost), grouped: one outcome per distinct value of those fields. */
  readonly #groups: RuleGroup[] = [];
  /** Rules that read cost or the whole region: run per candidate. */
  readonly #perCandidate: CompiledRule[] = [];
  /** How many rules' selectors matched. */
  readonly applicable: number;
  readonly #context: { readonly vm: PolicyVm; region: PolicyRegion | null; cost: number; readonly operation: PolicyOperation };

  constructor(rules: readonly CompiledRule[], vm: PolicyVm, operation: PolicyOperation) {
    this.#vm = vm;
    this.#operation = operation;
    this.#context = { vm, region: null, cost: 0, operation };
    const groups = new Map<string, RuleGroup>();
    let applicable = 0;
    for (const rule of rules) {
      if (!rule.selector(vm, operation)) continue;
      applicable++;
      const { region, cost } = rule.reads;
      if (cost || region === 'all') this.#perCandidate.push(rule);
      else if (region.length === 0) this.#fixedRules.push(rule);
      else {
        const signature = region.join(',');
        let group = groups.get(signature);
        if (group === undefined) {
          group = { signature, fields: region, rules: [], memo: new Map() };
          groups.set(signature, group);
          this.#groups.push(group);
        }
        group.rules.push(rule);
      }
    }
    this.applicable = applicable;
  }

  evaluate(region: PolicyRegion, cost: number): PolicyVerdict {
    if (this.applicable === 0) return ALLOWED;
    // Placement calls this for every candidate: no allocation unless a rule fires. The context is reused:
    // a condition reads it only while it runs.
    const context = this.#context;
    context.region = region;
    context.cost = cost;
    this.#fixedHits ??= this.#runAll(this.#fixedRules, context);
    let hits: HitWithOrdinal[] | null = this.#fixedHits.length === 0 ? null : [...this.#fixedHits];
    for (const group of this.#groups) {
      const key = region.keyOf(group.signature, group.fields);
      let outcome = group.memo.get(key);
      if (outcome === undefined) {
        outcome = this.#runAll(group.rules, context);
        group.memo.set(key, outcome);
      }
      if (outcome.length > 0) (hits ??= []).push(...outcome);
    }
    if (this.#perCandidate.length > 0) {
      const outcome = this.#runAll(this.#perCandidate, context);
      if (outcome.length > 0) (hits ??= []).push(...outcome);
    }
    return hits === null ? ALLOWED : verdictOf(hits);
  }

  #runAll(rules: readonly CompiledRule[], context: object): readonly HitWithOrdinal[] {
    let hits: HitWithOrdinal[] | null = null;
    for (const rule of rules) {
      const hit = run(rule, context);
      if (hit !== null) (hits ??= []).push(hit);
    }
    return hits ?? NO_HITS;
  }
}

/** A compiled policy set of one version. Immutable; safe to share. */
export class PolicyEvaluator {
  /** The policy set's version (0: none was ever set). */
  readonly version: number;
  readonly #rules: readonly CompiledRule[];

  constructor(version: number, rules: readonly CompiledRule[]) {
    this.version = version;
    this.#rules = rules;
  }

  get ruleCount(): number {
    return this.#rules.length;
  }

  /** The rules that apply to this VM and operation, ready for many candidates (placement). */
  forVm(vm: PolicyVm, operation: PolicyOperation): PolicyScope {
    return new PolicyScope(this.#rules, vm, operation);
  }

  /**
   * One (VM, candidate, operation), every applicable rule run afresh: what
   * the state machine asks per assignment (a scope's sharing buys nothing
   * for one candidate and costs its set-up), and the reference the sharing
   * in PolicyScope is tested against.
   */
  evaluate(input: PolicyInput): PolicyVerdict {
    if (this.#rules.length === 0) return ALLOWED;
    let hits: HitWithOrdinal[] | null = null;
    for (const rule of this.#rules) {
      if (!rule.selector(input.vm, input.operation)) continue;
      const hit = run(rule, input);
      if (hit !== null) (hits ??= []).push(hit);
    }
    return hits === null ? ALLOWED : verdictOf(hits);
  }
}

/** The evaluator of an empty set: nothing is ever denied. */
export const NO_POLICY = new PolicyEvaluator(0, []);
