/**
 * CostTracker: the driver of the cost core for this node's region. Every
 * `cost.intervalMs` it reads the region's inventory (no provider call: the
 * inventory's last sync), builds one observation (subjects.ts), accrues it
 * (accrual.ts), keeps the ledger on disk, counts the accrued USD in
 * `dwcp_cost_usd_total`, and publishes each changed month as one record
 * `cost/<node>/<YYYY-MM>` in the geo store (eventual), so any node reports
 * on the whole federation (`report`), multi-region and multi-cloud from one
 * daemon.
 *
 * Invariants:
 * - Only this region's keys are written (one writer per key); a month the
 *   ledger dropped has its record deleted.
 * - The ledger is written (fsync'd, atomically: src/cloud/state-file.ts)
 *   after every accrual, so a restart loses at most one interval's
 *   observation and never double-counts (the ledger holds the last
 *   observation time).
 * - A record is at most 2 MiB (the geo store's entry limit): the ledger caps
 *   lines per month (accrual.ts, 20 000 by default, ~150 bytes each).
 * - Ticks never overlap; a failed tick is logged and retried on the next.
 */
import { join } from 'node:path';
import { hostCapacity, type CloudProviderConfig } from '../cloud/config.ts';
import type { CloudInventory, InventoryEntry } from '../cloud/inventory.ts';
import { readStateFile, writeStateFile } from '../cloud/state-file.ts';
import type { Logger } from '../log.ts';
import type { GeoState } from '../state/geo-state.ts';
import { CostLedger, LedgerStateSchema, monthOf, type CostObservation } from './accrual.ts';
import type { CostSettings } from './config.ts';
import type { CostMetrics } from './metrics.ts';
import { RegionMonthSchema, buildReport, reportLines, type CostReport, type GroupBy, type RegionMonth } from './report.ts';
import { costObservation } from './subjects.ts';
import { COST_STORE_TYPE, readGeoRecords } from './geo-records.ts';
import type { UtilisationCollector } from './utilisation-collector.ts';

export const COST_PREFIX = 'cost/';
const WRITE_TIMEOUT_MS = 5_000;
/** Regions × months a reader takes at most (4 096 regions × 13 months). */
const MAX_RECORDS = 4_096 * 13;

export interface CostTrackerOptions {
  node: string;
  providers: readonly CloudProviderConfig[];
  settings: CostSettings;
  dataDir: string;
  inventory: Pick<CloudInventory, 'list' | 'catalog'>;
  collector: Pick<UtilisationCollector, 'series'> | null;
  /** A fleet VM's spec labels by name (desired state), when this node holds the log. */
  fleetLabels(vm: string): Readonly<Record<string, string>> | undefined;
  geo: Pick<GeoState, 'update' | 'list' | 'valueOf'>;
  metrics: CostMetrics;
  log: Logger;
  now?: () => number;
}

export class CostTracker {
  readonly #o: CostTrackerOptions;
  readonly #now: () => number;
  readonly #path: string;
  #ledger: CostLedger;
  /** Month -> the record text last published. */
  readonly #published = new Map<string, string>();
  readonly #warnedUnpriced = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #stopped = false;

  constructor(options: CostTrackerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#path = join(options.dataDir, 'cost', 'ledger.json');
    this.#ledger = new CostLedger({ maxGapMs: options.settings.maxGapMs });
  }

  async start(): Promise<void> {
    const read = await readStateFile(this.#path, LedgerStateSchema);
    if (read.state === 'ok') this.#ledger = CostLedger.restore(read.value, { maxGapMs: this.#o.settings.maxGapMs });
    if (read.state === 'corrupt') this.#o.log.error({ file: this.#path, movedTo: read.movedTo, reason: read.reason }, 'cost ledger unreadable; moved aside, accruing from now');
    this.#timer = setInterval(() => void this.tick(), this.#o.settings.intervalMs);
    this.#timer.unref();
    void this.tick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  /** One accrual now (or the one running). */
  tick(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    this.#running ??= this.#tick()
      .catch((err: unknown) => this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'cost accrual failed; retrying on the next tick'))
      .finally(() => {
        this.#running = null;
      });
    return this.#running;
  }

  async #tick(): Promise<void> {
    const { instances } = await this.#o.inventory.list();
    const now = this.#now();
    const observation = this.observe(instances, now);
    const result = this.#ledger.observe(observation);
    for (const s of result.unpriced) {
      if (this.#warnedUnpriced.has(s.key)) continue;
      this.#warnedUnpriced.add(s.key);
      this.#o.log.warn({ provider: s.provider, vm: s.vm, type: s.type, location: s.location }, 'the pricing catalog has no price for this VM\'s type; it accrues no cost');
    }
    for (const [provider, usd] of result.byProvider) if (usd > 0) this.#o.metrics.costTotal.inc({ region: this.#o.node, provider }, usd);
    if (this.#stopped) return;
    await writeStateFile(this.#path, this.#ledger.toJSON());
    const month = monthOf(now);
    const mine: RegionMonth = { region: this.#o.node, month, asOfMs: now, lines: this.#ledger.lines(month) };
    for (const provider of this.#o.providers) {
      const projected = reportLines([mine], month, now).filter((l) => l.line.provider === provider.name).reduce((n, l) => n + l.projectedUsd, 0);
      this.#o.metrics.projected.set({ region: this.#o.node, provider: provider.name }, projected);
    }
    await this.#publish(now);
  }

  /** This region's VMs at `atMs` as the cost core sees them: billed or not, the model each runs as, its rate and labels (the optimiser reads the same). */
  observe(instances: readonly InventoryEntry[], atMs: number): CostObservation {
    const catalog = this.#o.inventory.catalog;
    return costObservation({
      atMs,
      providers: this.#o.providers,
      instances,
      reservations: this.#o.settings.reservations,
      quote: (kind, region, type, model) => {
        try {
          return catalog.quote({ provider: kind, region, type, model }).hourly;
        } catch {
          return null;
        }
      },
      fleetLabels: (vm) => this.#o.fleetLabels(vm),
      usage: (provider, id) => {
        const latest = this.#o.collector?.series(provider, id)?.latest() ?? null;
        return latest === null ? null : { cpu: latest.cpu, memory: latest.memory };
      },
      capacity: (entry) => ('capacity' in entry && entry.capacity !== undefined ? entry.capacity : hostCapacity()),
    });
  }

  async #publish(nowMs: number): Promise<void> {
    const months = this.#ledger.months();
    const current = monthOf(nowMs);
    for (const month of months) {
      const lines = this.#ledger.lines(month);
      // A closed month's record changes no more once written; the current one is rewritten each tick (its asOf moves).
      if (month !== current && this.#published.has(month)) continue;
      const text = JSON.stringify({ region: this.#o.node, month, asOfMs: month === current ? nowMs : (this.#ledger.lastAtMs ?? nowMs), lines } satisfies RegionMonth);
      if (await this.#write(`${COST_PREFIX}${this.#o.node}/${month}`, { op: 'put', value: text })) this.#published.set(month, text);
    }
    for (const month of [...this.#published.keys()]) {
      if (months.includes(month)) continue;
      if (await this.#write(`${COST_PREFIX}${this.#o.node}/${month}`, { op: 'delete' })) this.#published.delete(month);
    }
  }

  async #write(key: string, op: { op: 'put'; value: string } | { op: 'delete' }): Promise<boolean> {
    try {
      await this.#o.geo.update(key, COST_STORE_TYPE, op, 'eventual', { ttlMs: null, timeoutMs: WRITE_TIMEOUT_MS });
      return true;
    } catch (err) {
      if (!this.#stopped) this.#o.log.warn({ key, err: err instanceof Error ? err.message : String(err) }, 'cost record not written; retrying on the next tick');
      return false;
    }
  }

  /** Every region's published month records this node holds (its own included). */
  records(): RegionMonth[] {
    return readGeoRecords(this.#o.geo, COST_PREFIX, RegionMonthSchema, MAX_RECORDS, this.#o.log);
  }

  report(query: { month?: string; by: GroupBy | null; top?: number }): CostReport {
    const now = this.#now();
    return buildReport({ records: this.records(), month: query.month ?? monthOf(now), nowMs: now, by: query.by, ...(query.top === undefined ? {} : { top: query.top }) });
  }
}
