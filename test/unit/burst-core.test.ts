/**
 * The burst core's rules one by one (windows, cooldown both ways, room,
 * newest first, missing data), the home load aggregation, replica specs, and
 * the `burst:` config's refusals. The invariants over whole load traces are
 * the simulator's (test/sim/burst-sim.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { BurstSettingsSchema } from '../../src/burst/config.ts';
import { EMPTY_BURST_STATE, evaluateBurst, type BurstCoreState, type GroupInput } from '../../src/burst/core.ts';
import { homeLoad } from '../../src/burst/home-load.ts';
import { BurstGroupSpecSchema, replicaSpec } from '../../src/burst/group.ts';
import { formatBurstStatus } from '../../src/cli/burst.ts';
import { formatIssue } from '../../src/config/issues.ts';

const T = BurstSettingsSchema.parse({ scaleOut: { cpuForMs: 60_000, memoryForMs: 60_000, queueAbove: 10 }, cooldownMs: 120_000 });
const TICK = 10_000;

function group(burst: string[] = [], queued = 0): GroupInput {
  return { name: 'web', home: 'dc1', min: 2, max: 5, burst, queued };
}

/** Ticks from `from` every TICK with this CPU, returning the decisions with their times. */
function drive(state: BurstCoreState, from: number, ticks: number, cpu: number, g: () => GroupInput) {
  const out: { at: number; kind: string }[] = [];
  let s = state;
  for (let i = 0; i < ticks; i++) {
    const now = from + i * TICK;
    const r = evaluateBurst(s, { nowMs: now, samples: new Map([['dc1', { atMs: now, cpu, memory: 0.3 }]]), groups: [g()] }, T);
    s = r.state;
    for (const d of r.decisions) out.push({ at: now, kind: d.kind });
  }
  return { state: s, out };
}

describe('burst core', () => {
  it('bursts on the tick the CPU window fills, again only after another window, and holds at max', () => {
    const burst: string[] = [];
    let s = EMPTY_BURST_STATE;
    const at: number[] = [];
    for (let i = 0; i < 40; i++) {
      const now = i * TICK;
      const r = evaluateBurst(s, { nowMs: now, samples: new Map([['dc1', { atMs: now, cpu: 0.95, memory: 0.3 }]]), groups: [group(burst)] }, T);
      s = r.state;
      for (const d of r.decisions) {
        at.push(now);
        if (d.kind === 'scale-out') burst.push(`web-b${burst.length + 1}`);
      }
    }
    // Room is max − min = 3: three steps, one CPU window apart, then it holds.
    expect(at).toEqual([60_000, 120_000, 180_000]);
    expect(s.groups.get('web')?.holding).toContain('but the group is at max (5 replicas)');
  });

  it('scales in the newest after the cooldown of quiet, counted from the last scale-out', () => {
    let s = drive(EMPTY_BURST_STATE, 0, 7, 0.95, () => group()).state;
    const r = evaluateBurst(s, { nowMs: 70_000, samples: new Map([['dc1', { atMs: 70_000, cpu: 0.1, memory: 0.1 }]]), groups: [group(['web-b1', 'web-b2'])] }, T);
    s = r.state;
    expect(r.decisions).toEqual([]);
    const later = drive(s, 80_000, 20, 0.1, () => group(['web-b1', 'web-b2']));
    // Quiet since 70 s; last scale-out at 60 s: the cooldown counts from 70 s, so 190 s.
    expect(later.out[0]).toEqual({ at: 190_000, kind: 'scale-in' });
    const d = evaluateBurst(later.state, { nowMs: 400_000, samples: new Map([['dc1', { atMs: 400_000, cpu: 0.1, memory: 0.1 }]]), groups: [group(['web-b1', 'web-b2'])] }, T).decisions[0];
    expect(d).toMatchObject({ kind: 'scale-in', vms: ['web-b2'] });
  });

  it('does not burst within the cooldown after a scale-in, and says why', () => {
    let s = drive(EMPTY_BURST_STATE, 0, 7, 0.95, () => group()).state;
    s = drive(s, 70_000, 14, 0.1, () => group(['web-b1'])).state; // scale-in at 190 s
    const held = drive(s, 210_000, 10, 0.95, () => group());
    expect(held.out).toEqual([]);
    expect(held.state.groups.get('web')?.holding).toContain('but the last scale-in was 110 s ago (cooldown 120 s)');
    // The window was full at 270 s; the cooldown since the scale-in at 190 s ends at 310 s.
    const r = drive(held.state, 310_000, 2, 0.95, () => group());
    expect(r.out).toEqual([{ at: 310_000, kind: 'scale-out' }]);
    expect(r.state.groups.get('web')?.holding).toContain('not yet a full window');
  });

  it('a queue above the threshold bursts at once; missing or stale samples decide nothing', () => {
    const q = evaluateBurst(EMPTY_BURST_STATE, { nowMs: 0, samples: new Map(), groups: [group([], 11)] }, T);
    expect(q.decisions[0]).toMatchObject({ kind: 'scale-out', trigger: 'queue' });
    let s = EMPTY_BURST_STATE;
    for (let i = 0; i < 20; i++) s = evaluateBurst(s, { nowMs: i * TICK + T.sampleMaxAgeMs + 1, samples: new Map([['dc1', { atMs: 0, cpu: 1, memory: 1 }]]), groups: [group()] }, T).state;
    expect(s.regions.get('dc1')?.cpuHighSince).toBeNull();
  });
});

describe('home load', () => {
  it('is used vCPUs and memory over declared capacity; VMs without samples add nothing; nothing is null', () => {
    const s = homeLoad(
      [
        { vcpus: 2, memoryMiB: 1024, sample: { atMs: 5, cpu: 1, memory: 0.5 } },
        { vcpus: 2, memoryMiB: 1024, sample: { atMs: 7, cpu: 0.5, memory: null } },
        { vcpus: 4, memoryMiB: 4096, sample: null },
      ],
      { vcpus: 4, memoryBytes: 2 * 1024 ** 3 },
    );
    expect(s).toEqual({ atMs: 5, cpu: 0.75, memory: 0.25 });
    expect(homeLoad([{ vcpus: 1, memoryMiB: 1, sample: null }], { vcpus: 1, memoryBytes: 1 })).toBeNull();
  });
});

describe('burst groups and config', () => {
  const g = BurstGroupSpecSchema.parse({ name: 'web', home: 'dc1', template: { vcpus: 1, memoryBytes: 1024 ** 3, image: 'base', labels: { team: 'a' } }, min: 1, max: 3 });

  it('home replicas are pinned home; burst replicas go to the clouds; both carry the group labels', () => {
    expect(replicaSpec(g, 'home', 'web-h1')).toMatchObject({ name: 'web-h1', constraints: { regions: ['dc1'], providers: ['local', 'qemu'] }, labels: { team: 'a', 'dwcp-burst-group': 'web', 'dwcp-burst-role': 'home' } });
    expect(replicaSpec(g, 'burst', 'web-b1')).toMatchObject({ constraints: { providers: ['aws', 'gcp'] }, labels: { 'dwcp-burst-role': 'burst' } });
  });

  it('refusals name the field', () => {
    const problems = (input: unknown) => {
      const r = BurstSettingsSchema.safeParse(input, { reportInput: true });
      return r.success ? [] : r.error.issues.map((i) => formatIssue(i));
    };
    expect(problems({ scaleIn: { cpuBelow: 0.95 } })).toEqual(['scaleIn.cpuBelow: 0.95 must be below scaleOut.cpuAbove (0.9), or a region could be high and low at once']);
    expect(problems({ cooldownMs: -1 })[0]).toContain('cooldownMs: -1 is too small');
    expect(problems({ groups: [{ name: 'web', home: 'dc1', template: { vcpus: 1, memoryBytes: 1024 ** 3, image: 'b' }, min: 1, max: 2 }, { name: 'web', home: 'dc1', template: { vcpus: 1, memoryBytes: 1024 ** 3, image: 'b' }, min: 1, max: 2 }] })).toEqual([
      'groups[1].name: "web" is already the name of groups[0]',
    ]);
  });

  it('status renders per group home, state, replicas, windows, last decision and why', () => {
    const text = formatBurstStatus(
      [
        {
          name: 'web', home: 'dc1', min: 2, max: 5, drivenBy: 'dc1', drivenHere: true, state: 'burst',
          replicas: { home: 2, queued: 0, burst: 1, burstNames: ['web-b1'] },
          windows: { sample: { atMs: 0, cpu: 0.95, memory: 0.4 }, cpuHighSince: 40_000, memoryHighSince: null, quietSince: null, queue: 0 },
          last: { kind: 'scale-out', atMs: 0, reason: 'home CPU 95 % above 90 % for 300 s (window 300 s)', vms: ['web-b1@aws-eu/aws'], outcome: 'ok' },
          holding: 'scaled out',
        },
      ],
      100_000,
    );
    expect(text).toContain('web    dc1   burst  2/2');
    expect(text).toContain('95.0%');
    expect(text).toContain('60s');
    expect(text).toContain('web: last scale-out 1970-01-01T00:00:00.000Z: home CPU 95 % above 90 % for 300 s (window 300 s) [web-b1@aws-eu/aws]');
  });
});
