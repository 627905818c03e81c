/**
 * A rule's selector: which VMs (and operations) the rule applies to,
 * declaratively, before any CEL runs. Every field present must match; an
 * empty selector matches every VM.
 *
 *   names: [web1, db1]                 the VM is one of these
 *   labels: {data-class: personal}     every one of these labels, with exactly this value
 *   hasLabels: [owner]                 every one of these labels, with any value
 *   operations: [create, place]        the operation is one of these
 *   spot: true                         the spec allows spot (or, false, does not)
 *   vcpus: {min: 2, max: 16}           inclusive bounds
 *   memory: {min: 4GiB, max: 64GiB}    inclusive bounds, sizes as `vm create --memory` takes them (or bytes)
 *
 * Why a selector besides the condition: it says which VMs a rule is about in
 * a form an operator reads at a glance, it keeps conditions from tripping on
 * labels a VM does not carry (`vm.labels['data-class']` errors when the label
 * is absent, and an error fires the rule), and it is matched once per VM
 * and operation, not once per candidate region.
 *
 * Invariants: pure; a selector's normal form has its lists sorted and
 * without duplicates and its label map ordered by key (normaliseSelector),
 * so it encodes one way.
 */
import { z } from 'zod';
import { fleetName, labelKey, labels, nameSet, parseSize, sortedRecord } from '../fleet/spec.ts';
import type { PolicyOperation } from './document.ts';
import type { PolicyVm } from './facts.ts';

/** Listed here rather than imported: document.ts imports this module. */
const OPERATIONS = ['create', 'place', 'burst', 'migrate', 'failover', 'failback'] as const satisfies readonly PolicyOperation[];
/** Bytes as a number, or a size string (`4GiB`) turned into bytes. */
const size = z.union([
  z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  z.string().transform((text, ctx) => {
    try {
      return parseSize(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', input: text, params: { sentence: true }, message: err instanceof Error ? err.message.replace(/^"[^"]*" /, '') : String(err) });
      return z.NEVER;
    }
  }),
]);

function range<T extends z.ZodType<number>>(bound: T) {
  return z
    .strictObject({ min: bound.optional(), max: bound.optional() })
    .refine((r) => r.min !== undefined || r.max !== undefined, { message: 'a range with min, max or both' })
    .refine((r) => r.min === undefined || r.max === undefined || r.min <= r.max, { message: 'a range whose min is at most its max' });
}

export const SelectorSchema = z.strictObject({
  names: nameSet(fleetName).optional(),
  labels: labels.optional(),
  hasLabels: nameSet(labelKey).optional(),
  operations: nameSet(z.enum(OPERATIONS)).optional(),
  spot: z.boolean().optional(),
  vcpus: range(z.number().int().min(0).max(1_000_000)).optional(),
  memory: range(size).optional(),
});

export type Selector = z.infer<typeof SelectorSchema>;

function bounds(r: { min?: number | undefined; max?: number | undefined }): { min?: number; max?: number } {
  return { ...(r.min === undefined ? {} : { min: r.min }), ...(r.max === undefined ? {} : { max: r.max }) };
}

export function normaliseSelector(s: Selector): Selector {
  const out: Selector = {};
  if (s.names !== undefined) out.names = [...s.names].sort();
  if (s.labels !== undefined) out.labels = sortedRecord(s.labels);
  if (s.hasLabels !== undefined) out.hasLabels = [...s.hasLabels].sort();
  if (s.operations !== undefined) out.operations = [...s.operations].sort();
  if (s.spot !== undefined) out.spot = s.spot;
  if (s.vcpus !== undefined) out.vcpus = bounds(s.vcpus);
  if (s.memory !== undefined) out.memory = bounds(s.memory);
  return out;
}

export type SelectorMatch = (vm: PolicyVm, operation: PolicyOperation) => boolean;

const MATCH_ALL: SelectorMatch = () => true;

/** The selector as a predicate that checks only the fields it has. */
export function compileSelector(s: Selector): SelectorMatch {
  const checks: SelectorMatch[] = [];
  if (s.names !== undefined) {
    const names = new Set(s.names);
    checks.push((vm) => names.has(vm.name));
  }
  if (s.operations !== undefined) {
    const ops = new Set<string>(s.operations);
    checks.push((_vm, op) => ops.has(op));
  }
  if (s.labels !== undefined) {
    const want = Object.entries(s.labels);
    checks.push((vm) => want.every(([k, v]) => Object.hasOwn(vm.labels, k) && vm.labels[k] === v));
  }
  if (s.hasLabels !== undefined) {
    const keys = s.hasLabels;
    checks.push((vm) => keys.every((k) => Object.hasOwn(vm.labels, k)));
  }
  if (s.spot !== undefined) {
    const spot = s.spot;
    checks.push((vm) => vm.spot === spot);
  }
  if (s.vcpus !== undefined) {
    const { min, max } = s.vcpus;
    checks.push((vm) => (min === undefined || vm.vcpus >= BigInt(min)) && (max === undefined || vm.vcpus <= BigInt(max)));
  }
  if (s.memory !== undefined) {
    const { min, max } = s.memory;
    checks.push((vm) => (min === undefined || vm.memoryBytes >= BigInt(min)) && (max === undefined || vm.memoryBytes <= BigInt(max)));
  }
  if (checks.length === 0) return MATCH_ALL;
  return (vm, op) => checks.every((check) => check(vm, op));
}
