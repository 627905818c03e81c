/** Placement: filters with reasons, scores by factor, explanations, determinism, strategies, constraints. */
import { describe, expect, it } from 'vitest';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import type { CandidateExplanation, PlacementDecision, PlacementRegionView } from '../../src/fleet/placement.ts';
import { buildPlacementView, formatPlacement, makePlacementView, place, resolvePlacementOptions } from '../../src/fleet/placement.ts';
import { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { GIB, assign, create, localProvider, machineWith, registerRegion, setPolicy, spec } from './fleet-fixtures.ts';

/**
 * Three regions: cheap (small, eu, gdpr), mid (us, larger), pricey (eu, gold,
 * with a spot cloud provider that is the cheapest of all).
 */
function fleet(): FleetStateMachine {
  return machineWith(
    registerRegion('cheap', [localProvider(8, 16, 0.01)], { jurisdiction: 'eu', compliance: ['gdpr'] }),
    registerRegion('mid', [localProvider(32, 64, 0.02)], { jurisdiction: 'us', compliance: ['soc2'] }),
    registerRegion('pricey', [localProvider(64, 256, 0.05), { name: 'aws', kind: 'aws', spot: true, quota: { vcpus: 16, instances: 4 }, prices: { vcpuHourUsd: 0.004, memoryGiBHourUsd: 0.0005 } }], {
      jurisdiction: 'eu',
      labels: { tier: 'gold' },
    }),
  );
}

const rtt = new Map([
  ['cheap', new Map([['mid', 90], ['pricey', 10]])],
  ['mid', new Map([['cheap', 90], ['pricey', 80]])],
  ['pricey', new Map([['cheap', 10], ['mid', 80]])],
]);

function candidate(decision: PlacementDecision, region: string): CandidateExplanation {
  const found = decision.candidates.find((c) => c.region === region);
  if (found === undefined) throw new Error(`no candidate ${region}`);
  return found;
}

function chosen(decision: PlacementDecision): string {
  if (!decision.ok) throw new Error(`refused: ${decision.message}`);
  return `${decision.choice.region}/${decision.choice.provider}`;
}

describe('placement', () => {
  it('chooses the cheapest region that fits and explains every candidate by factor', () => {
    const decision = place(spec('web1'), buildPlacementView(fleet(), { rttMs: rtt }));
    expect(chosen(decision)).toBe('cheap/local');
    if (!decision.ok) return;
    expect(decision.alternatives.map((a) => a.region)).toEqual(['mid', 'pricey']);
    expect(decision.candidates.map((c) => c.region)).toEqual(['cheap', 'mid', 'pricey']);
    const best = decision.choice;
    expect(Object.keys(best.factors)).toEqual(['cost', 'rtt', 'headroom', 'health', 'priority', 'spread']);
    expect(best.factors.cost).toMatchObject({ value: 1, weight: 1, contribution: 1 });
    expect(best.factors.cost.detail).toBe('$0.028/h, cheapest $0.028/h');
    expect(best.score).toBeCloseTo(Object.values(best.factors).reduce((s, f) => s + f.contribution, 0), 12);
    // pricey's spot aws is excluded for a spec without spot; its local provider represents it.
    const pricey = candidate(decision, 'pricey');
    expect(pricey).toMatchObject({ status: 'eligible', provider: 'local', otherProviders: [{ provider: 'aws', filter: 'spot' }] });
    const lines = formatPlacement(decision);
    expect(lines[0]).toMatch(/^choice: cheap\/local score \d\.\d{3} \(\$0\.028\/h\): cost 1\.000/);
    expect(lines[1]).toMatch(/^alternative 1: mid\/local/);
    expect(lines).toHaveLength(1 + 2 + 3);
  });

  it('capacity filter: a full region is excluded with the numbers and the next one is chosen', () => {
    const m = fleet();
    m.apply(create(spec('big', { vcpus: 7 })));
    expect(m.apply(assign('big', 'cheap', 1))).toMatchObject({ ok: true });
    const decision = place(spec('web1'), buildPlacementView(m));
    expect(chosen(decision)).toBe('mid/local');
    expect(candidate(decision, 'cheap')).toEqual({
      status: 'excluded',
      region: 'cheap',
      filter: 'capacity',
      reason: 'local needs 2 vCPUs, 1 vCPU free of 8 vCPUs',
      providers: [{ provider: 'local', filter: 'capacity', reason: 'local needs 2 vCPUs, 1 vCPU free of 8 vCPUs' }],
    });
  });

  it('constraint filters: jurisdiction, compliance, labels, regions, providers, max $/h', () => {
    const view = buildPlacementView(fleet(), { rttMs: rtt });
    const d1 = place(spec('a', { constraints: { jurisdictions: ['us'] } }), view);
    expect(chosen(d1)).toBe('mid/local');
    expect(candidate(d1, 'cheap')).toMatchObject({ status: 'excluded', filter: 'constraint', reason: 'jurisdiction eu is not among the allowed ones (us)' });
    expect(chosen(place(spec('a', { constraints: { compliance: ['soc2'] } }), view))).toBe('mid/local');
    expect(chosen(place(spec('a', { constraints: { regionLabels: { tier: 'gold' } } }), view))).toBe('pricey/local');
    expect(chosen(place(spec('a', { constraints: { regions: ['mid', 'pricey'] } }), view))).toBe('mid/local');
    const d2 = place(spec('a', { constraints: { maxHourlyUsd: 0.03 } }), view);
    expect(chosen(d2)).toBe('cheap/local');
    expect(candidate(d2, 'mid')).toMatchObject({ status: 'excluded', filter: 'price', reason: 'provider local costs $0.048/h, above the limit $0.03/h' });
    const d3 = place(spec('a', { spot: true, constraints: { providers: ['aws'] } }), view);
    expect(chosen(d3)).toBe('pricey/aws');
    expect(candidate(d3, 'cheap')).toMatchObject({ filter: 'constraint', reason: 'provider local (local) is not among the allowed ones (aws)' });
  });

  it('spot: allowed specs may take the cheap spot provider; priority keeps important VMs off it', () => {
    const view = buildPlacementView(fleet());
    expect(chosen(place(spec('batch', { spot: true, priority: 0 }), view))).toBe('pricey/aws');
    const important = place(spec('db', { spot: true, priority: 1000 }), view);
    expect(chosen(important)).toBe('cheap/local');
    const pricey = candidate(important, 'pricey');
    // pricey's spot capacity scores 0 on priority for a priority-1000 VM; its local provider is listed with its score.
    expect(pricey).toMatchObject({ status: 'eligible', provider: 'aws', factors: { priority: { value: 0, detail: 'spot capacity, priority 1000' } }, otherProviders: [{ provider: 'local', score: expect.any(Number) }] });
  });

  it('rtt filter: maxRtt to a named region, unmeasured pairs excluded', () => {
    const view = buildPlacementView(fleet(), { rttMs: rtt });
    const decision = place(spec('a', { constraints: { maxRtt: { region: 'mid', ms: 85 } } }), view);
    expect(chosen(decision)).toBe('mid/local');
    expect(candidate(decision, 'cheap')).toMatchObject({ filter: 'rtt', reason: 'RTT from mid is 90.0 ms, above the limit 85 ms' });
    expect(candidate(decision, 'pricey')).toMatchObject({ status: 'eligible' });
    const unmeasured = place(spec('a', { constraints: { maxRtt: { region: 'mid', ms: 85 } } }), buildPlacementView(fleet()));
    expect(candidate(unmeasured, 'cheap')).toMatchObject({ filter: 'rtt', reason: 'no RTT measured from mid' });
  });

  it('health filter: suspected or high-phi regions are excluded, lower phi scores higher', () => {
    const health = new Map([
      ['cheap', { phi: 12, suspected: false }],
      ['mid', { phi: 0, suspected: true }],
      ['pricey', { phi: 2, suspected: false }],
    ]);
    const decision = place(spec('a'), buildPlacementView(fleet(), { health }));
    expect(chosen(decision)).toBe('pricey/local');
    expect(candidate(decision, 'cheap')).toMatchObject({ filter: 'health', reason: 'phi 12.0 above the limit 8' });
    expect(candidate(decision, 'mid')).toMatchObject({ filter: 'health', reason: 'suspected down (phi 0.0)' });
    if (decision.ok) expect(decision.choice.factors.health.value).toBe(0.75);
  });

  it('anti-affinity filter and spread factor read the group counts', () => {
    const m = fleet();
    m.apply(create(spec('db1', { constraints: { antiAffinityGroup: 'db', spreadGroup: 'web' } })));
    m.apply(assign('db1', 'cheap', 1));
    const view = buildPlacementView(m);
    const decision = place(spec('db2', { constraints: { antiAffinityGroup: 'db' } }), view);
    expect(candidate(decision, 'cheap')).toMatchObject({ filter: 'anti-affinity', reason: 'already holds 1 VM of anti-affinity group db' });
    expect(chosen(decision)).toBe('mid/local');
    const spread = place(spec('web2', { constraints: { spreadGroup: 'web' } }), view);
    const cheap = candidate(spread, 'cheap');
    expect(cheap.status === 'eligible' && cheap.factors.spread).toMatchObject({ value: 0.5, detail: '1 VM of spread group web here' });
  });

  it('binpack prefers the fuller region and spread the emptier one when cost does not decide', () => {
    const m = machineWith(registerRegion('aa', [localProvider(16, 64, 0.01)]), registerRegion('bb', [localProvider(16, 64, 0.01)]));
    m.apply(create(spec('x', { vcpus: 8 })));
    m.apply(assign('x', 'bb', 1));
    const view = buildPlacementView(m);
    expect(chosen(place(spec('y'), view, resolvePlacementOptions({ strategy: 'binpack' })))).toBe('bb/local');
    expect(chosen(place(spec('y'), view, resolvePlacementOptions({ strategy: 'spread' })))).toBe('aa/local');
  });

  it('weights are configurable: cost weight 0 lets headroom decide', () => {
    const view = buildPlacementView(fleet());
    const options = resolvePlacementOptions({ strategy: 'spread', weights: { cost: 0 } });
    expect(chosen(place(spec('a'), view, options))).toBe('pricey/local');
    expect(() => resolvePlacementOptions({ weights: { cost: -1 } })).toThrow('placement weights.cost');
  });

  it('ties go to the region name, and decisions are identical across runs and view orders', () => {
    const regions = ['zz', 'mm', 'aa'].map((name) => registerRegion(name, [localProvider(8, 16, 0.01)]));
    const m1 = machineWith(...regions);
    const m2 = machineWith(...[...regions].reverse());
    const d1 = place(spec('a'), buildPlacementView(m1));
    const d2 = place(spec('a'), buildPlacementView(m2));
    expect(chosen(d1)).toBe('aa/local');
    expect(d1).toEqual(d2);
    // Factor details are built on read; JSON carries them, and they agree too.
    expect(JSON.stringify(d1)).toBe(JSON.stringify(d2));
    expect(JSON.stringify(d1)).toContain('"detail":"$0.028/h, cheapest $0.028/h"');
    if (d1.ok) expect(d1.alternatives.map((a) => a.region)).toEqual(['mm', 'zz']);
    expect(place(spec('a'), buildPlacementView(m1))).toEqual(d1);
  });

  it('a spec that fits nowhere gets every region\'s reason', () => {
    const m = fleet();
    const decision = place(spec('a', { vcpus: 40, constraints: { jurisdictions: ['eu'], maxHourlyUsd: 1 } }), buildPlacementView(m));
    expect(decision).toMatchObject({ ok: false, code: 'no_fit' });
    if (decision.ok) return;
    expect(decision.message).toBe(
      'a fits no region (3): cheap: capacity: local needs 40 vCPUs, 8 vCPUs free of 8 vCPUs; mid: constraint: jurisdiction us is not among the allowed ones (eu); ' +
        'pricey: providers: provider aws is spot capacity and the spec does not allow spot; provider local costs $2.008/h, above the limit $1/h',
    );
    expect(decision.candidates.every((c) => c.status === 'excluded')).toBe(true);
  });

  it('a spec larger than every region is refused naming the largest capacity', () => {
    const decision = place(spec('huge', { vcpus: 100, spot: true }), buildPlacementView(fleet()));
    expect(decision).toMatchObject({ ok: false, code: 'too_large', message: "huge needs 100 vCPUs, larger than every region's capacity: the largest is pricey/local with 64 vCPUs" });
    const memory = place(spec('huge', { memoryBytes: 512 * GIB }), buildPlacementView(fleet()));
    expect(memory).toMatchObject({ ok: false, code: 'no_fit' });
    const local = machineWith(registerRegion('solo', [localProvider(8, 16)]));
    expect(place(spec('huge', { memoryBytes: 512 * GIB }), buildPlacementView(local))).toMatchObject({
      code: 'too_large',
      message: "huge needs 512 GiB of memory, larger than every region's capacity: the largest is solo/local with 16 GiB of memory",
    });
  });

  it('an unknown region in a constraint or as origin is an error, not a no-fit', () => {
    const view = buildPlacementView(fleet());
    expect(place(spec('a', { constraints: { regions: ['cheap', 'atlantis'] } }), view)).toMatchObject({ ok: false, code: 'unknown_region', message: 'a: unknown region atlantis (the fleet has 3 regions)' });
    expect(place(spec('a', { constraints: { maxRtt: { region: 'atlantis', ms: 5 } } }), view)).toMatchObject({ code: 'unknown_region' });
    expect(place(spec('a'), view, resolvePlacementOptions({ origin: 'atlantis' }))).toMatchObject({ code: 'unknown_region' });
  });

  it('a choice on a view of the log state is accepted by the log', () => {
    const m = fleet();
    for (let i = 0; i < 40; i++) {
      const s = spec(`vm${i}`, { vcpus: 1 + (i % 4), spot: i % 3 === 0 });
      m.apply(create(s));
      const decision = place(s, buildPlacementView(m), resolvePlacementOptions({ strategy: i % 2 === 0 ? 'binpack' : 'spread' }));
      if (!decision.ok) {
        expect(decision.code).toMatch(/no_fit|too_large/);
        continue;
      }
      expect(m.apply(parseFleetCommand({ kind: 'assign', vm: s.name, region: decision.choice.region, provider: decision.choice.provider, generation: 1 }))).toMatchObject({ ok: true });
    }
  });

  it('policy filter: a region an enforced rule denies is excluded naming the policy, the rule and its message', () => {
    const m = fleet();
    m.apply(setPolicy(1, [{ selector: { labels: { 'data-class': 'personal' } }, condition: "region.jurisdiction == 'us'", message: 'personal data stays in the US' }], 'us-residency'));
    const pii = spec('pii', { labels: { 'data-class': 'personal' } });
    const decision = place(pii, buildPlacementView(m));
    expect(chosen(decision)).toBe('mid/local');
    expect(candidate(decision, 'cheap')).toEqual({
      status: 'excluded',
      region: 'cheap',
      filter: 'policy',
      reason: 'local denied by policy us-residency rule r1: personal data stays in the US',
      providers: [{ provider: 'local', filter: 'policy', reason: 'local denied by policy us-residency rule r1: personal data stays in the US', denials: [{ policy: 'us-residency', rule: 'r1', effect: 'deny', message: 'personal data stays in the US' }] }],
    });
    expect(formatPlacement(decision)).toContain('  cheap: excluded by policy: local denied by policy us-residency rule r1: personal data stays in the US');
    // The log accepts the choice and refuses what placement excluded.
    m.apply(create(pii));
    expect(m.apply(assign('pii', 'cheap', 1))).toMatchObject({ ok: false, code: 'policy_denied' });
    expect(m.apply(assign('pii', 'mid', 1))).toMatchObject({ ok: true });
    // A VM the selector does not match is placed as before.
    expect(chosen(place(spec('web1'), buildPlacementView(m)))).toBe('cheap/local');
  });

  it('policy filter: when the allowed region is full, the failure names the rule for every other region', () => {
    const m = fleet();
    m.apply(setPolicy(1, [{ selector: { labels: { 'data-class': 'personal' } }, condition: "region.jurisdiction == 'us'", message: 'personal data stays in the US' }], 'us-residency'));
    const decision = place(spec('pii', { vcpus: 40, labels: { 'data-class': 'personal' } }), buildPlacementView(m));
    expect(decision).toMatchObject({ ok: false, code: 'no_fit' });
    if (decision.ok) return;
    expect(decision.message).toContain('mid: capacity: local needs 40 vCPUs, 32 vCPUs free of 32 vCPUs');
    expect(decision.message).toContain('pricey: providers: provider aws is spot capacity and the spec does not allow spot; local denied by policy us-residency rule r1: personal data stays in the US');
  });

  it('policy filter: cost is the candidate provider\'s $/h, the operation create or place from the spec or the options', () => {
    const m = fleet();
    m.apply(setPolicy(1, [
      { condition: 'cost <= 0.05', message: 'too dear' },
      { condition: "operation == 'place'", effect: 'warn', message: 'pinned by hand' },
    ]));
    // 2 vCPUs, 4 GiB: cheap $0.028/h, mid $0.048/h, pricey $0.108/h.
    const decision = place(spec('web1', { constraints: { regions: ['pricey'] } }), buildPlacementView(m));
    expect(decision).toMatchObject({ ok: false, code: 'no_fit' });
    const open = place(spec('web1'), buildPlacementView(m), resolvePlacementOptions({ strategy: 'spread' }));
    expect(open.ok && open.candidates.map((c) => `${c.region}:${c.status === 'excluded' ? c.filter : 'eligible'}`)).toEqual(['cheap:eligible', 'mid:eligible', 'pricey:providers']);
    // Warnings ride on the candidate (operation create: the spec pins one region) and show in --explain.
    const pinned = place(spec('web1', { constraints: { regions: ['cheap'] } }), buildPlacementView(m));
    expect(pinned.ok && pinned.choice.policy).toMatchObject({ allowed: true, warnings: [{ rule: 'r2', message: 'pinned by hand' }] });
    expect(formatPlacement(pinned)[0]).toMatch(/; warn: policy p rule r2: pinned by hand$/);
    const asPlace = place(spec('web1', { constraints: { regions: ['cheap'] } }), buildPlacementView(m), { ...resolvePlacementOptions(), operation: 'place' });
    expect(asPlace.ok && asPlace.choice.policy).toBeUndefined();
  });

  it('makePlacementView refuses duplicate region names', () => {
    const r: PlacementRegionView = { name: 'a', jurisdiction: null, compliance: [], labels: {}, providers: [], phi: 0, suspected: false };
    expect(() => makePlacementView([r, r], new Map(), () => new Map())).toThrow('two regions share a name');
  });
});
