/**
 * UtilisationCollector: the driver that asks each of this region's
 * providers (through the narrow UtilisationSource interface,
 * src/cloud/utilisation.ts) what its running VMs used, and keeps one
 * bounded series per VM (series.ts). The cost tracker reads it for
 * on-premises usage (max(request, usage)); the optimiser (a later issue)
 * reads `entries()` for rightsizing and idle detection.
 *
 * Invariants:
 * - Each provider is asked for the window since its last successful answer
 *   (the first time: `backfillMs` back), so a failed query loses nothing
 *   within the series' retention; passes never overlap.
 * - At most `maxVms` series are kept (memory: maxVms × the series bytes,
 *   stated in series.ts); past it new VMs are not tracked, with one warning.
 *   A VM no longer in its provider's inventory loses its series.
 * - A provider's failure is logged and leaves the others alone.
 */
import type { CloudInventory } from '../cloud/inventory.ts';
import type { Logger } from '../log.ts';
import type { CostMetrics } from './metrics.ts';
import { UtilisationSeries, type SeriesShape } from './series.ts';

export interface UtilisationCollectorOptions {
  inventory: Pick<CloudInventory, 'list' | 'usageSources'>;
  shape: SeriesShape;
  intervalMs: number;
  backfillMs: number;
  maxVms: number;
  metrics?: Pick<CostMetrics, 'utilisationSamples' | 'utilisationSeries'>;
  log: Logger;
  now?: () => number;
}

export interface TrackedVm {
  /** Configured provider name. */
  readonly provider: string;
  readonly id: string;
  readonly name: string;
  readonly series: UtilisationSeries;
}

function key(provider: string, id: string): string {
  return `${provider}\u0000${id}`;
}

export class UtilisationCollector {
  readonly #o: UtilisationCollectorOptions;
  readonly #now: () => number;
  readonly #series = new Map<string, TrackedVm>();
  readonly #until = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #stopped = false;
  #warnedCap = false;

  constructor(options: UtilisationCollectorOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  start(): void {
    this.#timer = setInterval(() => void this.collect(), this.#o.intervalMs);
    this.#timer.unref();
    void this.collect();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  /** The series of one VM (by configured provider name and instance id). */
  series(provider: string, id: string): UtilisationSeries | undefined {
    return this.#series.get(key(provider, id))?.series;
  }

  /** Every tracked VM with its series: what the optimiser scans. */
  entries(): IterableIterator<TrackedVm> {
    return this.#series.values();
  }

  get size(): number {
    return this.#series.size;
  }

  /** One pass now (or the one running). */
  collect(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    this.#running ??= this.#collect()
      .catch((err: unknown) => this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'utilisation pass failed; retrying on the next tick'))
      .finally(() => {
        this.#running = null;
      });
    return this.#running;
  }

  async #collect(): Promise<void> {
    const { instances } = await this.#o.inventory.list();
    const present = new Set(instances.map((e) => key(e.provider, e.instance.id)));
    for (const k of [...this.#series.keys()]) if (!present.has(k)) this.#series.delete(k);
    for (const { provider, source } of this.#o.inventory.usageSources()) {
      const running = instances.filter((e) => e.provider === provider && e.instance.state === 'running').map((e) => e.instance);
      if (running.length === 0) continue;
      const now = this.#now();
      const since = this.#until.get(provider) ?? now - this.#o.backfillMs;
      try {
        const samples = await source.usage({ instances: running, sinceMs: since, untilMs: now });
        this.#until.set(provider, now);
        const names = new Map(running.map((i) => [i.id, i.name]));
        for (const s of samples) {
          const name = names.get(s.instanceId);
          if (name === undefined) continue;
          const tracked = this.#track(provider, s.instanceId, name);
          if (tracked?.series.add(s) === true) this.#o.metrics?.utilisationSamples.inc({ provider });
        }
      } catch (err) {
        if (this.#stopped) return;
        this.#o.log.warn({ provider, err: err instanceof Error ? err.message : String(err) }, 'utilisation query failed; the next pass asks for the same window again');
      }
    }
    const counts = new Map<string, number>();
    for (const t of this.#series.values()) counts.set(t.provider, (counts.get(t.provider) ?? 0) + 1);
    for (const { provider } of this.#o.inventory.usageSources()) this.#o.metrics?.utilisationSeries.set({ provider }, counts.get(provider) ?? 0);
  }

  #track(provider: string, id: string, name: string): TrackedVm | undefined {
    const k = key(provider, id);
    const known = this.#series.get(k);
    if (known !== undefined) return known;
    if (this.#series.size >= this.#o.maxVms) {
      if (!this.#warnedCap) this.#o.log.warn({ maxVms: this.#o.maxVms }, 'utilisation series limit reached (cost.utilisation.maxVms); further VMs are not tracked');
      this.#warnedCap = true;
      return undefined;
    }
    const tracked = { provider, id, name, series: new UtilisationSeries(this.#o.shape) };
    this.#series.set(k, tracked);
    return tracked;
  }
}
