/**
 * Compiles a policy set: every rule's condition is parsed and type-checked
 * as CEL against the declared variables (facts.ts), checked against the
 * language's bounds, and analysed for what it reads; the result is a
 * PolicyEvaluator (evaluate.ts). Compile once per policy version: the fleet
 * state machine does it when a `set-policy` command is applied (and on
 * restore), placement and the state machine then only evaluate.
 *
 * CEL implementation: @marcbachmann/cel-js (chosen over @bufbuild/cel and
 * cel-js; docs/policy.md has the comparison). Its type checker knows the
 * variables and their fields, so an unknown variable or field, or an
 * operator applied to the wrong types, is a compile error with a position.
 *
 * Refusals (PolicyCompileError) name the policy, the rule and, for the
 * condition, the line and column in the expression:
 *   `policy eu-residency rule personal-data-in-eu: condition 1:1: Unknown variable: regoin`
 * Every problem of the set is reported, not only the first.
 *
 * Bounds (beyond the document's lengths), so that one evaluation is cheap
 * and bounded whatever an operator writes (the library has no evaluation
 * cost limit of its own, so these stand in for one, checked before a set is
 * accepted):
 * - at most POLICY_MAX_AST_NODES nodes, nesting depth POLICY_MAX_DEPTH, list
 *   and map literals of POLICY_MAX_LITERAL_ITEMS;
 * - an estimated cost of at most POLICY_MAX_RULE_COST evaluation steps per
 *   rule and POLICY_MAX_SET_COST for the whole set, estimated statically as
 *   Kubernetes does for CEL: every node a step, a comprehension its list's
 *   largest size times its body, a list concatenation its copy, `in` its
 *   scan; the largest sizes are the facts' bounds (≤ 32 labels, ≤ 64
 *   compliance marks, strings ≤ 256 characters). Measured here at ≤ ~115 ns
 *   a step, so a rule costs at most ~0.6 ms and a set ~6 ms per candidate
 *   (test/unit/policy-compile.test.ts times the costliest admitted rule);
 *   the examples in config/policies cost 3 to 71 steps;
 * - no `matches` (regular expressions): JavaScript's engine backtracks, so a
 *   pattern can take exponential time whatever its input's size;
 *   startsWith, endsWith, contains and `in` cover what placement rules need;
 * - no cel.bind (a bound value is not sized by the estimate);
 * - a comprehension variable may not be named vm, region, cost or operation
 *   (it would hide the variable, and the read analysis below relies on
 *   those names meaning the variables).
 *
 * Simple conditions (only leaves that cannot fail, joined by !, && and ||:
 * `cost <= 2.0`, `region.jurisdiction == 'eu'`, `'hipaa' in
 * region.compliance`) run as closures (native.ts), the rest through the CEL
 * interpreter; both give the same answers (tested against each other).
 *
 * Read analysis: for each rule, whether the condition reads `vm`,
 * `operation`, `cost`, and which `region` fields (by `.field` or
 * `['field']`); `region` used any other way counts as reading all of it.
 * evaluate.ts uses this to evaluate a rule once per VM when it reads no
 * region or cost, and once per distinct value of the region fields it reads
 * otherwise.
 *
 * Determinism: the same policies compile to the same evaluator on every
 * replica running the same dwcp build (the CEL library is pinned to an exact
 * version in package.json: a different version could type-check or evaluate
 * differently, so all members of a federation must run the same build).
 */
import { Environment, type ASTNode, type ParseError, type TypeError as CelTypeError } from '@marcbachmann/cel-js';
import { DwcpError } from '../errors.ts';
import { type PolicySet } from './document.ts';
import { POLICY_VARIABLES, PolicyRegion, PolicyVm, REGION_FIELDS, REGION_FIELD_NAMES, VM_FIELDS, type PolicyVariable, type RegionField } from './facts.ts';
import { compileSelector } from './selector.ts';
import { PolicyEvaluator, type CompiledRule, type RuleReads } from './evaluate.ts';
import { nativeCondition } from './native.ts';

export const POLICY_MAX_AST_NODES = 512;
export const POLICY_MAX_DEPTH = 32;
export const POLICY_MAX_LITERAL_ITEMS = 64;

const COMPREHENSIONS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);
const MATCHES_REFUSED = 'matches() is not allowed in policies: a regular expression can take exponential time; use startsWith, endsWith, contains or in';

/** Estimated evaluation steps one condition may cost (at most ~115 ns a step measured here: ~0.6 ms at the bound). */
export const POLICY_MAX_RULE_COST = 5000;
/** Estimated steps of all of a set's rules together: what the worst one (VM, candidate) evaluation can cost (~6 ms). */
export const POLICY_MAX_SET_COST = 50_000;

/** Where in a condition a problem is: 1-based line and column, and the 0-based offset. */
export interface PolicyPosition {
  readonly line: number;
  readonly column: number;
  readonly offset: number;
}

export interface PolicyProblem {
  /** '' (and rule '') for a problem of the whole set. */
  readonly policy: string;
  readonly rule: string;
  /** Absent when the problem is not located in the condition. */
  readonly position?: PolicyPosition;
  /** What is wrong, without the location. */
  readonly problem: string;
}

export function formatPolicyProblem(p: PolicyProblem): string {
  if (p.policy === '') return `policy set: ${p.problem}`;
  return `policy ${p.policy} rule ${p.rule}: condition${p.position === undefined ? '' : ` ${p.position.line}:${p.position.column}`}: ${p.problem}`;
}

export class PolicyCompileError extends DwcpError<'invalid'> {
  readonly problems: readonly PolicyProblem[];
  constructor(problems: readonly PolicyProblem[]) {
    super('invalid', `policy set does not compile: ${problems.map(formatPolicyProblem).join('; ')}`);
    this.problems = problems;
  }
}

/** The one environment every condition is checked and evaluated in; declarations only, so sharing it is safe. */
const ENVIRONMENT = new Environment({
  unlistedVariablesAreDyn: false,
  homogeneousAggregateLiterals: true,
  enableOptionalTypes: false,
  limits: { maxAstNodes: POLICY_MAX_AST_NODES, maxDepth: POLICY_MAX_DEPTH, maxListElements: POLICY_MAX_LITERAL_ITEMS, maxMapEntries: POLICY_MAX_LITERAL_ITEMS, maxCallArguments: 8 },
})
  .registerType('PolicyVm', { ctor: PolicyVm, fields: { ...VM_FIELDS } })
  .registerType('PolicyRegion', { ctor: PolicyRegion, fields: { ...REGION_FIELDS } })
  .registerVariable('vm', POLICY_VARIABLES.vm)
  .registerVariable('region', POLICY_VARIABLES.region)
  .registerVariable('cost', POLICY_VARIABLES.cost)
  .registerVariable('operation', POLICY_VARIABLES.operation);

function positionOf(text: string, offset: number): PolicyPosition {
  const clamped = Math.max(0, Math.min(offset, text.length));
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < clamped; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: clamped - lineStart + 1, offset: clamped };
}

/** The library's error sentence without its source excerpt (which the position replaces). */
function summary(err: ParseError | CelTypeError | Error): string {
  const s = 'summary' in err && typeof err.summary === 'string' && err.summary !== '' ? err.summary : err.message;
  return s.split('\n')[0] ?? s;
}

function errorOffset(err: ParseError | CelTypeError | Error): number | undefined {
  if (!('node' in err)) return undefined;
  const node = err.node as { pos?: unknown } | undefined;
  return typeof node?.pos === 'number' ? node.pos : undefined;
}

interface Analysis {
  reads: RuleReads;
  /** The estimated cost in evaluation steps (see estimate). */
  cost: number;
  problems: { offset: number; problem: string }[];
}

function isNode(value: unknown): value is ASTNode {
  return typeof value === 'object' && value !== null && 'op' in value && typeof (value as { op: unknown }).op === 'string';
}

/**
 * An upper bound of a subexpression: evaluation steps, the largest value it
 * can produce (list or map entries, string characters; 1 for scalars), and
 * what kind of value that is (a list's copy or scan costs steps per element;
 * string work is native and counted as one step).
 */
interface Estimate {
  readonly cost: number;
  readonly size: number;
  readonly kind: 'list' | 'string' | 'scalar';
}

const SCALAR_METHODS = new Set(['size', 'startsWith', 'endsWith', 'contains', 'indexOf', 'lastIndexOf']);

/** The largest string any fact holds (an image name); what an unknown string's size is taken to be. */
const MAX_STRING = 256;
/** Largest values of the facts' fields (facts.ts; the fleet's schemas bound them). */
const FIELD_SIZES: Readonly<Record<string, number>> = { labels: 32, tags: 32, compliance: 64 };
const SCALAR_FIELDS = new Set(['vcpus', 'memoryBytes', 'diskBytes', 'priority', 'spot']);

/**
 * Walks the parsed condition: the read analysis, the refusals that do not
 * depend on cost, and a static cost estimate, in the manner of Kubernetes'
 * CEL cost estimation: every node is a step; a comprehension costs its
 * range's largest size times its body; `+` on lists copies both sides; `in`
 * scans its list. Sizes are the facts' bounds (labels ≤ 32, compliance ≤ 64,
 * strings ≤ 256), literals' own sizes, and sums of them through `+`.
 */
function analyse(root: ASTNode): Analysis {
  const variables = new Set<PolicyVariable>();
  const regionFields = new Set<RegionField>();
  let wholeRegion = false;
  const problems: { offset: number; problem: string }[] = [];
  /** Comprehension variables in scope, with the size of one element. */
  const bound = new Map<string, number>();

  const sum = (parts: Estimate[], kind: Estimate['kind'] = 'scalar'): Estimate => ({ cost: parts.reduce((n, e) => n + e.cost, 1), size: parts.reduce((n, e) => Math.max(n, e.size), 1), kind });

  const visit = (node: ASTNode): Estimate => {
    const { op } = node;
    if (op === 'value') {
      const v: unknown = node.args;
      if (typeof v === 'string') return { cost: 1, size: v.length, kind: 'string' };
      return { cost: 1, size: v instanceof Uint8Array ? v.byteLength : 1, kind: 'scalar' };
    }
    if (op === 'id') {
      const name = node.args as string;
      const element = bound.get(name);
      if (element !== undefined) return { cost: 1, size: element, kind: 'string' };
      if (name in POLICY_VARIABLES) {
        variables.add(name as PolicyVariable);
        if (name === 'region') wholeRegion = true;
      }
      return name === 'operation' ? { cost: 1, size: 16, kind: 'string' } : { cost: 1, size: 1, kind: 'scalar' };
    }
    if ((op === '.' || op === '[]') && Array.isArray(node.args)) {
      const [target, field] = node.args as [unknown, unknown];
      const name = op === '.' ? field : isNode(field) && field.op === 'value' ? field.args : undefined;
      if (isNode(target) && target.op === 'id' && (target.args === 'region' || target.args === 'vm') && !bound.has(target.args) && typeof name === 'string') {
        variables.add(target.args);
        if (target.args === 'region' && (REGION_FIELD_NAMES as string[]).includes(name)) regionFields.add(name as RegionField);
        else if (target.args === 'region') wholeRegion = true;
        const size = FIELD_SIZES[name];
        if (size !== undefined) return { cost: 2, size, kind: 'list' };
        return SCALAR_FIELDS.has(name) ? { cost: 2, size: 1, kind: 'scalar' } : { cost: 2, size: MAX_STRING, kind: 'string' };
      }
      const parts = [isNode(target) ? visit(target).cost : 0, isNode(field) ? visit(field).cost : 0];
      // An element of a list or map here is a string (label values, compliance marks) or a scalar.
      return { cost: parts[0]! + parts[1]! + 1, size: MAX_STRING, kind: 'string' };
    }
    if (op === 'rcall' && Array.isArray(node.args)) {
      const [method, target, args] = node.args as [string, unknown, unknown[]];
      if (method === 'matches') problems.push({ offset: node.pos, problem: MATCHES_REFUSED });
      if (method === 'bind' && isNode(target) && target.op === 'id' && target.args === 'cel') {
        problems.push({ offset: node.pos, problem: 'cel.bind is not allowed in policies (a bound value reused in its own binding can grow without bound); repeat the expression or split the rule' });
      }
      const range: Estimate = isNode(target) ? visit(target) : { cost: 0, size: 1, kind: 'scalar' };
      if (COMPREHENSIONS.has(method)) {
        const variable = args[0];
        const name = isNode(variable) && variable.op === 'id' && typeof variable.args === 'string' ? variable.args : undefined;
        if (name !== undefined && name in POLICY_VARIABLES) {
          problems.push({ offset: (variable as ASTNode).pos, problem: `a comprehension variable may not be named ${name} (it would hide the variable of that name)` });
        }
        const shadowed = name === undefined ? undefined : bound.get(name);
        if (name !== undefined) bound.set(name, MAX_STRING);
        const body = args.slice(1).filter(isNode).map(visit);
        if (name !== undefined) {
          if (shadowed === undefined) bound.delete(name);
          else bound.set(name, shadowed);
        }
        const perElement = body.reduce((n, e) => n + e.cost, 1);
        return method === 'map' || method === 'filter' ? { cost: range.cost + 1 + range.size * perElement, size: range.size, kind: 'list' } : { cost: range.cost + 1 + range.size * perElement, size: 1, kind: 'scalar' };
      }
      const rest = args.filter(isNode).map(visit);
      // A method's work is native, one step; split() makes a list of at most the string's length, join() a string of its parts.
      const cost = range.cost + rest.reduce((n, e) => n + e.cost, 1);
      if (SCALAR_METHODS.has(method)) return { cost, size: 1, kind: 'scalar' };
      if (method === 'split') return { cost, size: range.size, kind: 'list' };
      if (method === 'join') return { cost: cost + range.size, size: range.size * MAX_STRING, kind: 'string' };
      return { cost, size: Math.max(range.size, ...rest.map((e) => e.size)), kind: range.kind };
    }
    if (op === 'call' && Array.isArray(node.args)) {
      const [fn, args] = node.args as [string, unknown[]];
      if (fn === 'matches') problems.push({ offset: node.pos, problem: MATCHES_REFUSED });
      // Global functions here are conversions and size(): their result is no larger than their argument.
      const parts = args.filter(isNode).map(visit);
      return fn === 'size' ? sum(parts) : sum(parts, parts[0]?.kind ?? 'scalar');
    }
    if (op === '+' && Array.isArray(node.args)) {
      const [a, b] = (node.args as unknown[]).filter(isNode).map(visit);
      if (a === undefined || b === undefined) return { cost: 1, size: 1, kind: 'scalar' };
      // List concatenation copies both sides; string and number addition is one native step (a string's size still grows).
      const list = a.kind === 'list' || b.kind === 'list';
      return { cost: a.cost + b.cost + (list ? a.size + b.size : 1), size: a.kind === 'scalar' && b.kind === 'scalar' ? 1 : a.size + b.size, kind: list ? 'list' : a.kind === 'string' || b.kind === 'string' ? 'string' : 'scalar' };
    }
    if ((op === 'in' || op === '==' || op === '!=') && Array.isArray(node.args)) {
      const [a, b] = (node.args as unknown[]).filter(isNode).map(visit);
      if (a === undefined || b === undefined) return { cost: 1, size: 1, kind: 'scalar' };
      // Membership scans a list (a map lookup is cheaper: counted the same); equality of lists compares element by element.
      const work = op === 'in' ? (b.kind === 'list' ? b.size : 1) : a.kind === 'list' && b.kind === 'list' ? Math.min(a.size, b.size) : 1;
      return { cost: a.cost + b.cost + work, size: 1, kind: 'scalar' };
    }
    const args: unknown = node.args;
    if (isNode(args)) return sum([visit(args)]);
    if (Array.isArray(args)) {
      const parts: Estimate[] = [];
      for (const a of args) {
        if (isNode(a)) parts.push(visit(a));
        // Map literal entries are [key, value] pairs.
        else if (Array.isArray(a)) for (const b of a) if (isNode(b)) parts.push(visit(b));
      }
      if (op === 'list' || op === 'map') return { cost: parts.reduce((n, e) => n + e.cost, 1), size: Math.max(1, args.length), kind: 'list' };
      // ?: yields one of its branches; the rest (&&, ||, comparisons, arithmetic) yield scalars.
      return op === '?:' ? { ...sum(parts), kind: parts[1]?.kind ?? 'scalar' } : sum(parts);
    }
    return { cost: 1, size: 1, kind: 'scalar' };
  };
  const { cost } = visit(root);
  const region: RuleReads['region'] = wholeRegion ? 'all' : [...regionFields].sort();
  return {
    reads: { vm: variables.has('vm'), operation: variables.has('operation'), cost: variables.has('cost'), region: variables.has('region') ? region : [] },
    cost,
    problems,
  };
}

type CompiledCondition =
  /** `native`: evaluated by a closure (native.ts) rather than the CEL interpreter. */
  | { ok: true; program: (context: object) => unknown; reads: RuleReads; cost: number; native: boolean }
  | { ok: false; problems: { offset?: number; problem: string }[] };

/** The CEL interpreter's program for a condition, without the policy checks: the reference native.ts is tested against. */
export function interpretedCondition(condition: string): ((context: object) => unknown) & { readonly ast: ASTNode } {
  return ENVIRONMENT.parse(condition);
}

/** One condition: parse, type-check (its type must be bool), bounds, reads. */
export function compileCondition(condition: string): CompiledCondition {
  const checked = ENVIRONMENT.check(condition);
  if (!checked.valid) {
    const err = checked.error ?? new Error('invalid expression');
    const offset = errorOffset(err);
    return { ok: false, problems: [{ ...(offset === undefined ? {} : { offset }), problem: summary(err) }] };
  }
  if (checked.type !== 'bool') return { ok: false, problems: [{ offset: 0, problem: `is of type ${checked.type ?? 'unknown'}, expected bool (a condition states what must hold)` }] };
  const program = ENVIRONMENT.parse(condition);
  const { reads, cost, problems } = analyse(program.ast);
  const native = nativeCondition(program.ast);
  if (cost > POLICY_MAX_RULE_COST) problems.push({ offset: 0, problem: `is estimated to cost ${cost} evaluation steps, above the ${POLICY_MAX_RULE_COST} a rule may (comprehensions cost their list's largest size times their body: iterate over fewer or shorter lists, or split the rule)` });
  if (problems.length > 0) return { ok: false, problems };
  return { ok: true, program: (native ?? program) as (context: object) => unknown, reads, cost, native: native !== null };
}

/** Compiles every rule of the set, or throws PolicyCompileError with every problem found. */
export function compilePolicySet(set: PolicySet): PolicyEvaluator {
  const rules: CompiledRule[] = [];
  const problems: PolicyProblem[] = [];
  let setCost = 0;
  for (const policy of set.policies) {
    for (const rule of policy.rules) {
      const compiled = compileCondition(rule.condition);
      if (!compiled.ok) {
        for (const p of compiled.problems) {
          problems.push({ policy: policy.name, rule: rule.name, ...(p.offset === undefined ? {} : { position: positionOf(rule.condition, p.offset) }), problem: p.problem });
        }
        continue;
      }
      rules.push({
        ordinal: rules.length,
        policy: policy.name,
        rule: rule.name,
        effect: rule.effect,
        message: rule.message,
        selector: compileSelector(rule.selector),
        program: compiled.program,
        reads: compiled.reads,
      });
      setCost += compiled.cost;
    }
  }
  if (setCost > POLICY_MAX_SET_COST) {
    problems.push({ policy: '', rule: '', problem: `the set's rules are estimated to cost ${setCost} evaluation steps together, above the ${POLICY_MAX_SET_COST} a policy set may` });
  }
  if (problems.length > 0) throw new PolicyCompileError(problems);
  return new PolicyEvaluator(set.version, rules);
}
