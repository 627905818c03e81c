/**
 * Observed state, the records: what each daemon publishes about its own
 * region into the geo store (eventual), how a record is encoded, how a
 * received one is checked, and the pure diff that says which records to
 * (re)write or delete. The driver is observed-publisher.ts; the read side is
 * fleet-view.ts.
 *
 * Keys (geo store entry names, all LWW registers):
 * - `fleet/vm/<node>/<provider>/<id>`: one record per VM. One record per VM
 *   rather than one Yjs map per region, because a change then resends one
 *   small entry (a Yjs map would ship its update log and keep a Yjs document
 *   per region in memory on every member), a deleted VM is a tombstone the
 *   store already knows how to collect, and the prefix `fleet/vm/<node>/`
 *   lists one region's VMs in key order.
 * - `fleet/region/<node>`: one record per region: capacity, quota, usage,
 *   health, labels and the report time. Republished periodically even when
 *   unchanged, so its age says how fresh the region's report is.
 * `<node>` is the daemon's node name: each region is one dwcpd and its node
 * name is unique in the federation (the geo store's replica id), so every key
 * has exactly one writer and LWW never has two writers to arbitrate. The
 * human region label (`node.region`) is a field of the region record.
 *
 * Record format: the LWW value is a string, not a JSON object. A VM record is
 * the JSON text of a positional array (VM_FIELDS order, version first); the
 * id, provider and region are in the key and not repeated. One flat string
 * is the cheapest thing V8 can hold per entry (an object of 13 properties and
 * its tag map costs several times its JSON length), which matters with 100
 * regions × 1 000 VMs on every member (see bench/fleet-records.ts).
 *
 * Invariants:
 * - Pure: no clock, no I/O; times are arguments.
 * - Decoding refuses a malformed record with an ObservedRecordError naming
 *   the field (`vm.vcpus`, `region.providers[0].capacity.vcpus`); a reader
 *   skips such a record rather than show made-up values.
 * - Every string is bounded (VM name, tags, image), so one record stays
 *   below MAX_RECORD_BYTES whatever a provider returns.
 */
import { DwcpError } from '../errors.ts';
import { INSTANCE_STATES, type Instance, type InstanceState } from '../cloud/provider.ts';

export const FLEET_PREFIX = 'fleet/';
export const VM_PREFIX = 'fleet/vm/';
export const REGION_PREFIX = 'fleet/region/';
/** The tag a VM carries when it belongs to a desired VM of the fleet (the reconciler sets it). */
export const DESIRED_VM_TAG = 'dwcp-vm';
/** Record version; a reader refuses others rather than misread positions. */
export const RECORD_VERSION = 1;
export const MAX_RECORD_BYTES = 16 * 1024;
const MAX_TAGS = 64;
const MAX_TEXT = 256;

export class ObservedRecordError extends DwcpError<'corrupt'> {
  readonly field: string;
  constructor(field: string, problem: string) {
    super('corrupt', `${field}: ${problem}`);
    this.field = field;
  }
}

// ---------------------------------------------------------------- shapes

/** One VM as its region reports it. */
export interface VmRecord {
  /** The publishing daemon's node name (from the key). */
  readonly region: string;
  /** The configured provider name (from the key). */
  readonly provider: string;
  readonly id: string;
  readonly name: string;
  readonly type: string;
  readonly zone: string;
  readonly vcpus: number | null;
  readonly memoryMiB: number | null;
  readonly state: InstanceState;
  readonly tags: Readonly<Record<string, string>>;
  readonly spot: boolean;
  /** Epoch milliseconds; null when the provider does not say. */
  readonly launchedAtMs: number | null;
  readonly image: string | null;
  /** The desired (fleet) VM this one realises, from its `dwcp-vm` tag. */
  readonly desiredVm: string | null;
  /** USD per hour, from the pricing catalog or the on-prem prices; null when unknown. */
  readonly pricePerHour: number | null;
  /**
   * Recent CPU use as a fraction of the VM's vCPUs, and memory in use as a
   * fraction of its memory, in USAGE_STEP steps (shownUsage); null when the
   * region measured nothing recently (not running, or a provider without
   * metrics). Coarse on purpose: a record is resent whenever it changes.
   */
  readonly cpu: number | null;
  readonly memory: number | null;
}

export interface Capacity {
  readonly vcpus: number;
  readonly memoryGiB: number;
  readonly diskGiB: number;
}

export interface Quota {
  readonly vcpus: number | null;
  readonly instances: number | null;
}

export interface ProviderReport {
  readonly name: string;
  readonly kind: string;
  /** The provider's own region (us-east-1, local, …). */
  readonly location: string;
  /** Declared capacity (on-premises); null for clouds. */
  readonly capacity: Capacity | null;
  readonly quota: Quota | null;
  /** Summed over VMs that hold resources (not stopped or terminated). */
  readonly usedVcpus: number;
  readonly usedMemoryMiB: number;
  readonly vms: number;
  /** null: the last inventory sync succeeded; else why it failed. */
  readonly lastError: string | null;
}

export interface RegionRecord {
  /** The publishing daemon's node name (from the key). */
  readonly region: string;
  /** `node.region`: where the daemon runs, for people. */
  readonly location: string;
  readonly reportedAtMs: number;
  /** The publisher's heartbeat interval, so a reader can judge the age without knowing its config. */
  readonly publishIntervalMs: number;
  readonly providers: readonly ProviderReport[];
  readonly labels: Readonly<Record<string, string>>;
  readonly jurisdiction: string | null;
  readonly compliance: readonly string[];
  /** ok: every provider's last sync succeeded; degraded: some failed. */
  readonly health: 'ok' | 'degraded';
  /**
   * Desired VMs assigned here that this region's reconciler gave up on, with
   * the provider's reason: the one status no VM record can carry (there may
   * be no copy at all). At most MAX_FAILED_REPORTS; absent in older records.
   */
  readonly failed: readonly FailedReport[];
}

/** A desired VM this region marked failed for one assignment generation. */
export interface FailedReport {
  readonly vm: string;
  readonly generation: number;
  readonly reason: string;
}

export const MAX_FAILED_REPORTS = 256;
const MAX_FAILED_REASON = 512;

// ---------------------------------------------------------------- keys

export function vmKey(region: string, provider: string, id: string): string {
  return `${VM_PREFIX}${region}/${provider}/${id}`;
}

export function regionKey(region: string): string {
  return `${REGION_PREFIX}${region}`;
}

/** The prefix of one region's VM records. */
export function regionVmPrefix(region: string): string {
  return `${VM_PREFIX}${region}/`;
}

/** What a fleet key names, or null for a key that is not one (ids may hold "/": GCP's `zone/name`). */
export function parseKey(key: string): { kind: 'vm'; region: string; provider: string; id: string } | { kind: 'region'; region: string } | null {
  if (key.startsWith(REGION_PREFIX)) {
    const region = key.slice(REGION_PREFIX.length);
    return region === '' || region.includes('/') ? null : { kind: 'region', region };
  }
  if (!key.startsWith(VM_PREFIX)) return null;
  const rest = key.slice(VM_PREFIX.length);
  const a = rest.indexOf('/');
  const b = a < 0 ? -1 : rest.indexOf('/', a + 1);
  if (a <= 0 || b <= a + 1 || b === rest.length - 1) return null;
  return { kind: 'vm', region: rest.slice(0, a), provider: rest.slice(a + 1, b), id: rest.slice(b + 1) };
}

// ---------------------------------------------------------------- VM records

/** Positions of a VM record's array (after the version). */
const VM_FIELDS = ['name', 'type', 'zone', 'vcpus', 'memoryMiB', 'state', 'tags', 'spot', 'launchedAtMs', 'image', 'desiredVm', 'pricePerHour', 'cpu', 'memory'] as const;
/** Records from daemons before utilisation was published end at pricePerHour; read as "no usage measured". */
const VM_FIELDS_WITHOUT_USAGE = VM_FIELDS.length - 2;

/** Utilisation is published in steps of 5 %, so a record changes only when use does, not with every sample. */
export const USAGE_STEP = 0.05;

/**
 * The usage fraction to publish, given the one published before and the one
 * measured now. Rounds to USAGE_STEP, with hysteresis: a value within 3/4
 * of a step of the published one keeps it, so a VM hovering at a step
 * boundary (47.5 %) does not flip its record every sync. Pure.
 */
export function shownUsage(published: number | null, measured: number | null): number | null {
  if (measured === null || !Number.isFinite(measured)) return null;
  const m = Math.min(1, Math.max(0, measured));
  if (published !== null && Math.abs(m - published) < USAGE_STEP * 0.75) return published;
  return Math.round(Math.round(m / USAGE_STEP) * USAGE_STEP * 100) / 100;
}

/** An instance as the record its region publishes; `pricePerHour` is the caller's (catalog or on-prem prices). */
export function vmRecordOf(region: string, provider: string, instance: Instance, pricePerHour: number | null, usage: { cpu: number | null; memory: number | null } = NO_USAGE): VmRecord {
  return {
    region,
    provider,
    id: instance.id,
    name: instance.name,
    type: instance.type,
    zone: instance.zone,
    vcpus: instance.vcpus,
    memoryMiB: instance.memoryMiB,
    state: instance.state,
    tags: instance.tags,
    spot: instance.spot,
    launchedAtMs: instance.launchTime === null ? null : instance.launchTime.getTime(),
    image: instance.image,
    desiredVm: instance.tags[DESIRED_VM_TAG] ?? null,
    pricePerHour,
    cpu: usage.cpu,
    memory: usage.memory,
  };
}

const NO_USAGE = { cpu: null, memory: null } as const;

/** Tags in key order, so equal tag sets encode to equal bytes and the diff sees no change. */
function sortedTags(tags: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const k of Object.keys(tags).sort().slice(0, MAX_TAGS)) out[k] = clip(tags[k] ?? '');
  return out;
}

function clip(s: string): string {
  return s.length <= MAX_TEXT ? s : s.slice(0, MAX_TEXT);
}

/** Micro-dollar precision: prices are quoted to 4–6 decimals, and rounding keeps the encoding stable. */
function roundPrice(p: number | null): number | null {
  return p === null ? null : Math.round(p * 1e6) / 1e6;
}

/** The record's LWW value (the key carries region, provider and id). */
export function encodeVmRecord(r: VmRecord): string {
  const rest = r;
  const body = [
    RECORD_VERSION,
    clip(rest.name),
    clip(rest.type),
    clip(rest.zone),
    rest.vcpus,
    rest.memoryMiB,
    rest.state,
    sortedTags(rest.tags),
    rest.spot ? 1 : 0,
    rest.launchedAtMs,
    rest.image === null ? null : clip(rest.image),
    r.desiredVm === null ? null : clip(r.desiredVm),
    roundPrice(rest.pricePerHour),
    rest.cpu,
    rest.memory,
  ];
  return JSON.stringify(body);
}

function parseText(value: unknown, field: string): unknown {
  if (typeof value !== 'string') throw new ObservedRecordError(field, `must be a string (the record's JSON text), got ${value === null ? 'null' : typeof value}`);
  if (value.length > MAX_RECORD_BYTES) throw new ObservedRecordError(field, `is ${value.length} characters, above the ${MAX_RECORD_BYTES} limit`);
  try {
    return JSON.parse(value) as unknown;
  } catch {
    throw new ObservedRecordError(field, 'is not JSON');
  }
}

function text(raw: unknown, field: string, nullable: false): string;
function text(raw: unknown, field: string, nullable: true): string | null;
function text(raw: unknown, field: string, nullable: boolean): string | null {
  if (raw === null && nullable) return null;
  if (typeof raw !== 'string') throw new ObservedRecordError(field, `must be a string${nullable ? ' or null' : ''}`);
  if (raw.length > MAX_TEXT) throw new ObservedRecordError(field, `is longer than ${MAX_TEXT} characters`);
  return raw;
}

function count(raw: unknown, field: string, nullable: false): number;
function count(raw: unknown, field: string, nullable: true): number | null;
function count(raw: unknown, field: string, nullable: boolean): number | null {
  if (raw === null && nullable) return null;
  if (typeof raw !== 'number' || !Number.isSafeInteger(raw) || raw < 0) throw new ObservedRecordError(field, `must be a whole number ≥ 0${nullable ? ' or null' : ''}, got ${JSON.stringify(raw)}`);
  return raw;
}

function amount(raw: unknown, field: string, nullable: boolean): number | null {
  if (raw === null && nullable) return null;
  if (typeof raw !== 'number' || !Number.isFinite(raw) || raw < 0) throw new ObservedRecordError(field, `must be a number ≥ 0${nullable ? ' or null' : ''}, got ${JSON.stringify(raw)}`);
  return raw;
}

/** A fraction 0..1 or null; absent (an older record) reads as null. */
function fraction(raw: unknown, field: string): number | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw !== 'number' || !(raw >= 0 && raw <= 1)) throw new ObservedRecordError(field, `must be a fraction 0..1 or null, got ${JSON.stringify(raw)}`);
  return raw;
}

function stringMap(raw: unknown, field: string): Record<string, string> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ObservedRecordError(field, 'must be an object of strings');
  const entries = Object.entries(raw);
  if (entries.length > MAX_TAGS) throw new ObservedRecordError(field, `has more than ${MAX_TAGS} keys`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) out[k] = text(v, `${field}.${k}`, false);
  return out;
}

function object(raw: unknown, field: string): Record<string, unknown> {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ObservedRecordError(field, 'must be an object');
  return raw as Record<string, unknown>;
}

/** The VM record stored under `key` with LWW value `value`; throws ObservedRecordError naming the field. */
export function decodeVmRecord(key: string, value: unknown): VmRecord {
  const at = parseKey(key);
  if (at === null || at.kind !== 'vm') throw new ObservedRecordError('vm.key', `${JSON.stringify(key.slice(0, 80))} is not fleet/vm/<region>/<provider>/<id>`);
  const raw = parseText(value, 'vm');
  if (!Array.isArray(raw)) throw new ObservedRecordError('vm', 'must be a JSON array');
  if (raw[0] !== RECORD_VERSION) throw new ObservedRecordError('vm.version', `is ${JSON.stringify(raw[0])}, this daemon reads version ${RECORD_VERSION}`);
  if (raw.length !== VM_FIELDS.length + 1 && raw.length !== VM_FIELDS_WITHOUT_USAGE + 1) {
    throw new ObservedRecordError('vm', `has ${raw.length - 1} fields, expected ${VM_FIELDS.length} (${VM_FIELDS.join(', ')}) or the first ${VM_FIELDS_WITHOUT_USAGE}`);
  }
  const f = (i: number): unknown => raw[i + 1];
  const state = f(5);
  if (typeof state !== 'string' || !(INSTANCE_STATES as readonly string[]).includes(state)) throw new ObservedRecordError('vm.state', `${JSON.stringify(state)} is not one of ${INSTANCE_STATES.join('|')}`);
  const spot = f(7);
  if (spot !== 0 && spot !== 1) throw new ObservedRecordError('vm.spot', `must be 0 or 1, got ${JSON.stringify(spot)}`);
  return {
    region: at.region,
    provider: at.provider,
    id: at.id,
    name: text(f(0), 'vm.name', false),
    type: text(f(1), 'vm.type', false),
    zone: text(f(2), 'vm.zone', false),
    vcpus: count(f(3), 'vm.vcpus', true),
    memoryMiB: count(f(4), 'vm.memoryMiB', true),
    state: state as InstanceState,
    tags: stringMap(f(6), 'vm.tags'),
    spot: spot === 1,
    launchedAtMs: count(f(8), 'vm.launchedAtMs', true),
    image: text(f(9), 'vm.image', true),
    desiredVm: text(f(10), 'vm.desiredVm', true),
    pricePerHour: amount(f(11), 'vm.pricePerHour', true),
    cpu: fraction(f(12), 'vm.cpu'),
    memory: fraction(f(13), 'vm.memory'),
  };
}

// ---------------------------------------------------------------- region records

export function encodeRegionRecord(r: RegionRecord): string {
  const { region: _fromKey, ...body } = r;
  void _fromKey;
  return JSON.stringify({ v: RECORD_VERSION, ...body, labels: sortedTags(body.labels) });
}

function capacityOf(raw: unknown, field: string): Capacity | null {
  if (raw === null) return null;
  const c = object(raw, field);
  return {
    vcpus: count(c['vcpus'], `${field}.vcpus`, false),
    memoryGiB: amount(c['memoryGiB'], `${field}.memoryGiB`, false) as number,
    diskGiB: amount(c['diskGiB'], `${field}.diskGiB`, false) as number,
  };
}

function quotaOf(raw: unknown, field: string): Quota | null {
  if (raw === null) return null;
  const q = object(raw, field);
  return { vcpus: count(q['vcpus'], `${field}.vcpus`, true), instances: count(q['instances'], `${field}.instances`, true) };
}

export function decodeRegionRecord(key: string, value: unknown): RegionRecord {
  const at = parseKey(key);
  if (at === null || at.kind !== 'region') throw new ObservedRecordError('region.key', `${JSON.stringify(key.slice(0, 80))} is not fleet/region/<region>`);
  const r = object(parseText(value, 'region'), 'region');
  if (r['v'] !== RECORD_VERSION) throw new ObservedRecordError('region.v', `is ${JSON.stringify(r['v'])}, this daemon reads version ${RECORD_VERSION}`);
  const providersRaw = r['providers'];
  if (!Array.isArray(providersRaw) || providersRaw.length > 64) throw new ObservedRecordError('region.providers', 'must be an array of at most 64 providers');
  const providers = providersRaw.map((p: unknown, i): ProviderReport => {
    const field = `region.providers[${i}]`;
    const o = object(p, field);
    return {
      name: text(o['name'], `${field}.name`, false),
      kind: text(o['kind'], `${field}.kind`, false),
      location: text(o['location'], `${field}.location`, false),
      capacity: capacityOf(o['capacity'] ?? null, `${field}.capacity`),
      quota: quotaOf(o['quota'] ?? null, `${field}.quota`),
      usedVcpus: count(o['usedVcpus'], `${field}.usedVcpus`, false),
      usedMemoryMiB: count(o['usedMemoryMiB'], `${field}.usedMemoryMiB`, false),
      vms: count(o['vms'], `${field}.vms`, false),
      lastError: o['lastError'] === null ? null : text(o['lastError'], `${field}.lastError`, false),
    };
  });
  const health = r['health'];
  if (health !== 'ok' && health !== 'degraded') throw new ObservedRecordError('region.health', `${JSON.stringify(health)} is not ok|degraded`);
  const compliance = r['compliance'];
  if (!Array.isArray(compliance) || compliance.length > 32) throw new ObservedRecordError('region.compliance', 'must be an array of at most 32 strings');
  const failedRaw = r['failed'] ?? [];
  if (!Array.isArray(failedRaw) || failedRaw.length > MAX_FAILED_REPORTS) throw new ObservedRecordError('region.failed', `must be an array of at most ${MAX_FAILED_REPORTS} reports`);
  const failed = failedRaw.map((f: unknown, i): FailedReport => {
    const field = `region.failed[${i}]`;
    const o = object(f, field);
    const reason = text(o['reason'], `${field}.reason`, false);
    if (reason.length > MAX_FAILED_REASON) throw new ObservedRecordError(`${field}.reason`, `is ${reason.length} characters, above ${MAX_FAILED_REASON}`);
    return { vm: text(o['vm'], `${field}.vm`, false), generation: count(o['generation'], `${field}.generation`, false), reason };
  });
  return {
    failed,
    region: at.region,
    location: text(r['location'], 'region.location', false),
    reportedAtMs: count(r['reportedAtMs'], 'region.reportedAtMs', false),
    publishIntervalMs: count(r['publishIntervalMs'], 'region.publishIntervalMs', false),
    providers,
    labels: stringMap(r['labels'], 'region.labels'),
    jurisdiction: text(r['jurisdiction'], 'region.jurisdiction', true),
    compliance: compliance.map((c: unknown, i) => text(c, `region.compliance[${i}]`, false)),
    health,
  };
}

// ---------------------------------------------------------------- usage

/** A VM holds its vCPUs and memory unless stopped or terminated (as the local provider counts capacity). */
export function holdsResources(state: InstanceState): boolean {
  return state !== 'stopped' && state !== 'terminated';
}

/** On-premises $/h of a VM: its vCPUs and memory at the configured prices. */
export function onPremPrice(vcpus: number | null, memoryMiB: number | null, prices: { pricePerVcpuHour: number; pricePerGiBHour: number }): number | null {
  if (vcpus === null || memoryMiB === null) return null;
  return vcpus * prices.pricePerVcpuHour + (memoryMiB / 1024) * prices.pricePerGiBHour;
}

// ---------------------------------------------------------------- diff

export interface RecordChanges {
  /** Keys to (re)write with their new values. */
  readonly put: ReadonlyMap<string, string>;
  /** Keys whose record is gone (to tombstone). */
  readonly remove: readonly string[];
}

/**
 * Which records changed between what was published and what should be:
 * new or different values are written, keys no longer wanted are deleted.
 * Values compare as strings (the encoding is canonical: sorted tags,
 * rounded prices), so an unchanged VM is never resent.
 */
export function diffRecords(published: ReadonlyMap<string, string>, wanted: ReadonlyMap<string, string>): RecordChanges {
  const put = new Map<string, string>();
  for (const [key, value] of wanted) if (published.get(key) !== value) put.set(key, value);
  const remove: string[] = [];
  for (const key of published.keys()) if (!wanted.has(key)) remove.push(key);
  return { put, remove };
}
