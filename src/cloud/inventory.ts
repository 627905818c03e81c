/**
 * CloudInventory: the daemon's cloud component. It builds the configured
 * providers, keeps the latest inventory of each in memory (and on disk, see
 * inventory-snapshot.ts), syncs it periodically, runs the operator's VM
 * operations (create/start/stop/terminate, instance types, cost estimates)
 * and finishes creates that stopped half way.
 *
 * Half-finished creates, the mechanism:
 * 1. A create first writes a journal entry (create-journal.ts) with a fresh
 *    token, durably, before anything is sent.
 * 2. The launch carries the token twice: as the idempotency token (EC2
 *    ClientToken, GCE requestId; the SDKs' own retries cannot launch twice)
 *    and as the tag `dwcp-create-token`, with the caller's tags.
 * 3. Once the provider returned the VM, the provider's default tags
 *    (`managed-by: dwcp` and the configured ones) are applied with a separate
 *    tagging call (CreateTags, setLabels), and only then is the entry removed.
 *    `managed-by` thus means "recorded by its daemon": a VM with the token
 *    but without `managed-by` is a create that did not finish.
 * 4. Every sync looks at the entries no create in this process is still
 *    working on: a VM carrying the entry's token gets the missing tags and
 *    the entry is removed (reported in the log and
 *    dwcp_cloud_reconciled_creates_total); if tagging fails again, the entry
 *    stays for the next sync. An entry whose VM is terminated is dropped; one
 *    whose VM never appears is dropped after PENDING_CREATE_GRACE_MS, with a
 *    warning. A VM with a token but no entry here (the journal was lost, or
 *    another daemon's) is never touched, only reported
 *    (dwcp_cloud_unreconciled_instances and a warning, once per VM) when it
 *    lacks `managed-by`.
 * So a create that crashed, timed out, was cancelled or could not tag never
 * leaves a VM nobody accounts for.
 *
 * Invariants:
 * - API errors during a sync are logged and counted, never fatal; the
 *   previous inventory is kept and its status carries the error.
 * - Syncs of one provider never overlap (a second request joins the running
 *   one); each provider's next sync is scheduled after the previous one
 *   ends, jittered ±20 %, so providers and daemons do not poll in lockstep.
 * - An operation's result is in the inventory as soon as it returns, and a
 *   sync whose listing was taken before that does not undo it.
 * - stop() aborts running syncs and operations (their AbortSignals fire) and
 *   resolves once they have ended; nothing is scheduled after it.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from '../log.ts';
import { CREATE_TOKEN_TAG, MANAGED_BY_TAG, type CloudProviderConfig, type CloudsConfig } from './config.ts';
import { CreateJournal, type PendingCreate } from './create-journal.ts';
import { instancesKey, readSnapshot, writeSnapshot } from './inventory-snapshot.ts';
import { apiCallObserver, initProviderMetrics, recordInstances, type CloudMetrics } from './metrics.ts';
import { PricingCatalog, PRICED_PROVIDERS, type LiveSpotPrice } from './pricing/catalog.ts';
import { buildProvider, providerDir, type ProviderBuilder } from './providers.ts';
import type { ImageSource } from './qemu/image-source.ts';
import type { QemuMigrationGuests } from './qemu/qemu-provider.ts';
import { hasUtilisation, type UtilisationSource } from './utilisation.ts';

import {
  BACKUP_KINDS,
  CapacityError,
  CredentialsError,
  DEFAULT_PROVIDER_CONCURRENCY,
  hasSerialConsole,
  InvalidRequestError,
  NotFound,
  ProviderError,
  type CloudProvider,
  type CreateInstanceRequest,
  type Instance,
  type InstanceState,
  type InstanceTypeInfo,
  type ProviderKind,
  type Tags,
} from './provider.ts';
import { DwcpError } from '../errors.ts';

/** How long a journal entry may wait for its VM to appear before it is dropped as "never launched". */
export const PENDING_CREATE_GRACE_MS = 15 * 60_000;
/** The first syncs of all providers spread over this much time after start. */
const FIRST_SYNC_SPREAD_MS = 1_000;
const JITTER = 0.2;

/** Providers whose instances DR backs up (local, qemu). */
interface BackupDisks {
  backupDisk(id: string, target: string): Promise<void>;
}
/** A request the inventory cannot route: an unknown or ambiguous provider, an id it cannot place. */
export class InventoryError extends DwcpError<'not_found' | 'invalid'> {
  /** The code under the name callers of the inventory have always read. */
  get reason(): 'not_found' | 'invalid' {
    return this.code;
  }
}

export interface ProviderStatus {
  name: string;
  kind: ProviderKind;
  region: string;
  description: string;
  /** Last successful sync (or, when `restored`, the time of the snapshot read from disk). */
  syncedAt: Date | null;
  /** The inventory is the one saved before the last restart; no sync has succeeded since. */
  restored: boolean;
  /** Why the last sync failed; null after a successful one. */
  lastError: string | null;
  instances: number;
  pendingCreates: number;
}

export interface InventoryEntry {
  /** The configured provider name. */
  provider: string;
  instance: Instance;
}

/**
 * A provider's create request, as the inventory takes it. The idempotency
 * token is a fresh UUID when absent; a caller that derives it from what the
 * VM is (the fleet: VM name and generation) makes a create retried after a
 * crash find the first launch instead of making a second VM. GCE wants a
 * UUID here.
 */
export type VmCreateRequest = CreateInstanceRequest;

export interface VmCreateResult {
  provider: string;
  instance: Instance;
  /** Set when the VM runs but its default tags are not on it yet (the next sync retries). */
  warning: string | null;
}

export interface InstanceTypeRow {
  provider: string;
  kind: ProviderKind;
  region: string;
  type: InstanceTypeInfo;
  /** From the pricing catalog; null when it has no price for the type there. */
  onDemandHourly: number | null;
}

export interface ProviderFailure {
  provider: string;
  message: string;
}

export interface CloudInventoryOptions {
  clouds: CloudsConfig;
  dataDir: string;
  metrics: CloudMetrics;
  log: Logger;
  /** Default: the real providers (providers.ts). Tests substitute wrapped ones. */
  buildProvider?: ProviderBuilder;
  /** Default: loaded from clouds.pricingDir or the shipped catalog. */
  catalog?: PricingCatalog;
  /** Where a qemu provider's guest images come from (the image catalog), unless its config names an imageDir. */
  images?: ImageSource;
  /** [0, 1); default Math.random. Only jitters sync times. */
  random?: () => number;
  /** How often a qemu guest's lease watchdog reads its lease (the DR lease, src/cloud/qemu/guest-lease.ts). */
  leasePollMs?: number;
}

interface Slot {
  readonly name: string;
  readonly entry: CloudProviderConfig;
  readonly provider: CloudProvider;
  readonly snapshotPath: string;
  /** By id: an operation's result replaces one entry, not the list (O(1) per operation at thousands of VMs). */
  instances: Map<string, Instance> | null;
  syncedAt: Date | null;
  restored: boolean;
  lastError: string | null;
  syncing: Promise<void> | null;
  timer: NodeJS.Timeout | undefined;
  spotRefreshedAt: number | null;
  storedKey: string | null;
  readonly warnedOrphans: Set<string>;
  /** A sync is listing: operation results arriving now are newer than its listing. */
  listing: boolean;
  /** Those results, laid over the listing when it ends. */
  readonly changedDuringSync: Map<string, Instance>;
}

export class CloudInventory {
  readonly catalog: PricingCatalog;
  readonly #clouds: CloudsConfig;
  readonly #slots: Slot[];
  readonly #journal: CreateJournal;
  readonly #metrics: CloudMetrics;
  readonly #log: Logger;
  readonly #random: () => number;
  readonly #lifetime = new AbortController();
  /** Tokens of creates running in this process: syncs leave their entries alone. */
  readonly #inFlight = new Set<string>();
  readonly #operations = new Set<Promise<unknown>>();
  #started = false;

  private constructor(parts: { clouds: CloudsConfig; slots: Slot[]; journal: CreateJournal; catalog: PricingCatalog; metrics: CloudMetrics; log: Logger; random: () => number }) {
    this.#clouds = parts.clouds;
    this.#slots = parts.slots;
    this.#journal = parts.journal;
    this.catalog = parts.catalog;
    this.#metrics = parts.metrics;
    this.#log = parts.log;
    this.#random = parts.random;
  }

  /**
   * Loads the pricing catalog (a bad file fails here, naming file and field),
   * the journal and the saved inventories, and builds the providers. Nothing
   * talks to a cloud until start().
   */
  static async open(options: CloudInventoryOptions): Promise<CloudInventory> {
    const { clouds, dataDir, metrics, log } = options;
    const catalog = options.catalog ?? PricingCatalog.load(clouds.pricingDir);
    const journalPath = join(dataDir, 'cloud', 'pending-creates.json');
    const { journal, corrupt } = await CreateJournal.open(journalPath);
    if (corrupt) {
      log.error({ file: journalPath, movedTo: corrupt.movedTo, reason: corrupt.reason }, 'pending-create journal unreadable; moved aside: half-finished creates in it will show as unreconciled VMs');
    }
    const build = options.buildProvider ?? buildProvider;
    const slots: Slot[] = [];
    try {
      for (const entry of clouds.providers) {
        const provider = await build(entry, { dataDir, observer: apiCallObserver(metrics, entry.name), log, qemuMetrics: metrics.qemu, ...(options.images === undefined ? {} : { images: options.images }), ...(options.leasePollMs === undefined ? {} : { leasePollMs: options.leasePollMs }) });
        slots.push(await CloudInventory.#slot(entry, provider, dataDir, log));
        initProviderMetrics(metrics, entry.name);
        metrics.pendingCreates.set({ provider: entry.name }, journal.count(entry.name));
      }
    } catch (err) {
      await Promise.allSettled(slots.map((s) => s.provider.close()));
      throw err;
    }
    const unknown = journal.list().filter((e) => !slots.some((s) => s.name === e.provider));
    for (const e of unknown) {
      log.warn({ provider: e.provider, token: e.token, name: e.name, instanceId: e.instanceId }, 'a pending create names a provider no longer configured; it stays in the journal');
    }
    return new CloudInventory({ clouds, slots, journal, catalog, metrics, log, random: options.random ?? Math.random });
  }

  static async #slot(entry: CloudProviderConfig, provider: CloudProvider, dataDir: string, log: Logger): Promise<Slot> {
    const snapshotPath = join(providerDir(dataDir, entry.name), 'inventory.json');
    const slot: Slot = {
      name: entry.name,
      entry,
      provider,
      snapshotPath,
      instances: null,
      syncedAt: null,
      restored: false,
      lastError: null,
      syncing: null,
      timer: undefined,
      spotRefreshedAt: null,
      storedKey: null,
      warnedOrphans: new Set(),
      listing: false,
      changedDuringSync: new Map(),
    };
    const read = await readSnapshot(snapshotPath);
    if (read.state === 'ok') {
      slot.instances = new Map(read.value.instances.map((i) => [i.id, i]));
      slot.syncedAt = read.value.syncedAt;
      slot.restored = true;
      slot.storedKey = instancesKey(read.value.instances);
    } else if (read.state === 'corrupt') {
      log.warn({ provider: entry.name, file: snapshotPath, movedTo: read.movedTo, reason: read.reason }, 'saved inventory unreadable; moved aside');
    }
    return slot;
  }

  /** Schedules each provider's periodic sync; the first ones run within a second. */
  start(): void {
    if (this.#started || this.#lifetime.signal.aborted) return;
    this.#started = true;
    for (const slot of this.#slots) {
      this.#log.info({ provider: slot.name, kind: slot.entry.kind, description: slot.provider.description, intervalMs: slot.entry.inventoryIntervalMs }, 'cloud provider configured');
      this.#schedule(slot, this.#random() * Math.min(FIRST_SYNC_SPREAD_MS, slot.entry.inventoryIntervalMs));
    }
  }

  /** Aborts syncs and operations, waits for them to end, closes the providers. */
  async stop(): Promise<void> {
    this.#lifetime.abort(new Error('dwcpd is stopping'));
    for (const slot of this.#slots) clearTimeout(slot.timer);
    await Promise.allSettled([...this.#slots.map((s) => s.syncing), ...this.#operations]);
    await Promise.allSettled(this.#slots.map((s) => s.provider.close()));
    await this.#journal.flush();
  }

  #schedule(slot: Slot, delayMs: number): void {
    if (this.#lifetime.signal.aborted) return;
    slot.timer = setTimeout(() => {
      void this.sync(slot.name).finally(() => {
        const interval = slot.entry.inventoryIntervalMs;
        this.#schedule(slot, interval * (1 - JITTER + 2 * JITTER * this.#random()));
      });
    }, delayMs);
    slot.timer.unref();
  }

  // --- reads --------------------------------------------------------------------

  /** The configured providers that report utilisation (src/cloud/utilisation.ts), by configured name. */
  usageSources(): { provider: string; kind: ProviderKind; source: UtilisationSource }[] {
    return this.#slots.flatMap((s) => (hasUtilisation(s.provider) ? [{ provider: s.name, kind: s.entry.kind, source: s.provider }] : []));
  }

  /** How many operations to run on the named provider at once (CloudProvider.concurrency). */
  concurrency(name: string): number {
    return this.#one(name).provider.concurrency ?? DEFAULT_PROVIDER_CONCURRENCY;
  }

  statuses(): ProviderStatus[] {
    return this.#slots.map((s) => this.#status(s));
  }

  #status(slot: Slot): ProviderStatus {
    return {
      name: slot.name,
      kind: slot.entry.kind,
      region: slot.provider.region,
      description: slot.provider.description,
      syncedAt: slot.syncedAt,
      restored: slot.restored,
      lastError: slot.lastError,
      instances: slot.instances?.size ?? 0,
      pendingCreates: this.#journal.count(slot.name),
    };
  }

  /**
   * The inventory of the selected providers (all when none named), filtered
   * by state. A provider is synced first when `refresh` asks for it or it has
   * no inventory yet; a sync that outlasts the caller's signal goes on in the
   * background and the answer carries what is known.
   */
  async list(query: { providers?: readonly string[]; states?: readonly InstanceState[]; refresh?: boolean; signal?: AbortSignal } = {}): Promise<{ instances: InventoryEntry[]; statuses: ProviderStatus[] }> {
    const slots = this.#select(query.providers);
    await untilAborted(
      Promise.all(slots.filter((s) => query.refresh === true || s.instances === null).map((s) => this.sync(s.name))),
      query.signal,
    );
    const states = query.states && query.states.length > 0 ? new Set(query.states) : null;
    const instances = slots.flatMap((s) =>
      [...(s.instances?.values() ?? [])]
        .filter((i) => states === null || states.has(i.state))
        .sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id))
        .map((instance) => ({ provider: s.name, instance })),
    );
    return { instances, statuses: slots.map((s) => this.#status(s)) };
  }

  /** Runs one sync of the named provider now, or joins the one running. Never rejects: failures land in its status. */
  sync(name: string): Promise<void> {
    const slot = this.#one(name);
    if (this.#lifetime.signal.aborted) return Promise.resolve();
    slot.syncing ??= this.#sync(slot).finally(() => {
      slot.syncing = null;
    });
    return slot.syncing;
  }

  async #sync(slot: Slot): Promise<void> {
    const signal = this.#lifetime.signal;
    const started = performance.now();
    slot.listing = true;
    try {
      const listed = await slot.provider.list(undefined, { signal });
      const reconciled = await this.#reconcile(slot, listed, signal);
      const instances = new Map([...reconciled, ...slot.changedDuringSync.values()].map((i) => [i.id, i]));
      slot.instances = instances;
      slot.syncedAt = new Date();
      slot.restored = false;
      slot.lastError = null;
      this.#metrics.lastSync.set({ provider: slot.name }, slot.syncedAt.getTime() / 1000);
      recordInstances(this.#metrics, slot.name, instances.values());
      this.#log.debug({ provider: slot.name, instances: instances.size, ms: Math.round(performance.now() - started) }, 'inventory synced');
      await this.#persist(slot);
    } catch (err) {
      if (signal.aborted) return;
      slot.lastError = errorMessage(err);
      this.#metrics.syncErrors.inc({ provider: slot.name });
      this.#log.warn({ provider: slot.name, err: slot.lastError, code: err instanceof ProviderError ? err.providerCode : undefined }, 'inventory sync failed; keeping the previous inventory');
      return;
    } finally {
      slot.listing = false;
      slot.changedDuringSync.clear();
    }
    await this.#refreshSpotPrices(slot, signal);
  }

  async #persist(slot: Slot): Promise<void> {
    const instances = [...(slot.instances?.values() ?? [])];
    const key = instancesKey(instances);
    if (key === slot.storedKey || (slot.storedKey === null && instances.length === 0)) return;
    try {
      await writeSnapshot(slot.snapshotPath, { syncedAt: slot.syncedAt ?? new Date(), instances });
      slot.storedKey = key;
    } catch (err) {
      this.#log.warn({ provider: slot.name, file: slot.snapshotPath, err: errorMessage(err) }, 'could not save the inventory; it stays in memory');
    }
  }

  /** Step 4 of the mechanism in the header; returns the listing with the tags it applied. */
  async #reconcile(slot: Slot, listed: Instance[], signal: AbortSignal): Promise<Instance[]> {
    const byId = new Map(listed.map((i) => [i.id, i]));
    const byToken = new Map<string, Instance>();
    for (const i of listed) {
      const token = i.tags[CREATE_TOKEN_TAG];
      // Idempotent launches give one VM per token; a terminated one never hides a live one.
      if (token !== undefined && (!byToken.has(token) || i.state !== 'terminated')) byToken.set(token, i);
    }
    for (const entry of this.#journal.list(slot.name)) {
      if (this.#inFlight.has(entry.token)) continue;
      const found = byToken.get(entry.token);
      if (found === undefined) {
        if (Date.now() - Date.parse(entry.requestedAt) > PENDING_CREATE_GRACE_MS) {
          await this.#journal.remove(entry.token);
          this.#log.warn(pendingFields(slot, entry), 'a create never produced a VM within the grace period; dropping its journal entry');
        }
        continue;
      }
      if (found.state === 'terminated') {
        await this.#journal.remove(entry.token);
        this.#log.info({ ...pendingFields(slot, entry), instanceId: found.id }, 'a half-finished create ended terminated; dropping its journal entry');
        continue;
      }
      const missing = missingTags(found.tags, entry.tags);
      if (Object.keys(missing).length > 0) {
        try {
          await slot.provider.setTags(found.id, missing, { signal });
        } catch (err) {
          if (signal.aborted) throw err;
          this.#log.warn({ ...pendingFields(slot, entry), instanceId: found.id, err: errorMessage(err) }, 'could not tag a half-finished create; the next sync retries');
          continue;
        }
        byId.set(found.id, { ...found, tags: { ...found.tags, ...missing } });
      }
      await this.#journal.remove(entry.token);
      this.#metrics.reconciledCreates.inc({ provider: slot.name });
      this.#log.warn({ ...pendingFields(slot, entry), instanceId: found.id, tagsApplied: Object.keys(missing) }, 'completed a half-finished create: found its VM by the create token and tagged it');
    }
    this.#reportUnreconciled(slot, [...byId.values()]);
    this.#metrics.pendingCreates.set({ provider: slot.name }, this.#journal.count(slot.name));
    return [...byId.values()];
  }

  #reportUnreconciled(slot: Slot, instances: Instance[]): void {
    const orphans = instances.filter((i) => {
      const token = i.tags[CREATE_TOKEN_TAG];
      if (token === undefined || i.state === 'terminated' || this.#journal.has(token) || this.#inFlight.has(token)) return false;
      // Only the commit marker counts: default tags added to the config later must not turn old VMs into alarms.
      return !(MANAGED_BY_TAG in i.tags);
    });
    this.#metrics.unreconciledInstances.set({ provider: slot.name }, orphans.length);
    for (const i of orphans) {
      if (slot.warnedOrphans.has(i.id)) continue;
      slot.warnedOrphans.add(i.id);
      this.#log.warn(
        { provider: slot.name, instanceId: i.id, name: i.name, token: i.tags[CREATE_TOKEN_TAG] },
        `a VM carries a dwcp create token but no ${MANAGED_BY_TAG} tag, and no pending create here claims it (journal lost, or another daemon's): left alone, check it`,
      );
    }
  }

  /** Live spot prices into the catalog, for the types it prices in this provider's region. Failures only log. */
  async #refreshSpotPrices(slot: Slot, signal: AbortSignal): Promise<void> {
    const every = this.#clouds.spotRefreshMs;
    if (every === 0 || !slot.provider.spotPrices || (slot.spotRefreshedAt !== null && Date.now() - slot.spotRefreshedAt < every)) return;
    if (!(PRICED_PROVIDERS as readonly string[]).includes(slot.entry.kind)) return;
    const types = this.catalog.types(slot.entry.kind, slot.provider.region);
    if (types.length === 0) {
      slot.spotRefreshedAt = Date.now();
      return;
    }
    try {
      const zones = slot.entry.zones.length > 0 ? slot.entry.zones : undefined;
      const prices = await slot.provider.spotPrices({ types, zones }, { signal });
      const lowest = new Map<string, LiveSpotPrice & { zones: number }>();
      for (const p of prices) {
        const seen = lowest.get(p.type);
        const zonesSeen = (seen?.zones ?? 0) + 1;
        if (!seen || p.pricePerHour < seen.pricePerHour) lowest.set(p.type, { type: p.type, pricePerHour: p.pricePerHour, observedAt: p.timestamp, zones: zonesSeen });
        else seen.zones = zonesSeen;
      }
      const source = `live: ${slot.entry.kind === 'aws' ? 'DescribeSpotPriceHistory' : 'spot price API'} via provider ${slot.name} (lowest zone)`;
      const { recorded } = this.catalog.recordSpotPrices(slot.entry.kind, slot.provider.region, [...lowest.values()], source);
      slot.spotRefreshedAt = Date.now();
      this.#log.debug({ provider: slot.name, types: types.length, recorded }, 'spot prices refreshed');
    } catch (err) {
      if (!signal.aborted) this.#log.warn({ provider: slot.name, err: errorMessage(err) }, 'spot price refresh failed; estimates keep the previous prices');
    }
  }

  // --- operations ---------------------------------------------------------------

  /** Steps 1-3 of the mechanism in the header. */
  create(providerName: string, request: VmCreateRequest, options: { signal?: AbortSignal } = {}): Promise<VmCreateResult> {
    return this.#operation(async (signal) => {
      const slot = this.#one(providerName);
      const provider = slot.provider;
      if (request.tags && CREATE_TOKEN_TAG in request.tags) {
        throw new InvalidRequestError(slot.entry.kind, 'create', 'InvalidParameterValue', `tags.${CREATE_TOKEN_TAG}: reserved for the create token dwcp sets itself`);
      }
      const wanted: Record<string, string> = { ...slot.entry.tags, ...request.tags };
      const commit = Object.fromEntries(Object.keys(slot.entry.tags).map((k) => [k, wanted[k] ?? '']));
      const token = request.idempotencyToken ?? randomUUID();
      const launchTags: Record<string, string> = { [CREATE_TOKEN_TAG]: token };
      for (const [k, v] of Object.entries(wanted)) if (!(k in commit)) launchTags[k] = v;
      this.#inFlight.add(token);
      try {
        await this.#journal.add({ token, provider: slot.name, name: request.name, type: request.type, tags: commit, requestedAt: new Date().toISOString(), instanceId: null });
        this.#metrics.pendingCreates.set({ provider: slot.name }, this.#journal.count(slot.name));
        let instance: Instance;
        try {
          instance = await provider.create(
            { ...request, tags: launchTags, idempotencyToken: token },
            {
              signal,
              onProgress: (e) => {
                // Best effort: the token finds the VM anyway; the id only spares a crashed create's sync a search.
                if (e.phase === 'accepted') this.#journal.setInstanceId(token, e.instanceId).catch(() => undefined);
              },
            },
          );
        } catch (err) {
          if (launchRefused(err)) await this.#journal.remove(token);
          else this.#log.warn({ provider: slot.name, token, instanceId: err instanceof ProviderError ? err.instanceId : undefined, err: errorMessage(err) }, 'create did not finish; a sync will complete or drop it');
          throw err;
        }
        await this.#journal.setInstanceId(token, instance.id);
        let warning: string | null = null;
        try {
          await provider.setTags(instance.id, commit, { signal });
          instance = { ...instance, tags: { ...instance.tags, ...commit } };
          await this.#journal.remove(token);
        } catch (err) {
          warning = `VM ${instance.id} runs, but its tags ${Object.keys(commit).join(', ')} could not be applied (${errorMessage(err)}); the next inventory sync retries`;
          this.#log.warn({ provider: slot.name, instanceId: instance.id, token, err: errorMessage(err) }, 'created a VM but could not tag it; the next sync retries');
        }
        this.#remember(slot, instance);
        return { provider: slot.name, instance, warning };
      } finally {
        this.#inFlight.delete(token);
        this.#metrics.pendingCreates.set({ provider: slot.name }, this.#journal.count(slot.name));
      }
    }, options.signal);
  }

  /** Start, stop or terminate; the provider is found from the inventory or the id's shape when not named. */
  change(operation: 'start' | 'stop' | 'terminate', id: string, options: { provider?: string; signal?: AbortSignal; keepDisk?: boolean } = {}): Promise<InventoryEntry> {
    return this.#operation(async (signal) => {
      const slot = this.#slotFor(options.provider, id);
      if (options.keepDisk === true) {
        // Only a qemu guest's disk is a file of ours to keep; a cloud deletes or keeps its volumes by its own settings.
        if (operation !== 'terminate') throw new InventoryError('invalid', `keep disk: only with terminate, not ${operation}`);
        if (slot.entry.kind !== 'qemu') throw new InventoryError('invalid', `keep disk: provider ${slot.name} (${slot.entry.kind}) cannot keep a terminated VM's disk; only qemu can`);
      }
      const instance = await slot.provider[operation](id, { signal, ...(options.keepDisk === true ? { keepDisk: true } : {}) });
      this.#remember(slot, instance);
      return { provider: slot.name, instance };
    }, options.signal);
  }

  /** Changes a stopped VM's instance type (the provider refuses a running one); InventoryError `invalid` for a provider that cannot. */
  setType(id: string, type: string, options: { provider?: string; signal?: AbortSignal } = {}): Promise<InventoryEntry> {
    return this.#operation(async (signal) => {
      const slot = this.#slotFor(options.provider, id);
      if (slot.provider.setType === undefined) throw new InventoryError('invalid', `provider ${slot.name} (${slot.entry.kind}) cannot change a VM's type`);
      const instance = await slot.provider.setType(id, type, { signal });
      this.#remember(slot, instance);
      return { provider: slot.name, instance };
    }, options.signal);
  }

  /** Instance types of the selected providers with their catalog on-demand price; a failing provider is reported, not fatal to the others. */
  async types(query: { providers?: readonly string[]; signal?: AbortSignal } = {}): Promise<{ types: InstanceTypeRow[]; failures: ProviderFailure[] }> {
    const slots = this.#select(query.providers);
    const failures: ProviderFailure[] = [];
    const results = await Promise.all(
      slots.map((slot) =>
        this.#operation((signal) => slot.provider.listInstanceTypes({}, { signal }), query.signal).then(
          (types) => types.map((type) => ({ provider: slot.name, kind: slot.entry.kind, region: slot.provider.region, type, onDemandHourly: this.#onDemand(slot, type.name) })),
          (err: unknown) => {
            failures.push({ provider: slot.name, message: errorMessage(err) });
            return [];
          },
        ),
      ),
    );
    return { types: results.flat(), failures };
  }

  #onDemand(slot: Slot, type: string): number | null {
    try {
      return this.catalog.quote({ provider: slot.entry.kind, region: slot.provider.region, type, model: 'on-demand' }).hourly;
    } catch {
      return null;
    }
  }

  /**
   * Where a VM's serial console is logged: the named provider (which must
   * keep consoles), or the first provider that keeps consoles and knows the
   * VM by id or name.
   */
  console(vm: string, options: { provider?: string } = {}): { provider: string; id: string; name: string; path: string } {
    const named = options.provider !== undefined && options.provider !== '';
    const slots = named ? [this.#one(options.provider ?? '')] : this.#slots;
    const keeping = slots.filter((s) => hasSerialConsole(s.provider));
    if (keeping.length === 0) {
      throw new InventoryError('not_found', named ? `provider ${options.provider} keeps no serial consoles (qemu guests have them)` : 'no configured provider keeps serial consoles (qemu guests have them)');
    }
    let missing: unknown = null;
    for (const slot of keeping) {
      if (!hasSerialConsole(slot.provider)) continue;
      try {
        return { provider: slot.name, ...slot.provider.serialLog(vm) };
      } catch (err) {
        if (!(err instanceof NotFound)) throw err;
        missing = err;
      }
    }
    throw missing instanceof Error ? missing : new InventoryError('not_found', `no VM ${vm}`);
  }

  /** Runs `work` with a signal that fires on the caller's signal or on stop(); stop() waits for it. */
  #operation<T>(work: (signal: AbortSignal) => Promise<T>, callerSignal: AbortSignal | undefined): Promise<T> {
    const signal = callerSignal ? AbortSignal.any([callerSignal, this.#lifetime.signal]) : this.#lifetime.signal;
    const running = work(signal);
    const tracked = running.catch(() => undefined);
    this.#operations.add(tracked);
    void tracked.finally(() => this.#operations.delete(tracked));
    return running;
  }

  /** Puts an operation's result into the inventory at once, so a list right after it shows it. */
  #remember(slot: Slot, instance: Instance): void {
    if (slot.listing) slot.changedDuringSync.set(instance.id, instance);
    slot.instances ??= new Map();
    slot.instances.set(instance.id, instance);
    recordInstances(this.#metrics, slot.name, slot.instances.values());
  }

  /**
   * A DR backup of instance `id` of provider `name` at `target` (a file this
   * call creates): qemu a crash-consistent copy of the running guest's disk,
   * local a small stand-in; the other providers cannot yet (an `unsupported`
   * DwcpError saying so).
   */
  async backupDisk(name: string, id: string, target: string): Promise<void> {
    const slot = this.#one(name);
    const provider = slot.provider as Partial<BackupDisks>;
    if (!BACKUP_KINDS.includes(slot.entry.kind) || typeof provider.backupDisk !== 'function') {
      throw new DwcpError('unsupported', `provider ${slot.name} (${slot.entry.kind}) cannot take DR backups yet (${BACKUP_KINDS.join(', ')} can)`);
    }
    await provider.backupDisk(id, target);
  }

  /** The migration handles of the qemu provider configured as `name` (undefined for any other provider). */
  migrationGuests(name: string): QemuMigrationGuests | undefined {
    const provider = this.#slots.find((s) => s.name === name)?.provider;
    return provider !== undefined && provider.kind === 'qemu' && isMigrationGuests(provider) ? provider : undefined;
  }

  /** The providers whose guests hold leases (qemu), by configured name. */
  guestLeases(): ReadonlyMap<string, GuestLeases> {
    const out = new Map<string, GuestLeases>();
    for (const slot of this.#slots) if (isGuestLeases(slot.provider)) out.set(slot.name, slot.provider);
    return out;
  }

  // --- routing -------------------------------------------------------------------

  #select(names: readonly string[] | undefined): Slot[] {
    if (!names || names.length === 0) return [...this.#slots];
    const chosen = new Set<Slot>();
    for (const name of names) for (const slot of this.#matching(name)) chosen.add(slot);
    return this.#slots.filter((s) => chosen.has(s));
  }

  /** A provider by its configured name, or by kind when only one provider has that kind; "" when only one is configured. */
  #one(name: string): Slot {
    if (name === '' && this.#slots.length === 1) return this.#slots[0] as Slot;
    if (name === '' && this.#slots.length > 1) {
      throw new InventoryError('invalid', `provider: required, as several are configured (${this.#slots.map((s) => s.name).join(', ')})`);
    }
    const matches = this.#matching(name);
    if (matches.length > 1) {
      throw new InventoryError('invalid', `provider ${JSON.stringify(name)} is ambiguous: ${matches.map((s) => s.name).join(', ')} are all ${name}; name one`);
    }
    return matches[0] as Slot;
  }

  #matching(name: string): Slot[] {
    const byName = this.#slots.filter((s) => s.name === name);
    if (byName.length > 0) return byName;
    const byKind = this.#slots.filter((s) => s.entry.kind === name);
    if (byKind.length > 0) return byKind;
    if (this.#slots.length === 0) throw new InventoryError('not_found', 'no cloud providers are configured (clouds.providers in the dwcpd config)');
    throw new InventoryError('not_found', `no provider ${JSON.stringify(name)} is configured; configured: ${this.#slots.map((s) => `${s.name} (${s.entry.kind})`).join(', ')}`);
  }

  #slotFor(name: string | undefined, id: string): Slot {
    if (name !== undefined && name !== '') return this.#one(name);
    const holding = this.#slots.filter((s) => s.instances?.has(id) === true);
    if (holding.length === 1) return holding[0] as Slot;
    const byShape = this.#slots.filter((s) => ID_SHAPES[s.entry.kind].test(id));
    if (byShape.length === 1) return byShape[0] as Slot;
    if (this.#slots.length === 0) throw new InventoryError('not_found', 'no cloud providers are configured (clouds.providers in the dwcpd config)');
    throw new InventoryError('invalid', `cannot tell which provider holds ${JSON.stringify(id)}; name one with --provider (configured: ${this.#slots.map((s) => s.name).join(', ')})`);
  }
}

/** What instance ids look like per provider, to route an operation on an id not in the inventory yet. */
const ID_SHAPES: Readonly<Record<ProviderKind, RegExp>> = {
  aws: /^i-[0-9a-f]{8,17}$/,
  gcp: /^[a-z0-9-]+\/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/,
  local: /^local-[0-9a-f]{12}$/,
  qemu: /^qemu-[0-9a-f]{12}$/,
};

/**
 * The provider refused the launch, so no VM exists to reconcile: a bad
 * request, credentials that failed before anything was accepted, or no
 * capacity (EC2 launches nothing; GCE removes the instance it could not place).
 */
function launchRefused(err: unknown): boolean {
  if (err instanceof CapacityError) return true;
  return (err instanceof InvalidRequestError || err instanceof CredentialsError) && err.instanceId === undefined;
}

function missingTags(have: Tags, want: Tags): Record<string, string> {
  return Object.fromEntries(Object.entries(want).filter(([k, v]) => have[k] !== v));
}

function pendingFields(slot: Slot, entry: PendingCreate): Record<string, unknown> {
  return { provider: slot.name, token: entry.token, name: entry.name, requestedAt: entry.requestedAt };
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Waits for `work`, or until the signal fires (then resolves without it; `work` goes on). */
function untilAborted(work: Promise<unknown>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return work.then(() => undefined);
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = (): void => {
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done, { once: true });
    work.then(done, done);
  });
}

/** A provider whose guests carry a lease their daemon renews and a watchdog that kills them when it lapses (qemu). */
export interface GuestLeases {
  renewLeases(renew: ReadonlyMap<string, { readonly untilMs: number; readonly vm: string }>, release: readonly string[]): Promise<void>;
}

function isGuestLeases(provider: CloudProvider): provider is CloudProvider & GuestLeases {
  return 'renewLeases' in provider && typeof provider.renewLeases === 'function';
}

function isMigrationGuests(provider: CloudProvider): provider is CloudProvider & QemuMigrationGuests {
  return 'incomingEndpoint' in provider && 'migrationSource' in provider;
}
