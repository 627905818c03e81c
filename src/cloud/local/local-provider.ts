/**
 * The `local` provider: simulated VMs for on-premises use and for running a
 * whole federation on one machine without a cloud. Clearly labelled as local
 * everywhere it shows (`kind: 'local'`, description "local (simulated VMs, no
 * cloud)"); nothing here starts a real machine.
 *
 * A VM is a record in a small storage interface (`LocalVmStore`; in memory
 * here, the daemon's own store later) with the same lifecycle and failure
 * modes as the clouds: create → pending → running, stop → stopping → stopped,
 * terminate → stopping → terminated (kept for `terminatedRetentionMs`, as EC2
 * keeps terminated instances visible), capacity limits on vCPUs and memory
 * (CapacityError), unavailable zones, unknown types, not found, and operations
 * refused in the wrong state (IncorrectStateError).
 *
 * Invariants:
 * - A transition is stored as "state S until time T, then state S'", and
 *   settled lazily on every read. So records survive a restart of the daemon
 *   mid-transition, and nothing needs a background timer; waiting for a state
 *   is waiting until T.
 * - Capacity counts every VM that is not stopped or terminated, so a start of a
 *   stopped VM can fail for capacity, as on a real cloud.
 * - The provider's records are in memory (loaded from the store once); every
 *   check-and-change is one synchronous step (no await between reading the
 *   records and changing them, and the change handed to the store in the
 *   same step), so concurrent creates cannot both pass the capacity check,
 *   no settle overwrites a newer change, and the store gets the changes in
 *   the order they were made. Operations run concurrently otherwise: their
 *   writes share the store's fsyncs (group commit).
 * - Durable before told: an operation returns, and reports `accepted`, only
 *   once its change is durable in the store, and a read answers only once
 *   every change made before it has been written, so nothing is shown that
 *   a crash could take back.
 * - Per operation O(1) work besides the capacity check's scan of the records
 *   (no copies or sorts of every record; only list sorts).
 */
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import type { UsageQuery, UsageSample } from '../utilisation.ts';
import { readFile } from 'node:fs/promises';
import { formatIssue, pathString } from '../../config/issues.ts';
import { DEFAULT_SIMULATED_LOAD, LoadOverridesSchema, simulatedUsage, withOverrides, type SimulatedLoadConfig } from './simulated-load.ts';
import {
  CancelledError,
  CapacityError,
  checkCreateRequest,
  IncorrectStateError,
  InvalidRequestError,
  matchesFilter,
  NotFound,
  progressReporter,
  TARGET_STATE,
  throwIfAborted,
  type CallOptions,
  type CloudProvider,
  type CreateInstanceRequest,
  type Instance,
  type InstanceFilter,
  type InstanceState,
  type InstanceTypeInfo,
  type InstanceTypeQuery,
  type LongOperation,
  type LongOperationOptions,
  type Tags,
  type ZoneHealth,
  type ZoneStatus,
} from '../provider.ts';

export interface LocalVmRecord {
  id: string;
  name: string;
  zone: string;
  type: string;
  image: string;
  tags: Record<string, string>;
  spot: boolean;
  userData: string | null;
  idempotencyToken: string | null;
  state: InstanceState;
  /** A transition under way: the state the VM reaches at time `at` (epoch ms). */
  transition: { to: InstanceState; at: number } | null;
  createdAt: number;
  /** When the VM entered its current state (epoch ms); terminated VMs are purged by it. */
  stateSince: number;
  launchTime: number | null;
  privateIp: string;
}

/**
 * Where local VM records live. The provider reads them once (`load`) and
 * then only hands changes over: each is taken at once, in call order (a
 * copy of the record as it is at the call), and its promise resolves once
 * it is durable.
 */
export interface LocalVmStore {
  /** The stored records, as copies. */
  load(): LocalVmRecord[];
  put(record: LocalVmRecord): Promise<void>;
  delete(id: string): Promise<void>;
  /** Resolves once every change handed over so far has been written or failed to be; never rejects. */
  durable(): Promise<void>;
  /** Waits for the writes under way and releases the store's files. */
  close(): Promise<void>;
}

/** Records in memory only (tests; the base of FileVmStore). Stored objects are replaced on put, never changed in place. */
export class MemoryVmStore implements LocalVmStore {
  readonly #records = new Map<string, LocalVmRecord>();

  constructor(records: readonly LocalVmRecord[] = []) {
    for (const r of records) this.#records.set(r.id, structuredClone(r));
  }

  load(): LocalVmRecord[] {
    return [...this.#records.values()].map((r) => structuredClone(r));
  }

  put(record: LocalVmRecord): Promise<void> {
    this.#records.set(record.id, structuredClone(record));
    return Promise.resolve();
  }

  delete(id: string): Promise<void> {
    this.#records.delete(id);
    return Promise.resolve();
  }

  durable(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  get size(): number {
    return this.#records.size;
  }

  has(id: string): boolean {
    return this.#records.has(id);
  }

  /** The stored records as they are now: safe to serialise later, as a put replaces an object rather than changing it. */
  protected snapshot(): LocalVmRecord[] {
    return [...this.#records.values()];
  }
}

export interface LocalTypeSpec {
  vcpus: number;
  memoryMiB: number;
}

export const DEFAULT_LOCAL_TYPES: Readonly<Record<string, LocalTypeSpec>> = {
  'local.small': { vcpus: 1, memoryMiB: 1024 },
  'local.medium': { vcpus: 2, memoryMiB: 4096 },
  'local.large': { vcpus: 4, memoryMiB: 8192 },
  'local.xlarge': { vcpus: 8, memoryMiB: 16384 },
};

export interface LocalProviderOptions {
  region?: string;
  zones?: readonly string[];
  store?: LocalVmStore;
  types?: Readonly<Record<string, LocalTypeSpec>>;
  /** Total that VMs not stopped or terminated may use; default 64 vCPUs and 256 GiB. */
  capacity?: LocalTypeSpec;
  /** How long pending and stopping last; default 500 ms. */
  transitionDelayMs?: number;
  /** How long terminated VMs stay listed; default one hour. */
  terminatedRetentionMs?: number;
  /** Clock (epoch ms), injectable for tests. */
  now?: () => number;
  /** The simulated load its VMs report through usage() (simulated-load.ts); default: a constant 20 % CPU. */
  load?: SimulatedLoadConfig;
}

const LOCAL_ID_RE = /^local-[0-9a-f]{12}$/;

export class LocalProvider implements CloudProvider {
  readonly kind = 'local' as const;
  readonly region: string;
  readonly description = 'local (simulated VMs, no cloud)';
  /**
   * An operation here is a record change sharing a group-committed fsync,
   * then a wait for its transition (transitionDelayMs, a simulated boot):
   * so many can be in flight. 1 024 lets a region bring 1 000 failed-over
   * VMs up in one wait rather than one per batch (at 256: four 500 ms
   * waits, +1.5 s of RTO), and stays under the create journal's bound
   * (MAX_PENDING_CREATES).
   */
  readonly concurrency = 1_024;
  readonly zones: readonly string[];

  readonly #store: LocalVmStore;
  readonly #types: Readonly<Record<string, LocalTypeSpec>>;
  readonly #capacity: LocalTypeSpec;
  readonly #transitionMs: number;
  readonly #retentionMs: number;
  readonly #now: () => number;
  readonly #load: SimulatedLoadConfig;
  readonly #zoneStatus = new Map<string, ZoneStatus>();
  /** Every record, by id: the working set (the store is written through, never read after construction). */
  readonly #records = new Map<string, LocalVmRecord>();
  /** Record id by idempotency token, for creates retried with the same token. */
  readonly #byToken = new Map<string, string>();

  constructor(options: LocalProviderOptions = {}) {
    this.region = options.region ?? 'local';
    this.zones = options.zones ?? [`${this.region}-a`];
    if (this.zones.length === 0) throw new InvalidRequestError('local', 'configure', 'InvalidConfig', 'zones: at least one zone');
    this.#store = options.store ?? new MemoryVmStore();
    this.#types = options.types ?? DEFAULT_LOCAL_TYPES;
    this.#capacity = options.capacity ?? { vcpus: 64, memoryMiB: 256 * 1024 };
    this.#transitionMs = options.transitionDelayMs ?? 500;
    this.#retentionMs = options.terminatedRetentionMs ?? 3_600_000;
    this.#now = options.now ?? Date.now;
    this.#load = options.load ?? DEFAULT_SIMULATED_LOAD;
    for (const zone of this.zones) this.#zoneStatus.set(zone, 'available');
    for (const record of this.#store.load()) this.#add(record);
  }

  #add(record: LocalVmRecord): void {
    this.#records.set(record.id, record);
    if (record.idempotencyToken !== null) this.#byToken.set(record.idempotencyToken, record.id);
  }

  #remove(record: LocalVmRecord): void {
    this.#records.delete(record.id);
    if (record.idempotencyToken !== null && this.#byToken.get(record.idempotencyToken) === record.id) this.#byToken.delete(record.idempotencyToken);
  }

  /** Marks a zone impaired or unavailable: creates and starts there fail for capacity. */
  setZoneStatus(zone: string, status: ZoneStatus): void {
    if (!this.#zoneStatus.has(zone)) throw new InvalidRequestError('local', 'setZoneStatus', 'InvalidZone', `zone: ${zone} is not one of ${this.zones.join(', ')}`);
    this.#zoneStatus.set(zone, status);
  }

  // --- reads -------------------------------------------------------------------

  /**
   * Applies a due transition and the retention of terminated VMs, in memory
   * and to the store (not awaited: both follow from what is stored, so a
   * restart before the write settles the same way). Undefined: purged.
   */
  #settle(record: LocalVmRecord): LocalVmRecord | undefined {
    const now = this.#now();
    let changed = false;
    if (record.transition && record.transition.at <= now) {
      if (record.transition.to === 'running') record.launchTime = record.transition.at;
      record.state = record.transition.to;
      record.stateSince = record.transition.at;
      record.transition = null;
      changed = true;
    }
    if (record.state === 'terminated' && record.stateSince + this.#retentionMs <= now) {
      this.#remove(record);
      this.#store.delete(record.id).catch(() => undefined);
      return undefined;
    }
    if (changed) this.#store.put(record).catch(() => undefined);
    return record;
  }

  /** Every record, settled, in no particular order. */
  *#settled(): Generator<LocalVmRecord> {
    // Deleting the entry being visited (a purge) is safe while iterating a Map.
    for (const stored of this.#records.values()) {
      const record = this.#settle(stored);
      if (record !== undefined) yield record;
    }
  }

  #record(id: string, operation: string): LocalVmRecord {
    if (typeof id !== 'string' || !LOCAL_ID_RE.test(id)) {
      throw new InvalidRequestError('local', operation, 'InvalidInstanceID.Malformed', `id: ${JSON.stringify(id)} is not a local VM id (local- and 12 hex digits)`);
    }
    const stored = this.#records.get(id);
    const record = stored && this.#settle(stored);
    if (!record) throw new NotFound('local', operation, 'InvalidInstanceID.NotFound', `local VM ${id} does not exist`);
    return record;
  }

  /** `value`, once every change made before this call is durable (a read never shows what a crash could take back). */
  async #afterWrites<T>(value: T): Promise<T> {
    await this.#store.durable();
    return value;
  }

  async list(filter?: InstanceFilter, options: CallOptions = {}): Promise<Instance[]> {
    throwIfAborted(options.signal, 'local', 'list');
    const records = [...this.#settled()].sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return this.#afterWrites(records.map((r) => this.#toInstance(r)).filter((i) => matchesFilter(i, filter)));
  }

  async get(id: string, options: CallOptions = {}): Promise<Instance> {
    throwIfAborted(options.signal, 'local', 'get');
    return this.#afterWrites(this.#toInstance(this.#record(id, 'get')));
  }

  // --- lifecycle -------------------------------------------------------------------

  async create(request: CreateInstanceRequest, options: LongOperationOptions = {}): Promise<Instance> {
    checkCreateRequest('local', request);
    throwIfAborted(options.signal, 'local', 'create');
    const spec = this.#types[request.type];
    if (!spec) throw new InvalidRequestError('local', 'create', 'InvalidInstanceType', `type: ${request.type} is not one of ${Object.keys(this.#types).join(', ')}`);
    const zone = request.zone ?? this.zones[0] ?? '';
    if (!this.#zoneStatus.has(zone)) throw new InvalidRequestError('local', 'create', 'InvalidZone', `zone: ${zone} is not one of ${this.zones.join(', ')}`);
    const progress = progressReporter('create', '', options.onProgress);
    const record = await (async (): Promise<LocalVmRecord> => {
      const existingId = request.idempotencyToken ? this.#byToken.get(request.idempotencyToken) : undefined;
      const existing = existingId === undefined ? undefined : this.#records.get(existingId);
      const settled = existing && this.#settle(existing);
      // The first create with this token may still be writing its record: answer once it is durable.
      if (settled) return this.#afterWrites(settled);
      if (request.incoming === undefined) this.#checkCapacity('create', zone, spec);
      const now = this.#now();
      const created: LocalVmRecord = {
        id: `local-${randomBytes(6).toString('hex')}`,
        name: request.name,
        zone,
        type: request.type,
        image: request.image,
        tags: { ...request.tags },
        spot: request.spot ?? false,
        userData: request.userData ?? null,
        idempotencyToken: request.idempotencyToken ?? null,
        // An incoming migration copy is a record prepared and not booted: stopped, taking no capacity until started.
        state: request.incoming === undefined ? 'pending' : 'stopped',
        transition: request.incoming === undefined ? { to: 'running', at: now + this.#transitionMs } : null,
        createdAt: now,
        stateSince: now,
        launchTime: null,
        privateIp: `10.200.${randomBytes(1)[0] ?? 0}.${((randomBytes(1)[0] ?? 0) % 250) + 2}`,
      };
      this.#add(created);
      await this.#store.put(created);
      return created;
    })();
    progress.setInstanceId(record.id);
    progress.report('accepted', record.state, record.state);
    if (request.incoming !== undefined) {
      progress.report('done', record.state, record.state);
      return this.#toInstance(record);
    }
    return this.#finish('create', record.id, progress, options);
  }

  start(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#change('start', id, options, (record) => {
      if (record.state === 'running' || record.state === 'pending') return;
      if (record.state !== 'stopped') throw this.#wrongState('start', record);
      const spec = this.#types[record.type];
      if (spec) this.#checkCapacity('start', record.zone, spec);
      return { now: 'pending', then: 'running' };
    });
  }

  stop(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#change('stop', id, options, (record) => {
      if (record.state === 'stopped' || (record.state === 'stopping' && record.transition?.to === 'stopped')) return;
      if (record.state !== 'running') throw this.#wrongState('stop', record);
      return { now: 'stopping', then: 'stopped' };
    });
  }

  terminate(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#change('terminate', id, options, (record) => {
      if (record.state === 'terminated' || record.transition?.to === 'terminated') return;
      return { now: 'stopping', then: 'terminated' };
    });
  }

  async #change(
    operation: LongOperation,
    id: string,
    options: LongOperationOptions,
    plan: (record: LocalVmRecord) => { now: InstanceState; then: InstanceState } | undefined,
  ): Promise<Instance> {
    throwIfAborted(options.signal, 'local', operation);
    const progress = progressReporter(operation, id, options.onProgress);
    const record = this.#record(id, operation);
    const step = plan(record);
    if (step) {
      record.state = step.now;
      record.stateSince = this.#now();
      record.transition = { to: step.then, at: this.#now() + this.#transitionMs };
      await this.#store.put(record);
    } else await this.#store.durable();
    progress.report('accepted', record.state, record.state);
    return this.#finish(operation, id, progress, options);
  }

  /** Waits until the stored transition is due, re-reading after each wait (another caller may have changed the VM). */
  async #finish(operation: LongOperation, id: string, progress: ReturnType<typeof progressReporter>, options: LongOperationOptions): Promise<Instance> {
    const target = TARGET_STATE[operation];
    for (;;) {
      if (options.wait !== false && options.signal?.aborted) {
        throw new CancelledError('local', operation, 'Cancelled', `stopped waiting for ${id} to be ${target}; the request itself was accepted`, { cause: options.signal.reason, instanceId: id });
      }
      const record = await this.#afterWrites(this.#record(id, operation));
      if (options.wait === false) return this.#toInstance(record);
      if (record.state === target) {
        progress.report('done', record.state, record.state);
        return this.#toInstance(record);
      }
      if (!record.transition || record.transition.to !== target) {
        throw new IncorrectStateError('local', operation, 'UnexpectedState', `local VM ${id} is ${record.state} while waiting for ${target}`, { instanceId: id });
      }
      progress.report('waiting', record.state, record.state);
      try {
        await delay(Math.max(0, record.transition.at - this.#now()), undefined, { signal: options.signal });
      } catch (error) {
        throw new CancelledError('local', operation, 'Cancelled', `stopped waiting for ${id} to be ${target}; the request itself was accepted`, { cause: error, instanceId: id });
      }
    }
  }

  #checkCapacity(operation: string, zone: string, spec: LocalTypeSpec): void {
    const status = this.#zoneStatus.get(zone);
    if (status !== 'available') {
      throw new CapacityError('local', operation, 'ZoneUnavailable', `zone ${zone} is ${status}: no new VMs are placed there`, 'capacity');
    }
    let vcpus = spec.vcpus;
    let memoryMiB = spec.memoryMiB;
    for (const r of this.#settled()) {
      if (r.state === 'stopped' || r.state === 'terminated') continue;
      vcpus += this.#types[r.type]?.vcpus ?? 0;
      memoryMiB += this.#types[r.type]?.memoryMiB ?? 0;
    }
    if (vcpus > this.#capacity.vcpus || memoryMiB > this.#capacity.memoryMiB) {
      throw new CapacityError(
        'local',
        operation,
        'InsufficientCapacity',
        `not enough local capacity: would use ${vcpus}/${this.#capacity.vcpus} vCPUs and ${memoryMiB}/${this.#capacity.memoryMiB} MiB`,
        'capacity',
      );
    }
  }

  /**
   * A DR backup of a running local VM (src/dr/backup-driver.ts). A local VM
   * has no disk, so the backup is a small stand-in that depends only on the
   * VM (its id, name, image, type): written and fsync'd at `target`, so the
   * backup path around it (blob store, replication as deltas, retention,
   * restore) is the real one.
   */
  async backupDisk(id: string, target: string): Promise<void> {
    const record = await this.#afterWrites(this.#record(id, 'backup'));
    if (record.state !== 'running') throw this.#wrongState('backup', record);
    const lines = [`dwcp local VM backup`, `id ${record.id}`, `name ${record.name}`, `image ${record.image}`, `type ${record.type}`];
    const block = Buffer.from(`${lines.join('\n')}\n`.padEnd(4096, '.'), 'utf8');
    const fh = await open(target, 'wx', 0o600);
    try {
      for (let i = 0; i < 16; i++) await fh.write(block);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  #wrongState(operation: string, record: LocalVmRecord): IncorrectStateError {
    return new IncorrectStateError('local', operation, 'IncorrectInstanceState', `local VM ${record.id} is ${record.state}; cannot ${operation} it`);
  }

  async setTags(id: string, tags: Tags, options: CallOptions = {}): Promise<void> {
    throwIfAborted(options.signal, 'local', 'setTags');
    const record = this.#record(id, 'setTags');
    if (record.state === 'terminated') throw this.#wrongState('setTags', record);
    record.tags = { ...record.tags, ...tags };
    await this.#store.put(record);
  }

  async setType(id: string, type: string, options: CallOptions = {}): Promise<Instance> {
    throwIfAborted(options.signal, 'local', 'setType');
    if (!this.#types[type]) throw new InvalidRequestError('local', 'setType', 'InvalidInstanceType', `type: ${type} is not one of ${Object.keys(this.#types).join(', ')}`);
    const record = this.#record(id, 'setType');
    // As on EC2 and GCE: only a stopped VM changes its type.
    if (record.state !== 'stopped') throw this.#wrongState('setType', record);
    record.type = type;
    await this.#store.put(record);
    return this.#toInstance(record);
  }

  async listInstanceTypes(query: InstanceTypeQuery = {}): Promise<InstanceTypeInfo[]> {
    return Object.entries(this.#types)
      .filter(([name]) => !query.types || query.types.length === 0 || query.types.includes(name))
      .map(([name, spec]) => ({ name, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, architectures: [process.arch === 'arm64' ? 'arm64' : 'x86_64'], spot: true }));
  }

  /** The simulated load of the VMs asked about (simulated-load.ts): one sample per 5-minute slot ending in the window. */
  async usage(query: UsageQuery): Promise<UsageSample[]> {
    return simulatedUsage(await this.#currentLoad(), query.instances, query.sinceMs, query.untilMs);
  }

  /** The configured load, with the overrides file's shapes while it exists (simulated-load.ts). */
  async #currentLoad(): Promise<SimulatedLoadConfig> {
    const file = this.#load.overridesFile;
    if (file === undefined) return this.#load;
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return this.#load;
      throw new InvalidRequestError('local', 'usage', 'InvalidLoadFile', `load.overridesFile ${file}: ${err instanceof Error ? err.message : String(err)}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new InvalidRequestError('local', 'usage', 'InvalidLoadFile', `load.overridesFile ${file}: not JSON`);
    }
    const parsed = LoadOverridesSchema.safeParse(raw, { reportInput: true });
    if (!parsed.success) throw new InvalidRequestError('local', 'usage', 'InvalidLoadFile', `load.overridesFile ${file}: ${parsed.error.issues.map((i) => formatIssue(i, pathString)).join('; ')}`);
    return withOverrides(this.#load, parsed.data);
  }

  async zoneHealth(): Promise<ZoneHealth[]> {
    return this.zones.map((zone) => {
      const status = this.#zoneStatus.get(zone) ?? 'available';
      return { zone, region: this.region, status, providerStatus: status, messages: [] };
    });
  }

  async close(): Promise<void> {
    await this.#store.close();
  }

  #toInstance(r: LocalVmRecord): Instance {
    const spec = this.#types[r.type];
    return {
      id: r.id,
      name: r.name,
      provider: 'local',
      region: this.region,
      zone: r.zone,
      type: r.type,
      vcpus: spec?.vcpus ?? null,
      memoryMiB: spec?.memoryMiB ?? null,
      state: r.state,
      providerState: r.transition ? `${r.state}->${r.transition.to}` : r.state,
      tags: { ...r.tags },
      spot: r.spot,
      launchTime: r.launchTime === null ? null : new Date(r.launchTime),
      image: r.image,
      privateIp: r.privateIp,
      publicIp: null,
    };
  }
}
