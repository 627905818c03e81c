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
 * and bounded whatever an operator writes:
 * - at most POLICY_MAX_AST_NODES nodes, nesting depth POLICY_MAX_DEPTH, list
 *   and map literals of POLICY_MAX_LITERAL_ITEMS;
 * - no comprehension (all, exists, exists_one, map, filter) inside another's
 *   predicate or transform, and no cel.bind: the inputs are bounded lists
 *   (≤ 64 compliance marks, ≤ 32 labels, literals ≤ 64 items), so without
 *   nesting an evaluation is linear in the expression's size times the
 *   largest list;
 * - no `matches` (regular expressions): JavaScript's engine backtracks, so a
 *   pattern can take exponential time; startsWith, endsWith, contains and
 *   `in` cover what placement rules need;
 * - a comprehension variable may not be named vm, region, cost or operation
 *   (it would hide the variable, and the read analysis below relies on
 *   those names meaning the variables).
 * The library has no evaluation cost limit of its own; these static bounds
 * stand in for one (test/unit/policy-compile.test.ts times the costliest
 * condition they allow).
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

export const POLICY_MAX_AST_NODES = 512;
export const POLICY_MAX_DEPTH = 32;
export const POLICY_MAX_LITERAL_ITEMS = 64;

const COMPREHENSIONS = new Set(['all', 'exists', 'exists_one', 'map', 'filter']);

/** Where in a condition a problem is: 1-based line and column, and the 0-based offset. */
export interface PolicyPosition {
  readonly line: number;
  readonly column: number;
  readonly offset: number;
}

export interface PolicyProblem {
  readonly policy: string;
  readonly rule: string;
  /** Absent when the problem is not located in the condition. */
  readonly position?: PolicyPosition;
  /** What is wrong, without the location. */
  readonly problem: string;
}

export function formatPolicyProblem(p: PolicyProblem): string {
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
  problems: { offset: number; problem: string }[];
}

function isNode(value: unknown): value is ASTNode {
  return typeof value === 'object' && value !== null && 'op' in value && typeof (value as { op: unknown }).op === 'string';
}

/** Walks the parsed condition: the bounds above, and what it reads. */
function analyse(root: ASTNode): Analysis {
  const variables = new Set<PolicyVariable>();
  const regionFields = new Set<RegionField>();
  let wholeRegion = false;
  const problems: { offset: number; problem: string }[] = [];

  const visit = (node: ASTNode, insideComprehension: boolean): void => {
    const { op } = node;
    if (op === 'id') {
      const name = node.args as string;
      if (name in POLICY_VARIABLES) {
        variables.add(name as PolicyVariable);
        if (name === 'region') wholeRegion = true;
      }
      return;
    }
    if ((op === '.' || op === '[]') && Array.isArray(node.args)) {
      const [target, field] = node.args as [unknown, unknown];
      const name = op === '.' ? field : isNode(field) && field.op === 'value' ? field.args : undefined;
      if (isNode(target) && target.op === 'id' && target.args === 'region' && typeof name === 'string' && (REGION_FIELD_NAMES as string[]).includes(name)) {
        variables.add('region');
        regionFields.add(name as RegionField);
        if (op === '[]' && isNode(field)) visit(field, insideComprehension);
        return;
      }
    }
    if (op === 'rcall' && Array.isArray(node.args)) {
      const [method, target, args] = node.args as [string, unknown, unknown[]];
      if (method === 'matches') problems.push({ offset: node.pos, problem: 'matches() is not allowed in policies: a regular expression can take exponential time; use startsWith, endsWith, contains or in' });
      if (method === 'bind' && isNode(target) && target.op === 'id' && target.args === 'cel') {
        problems.push({ offset: node.pos, problem: 'cel.bind is not allowed in policies (a bound value reused in its own binding can grow without bound); repeat the expression or split the rule' });
      }
      if (COMPREHENSIONS.has(method)) {
        if (insideComprehension) problems.push({ offset: node.pos, problem: `${method}() inside another comprehension's predicate is not allowed in policies (nested comprehensions multiply the cost); split the rule` });
        const bound = args[0];
        if (isNode(bound) && bound.op === 'id' && typeof bound.args === 'string' && bound.args in POLICY_VARIABLES) {
          problems.push({ offset: bound.pos, problem: `a comprehension variable may not be named ${bound.args} (it would hide the variable of that name)` });
        }
        if (isNode(target)) visit(target, insideComprehension);
        for (const a of args.slice(1)) if (isNode(a)) visit(a, true);
        return;
      }
      if (isNode(target)) visit(target, insideComprehension);
      for (const a of args) if (isNode(a)) visit(a, insideComprehension);
      return;
    }
    if (op === 'call' && Array.isArray(node.args)) {
      const [fn, args] = node.args as [string, unknown[]];
      if (fn === 'matches') problems.push({ offset: node.pos, problem: 'matches() is not allowed in policies: a regular expression can take exponential time; use startsWith, endsWith, contains or in' });
      for (const a of args) if (isNode(a)) visit(a, insideComprehension);
      return;
    }
    const args: unknown = node.args;
    if (isNode(args)) visit(args, insideComprehension);
    else if (Array.isArray(args)) {
      for (const a of args) {
        if (isNode(a)) visit(a, insideComprehension);
        // Map literal entries are [key, value] pairs.
        else if (Array.isArray(a)) for (const b of a) if (isNode(b)) visit(b, insideComprehension);
      }
    }
  };
  visit(root, false);
  const region: RuleReads['region'] = wholeRegion ? 'all' : [...regionFields].sort();
  return {
    reads: { vm: variables.has('vm'), operation: variables.has('operation'), cost: variables.has('cost'), region: variables.has('region') ? region : [] },
    problems,
  };
}

type CompiledCondition = { ok: true; program: (context: object) => unknown; reads: RuleReads } | { ok: false; problems: { offset?: number; problem: string }[] };

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
  const { reads, problems } = analyse(program.ast);
  if (problems.length > 0) return { ok: false, problems };
  return { ok: true, program: program as (context: object) => unknown, reads };
}

/** Compiles every rule of the set, or throws PolicyCompileError with every problem found. */
export function compilePolicySet(set: PolicySet): PolicyEvaluator {
  const rules: CompiledRule[] = [];
  const problems: PolicyProblem[] = [];
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
    }
  }
  if (problems.length > 0) throw new PolicyCompileError(problems);
  return new PolicyEvaluator(set.version, rules);
}
