/**
 * Native evaluation of the simplest conditions: a type-checked condition
 * built only from leaves that cannot fail (a field of vm or region, cost,
 * operation, literals; comparisons; `in` a list or map; has() on a label
 * map) joined by `!`, `&&` and `||`, compiled to a JavaScript closure
 * instead of walking the CEL AST. Anything else (map indexing, which fails
 * on a missing key; arithmetic, which can overflow or divide by zero; string
 * ordering, where CEL compares code points and JavaScript UTF-16 units;
 * functions, macros, ternaries) returns null and is evaluated by the CEL
 * library as usual.
 *
 * Why: placement evaluates a rule that reads `cost` or a region's name
 * afresh for every candidate (nothing to share), and `cost <= 2.0` costs
 * ~250 ns through the interpreter against a few ns as a closure; with a
 * handful of such rules over 1 000 regions that decides whether placement
 * keeps its floor (bench/RESULTS.md).
 *
 * Invariant: for every condition this accepts, the closure returns exactly
 * what the library returns, for every input: no leaf can raise an error, so
 * CEL's error-absorbing && and || reduce to JavaScript's; numbers compare
 * as CEL compares them (a double with a double, an int (bigint) with an
 * int, int with double numerically: JavaScript's relational operators on
 * number and bigint are exact); strings and bools only by equality.
 * test/unit/policy-native.test.ts checks it against the library on random
 * conditions and inputs.
 */
import type { ASTNode } from '@marcbachmann/cel-js';
import { REGION_FIELDS, VM_FIELDS } from './facts.ts';

/** What a condition is evaluated on (facts.ts's PolicyVm and PolicyRegion, read by field name). */
type Context = { readonly vm: object; readonly region: object; readonly cost: number; readonly operation: string };
type Getter = (ctx: Context) => unknown;
type Kind = 'int' | 'double' | 'string' | 'bool' | 'list' | 'map';
interface Operand {
  readonly kind: Kind;
  readonly get: Getter;
}
export type NativeCondition = (ctx: Context) => boolean;

const KIND_OF_TYPE: Readonly<Record<string, Kind>> = { string: 'string', int: 'int', double: 'double', bool: 'bool', 'list<string>': 'list', 'map<string, string>': 'map' };
const NUMBERS: ReadonlySet<Kind> = new Set(['int', 'double']);

function isNode(value: unknown): value is ASTNode {
  return typeof value === 'object' && value !== null && 'op' in value;
}

function operand(node: ASTNode): Operand | null {
  if (node.op === 'value') {
    const v: unknown = node.args;
    if (typeof v === 'number') return { kind: 'double', get: () => v };
    if (typeof v === 'bigint') return { kind: 'int', get: () => v };
    if (typeof v === 'string') return { kind: 'string', get: () => v };
    if (typeof v === 'boolean') return { kind: 'bool', get: () => v };
    return null;
  }
  if (node.op === '-_' && isNode(node.args) && node.args.op === 'value') {
    const v: unknown = node.args.args;
    if (typeof v === 'number') return { kind: 'double', get: () => -v };
    if (typeof v === 'bigint') return { kind: 'int', get: () => -v };
    return null;
  }
  if (node.op === 'list' && Array.isArray(node.args)) {
    // A literal list of strings: `region.jurisdiction in ['eu', 'ch']`.
    const items = (node.args as unknown[]).map((item) => (isNode(item) && item.op === 'value' && typeof item.args === 'string' ? item.args : null));
    if (items.some((item) => item === null)) return null;
    const list = items as string[];
    return { kind: 'list', get: () => list };
  }
  if (node.op === 'id') {
    if (node.args === 'cost') return { kind: 'double', get: (ctx) => ctx.cost };
    if (node.args === 'operation') return { kind: 'string', get: (ctx) => ctx.operation };
    return null;
  }
  if (node.op === '.' && Array.isArray(node.args)) {
    const [target, field] = node.args as [unknown, unknown];
    if (!isNode(target) || target.op !== 'id' || typeof field !== 'string') return null;
    const fields: Readonly<Record<string, string>> = target.args === 'vm' ? VM_FIELDS : target.args === 'region' ? REGION_FIELDS : {};
    const kind = Object.hasOwn(fields, field) ? KIND_OF_TYPE[fields[field] as string] : undefined;
    if (kind === undefined) return null;
    if (target.args === 'vm') return { kind, get: (ctx) => (ctx.vm as Record<string, unknown>)[field] };
    return { kind, get: (ctx) => (ctx.region as Record<string, unknown>)[field] };
  }
  return null;
}

const COMPARE: Readonly<Record<string, (a: never, b: never) => boolean>> = {
  '==': (a, b) => a === b,
  '!=': (a, b) => a !== b,
  '<': (a, b) => a < b,
  '<=': (a, b) => a <= b,
  '>': (a, b) => a > b,
  '>=': (a, b) => a >= b,
};

/** The condition as a closure, or null when it is not entirely made of leaves that cannot fail. */
export function nativeCondition(node: ASTNode): NativeCondition | null {
  const { op } = node;
  if (op === 'value') {
    const v: unknown = node.args;
    return typeof v === 'boolean' ? () => v : null;
  }
  if (op === '.') {
    // A bool field on its own: `vm.spot`, `region.spot`.
    const field = operand(node);
    return field?.kind === 'bool' ? (ctx) => field.get(ctx) === true : null;
  }
  if (op === '!_') {
    const inner = isNode(node.args) ? nativeCondition(node.args) : null;
    return inner === null ? null : (ctx) => !inner(ctx);
  }
  if ((op === '&&' || op === '||') && Array.isArray(node.args)) {
    const [a, b] = node.args as unknown[];
    const left = isNode(a) ? nativeCondition(a) : null;
    const right = isNode(b) ? nativeCondition(b) : null;
    if (left === null || right === null) return null;
    return op === '&&' ? (ctx) => left(ctx) && right(ctx) : (ctx) => left(ctx) || right(ctx);
  }
  if (op === 'call' && Array.isArray(node.args)) {
    // has(vm.labels.key), has(region.labels.key): whether the map has that key.
    const [fn, args] = node.args as [string, unknown[]];
    const arg = args[0];
    if (fn !== 'has' || args.length !== 1 || !isNode(arg) || arg.op !== '.' || !Array.isArray(arg.args)) return null;
    const [mapNode, key] = arg.args as [unknown, unknown];
    const map = isNode(mapNode) ? operand(mapNode) : null;
    if (map?.kind !== 'map' || typeof key !== 'string') return null;
    return (ctx) => Object.hasOwn(map.get(ctx) as object, key);
  }
  if (!Array.isArray(node.args)) return null;
  const [a, b] = node.args as unknown[];
  const left = isNode(a) ? operand(a) : null;
  const right = isNode(b) ? operand(b) : null;
  if (left === null || right === null) return null;
  if (op === 'in') {
    if (left.kind !== 'string') return null;
    if (right.kind === 'list') return (ctx) => (right.get(ctx) as readonly string[]).includes(left.get(ctx) as string);
    if (right.kind === 'map') return (ctx) => Object.hasOwn(right.get(ctx) as object, left.get(ctx) as string);
    return null;
  }
  const compare = COMPARE[op];
  if (compare === undefined) return null;
  const equality = op === '==' || op === '!=';
  // Equality within one kind (never int with double: 2n !== 2); ordering of numbers only, any mix (exact in
  // JavaScript); strings not ordered (CEL orders by code point, JavaScript by UTF-16 unit).
  const ok = equality ? left.kind === right.kind && left.kind !== 'list' && left.kind !== 'map' : NUMBERS.has(left.kind) && NUMBERS.has(right.kind);
  if (!ok) return null;
  return (ctx) => compare(left.get(ctx) as never, right.get(ctx) as never);
}
