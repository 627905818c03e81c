/**
 * The fleet's log vocabulary: the typed commands that change desired state
 * (register a region's declared capacity, create a VM, assign it, set its
 * power state, delete it, purge its tombstone, set the policy set, the
 * four steps of a migration, whose schemas live in migrations.ts, and DR
 * protection and failover, whose schemas live in protection.ts), their
 * results, and one deterministic encoding for log entries.
 *
 * Encoding: FLEET_ENTRY_MAGIC (5 bytes: 0x00 "flt" and a version byte) then
 * the command as canonical JSON (object keys sorted, no whitespace, no
 * undefined, finite numbers only) in UTF-8. Why this shape:
 * - Routing: an encoded KvCommand is protobuf, whose first byte is a field
 *   tag and never 0x00 (field number 0 is invalid), so isFleetEntry(bytes)
 *   tells a fleet entry from a KV entry by its first bytes, and the KV state
 *   machine can hand fleet entries to the fleet state machine without either
 *   decoding the other's format. Fleet state lives under its own key space
 *   (FLEET_KEY_PREFIX) when exposed through KV reads.
 * - Determinism: decode re-encodes what it parsed and refuses the entry if
 *   the bytes differ, so one command has exactly one encoding, and every
 *   replica reads the same command from the same bytes. JSON keeps entries
 *   readable in a log dump and lets later issues add command kinds
 *   (migration, DR and burst steps) by adding a schema to the union below.
 *
 * Invariants: a command that decodes is well-formed (schemas below, specs by
 * FleetVmSpecSchema) and at most FLEET_MAX_COMMAND_BYTES long; encoding runs
 * the same checks, so a scheduler never proposes a command every replica
 * must refuse. Semantic checks (names unique, capacity, generations) are the
 * state machine's, at apply time.
 */
import { DwcpError } from '../errors.ts';
import { z } from 'zod';
import { formatIssue, pathString } from '../config/issues.ts';
import { FLEET_MAX_HOURLY_USD, FleetVmSpecSchema, fleetName, labels, normaliseSpec, sortedRecord } from './spec.ts';
import { POLICY_OPERATIONS, PoliciesSchema, normalisePolicies } from '../policy/document.ts';
import { BudgetSpecSchema } from './budgets.ts';
import { MAX_MIGRATIONS_PER_REGION, MigrationCutoverSchema, MigrationEndSchema, MigrationProgressSchema, MigrationStartSchema } from './migrations.ts';
import { BurstGroupSpecSchema, normaliseBurstGroup } from '../burst/group.ts';
import { BackupSchema, FailoverSchema, ProtectSchema, UnprotectSchema } from './protection.ts';

/** 0x00 'f' 'l' 't' and the encoding version. */
export const FLEET_ENTRY_MAGIC: Uint8Array = Uint8Array.of(0x00, 0x66, 0x6c, 0x74, 0x01);
/** Where fleet state appears in the key space, apart from user keys. */
export const FLEET_KEY_PREFIX = '\u0000fleet/';
/** A register-region with 16 providers and full label maps stays well under this. */
export const FLEET_MAX_COMMAND_BYTES = 64 * 1024;
export const FLEET_MAX_PROVIDERS_PER_REGION = 16;
/** Instance and vCPU counts a single region or provider may declare. */
export const FLEET_MAX_DECLARED_VCPUS = 1_000_000_000;
export const FLEET_MAX_DECLARED_INSTANCES = 100_000_000;
export const FLEET_MAX_DECLARED_BYTES = 2 ** 52;
/** Generations are safe integers; a 64-bit wrap is not a concern at this bound. */
export const FLEET_MAX_GENERATION = Number.MAX_SAFE_INTEGER;
export const FLEET_MAX_MESSAGE = 1024;

export const FLEET_PROVIDER_KINDS = ['local', 'qemu', 'aws', 'gcp'] as const;
export type FleetProviderKind = (typeof FLEET_PROVIDER_KINDS)[number];

export const POWER_STATES = ['running', 'stopped'] as const;
export type PowerState = (typeof POWER_STATES)[number];

const hourly = z.number().min(0).max(FLEET_MAX_HOURLY_USD);

/** A linear price model: on-premises kinds are priced this way by config; a cloud's figures are derived from the pricing catalog by the driver. */
const PricesSchema = z.strictObject({
  vcpuHourUsd: hourly,
  memoryGiBHourUsd: hourly,
});

const CapacitySchema = z.strictObject({
  vcpus: z.number().int().min(0).max(FLEET_MAX_DECLARED_VCPUS),
  memoryBytes: z.number().int().min(0).max(FLEET_MAX_DECLARED_BYTES),
  diskBytes: z.number().int().min(0).max(FLEET_MAX_DECLARED_BYTES),
});

const QuotaSchema = z.strictObject({
  vcpus: z.number().int().min(0).max(FLEET_MAX_DECLARED_VCPUS),
  instances: z.number().int().min(0).max(FLEET_MAX_DECLARED_INSTANCES),
});

const RegionProviderSchema = z.strictObject({
  name: fleetName,
  kind: z.enum(FLEET_PROVIDER_KINDS),
  /** On-premises kinds: what the hardware holds. */
  capacity: CapacitySchema.optional(),
  /** Cloud kinds: the account's limits; absent means no declared limit. */
  quota: QuotaSchema.optional(),
  /** This provider's capacity is spot/preemptible (only specs with spot: true go there). */
  spot: z.boolean().default(false),
  prices: PricesSchema,
});

const RegisterRegionSchema = z
  .strictObject({
    kind: z.literal('register-region'),
    region: fleetName,
    jurisdiction: fleetName.optional(),
    /**
     * The node's trust level (config node.trust, defaulted from its provider):
     * what policies see as region.trust. Optional, and without a default,
     * so declarations logged before it existed still decode canonically.
     */
    trust: z.enum(['trusted', 'untrusted']).optional(),
    compliance: z.array(fleetName).max(64).default([]),
    labels: labels.default({}),
    providers: z.array(RegionProviderSchema).min(1).max(FLEET_MAX_PROVIDERS_PER_REGION),
    /** Migrations that may touch this region at once, as source or target (fleet.migration.maxConcurrentPerRegion); absent: the default. */
    maxMigrations: z.number().int().min(1).max(MAX_MIGRATIONS_PER_REGION).optional(),
  })
  .superRefine((cmd, ctx) => {
    const names = new Set<string>();
    cmd.providers.forEach((p, i) => {
      if (names.has(p.name)) ctx.addIssue({ code: 'custom', path: ['providers', i, 'name'], input: p.name, params: { sentence: true }, message: 'names another provider of this region too' });
      names.add(p.name);
      if (p.capacity === undefined && (p.kind === 'local' || p.kind === 'qemu')) {
        ctx.addIssue({ code: 'custom', path: ['providers', i, 'capacity'], input: undefined, params: { sentence: true }, message: `is required for an on-premises provider (kind ${p.kind})` });
      }
    });
    const marks = new Set<string>();
    cmd.compliance.forEach((c, i) => {
      if (marks.has(c)) ctx.addIssue({ code: 'custom', path: ['compliance', i], input: c, params: { sentence: true }, message: 'is listed twice' });
      marks.add(c);
    });
  });

const CreateSchema = z.strictObject({
  kind: z.literal('create'),
  spec: FleetVmSpecSchema,
  /** Desired power state once placed. */
  power: z.enum(POWER_STATES).default('running'),
});

const AssignSchema = z.strictObject({
  kind: z.literal('assign'),
  vm: fleetName,
  region: fleetName,
  provider: fleetName,
  /** Must be above every generation this VM has had: a plan made on stale state loses. */
  generation: z.number().int().min(1).max(FLEET_MAX_GENERATION),
  /**
   * Why the VM goes there, as policies see it (`operation`): create or place
   * for a VM's first assignment (which one follows from the spec, see
   * src/fleet/policy-check.ts), burst, or migrate, failover or failback for
   * a VM that is assigned. Absent (commands logged before policies existed,
   * or a caller that does not say): the state machine derives it.
   */
  operation: z.enum(POLICY_OPERATIONS).optional(),
});

const SetPowerSchema = z.strictObject({ kind: z.literal('set-power'), vm: fleetName, power: z.enum(POWER_STATES) });
const DeleteSchema = z.strictObject({ kind: z.literal('delete'), vm: fleetName });
/** Drops a deleted VM's tombstone once its region confirmed the copy is gone. */
const PurgeSchema = z.strictObject({ kind: z.literal('purge'), vm: fleetName });
/**
 * A new version of the fleet's policy set (src/policy/document.ts), replacing
 * the whole set. It carries the policies themselves (conditions as CEL
 * source), so every replica compiles the same thing at apply; `version` must
 * be above the current one. An empty list clears every policy.
 */
const SetPolicySchema = z.strictObject({ kind: z.literal('set-policy'), version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER), policies: PoliciesSchema });

/** A budget, created or replaced whole (src/fleet/budgets.ts); replacing clears its spent mark until the budget driver sees it spent again. */
const SetBudgetSchema = z.strictObject({ kind: z.literal('set-budget'), budget: BudgetSpecSchema });
const DeleteBudgetSchema = z.strictObject({ kind: z.literal('delete-budget'), name: fleetName });
/**
 * A hard budget is spent for `month` (YYYY-MM), or no longer (null): from
 * the budget driver of any node that saw it (src/cost/budget-watch.ts).
 * Placement and the log refuse new placements under a spent hard budget.
 */
const BudgetSpentSchema = z.strictObject({ kind: z.literal('budget-spent'), name: fleetName, month: z.string().regex(/^\d{4}-(0[1-9]|1[0-2])$/, 'a month as YYYY-MM').nullable() });

/** A burst group, created or replaced whole (src/burst/group.ts); its home region's node drives it. */
const SetBurstGroupSchema = z.strictObject({ kind: z.literal('set-burst-group'), group: BurstGroupSpecSchema });
/** Drops a burst group; its replicas stay as ordinary VMs (terminate them by name). */
const DeleteBurstGroupSchema = z.strictObject({ kind: z.literal('delete-burst-group'), name: fleetName });

export const FleetCommandSchema = z.discriminatedUnion('kind', [
  RegisterRegionSchema,
  CreateSchema,
  AssignSchema,
  SetPowerSchema,
  DeleteSchema,
  PurgeSchema,
  SetPolicySchema,
  SetBudgetSchema,
  DeleteBudgetSchema,
  BudgetSpentSchema,
  MigrationStartSchema,
  MigrationProgressSchema,
  MigrationCutoverSchema,
  MigrationEndSchema,
  ProtectSchema,
  UnprotectSchema,
  FailoverSchema,
  SetBurstGroupSchema,
  DeleteBurstGroupSchema,
  BackupSchema,
]);

export type FleetCommand = z.infer<typeof FleetCommandSchema>;
export type FleetCommandInput = z.input<typeof FleetCommandSchema>;
export type FleetCommandKind = FleetCommand['kind'];
export type RegisterRegionCommand = Extract<FleetCommand, { kind: 'register-region' }>;
export type SetPolicyCommand = Extract<FleetCommand, { kind: 'set-policy' }>;
export type SetBudgetCommand = Extract<FleetCommand, { kind: 'set-budget' }>;
export type SetBurstGroupCommand = Extract<FleetCommand, { kind: 'set-burst-group' }>;
export type AssignCommand = Extract<FleetCommand, { kind: 'assign' }>;
export type RegionProviderDeclaration = RegisterRegionCommand['providers'][number];
export type ProviderPrices = z.infer<typeof PricesSchema>;
export type DeclaredCapacity = z.infer<typeof CapacitySchema>;
export type DeclaredQuota = z.infer<typeof QuotaSchema>;
export const FLEET_COMMAND_KINDS = [
  'register-region',
  'create',
  'assign',
  'set-power',
  'delete',
  'purge',
  'set-policy',
  'set-budget',
  'delete-budget',
  'budget-spent',
  'migration-start',
  'migration-progress',
  'migration-cutover',
  'migration-end',
  'protect',
  'unprotect',
  'failover',
  'set-burst-group',
  'delete-burst-group',
  'backup',
] as const satisfies readonly FleetCommandKind[];

/** Every way apply can refuse a command; stable words for callers and metrics. */
export const FLEET_REJECT_CODES = [
  'invalid_command',
  'name_taken',
  'unknown_vm',
  'unknown_region',
  'unknown_provider',
  'vm_deleted',
  'stale_generation',
  'insufficient_capacity',
  'anti_affinity',
  'constraint_violated',
  'limit_reached',
  'capacity_below_usage',
  'provider_in_use',
  'not_deleted',
  /** An enforced (deny) policy rule refuses the assignment; the message names the policy and rule. */
  'policy_denied',
  /** A set-policy whose policies do not compile; the message names policy, rule and position. */
  'invalid_policy',
  /** A set-policy whose version is not above the current one. */
  'stale_policy_version',
  'not_assigned',
  'migration_active',
  'migration_limit',
  'migration_unsupported',
  'unknown_migration',
  'migration_phase',
  /** unprotect or failover of a VM that is not protected. */
  'not_protected',
  /** A new placement under a spent hard budget; the message names the budget. */
  'budget_spent',
  'unknown_budget',
  'unknown_burst_group',
] as const;
export type FleetRejectCode = (typeof FLEET_REJECT_CODES)[number];

export type FleetResult =
  | { readonly ok: true; readonly kind: FleetCommandKind; readonly vm?: string; readonly region?: string; readonly generation?: number; readonly policyVersion?: number; readonly migration?: string; readonly budget?: string; readonly burstGroup?: string }
  /** Nothing changed; `message` is a sentence for the operator, with the numbers that decided it. */
  | { readonly ok: false; readonly code: FleetRejectCode; readonly message: string };

export class FleetCommandError extends DwcpError<'invalid'> {
  readonly problems: readonly string[];
  constructor(problems: readonly string[]) {
    super('invalid', `invalid fleet command: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** One command, one shape: defaults filled, lists and maps in a fixed order where order carries no meaning. */
function normaliseCommand(cmd: FleetCommand): FleetCommand {
  switch (cmd.kind) {
    case 'create':
      return { kind: 'create', spec: normaliseSpec(cmd.spec), power: cmd.power };
    case 'register-region': {
      const out: RegisterRegionCommand = {
        kind: 'register-region',
        region: cmd.region,
        compliance: [...cmd.compliance].sort(),
        labels: sortedRecord(cmd.labels),
        providers: [...cmd.providers]
          .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
          .map((p) => {
            const provider: RegionProviderDeclaration = { name: p.name, kind: p.kind, spot: p.spot, prices: { vcpuHourUsd: p.prices.vcpuHourUsd, memoryGiBHourUsd: p.prices.memoryGiBHourUsd } };
            if (p.capacity !== undefined) provider.capacity = { vcpus: p.capacity.vcpus, memoryBytes: p.capacity.memoryBytes, diskBytes: p.capacity.diskBytes };
            if (p.quota !== undefined) provider.quota = { vcpus: p.quota.vcpus, instances: p.quota.instances };
            return provider;
          }),
      };
      if (cmd.jurisdiction !== undefined) out.jurisdiction = cmd.jurisdiction;
      if (cmd.trust !== undefined) out.trust = cmd.trust;
      if (cmd.maxMigrations !== undefined) out.maxMigrations = cmd.maxMigrations;
      return out;
    }
    case 'set-policy':
      return { kind: 'set-policy', version: cmd.version, policies: normalisePolicies(cmd.policies) };
    case 'set-burst-group':
      return { kind: 'set-burst-group', group: normaliseBurstGroup(cmd.group) };
    default:
      return cmd;
  }
}

/** Validates and normalises a command given as a plain object; errors name the field (`command.spec.vcpus: ...`). */
export function parseFleetCommand(input: unknown): FleetCommand {
  const parsed = FleetCommandSchema.safeParse(input, { reportInput: true });
  if (!parsed.success) throw new FleetCommandError(parsed.error.issues.map((issue) => formatIssue(issue, (path) => pathString(['command', ...path]))));
  return normaliseCommand(parsed.data);
}

/**
 * JSON with object keys in code-unit order and no whitespace (one
 * exception: integer-like keys, say a label named "10", come first in numeric
 * order, as JavaScript orders an object's keys; encoder and decoder share
 * this function, so a command still has exactly one encoding). Refuses what
 * JSON cannot carry exactly (non-finite numbers, undefined inside arrays,
 * functions), so encoding never silently changes a value. Built as a
 * key-sorted copy handed to JSON.stringify (which keeps insertion order):
 * the native serialiser is several times faster than concatenating strings
 * here, which matters for snapshots of 10⁵–10⁶ VMs.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortedCopy(value));
}

function sortedCopy(value: unknown): unknown {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new RangeError(`canonical JSON: ${value} is not a finite number`);
    return value;
  }
  if (Array.isArray(value)) {
    return value.map((v: unknown) => {
      if (v === undefined) throw new TypeError('canonical JSON: undefined inside an array');
      return sortedCopy(v);
    });
  }
  if (typeof value === 'object') {
    const record = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(record).sort()) {
      const v = record[key];
      if (v !== undefined) out[key] = sortedCopy(v);
    }
    return out;
  }
  throw new TypeError(`canonical JSON: a ${typeof value} cannot be encoded`);
}

/** Whether a log entry is a fleet command (by its magic), without decoding it. */
export function isFleetEntry(bytes: Uint8Array): boolean {
  if (bytes.byteLength < FLEET_ENTRY_MAGIC.byteLength) return false;
  for (let i = 0; i < FLEET_ENTRY_MAGIC.byteLength; i++) if (bytes[i] !== FLEET_ENTRY_MAGIC[i]) return false;
  return true;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Throws FleetCommandError naming the field when `cmd` is invalid or too large. */
export function encodeFleetCommand(cmd: FleetCommandInput): Uint8Array {
  const body = encoder.encode(canonicalJson(parseFleetCommand(cmd)));
  const bytes = new Uint8Array(FLEET_ENTRY_MAGIC.byteLength + body.byteLength);
  if (bytes.byteLength > FLEET_MAX_COMMAND_BYTES) throw new FleetCommandError([`command: ${bytes.byteLength} bytes encoded, above the ${FLEET_MAX_COMMAND_BYTES}-byte limit`]);
  bytes.set(FLEET_ENTRY_MAGIC, 0);
  bytes.set(body, FLEET_ENTRY_MAGIC.byteLength);
  return bytes;
}

/** Throws FleetCommandError saying what is wrong with `bytes` (magic, size, UTF-8, JSON, schema, non-canonical form). */
export function decodeFleetCommand(bytes: Uint8Array): FleetCommand {
  if (!isFleetEntry(bytes)) throw new FleetCommandError(['entry: does not start with the fleet magic 00 66 6c 74 01']);
  if (bytes.byteLength > FLEET_MAX_COMMAND_BYTES) throw new FleetCommandError([`entry: ${bytes.byteLength} bytes, above the ${FLEET_MAX_COMMAND_BYTES}-byte limit`]);
  const bodyBytes = bytes.subarray(FLEET_ENTRY_MAGIC.byteLength);
  let text: string;
  let raw: unknown;
  try {
    text = decoder.decode(bodyBytes);
    raw = JSON.parse(text);
  } catch (err) {
    throw new FleetCommandError([`entry: not UTF-8 JSON (${err instanceof Error ? err.message : String(err)})`]);
  }
  const cmd = parseFleetCommand(raw);
  if (canonicalJson(cmd) !== text) throw new FleetCommandError(['entry: not in canonical form (keys sorted, defaults present, no whitespace); re-encode it with encodeFleetCommand']);
  return cmd;
}
