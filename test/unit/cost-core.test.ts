/**
 * The cost core (accrual.ts), the observation builder (subjects.ts) and the
 * report (report.ts), checked against hand computations from the catalog.
 */
import { describe, expect, it } from 'vitest';
import { CostLedger, HOUR_MS, monthOf, type CostObservation, type CostSubject } from '../../src/cost/accrual.ts';
import { buildReport, budgetSpend, parseGroupBy, type RegionMonth } from '../../src/cost/report.ts';
import { costObservation, reservedKeys } from '../../src/cost/subjects.ts';
import { BudgetSpecSchema } from '../../src/fleet/budgets.ts';
import type { Instance } from '../../src/cloud/provider.ts';
import { CloudsSchema } from '../../src/cloud/config.ts';

const T0 = Date.UTC(2026, 11, 1); // 2026-12-01
const cloud = (vm: string, hourlyUsd: number, billed = true, labels: Record<string, string> = {}): CostSubject => ({
  key: `aws/${vm}`,
  vm,
  provider: 'aws',
  kind: 'aws',
  location: 'us-east-1',
  type: 't3.micro',
  labels,
  billed,
  price: { model: 'on-demand', hourlyUsd },
});
const obs = (atMs: number, subjects: CostSubject[], onPrem: CostObservation['onPrem'] = []): CostObservation => ({ atMs, subjects, onPrem });

describe('CostLedger', () => {
  it('charges each interval at its start state: 10 h running, 5 h stopped, 2 h running', () => {
    const ledger = new CostLedger({ maxGapMs: 24 * HOUR_MS });
    ledger.observe(obs(T0, [cloud('web1', 0.0104)]));
    ledger.observe(obs(T0 + 10 * HOUR_MS, [cloud('web1', 0.0104, false)]));
    ledger.observe(obs(T0 + 15 * HOUR_MS, [cloud('web1', 0.0104)]));
    const r = ledger.observe(obs(T0 + 17 * HOUR_MS, [cloud('web1', 0.0104)]));
    const [line] = ledger.lines('2026-12');
    expect(line?.hours).toBeCloseTo(12, 9);
    expect(line?.usd).toBeCloseTo(12 * 0.0104, 9);
    expect(line?.hourlyUsd).toBe(0.0104);
    expect(r.byProvider.get('aws')).toBeCloseTo(2 * 0.0104, 9);
  });

  it('splits an interval at the month boundary', () => {
    const ledger = new CostLedger({ maxGapMs: 24 * HOUR_MS });
    ledger.observe(obs(T0 - 3 * HOUR_MS, [cloud('a', 1)]));
    ledger.observe(obs(T0 + 2 * HOUR_MS, [cloud('a', 1)]));
    expect(ledger.lines('2026-11')[0]?.usd).toBeCloseTo(3, 9);
    expect(ledger.lines('2026-12')[0]?.usd).toBeCloseTo(2, 9);
  });

  it('charges a long gap only for VMs billed at both ends', () => {
    const ledger = new CostLedger({ maxGapMs: HOUR_MS });
    ledger.observe(obs(T0, [cloud('both', 1), cloud('stopped-later', 1)]));
    ledger.observe(obs(T0 + 5 * HOUR_MS, [cloud('both', 1), cloud('stopped-later', 1, false)]));
    const lines = Object.fromEntries(ledger.lines('2026-12').map((l) => [l.vm, l.usd]));
    expect(lines).toEqual({ both: 5, 'stopped-later': 0 });
  });

  it('prices on-premises VMs by max(request, usage) and the rest of the capacity as idle', () => {
    const ledger = new CostLedger({ maxGapMs: 24 * HOUR_MS });
    const onPrem = [{ provider: 'local', kind: 'local', location: 'local', vcpus: 8, memoryGiB: 32, vcpuHourUsd: 0.02, memoryGiBHourUsd: 0.003 }];
    const vm = (name: string, usedVcpus: number | null): CostSubject => ({
      key: `local/${name}`,
      vm: name,
      provider: 'local',
      kind: 'local',
      location: 'local',
      type: 'local.small',
      labels: {},
      billed: true,
      price: { model: 'on-prem', vcpuHourUsd: 0.02, memoryGiBHourUsd: 0.003, vcpus: 2, memoryGiB: 4, usedVcpus, usedMemoryGiB: 1 },
    });
    // a uses less than it asked: its request is allocated; b has no measurement.
    ledger.observe(obs(T0, [vm('a', 0.5), vm('b', null)], onPrem));
    ledger.observe(obs(T0 + 10 * HOUR_MS, [vm('a', 0.5), vm('b', null)], onPrem));
    const lines = Object.fromEntries(ledger.lines('2026-12').map((l) => [l.key, l.usd]));
    const perVm = (2 * 0.02 + 4 * 0.003) * 10; // 0.52
    const capacity = (8 * 0.02 + 32 * 0.003) * 10; // 2.56
    expect(lines['local/a']).toBeCloseTo(perVm, 9);
    expect(lines['local/b']).toBeCloseTo(perVm, 9);
    expect(lines['idle/local']).toBeCloseTo(capacity - 2 * perVm, 9);
  });

  it('survives a restore: same lines, same next accrual', () => {
    const ledger = new CostLedger({ maxGapMs: 24 * HOUR_MS });
    ledger.observe(obs(T0, [cloud('a', 0.5)]));
    ledger.observe(obs(T0 + HOUR_MS, [cloud('a', 0.5)]));
    const copy = CostLedger.restore(JSON.parse(JSON.stringify(ledger.toJSON())), { maxGapMs: 24 * HOUR_MS });
    ledger.observe(obs(T0 + 2 * HOUR_MS, [cloud('a', 0.5)]));
    copy.observe(obs(T0 + 2 * HOUR_MS, [cloud('a', 0.5)]));
    expect(copy.toJSON()).toEqual(ledger.toJSON());
  });

  it('keeps at most keepMonths months and maxLines lines a month (the rest in one (other) line)', () => {
    const ledger = new CostLedger({ maxGapMs: 400 * 24 * HOUR_MS, keepMonths: 2, maxLines: 2 });
    ledger.observe(obs(Date.UTC(2026, 0, 1), [cloud('a', 1), cloud('b', 1), cloud('c', 1)]));
    ledger.observe(obs(Date.UTC(2026, 3, 1), [cloud('a', 1), cloud('b', 1), cloud('c', 1)]));
    expect(ledger.months()).toEqual(['2026-03', '2026-04']);
    const march = ledger.lines('2026-03');
    expect(march.map((l) => l.key)).toEqual(['aws/a', 'aws/b', 'other/aws']);
    expect(march.find((l) => l.key === 'other/aws')?.usd).toBe(31 * 24);
  });
});

describe('costObservation (from the inventory)', () => {
  const clouds = CloudsSchema.parse({
    providers: [
      { kind: 'aws', region: 'us-east-1' },
      { kind: 'local', capacity: { vcpus: 4, memoryGiB: 8 }, pricePerVcpuHour: 0.01, pricePerGiBHour: 0.001 },
    ],
  });
  const instance = (id: string, extra: Partial<Instance>): Instance => ({
    id,
    name: id,
    provider: 'aws',
    region: 'us-east-1',
    zone: 'us-east-1a',
    type: 't3.micro',
    vcpus: 2,
    memoryMiB: 1024,
    state: 'running',
    providerState: 'running',
    tags: {},
    spot: false,
    launchTime: new Date(T0),
    image: null,
    privateIp: null,
    publicIp: null,
    ...extra,
  });
  const prices: Record<string, number> = { 'on-demand': 0.0104, spot: 0.0034, reserved: 0.0065 };
  const inputs = (instances: { provider: string; instance: Instance }[]) => ({
    atMs: T0,
    providers: clouds.providers,
    instances,
    reservations: [{ provider: 'aws', type: 't3.micro', count: 1 }],
    quote: (_k: string, _r: string, type: string, model: string) => (type === 't3.micro' ? (prices[model] ?? null) : null),
    fleetLabels: (vm: string) => (vm === 'web1' ? { team: 'web' } : undefined),
    usage: () => ({ cpu: 0.5, memory: 0.25 }),
    capacity: () => ({ vcpus: 4, memoryGiB: 8 }),
  });

  it('prices spot, reserved (oldest first) and on-demand from the catalog; labels from the fleet spec', () => {
    const list = [
      { provider: 'aws', instance: instance('i-2', { launchTime: new Date(T0 + 1000), tags: { 'dwcp-vm': 'web1' } }) },
      { provider: 'aws', instance: instance('i-1', { tags: { team: 'db', 'managed-by': 'dwcp' } }) },
      { provider: 'aws', instance: instance('i-3', { spot: true }) },
      { provider: 'aws', instance: instance('i-4', { type: 'x9.huge' }) },
      { provider: 'local', instance: instance('local-1', { provider: 'local', region: 'local', type: 'local.small', state: 'stopped' }) },
    ];
    expect([...reservedKeys(list, [{ provider: 'aws', type: 't3.micro', count: 1 }])]).toEqual(['aws/i-1']);
    const o = costObservation(inputs(list));
    const by = Object.fromEntries(o.subjects.map((s) => [s.key, s]));
    expect(by['aws/i-1']).toMatchObject({ vm: 'i-1', labels: { team: 'db' }, billed: true, price: { model: 'reserved', hourlyUsd: 0.0065 } });
    expect(by['aws/i-2']).toMatchObject({ vm: 'web1', labels: { team: 'web' }, price: { model: 'on-demand', hourlyUsd: 0.0104 } });
    expect(by['aws/i-3']?.price).toEqual({ model: 'spot', hourlyUsd: 0.0034 });
    expect(by['aws/i-4']?.price).toBeNull();
    expect(by['local/local-1']).toMatchObject({ billed: false, price: { model: 'on-prem', vcpus: 2, memoryGiB: 1, usedVcpus: 1, usedMemoryGiB: 0.25 } });
    expect(o.onPrem).toEqual([{ provider: 'local', kind: 'local', location: 'local', vcpus: 4, memoryGiB: 8, vcpuHourUsd: 0.01, memoryGiBHourUsd: 0.001 }]);
  });
});

describe('the report', () => {
  const month = '2026-12';
  const line = (key: string, vm: string | null, provider: string, usd: number, hourlyUsd: number, labels: Record<string, string> = {}) => ({
    key,
    vm,
    provider,
    kind: provider,
    location: 'x',
    type: vm === null ? 'idle' : 't',
    model: vm === null ? ('idle' as const) : ('on-demand' as const),
    labels,
    usd,
    hours: 1,
    hourlyUsd,
  });
  // Asof 10 days into a 31-day month: 21 days (504 h) left.
  const asOf = Date.UTC(2026, 11, 11);
  const records: RegionMonth[] = [
    { region: 'dc1', month, asOfMs: asOf, lines: [line('local/a', 'a', 'local', 5, 0.1, { team: 'web' }), line('idle/local', null, 'local', 2, 0.01)] },
    { region: 'aws-east', month, asOfMs: asOf, lines: [line('aws/b', 'b', 'aws', 10, 0.5, { team: 'web' }), line('aws/c', 'c', 'aws', 1, 0, { team: 'db' })] },
    { region: 'aws-east', month: '2026-11', asOfMs: asOf, lines: [line('aws/b', 'b', 'aws', 99, 0.5)] },
  ];

  it('month to date, the projection to month end, groups and top spenders', () => {
    const r = buildReport({ records, month, nowMs: asOf + HOUR_MS, by: parseGroupBy('label:team') });
    expect(r.mtdUsd).toBe(18);
    expect(r.projectedUsd).toBeCloseTo(18 + (0.1 + 0.01 + 0.5) * 504, 4);
    expect(r.idleUsd).toBe(2);
    expect(r.groups.map((g) => [g.key, g.mtdUsd, g.vms])).toEqual([['web', 15, 2], ['(idle)', 2, 0], ['db', 1, 1]]);
    expect(r.top.map((t) => t.vm)).toEqual(['b', 'a', 'c']);
    expect(r.regions.map((x) => [x.region, x.mtdUsd])).toEqual([['aws-east', 11], ['dc1', 7]]);
    const past = buildReport({ records, month: '2026-11', nowMs: asOf, by: parseGroupBy('region') });
    expect([past.current, past.mtdUsd, past.projectedUsd]).toEqual([false, 99, 99]);
    expect(parseGroupBy('label:')).toBeNull();
  });

  it('budget spend over its scope and the alert thresholds crossed', () => {
    const web = BudgetSpecSchema.parse({ name: 'web', limitUsd: 20, scope: 'label:team=web' });
    expect(budgetSpend(web, records, month, asOf)).toMatchObject({ spentUsd: 15, ratio: 0.75, crossed: 75 });
    const dc1 = BudgetSpecSchema.parse({ name: 'dc1', limitUsd: 100, scope: 'region=dc1', alerts: [10, 5] });
    expect(budgetSpend(dc1, records, month, asOf)).toMatchObject({ spentUsd: 7, crossed: 5 });
    expect(monthOf(asOf)).toBe(month);
  });
});
