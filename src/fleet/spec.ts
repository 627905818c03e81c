/**
 * The desired VM spec: what an operator asks the fleet for (size, image,
 * labels, whether spot capacity will do, priority) and where it may run
 * (constraints). The spec is what the fleet log stores for a VM and what
 * placement and the capacity ledger read.
 *
 * Invariants:
 * - A FleetVmSpec that exists in memory has passed FleetVmSpecSchema: every
 *   number is an integer (prices aside) within the bounds below, every name
 *   is a bounded identifier, constraint lists have no duplicates and are
 *   sorted (normaliseSpec), labels are sorted by key. So two replicas holding
 *   "the same" spec hold the same bytes once encoded (commands.ts).
 * - Errors name the field from the top: `spec.constraints.maxHourlyUsd: ...`,
 *   in the config's wording (formatIssue), so the CLI can show them verbatim.
 * - Memory and disk are bytes here; parseSize turns "4GiB" into bytes for the
 *   CLI and refuses anything ambiguous with a sentence saying what it expects.
 * - Pure: no I/O, no clock.
 */
import { DwcpError } from '../errors.ts';
import { z } from 'zod';
import { formatIssue, pathString } from '../config/issues.ts';

export const FLEET_MAX_NAME_LENGTH = 63;
export const FLEET_MAX_IMAGE_LENGTH = 256;
export const FLEET_MAX_LABELS = 32;
export const FLEET_MAX_LABEL_VALUE_LENGTH = 128;
/** Entries in one constraint list (allowed regions, providers, ...). */
export const FLEET_MAX_CONSTRAINT_ITEMS = 256;
export const FLEET_MAX_VCPUS = 1024;
export const FLEET_MAX_MEMORY_BYTES = 64 * 1024 ** 4;
export const FLEET_MAX_DISK_BYTES = 1024 ** 5;
export const FLEET_MAX_PRIORITY = 1000;
/** Above this a $/h figure is a monthly price typed into the wrong field (the pricing catalog's bound). */
export const FLEET_MAX_HOURLY_USD = 1000;
export const FLEET_MAX_RTT_MS = 60_000;

/** VM, region, provider, group names: lowercase DNS labels, like node and provider names in the config. */
export const fleetName = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, `a lowercase DNS label (a-z, 0-9, "-", at most ${FLEET_MAX_NAME_LENGTH} characters)`);

/** Label keys allow a DNS-style prefix (`team`, `example.com/tier`). */
export const labelKey = z.string().regex(/^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/, 'a label key (a-z, 0-9, ".", "_", "/", "-", at most 63 characters)');
export const labelValue = z.string().max(FLEET_MAX_LABEL_VALUE_LENGTH).regex(/^[A-Za-z0-9._:/-]*$/, 'a label value (letters, digits, ".", "_", ":", "/", "-")');

export const labels = z.record(labelKey, labelValue).refine((l) => Object.keys(l).length <= FLEET_MAX_LABELS, { message: `a map of at most ${FLEET_MAX_LABELS} labels` });

/** A list of distinct names (at most FLEET_MAX_CONSTRAINT_ITEMS); sorted by its normaliser so that order never changes the encoding. */
export function nameSet<T extends z.ZodType<string>>(item: T) {
  return z
    .array(item)
    .min(1)
    .max(FLEET_MAX_CONSTRAINT_ITEMS)
    .superRefine((items, ctx) => {
      const seen = new Set<string>();
      items.forEach((v, i) => {
        if (seen.has(v)) ctx.addIssue({ code: 'custom', path: [i], input: v, params: { sentence: true }, message: 'is listed twice' });
        seen.add(v);
      });
    });
}

const ConstraintsSchema = z.strictObject({
  /** Only these regions; any region when absent. */
  regions: nameSet(fleetName).optional(),
  /** Only providers of these names (`local`, `aws-prod`, ...) or kinds (`aws`, `gcp`, `local`, `qemu`). */
  providers: nameSet(fleetName).optional(),
  /** Only regions whose node.jurisdiction is one of these (`eu`, `us`). */
  jurisdictions: nameSet(fleetName).optional(),
  /** Every one of these labels, with exactly this value, on the region. */
  regionLabels: labels.optional(),
  /** Every one of these compliance marks (`gdpr`, `hipaa`) on the region. */
  compliance: nameSet(fleetName).optional(),
  /** The VM's $/h at the provider chosen (on-demand, or spot on spot capacity) must not exceed this. */
  maxHourlyUsd: z.number().positive().max(FLEET_MAX_HOURLY_USD).optional(),
  /** The region's measured RTT to `region` must be at most `ms` (a region is 0 ms from itself). */
  maxRtt: z.strictObject({ region: fleetName, ms: z.number().min(0).max(FLEET_MAX_RTT_MS) }).optional(),
  /** No two live VMs of this group in one region. */
  antiAffinityGroup: fleetName.optional(),
  /** Balance this group's VMs across regions (a score factor, not a filter). */
  spreadGroup: fleetName.optional(),
});

export const FleetVmSpecSchema = z.strictObject({
  name: fleetName,
  vcpus: z.number().int().min(1).max(FLEET_MAX_VCPUS),
  memoryBytes: z.number().int().min(1024 ** 2).max(FLEET_MAX_MEMORY_BYTES),
  diskBytes: z.number().int().min(0).max(FLEET_MAX_DISK_BYTES).default(0),
  image: z.string().min(1, { abort: true }).max(FLEET_MAX_IMAGE_LENGTH).regex(/^[\x21-\x7e]+$/, 'an image name or URL (printable ASCII, no spaces)'),
  labels: labels.default({}),
  /** Spot/preemptible capacity is acceptable for this VM. */
  spot: z.boolean().default(false),
  /** 0 (lowest) to FLEET_MAX_PRIORITY: higher-priority VMs avoid spot capacity in placement. */
  priority: z.number().int().min(0).max(FLEET_MAX_PRIORITY).default(0),
  constraints: ConstraintsSchema.default({}),
});

export type FleetConstraints = z.infer<typeof ConstraintsSchema>;
export type FleetVmSpec = z.infer<typeof FleetVmSpecSchema>;
/** What a caller writes: defaults may be left out. */
export type FleetVmSpecInput = z.input<typeof FleetVmSpecSchema>;

/** An invalid spec: each problem names its field (`spec.vcpus: 0 is too small: expected at least 1`). */
export class FleetSpecError extends DwcpError<'invalid'> {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('invalid', `invalid VM spec: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

export type SpecCheck = { readonly ok: true; readonly spec: FleetVmSpec } | { readonly ok: false; readonly problems: readonly string[] };

/** Validates and normalises; `root` prefixes every field path (`spec`, `command.spec`). */
export function checkFleetVmSpec(input: unknown, root = 'spec'): SpecCheck {
  const parsed = FleetVmSpecSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) return { ok: false, problems: parsed.error.issues.map((issue) => formatIssue(issue, (path) => pathString([root, ...path]))) };
  return { ok: true, spec: normaliseSpec(parsed.data) };
}

/** Throws FleetSpecError naming each bad field. */
export function parseFleetVmSpec(input: unknown, root = 'spec'): FleetVmSpec {
  const checked = checkFleetVmSpec(input, root);
  if (!checked.ok) throw new FleetSpecError(checked.problems);
  return checked.spec;
}

/** A copy with the keys in sorted order: one encoding for a map whose order carries no meaning. */
export function sortedRecord(record: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const key of Object.keys(record).sort()) out[key] = record[key] as string;
  return out;
}

/**
 * One spec, one shape: list constraints sorted, label maps sorted by key,
 * absent optional constraints left out (never `undefined` values), so that
 * canonical encoding and deep equality agree.
 */
export function normaliseSpec(spec: FleetVmSpec): FleetVmSpec {
  const c = spec.constraints;
  const constraints: FleetConstraints = {};
  if (c.regions !== undefined) constraints.regions = [...c.regions].sort();
  if (c.providers !== undefined) constraints.providers = [...c.providers].sort();
  if (c.jurisdictions !== undefined) constraints.jurisdictions = [...c.jurisdictions].sort();
  if (c.regionLabels !== undefined) constraints.regionLabels = sortedRecord(c.regionLabels);
  if (c.compliance !== undefined) constraints.compliance = [...c.compliance].sort();
  if (c.maxHourlyUsd !== undefined) constraints.maxHourlyUsd = c.maxHourlyUsd;
  if (c.maxRtt !== undefined) constraints.maxRtt = { region: c.maxRtt.region, ms: c.maxRtt.ms };
  if (c.antiAffinityGroup !== undefined) constraints.antiAffinityGroup = c.antiAffinityGroup;
  if (c.spreadGroup !== undefined) constraints.spreadGroup = c.spreadGroup;
  return {
    name: spec.name,
    vcpus: spec.vcpus,
    memoryBytes: spec.memoryBytes,
    diskBytes: spec.diskBytes,
    image: spec.image,
    labels: sortedRecord(spec.labels),
    spot: spec.spot,
    priority: spec.priority,
    constraints,
  };
}

/** How many constraints a spec carries (for explanations and the bench). */
export function constraintCount(spec: FleetVmSpec): number {
  return Object.keys(spec.constraints).length;
}

const SIZE_UNITS: Readonly<Record<string, number>> = {
  b: 1,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  tib: 1024 ** 4,
  pib: 1024 ** 5,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  pb: 1e15,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
};

export class SizeError extends DwcpError<'invalid'> {
  constructor(text: string, problem: string) {
    super('invalid', `"${text}" ${problem}`);
  }
}

/**
 * A byte size as operators type it: `4GiB`, `512MiB`, `1.5GiB`, `10GB`
 * (decimal), `4G` (binary, like qemu and kubectl's Gi), or plain bytes.
 * Fractions are allowed when the result is a whole number of bytes.
 */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$/.exec(text);
  if (match === null) throw new SizeError(text, 'is not a size: expected a number and a unit, such as 512MiB, 4GiB or 1TiB');
  const unitText = match[2] ?? '';
  const unit = unitText === '' ? 1 : SIZE_UNITS[unitText.toLowerCase()];
  if (unit === undefined) throw new SizeError(text, `has an unknown unit "${unitText}": expected B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)`);
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    throw new SizeError(text, Number.isInteger(bytes) ? 'is too large' : `is not a whole number of bytes (${bytes})`);
  }
  return bytes;
}

/** Bytes as the largest binary unit that divides them (`4 GiB`), else in GiB with two decimals, else bytes. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  if (bytes >= 1024 ** 3) return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
  return `${bytes} B`;
}
