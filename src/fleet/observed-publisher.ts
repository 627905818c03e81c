/**
 * ObservedPublisher: the driver that publishes this region's observed state
 * (observed.ts) into the geo store at consistency eventual, and reads the
 * whole fleet back (fleet-view.ts) for the admin service and the metrics.
 *
 * Publishing: the cloud inventory has no change event, so every tick (at
 * most a second apart) the in-memory inventory is encoded and diffed against
 * what was last published; only changed VM records are written, and VMs that
 * are gone (or terminated) have their records deleted (LWW tombstones, which
 * the store collects). The region record is written when its content changes
 * and at least every `fleet.publishIntervalMs`, even unchanged, so its
 * `reportedAtMs` is a heartbeat whose age readers can judge.
 *
 * Invariants:
 * - Only this region's keys are ever written (`fleet/vm/<self>/…`,
 *   `fleet/region/<self>`): each key has one writer.
 * - At start, the records this region published before a restart are read
 *   back from the local store and taken as "published", so the first diff
 *   deletes the VMs that vanished meanwhile and does not resend the others.
 * - A provider whose inventory was never synced (nor restored from disk)
 *   keeps its published records untouched: an empty inventory that was never
 *   read must not delete every VM of that provider.
 * - Ticks never overlap; a failed write leaves its key out of "published",
 *   so the next tick retries it. At most MAX_VM_RECORDS VMs are published.
 */
import type { DwcpConfig } from '../config/schema.ts';
import type { CloudInventory } from '../cloud/inventory.ts';
import { hostCapacity, isOnPrem, type CloudProviderConfig } from '../cloud/config.ts';
import type { Logger } from '../log.ts';
import { entryKey } from '../state/entry.ts';
import type { GeoState } from '../state/geo-state.ts';
import { buildFleetView, type FleetView, type MemberView } from './fleet-view.ts';
import {
  FLEET_PREFIX,
  ObservedRecordError,
  decodeRegionRecord,
  decodeVmRecord,
  diffRecords,
  encodeRegionRecord,
  encodeVmRecord,
  holdsResources,
  onPremPrice,
  parseKey,
  regionKey,
  regionVmPrefix,
  shownUsage,
  vmKey,
  vmRecordOf,
  MAX_FAILED_REPORTS,
  type Capacity,
  type FailedReport,
  type ProviderReport,
  type RegionRecord,
  type VmRecord,
} from './observed.ts';

/** VM records one region publishes at most (and twice that are read per region). */
export const MAX_VM_RECORDS = 100_000;
/** Fleet records a reader takes from the store at most (100 regions × 1 000 VMs, with room). */
export const MAX_FLEET_RECORDS = 1_000_000;
/** Inventory changes reach the geo store within this (or the publish interval, if shorter). */
const CHANGE_POLL_MS = 1_000;
const STORE_TYPE = 'lww-register';
const WRITE_TIMEOUT_MS = 5_000;

/** What a VM used recently (fractions of its vCPUs and memory), as the utilisation collector measured it. */
export type RecentUsage = (provider: string, id: string) => { cpu: number | null; memory: number | null } | undefined;

export interface ObservedPublisherOptions {
  config: DwcpConfig;
  inventory: Pick<CloudInventory, 'list' | 'statuses' | 'catalog'>;
  geo: Pick<GeoState, 'update' | 'list' | 'valueOf'>;
  /** The failure detector's view of every member (for the read side). */
  members(): MemberView[];
  log: Logger;
}

export class ObservedPublisher {
  readonly #opts: ObservedPublisherOptions;
  readonly #self: string;
  readonly #log: Logger;
  /** Key -> value of this region's records as last written. */
  readonly #published = new Map<string, string>();
  /** The region record's content without its report time, as last written. */
  #regionBody = '';
  #regionAt = Number.NEGATIVE_INFINITY;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #stopped = false;
  #warnedCap = false;
  #failures: (() => readonly FailedReport[]) | null = null;
  #usage: RecentUsage | null = null;
  /** Key -> the usage its published VM record holds (only records with some). */
  readonly #usageOf = new Map<string, { cpu: number | null; memory: number | null }>();

  /** Where the region record reads this region's failed desired VMs from (the reconciler, which exists after the publisher). */
  setFailures(source: () => readonly FailedReport[]): void {
    this.#failures = source;
  }

  /** Where VM records read recent utilisation from (the collector, which exists after the publisher). */
  setUsage(source: RecentUsage): void {
    this.#usage = source;
  }

  constructor(opts: ObservedPublisherOptions) {
    this.#opts = opts;
    this.#self = opts.config.node.name;
    this.#log = opts.log;
  }

  start(): void {
    this.#adopt();
    const every = Math.min(CHANGE_POLL_MS, this.#opts.config.fleet.publishIntervalMs);
    this.#timer = setInterval(() => void this.publish(), every);
    this.#timer.unref();
    void this.publish();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  /** One publish pass now (or the one running). */
  publish(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    this.#running ??= this.#publish()
      .catch((err: unknown) => this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'fleet publish failed; retrying on the next tick'))
      .finally(() => {
        this.#running = null;
      });
    return this.#running;
  }

  /** The whole fleet as this node sees it now. */
  view(nowMs = Date.now()): FleetView {
    const { config, geo } = this.#opts;
    const regions: RegionRecord[] = [];
    const vms: VmRecord[] = [];
    for (const [storeKey, entry] of geo.list(entryKey(STORE_TYPE, FLEET_PREFIX), MAX_FLEET_RECORDS)) {
      const value = geo.valueOf(entry);
      if (value === undefined) continue;
      const key = storeKey.slice(STORE_TYPE.length + 1);
      try {
        const at = parseKey(key);
        if (at?.kind === 'region') regions.push(decodeRegionRecord(key, value));
        else if (at?.kind === 'vm') vms.push(decodeVmRecord(key, value));
      } catch (err) {
        if (!(err instanceof ObservedRecordError)) throw err;
        this.#log.debug({ key, err: err.message }, 'malformed fleet record skipped');
      }
    }
    return buildFleetView({
      self: this.#self,
      selfLocation: config.node.region,
      members: this.#opts.members(),
      regions,
      vms,
      nowMs,
      staleAfterMs: config.fleet.staleAfterMs,
    });
  }

  /** Takes the records this region published before a restart as published. */
  #adopt(): void {
    const { geo } = this.#opts;
    for (const prefix of [regionVmPrefix(this.#self), regionKey(this.#self)]) {
      for (const [storeKey, entry] of geo.list(entryKey(STORE_TYPE, prefix), MAX_VM_RECORDS * 2)) {
        const value = geo.valueOf(entry);
        if (typeof value === 'string') this.#remember(storeKey.slice(STORE_TYPE.length + 1), value);
      }
    }
    this.#remember(regionKey(this.#self), undefined);
  }

  async #publish(): Promise<void> {
    const { config, inventory } = this.#opts;
    const statuses = inventory.statuses();
    const known = statuses.filter((s) => s.syncedAt !== null).map((s) => s.name);
    const entries = known.length === 0 ? [] : (await inventory.list({ providers: known })).instances;
    const providers = new Map(config.clouds.providers.map((p) => [p.name, p]));
    const wanted = new Map<string, string>();
    const records: VmRecord[] = [];
    for (const { provider, instance } of entries) {
      if (instance.state === 'terminated') continue;
      if (records.length >= MAX_VM_RECORDS) {
        if (!this.#warnedCap) this.#log.warn({ max: MAX_VM_RECORDS }, 'more VMs than the fleet publishes per region; the rest are left out');
        this.#warnedCap = true;
        break;
      }
      const key = vmKey(this.#self, provider, instance.id);
      const record = vmRecordOf(this.#self, provider, instance, this.#price(providers.get(provider), instance), this.#shownUsage(key, provider, instance));
      records.push(record);
      wanted.set(key, encodeVmRecord(record));
    }
    // Providers not synced yet keep what they had published.
    const unsynced = statuses.filter((s) => s.syncedAt === null).map((s) => `${regionVmPrefix(this.#self)}${s.name}/`);
    for (const [key, value] of this.#published) if (unsynced.some((p) => key.startsWith(p))) wanted.set(key, value);

    const changes = diffRecords(this.#published, wanted);
    for (const [key, value] of changes.put) {
      if (await this.#write(key, { op: 'put', value })) this.#remember(key, value);
    }
    for (const key of changes.remove) {
      if (await this.#write(key, { op: 'delete' })) this.#remember(key, undefined);
    }
    if (changes.put.size > 0 || changes.remove.length > 0) this.#log.debug({ written: changes.put.size, deleted: changes.remove.length }, 'fleet VM records published');

    const now = Date.now();
    const region = this.#regionRecord(records, statuses, now);
    const { reportedAtMs: _at, ...body } = region;
    void _at;
    const bodyText = JSON.stringify(body);
    if (bodyText !== this.#regionBody || now - this.#regionAt >= config.fleet.publishIntervalMs) {
      if (await this.#write(regionKey(this.#self), { op: 'put', value: encodeRegionRecord(region) })) {
        this.#regionBody = bodyText;
        this.#regionAt = now;
      }
    }
  }

  /** Recent usage in published steps, held against what this key last published (shownUsage's hysteresis); none unless running. */
  #shownUsage(key: string, provider: string, instance: { id: string; state: string }): { cpu: number | null; memory: number | null } {
    const measured = instance.state === 'running' ? this.#usage?.(provider, instance.id) : undefined;
    if (measured === undefined) return { cpu: null, memory: null };
    const before = this.#usageOf.get(key) ?? { cpu: null, memory: null };
    return { cpu: shownUsage(before.cpu, measured.cpu), memory: shownUsage(before.memory, measured.memory) };
  }

  /** Notes what `key` now holds: its usage is what the next pass's hysteresis compares with. */
  #remember(key: string, value: string | undefined): void {
    if (value === undefined) {
      this.#published.delete(key);
      this.#usageOf.delete(key);
      return;
    }
    this.#published.set(key, value);
    try {
      const r = decodeVmRecord(key, value);
      if (r.cpu === null && r.memory === null) this.#usageOf.delete(key);
      else this.#usageOf.set(key, { cpu: r.cpu, memory: r.memory });
    } catch {
      this.#usageOf.delete(key);
    }
  }

  async #write(key: string, op: { op: 'put'; value: string } | { op: 'delete' }): Promise<boolean> {
    try {
      await this.#opts.geo.update(key, STORE_TYPE, op, 'eventual', { ttlMs: null, timeoutMs: WRITE_TIMEOUT_MS });
      return true;
    } catch (err) {
      if (this.#stopped) return false;
      this.#log.warn({ key, err: err instanceof Error ? err.message : String(err) }, 'fleet record not written; retrying on the next tick');
      return false;
    }
  }

  /** USD per hour: the catalog for clouds (spot or on-demand), the configured prices on-premises; null when unknown. */
  #price(entry: CloudProviderConfig | undefined, instance: { vcpus: number | null; memoryMiB: number | null; type: string; spot: boolean; region: string }): number | null {
    if (entry === undefined) return null;
    if (isOnPrem(entry)) return onPremPrice(instance.vcpus, instance.memoryMiB, entry);
    try {
      return this.#opts.inventory.catalog.quote({ provider: entry.kind, region: instance.region, type: instance.type, model: instance.spot ? 'spot' : 'on-demand' }).hourly;
    } catch {
      return null;
    }
  }

  #regionRecord(records: readonly VmRecord[], statuses: ReturnType<CloudInventory['statuses']>, nowMs: number): RegionRecord {
    const { config } = this.#opts;
    const providers = config.clouds.providers.map((entry): ProviderReport => {
      const status = statuses.find((s) => s.name === entry.name);
      const mine = records.filter((r) => r.provider === entry.name);
      const holding = mine.filter((r) => holdsResources(r.state));
      return {
        name: entry.name,
        kind: entry.kind,
        location: status?.region ?? entry.region,
        capacity: isOnPrem(entry) ? declaredCapacity(entry.capacity) : null,
        quota: isOnPrem(entry) || entry.quota === undefined ? null : { vcpus: entry.quota.vcpus ?? null, instances: entry.quota.instances ?? null },
        usedVcpus: holding.reduce((n, r) => n + (r.vcpus ?? 0), 0),
        usedMemoryMiB: holding.reduce((n, r) => n + (r.memoryMiB ?? 0), 0),
        vms: mine.length,
        lastError: status?.lastError === null || status === undefined ? null : status.lastError.slice(0, 256),
      };
    });
    return {
      region: this.#self,
      location: config.node.region,
      reportedAtMs: nowMs,
      publishIntervalMs: config.fleet.publishIntervalMs,
      providers,
      labels: config.node.labels ?? {},
      jurisdiction: config.node.jurisdiction ?? null,
      compliance: config.node.compliance ?? [],
      health: providers.some((p) => p.lastError !== null) ? 'degraded' : 'ok',
      failed: (this.#failures?.() ?? [])
        .slice(0, MAX_FAILED_REPORTS)
        .map((f) => ({ vm: f.vm, generation: f.generation, reason: f.reason.slice(0, 512) })),
    };
  }
}

function declaredCapacity(c: { vcpus: number; memoryGiB: number; diskGiB: number } | undefined): Capacity {
  return c === undefined ? hostCapacity() : { vcpus: c.vcpus, memoryGiB: c.memoryGiB, diskGiB: c.diskGiB };
}
