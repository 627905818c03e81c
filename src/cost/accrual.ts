/**
 * The cost core: what this region's VMs have cost, accrued from their state
 * intervals × the price of what each runs as, per calendar month (UTC).
 *
 * Input: observations, each the region's VMs at one instant (state, type,
 * pricing model and rate, labels, and for on-premises VMs the request and
 * the measured use) plus its on-premises providers' capacity and prices.
 * Output: per month, one line per VM (USD, billed hours, the rate now) and
 * one `idle` line per on-premises provider.
 *
 * The model:
 * - A VM is billed while `billed` (the driver: running or stopping, as the
 *   clouds bill instance-hours; pending, stopped and terminated are not).
 *   The state seen at one observation holds until the next (the inventory is
 *   the record), so an interval is charged at its start's rate.
 * - Clouds: the catalog's hourly price of the type under the model the
 *   instance runs as: spot, reserved (a configured reservation covers it),
 *   else on-demand.
 * - On-premises (OpenCost's allocation model): a VM is allocated
 *   max(request, usage) of vCPUs and of memory, priced at the configured
 *   $/vCPU-h and $/GiB-h; the provider's capacity costs the same prices ×
 *   its whole capacity, and `idle` = capacity cost − Σ allocated (never
 *   below 0: VMs allocated beyond capacity are charged, not negative idle).
 * - A gap between observations longer than `maxGapMs` (this daemon was
 *   down) is charged only for VMs billed at both ends, at the earlier rate;
 *   the idle line accrues over it too (the hardware cost money meanwhile).
 * - Intervals are split at month boundaries; at most `keepMonths` months are
 *   kept (the oldest dropped), at most `maxLines` lines per month (past it,
 *   further VMs of that month are added to one `(other)` line per provider).
 *
 * Pure: no clock, no I/O; serialisable to JSON and back (toJSON / restore)
 * so a restarted daemon keeps its month so far.
 */
import { z } from 'zod';

export const HOUR_MS = 3_600_000;
export const DEFAULT_KEEP_MONTHS = 13;
export const DEFAULT_MAX_LINES = 20_000;
export const COST_MODELS = ['on-demand', 'spot', 'reserved', 'on-prem', 'idle'] as const;
export type CostModel = (typeof COST_MODELS)[number];

export type SubjectPrice =
  | { readonly model: 'on-demand' | 'spot' | 'reserved'; readonly hourlyUsd: number }
  | {
      readonly model: 'on-prem';
      readonly vcpuHourUsd: number;
      readonly memoryGiBHourUsd: number;
      readonly vcpus: number;
      readonly memoryGiB: number;
      /** Measured use in vCPUs and GiB; null when unknown (then the request alone is allocated). */
      readonly usedVcpus: number | null;
      readonly usedMemoryGiB: number | null;
    };

/** One VM at one observation. */
export interface CostSubject {
  /** Unique in the region: configured provider name and instance id. */
  readonly key: string;
  /** The fleet VM's name, else the instance's. */
  readonly vm: string;
  /** Configured provider name. */
  readonly provider: string;
  readonly kind: string;
  /** The provider's own region (us-east-1, onprem, …). */
  readonly location: string;
  readonly type: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly billed: boolean;
  /** Null: no price is known (an uncatalogued type); the VM accrues nothing and the driver says so. */
  readonly price: SubjectPrice | null;
}

export interface OnPremCapacity {
  readonly provider: string;
  readonly kind: string;
  readonly location: string;
  readonly vcpus: number;
  readonly memoryGiB: number;
  readonly vcpuHourUsd: number;
  readonly memoryGiBHourUsd: number;
}

export interface CostObservation {
  readonly atMs: number;
  readonly subjects: readonly CostSubject[];
  readonly onPrem: readonly OnPremCapacity[];
}

export const CostLineSchema = z.strictObject({
  key: z.string().min(1).max(600),
  /** Null for an idle or overflow line. */
  vm: z.string().max(253).nullable(),
  provider: z.string().min(1).max(63),
  kind: z.string().min(1).max(16),
  location: z.string().max(64),
  type: z.string().max(80),
  model: z.enum(COST_MODELS),
  labels: z.record(z.string(), z.string()),
  usd: z.number().min(0),
  /** Hours billed this month. */
  hours: z.number().min(0),
  /** The rate at the last observation (0 when not billed then): what a projection extends. */
  hourlyUsd: z.number().min(0),
});
export type CostLine = z.infer<typeof CostLineSchema>;

export const LedgerStateSchema = z.strictObject({
  lastAtMs: z.number().nullable(),
  /** The rates and facts of the last observation, by line key. */
  last: z.array(z.strictObject({ line: CostLineSchema, billed: z.boolean() })),
  months: z.record(z.string().regex(/^\d{4}-\d{2}$/), z.array(CostLineSchema)),
});
export type LedgerState = z.infer<typeof LedgerStateSchema>;

/** `YYYY-MM` of an epoch ms, UTC. */
export function monthOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 7);
}

/** Epoch ms of the first instant of the month after the one holding `ms`. */
export function monthEndMs(ms: number): number {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
}

export function monthStartMs(month: string): number {
  const [y = 0, m = 1] = month.split('-').map(Number);
  return Date.UTC(y, m - 1, 1);
}

/** The hourly rate of a subject; 0 when unpriced. */
export function hourlyOf(price: SubjectPrice | null): number {
  if (price === null) return 0;
  if (price.model !== 'on-prem') return price.hourlyUsd;
  return allocatedVcpus(price) * price.vcpuHourUsd + allocatedMemoryGiB(price) * price.memoryGiBHourUsd;
}

function allocatedVcpus(p: Extract<SubjectPrice, { model: 'on-prem' }>): number {
  return Math.max(p.vcpus, p.usedVcpus ?? 0);
}

function allocatedMemoryGiB(p: Extract<SubjectPrice, { model: 'on-prem' }>): number {
  return Math.max(p.memoryGiB, p.usedMemoryGiB ?? 0);
}

export function idleKey(provider: string): string {
  return `idle/${provider}`;
}

interface Rate {
  readonly line: CostLine;
  readonly billed: boolean;
}

export interface AccrualResult {
  /** USD accrued by this observation's interval, per configured provider. */
  readonly byProvider: ReadonlyMap<string, number>;
  /** Subjects without a price (accrued nothing), for the driver to report. */
  readonly unpriced: readonly CostSubject[];
}

export interface CostLedgerOptions {
  readonly maxGapMs: number;
  readonly keepMonths?: number;
  readonly maxLines?: number;
}

export class CostLedger {
  readonly #maxGapMs: number;
  readonly #keepMonths: number;
  readonly #maxLines: number;
  #lastAtMs: number | null = null;
  #last = new Map<string, Rate>();
  readonly #months = new Map<string, Map<string, CostLine>>();

  constructor(options: CostLedgerOptions) {
    this.#maxGapMs = options.maxGapMs;
    this.#keepMonths = options.keepMonths ?? DEFAULT_KEEP_MONTHS;
    this.#maxLines = options.maxLines ?? DEFAULT_MAX_LINES;
  }

  static restore(state: LedgerState, options: CostLedgerOptions): CostLedger {
    const ledger = new CostLedger(options);
    ledger.#lastAtMs = state.lastAtMs;
    for (const r of state.last) ledger.#last.set(r.line.key, { line: r.line, billed: r.billed });
    for (const [month, lines] of Object.entries(state.months)) ledger.#months.set(month, new Map(lines.map((l) => [l.key, l])));
    return ledger;
  }

  toJSON(): LedgerState {
    const months: Record<string, CostLine[]> = {};
    for (const month of [...this.#months.keys()].sort()) months[month] = this.lines(month);
    return { lastAtMs: this.#lastAtMs, last: [...this.#last.values()].map((r) => ({ line: r.line, billed: r.billed })), months };
  }

  get lastAtMs(): number | null {
    return this.#lastAtMs;
  }

  /** Months held, oldest first. */
  months(): string[] {
    return [...this.#months.keys()].sort();
  }

  /** The lines of a month, by key. */
  lines(month: string): CostLine[] {
    return [...(this.#months.get(month)?.values() ?? [])].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** Accrues the interval since the previous observation at its rates, then takes this one's as current. */
  observe(obs: CostObservation): AccrualResult {
    const byProvider = new Map<string, number>();
    const current = this.#rates(obs);
    const previousAt = this.#lastAtMs;
    if (previousAt !== null && obs.atMs < previousAt) return { byProvider, unpriced: [] };
    if (previousAt !== null && obs.atMs > previousAt) {
      const gap = obs.atMs - previousAt > this.#maxGapMs;
      for (const [key, rate] of this.#last) {
        if (!rate.billed) continue;
        if (gap && rate.line.model !== 'idle' && current.get(key)?.billed !== true) continue;
        const usd = this.#accrue(rate.line, previousAt, obs.atMs);
        byProvider.set(rate.line.provider, (byProvider.get(rate.line.provider) ?? 0) + usd);
      }
    }
    // Lines of the current month carry the current rate (0 for VMs not seen now).
    const month = this.#month(monthOf(obs.atMs));
    for (const line of month.values()) {
      const now = current.get(line.key);
      month.set(line.key, { ...line, ...(now === undefined ? { hourlyUsd: 0 } : { vm: now.line.vm, type: now.line.type, model: now.line.model, labels: now.line.labels, hourlyUsd: now.billed ? now.line.hourlyUsd : 0 }) });
    }
    for (const rate of current.values()) {
      if (!month.has(rate.line.key) && rate.billed && month.size < this.#maxLines) month.set(rate.line.key, { ...rate.line, usd: 0, hours: 0 });
    }
    this.#lastAtMs = obs.atMs;
    this.#last = current;
    this.#prune();
    return { byProvider, unpriced: obs.subjects.filter((s) => s.price === null) };
  }

  #rates(obs: CostObservation): Map<string, Rate> {
    const rates = new Map<string, Rate>();
    const allocated = new Map<string, number>();
    for (const s of obs.subjects) {
      const hourly = hourlyOf(s.price);
      rates.set(s.key, {
        billed: s.billed && s.price !== null,
        line: { key: s.key, vm: s.vm, provider: s.provider, kind: s.kind, location: s.location, type: s.type, model: s.price?.model ?? 'on-demand', labels: { ...s.labels }, usd: 0, hours: 0, hourlyUsd: hourly },
      });
      if (s.billed && s.price?.model === 'on-prem') allocated.set(s.provider, (allocated.get(s.provider) ?? 0) + hourly);
    }
    for (const c of obs.onPrem) {
      const capacity = c.vcpus * c.vcpuHourUsd + c.memoryGiB * c.memoryGiBHourUsd;
      const idle = Math.max(0, capacity - (allocated.get(c.provider) ?? 0));
      const key = idleKey(c.provider);
      rates.set(key, { billed: true, line: { key, vm: null, provider: c.provider, kind: c.kind, location: c.location, type: 'idle', model: 'idle', labels: {}, usd: 0, hours: 0, hourlyUsd: idle } });
    }
    return rates;
  }

  /** Charges `line`'s rate over [fromMs, toMs), split at month ends; returns the USD accrued. */
  #accrue(line: CostLine, fromMs: number, toMs: number): number {
    let total = 0;
    for (let start = fromMs; start < toMs; ) {
      const end = Math.min(toMs, monthEndMs(start));
      const hours = (end - start) / HOUR_MS;
      const usd = line.hourlyUsd * hours;
      const month = this.#month(monthOf(start));
      const overflow = !month.has(line.key) && month.size >= this.#maxLines;
      const key = overflow ? `other/${line.provider}` : line.key;
      const held = month.get(key) ?? (overflow ? { ...line, key, vm: null, type: '(other)', labels: {}, usd: 0, hours: 0, hourlyUsd: 0 } : { ...line, usd: 0, hours: 0 });
      month.set(key, { ...held, usd: held.usd + usd, hours: held.hours + (line.model === 'idle' ? 0 : hours) });
      total += usd;
      start = end;
    }
    return total;
  }

  #month(month: string): Map<string, CostLine> {
    let lines = this.#months.get(month);
    if (lines === undefined) {
      lines = new Map();
      this.#months.set(month, lines);
    }
    return lines;
  }

  #prune(): void {
    const months = this.months();
    for (const m of months.slice(0, Math.max(0, months.length - this.#keepMonths))) this.#months.delete(m);
  }
}
