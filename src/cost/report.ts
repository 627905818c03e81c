/**
 * The federation-wide cost report, from every region's published month
 * records (what each region's cost core accrued, src/cost/accrual.ts): month
 * to date, the projection to the month's end, totals grouped by region,
 * provider or a VM label, the top spenders, and budgets' spend.
 *
 * The numbers:
 * - Month to date is what each region had accrued at its record's time
 *   (`asOfMs`, shown per region): no extrapolation, so a report can be
 *   checked by hand against the catalog and the VMs' billed hours.
 * - Projection (the current month only): month to date + each line's rate
 *   now × the hours from its region's record to the end of the month. A
 *   past month's projection is its total.
 * - A line falls in one group: its region, its provider, or the value of the
 *   label (`(none)` without it; idle capacity is `(idle)`).
 *
 * Pure: no clock (now is an input), no I/O.
 */
import { z } from 'zod';
import { CostLineSchema, HOUR_MS, monthEndMs, monthStartMs, type CostLine } from './accrual.ts';
import { inScope, scopeOf, type BudgetSpec } from '../fleet/budgets.ts';

/** One region's lines for one month, as published in the geo store (`cost/<region>/<YYYY-MM>`). */
export const RegionMonthSchema = z.strictObject({
  region: z.string().min(1).max(63),
  month: z.string().regex(/^\d{4}-\d{2}$/),
  asOfMs: z.number().int().min(0),
  lines: z.array(CostLineSchema),
});
export type RegionMonth = z.infer<typeof RegionMonthSchema>;

export type GroupBy = { kind: 'region' } | { kind: 'provider' } | { kind: 'label'; key: string };

export function parseGroupBy(text: string): GroupBy | null {
  if (text === 'region' || text === 'provider') return { kind: text };
  const m = /^label:([a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?)$/.exec(text);
  return m === null ? null : { kind: 'label', key: m[1] ?? '' };
}

export interface ReportLine {
  readonly region: string;
  readonly line: CostLine;
  /** The line's projection to month end. */
  readonly projectedUsd: number;
}

export interface CostGroup {
  readonly key: string;
  readonly mtdUsd: number;
  readonly projectedUsd: number;
  readonly vms: number;
}

export interface RegionTotal {
  readonly region: string;
  readonly asOfMs: number;
  readonly mtdUsd: number;
  readonly projectedUsd: number;
}

export interface TopSpender {
  readonly vm: string;
  readonly region: string;
  readonly provider: string;
  readonly type: string;
  readonly model: string;
  readonly hours: number;
  readonly mtdUsd: number;
  readonly hourlyUsd: number;
  readonly projectedUsd: number;
}

export interface CostReport {
  readonly month: string;
  /** Whether the month is the current one (it then has a projection beyond its total). */
  readonly current: boolean;
  readonly generatedAtMs: number;
  readonly mtdUsd: number;
  readonly projectedUsd: number;
  readonly idleUsd: number;
  readonly regions: readonly RegionTotal[];
  readonly by: string | null;
  readonly groups: readonly CostGroup[];
  readonly top: readonly TopSpender[];
}

export interface ReportQuery {
  readonly records: readonly RegionMonth[];
  readonly month: string;
  readonly nowMs: number;
  readonly by: GroupBy | null;
  readonly top?: number;
}

/** USD to a hundredth of a cent, so JSON carries no float noise. */
export function usd(value: number): number {
  return Math.round(value * 10_000) / 10_000;
}

/** Every line of the month with its projection. */
export function reportLines(records: readonly RegionMonth[], month: string, nowMs: number): ReportLine[] {
  const end = monthEndMs(monthStartMs(month));
  const current = nowMs >= monthStartMs(month) && nowMs < end;
  return records
    .filter((r) => r.month === month)
    .flatMap((r) => r.lines.map((line) => ({ region: r.region, line, projectedUsd: current ? line.usd + line.hourlyUsd * Math.max(0, (end - r.asOfMs) / HOUR_MS) : line.usd })));
}

function groupKey(by: GroupBy, l: ReportLine): string {
  switch (by.kind) {
    case 'region':
      return l.region;
    case 'provider':
      return l.line.provider;
    case 'label':
      return l.line.model === 'idle' ? '(idle)' : (l.line.labels[by.key] ?? '(none)');
  }
}

function describeBy(by: GroupBy): string {
  return by.kind === 'label' ? `label:${by.key}` : by.kind;
}

export function buildReport(q: ReportQuery): CostReport {
  const lines = reportLines(q.records, q.month, q.nowMs);
  const sum = (ls: readonly ReportLine[], f: (l: ReportLine) => number): number => ls.reduce((n, l) => n + f(l), 0);
  const regions = q.records
    .filter((r) => r.month === q.month)
    .map((r) => {
      const mine = lines.filter((l) => l.region === r.region);
      return { region: r.region, asOfMs: r.asOfMs, mtdUsd: usd(sum(mine, (l) => l.line.usd)), projectedUsd: usd(sum(mine, (l) => l.projectedUsd)) };
    })
    .sort((a, b) => (a.region < b.region ? -1 : 1));
  const groups = new Map<string, { mtd: number; projected: number; vms: number }>();
  if (q.by !== null) {
    for (const l of lines) {
      const key = groupKey(q.by, l);
      const g = groups.get(key) ?? { mtd: 0, projected: 0, vms: 0 };
      groups.set(key, { mtd: g.mtd + l.line.usd, projected: g.projected + l.projectedUsd, vms: g.vms + (l.line.vm === null ? 0 : 1) });
    }
  }
  const top = lines
    .filter((l) => l.line.vm !== null)
    .sort((a, b) => b.line.usd - a.line.usd || (a.line.key < b.line.key ? -1 : 1))
    .slice(0, q.top ?? 10)
    .map((l) => ({ vm: l.line.vm ?? '', region: l.region, provider: l.line.provider, type: l.line.type, model: l.line.model, hours: Math.round(l.line.hours * 1000) / 1000, mtdUsd: usd(l.line.usd), hourlyUsd: Math.round(l.line.hourlyUsd * 1e6) / 1e6, projectedUsd: usd(l.projectedUsd) }));
  const start = monthStartMs(q.month);
  return {
    month: q.month,
    current: q.nowMs >= start && q.nowMs < monthEndMs(start),
    generatedAtMs: q.nowMs,
    mtdUsd: usd(sum(lines, (l) => l.line.usd)),
    projectedUsd: usd(sum(lines, (l) => l.projectedUsd)),
    idleUsd: usd(sum(lines.filter((l) => l.line.model === 'idle'), (l) => l.line.usd)),
    regions,
    by: q.by === null ? null : describeBy(q.by),
    groups: [...groups.entries()].sort((a, b) => b[1].mtd - a[1].mtd || (a[0] < b[0] ? -1 : 1)).map(([key, g]) => ({ key, mtdUsd: usd(g.mtd), projectedUsd: usd(g.projected), vms: g.vms })),
    top,
  };
}

export interface BudgetSpend {
  readonly name: string;
  readonly limitUsd: number;
  readonly spentUsd: number;
  readonly projectedUsd: number;
  /** spent ÷ limit. */
  readonly ratio: number;
  /** The highest alert threshold (percent) crossed, or null. */
  readonly crossed: number | null;
}

/** A budget's spend this month over the lines in its scope. */
export function budgetSpend(spec: BudgetSpec, records: readonly RegionMonth[], month: string, nowMs: number): BudgetSpend {
  const scope = scopeOf(spec);
  const lines = reportLines(records, month, nowMs).filter((l) => inScope(scope, { region: l.region, provider: l.line.provider, labels: l.line.model === 'idle' || l.line.vm === null ? null : l.line.labels }));
  const spent = lines.reduce((n, l) => n + l.line.usd, 0);
  const projected = lines.reduce((n, l) => n + l.projectedUsd, 0);
  const ratio = spent / spec.limitUsd;
  const crossed = [...spec.alerts].reverse().find((a) => ratio * 100 >= a) ?? null;
  return { name: spec.name, limitUsd: spec.limitUsd, spentUsd: usd(spent), projectedUsd: usd(projected), ratio, crossed };
}
