/**
 * The DR core (src/dr/controller.ts) and the reconciler's DR self-fencing
 * (src/fleet/reconciler.ts, options.dr), step by step: a region is failed
 * after exactly failAfterChecks consecutive failed checks (2 are not
 * enough, a good one resets the count); a node cut off from the log counts
 * nothing; one failover proposal per VM at a time, again after retryMs; no
 * failover into a failed DR region; failback only from the DR region, once
 * the copy runs there and the home region passed every check for the
 * window (a flap restarts it); and the reconciler stopping protected copies
 * when cut off, holding a failed-over copy for fenceHoldMs.
 */
import { describe, expect, it } from 'vitest';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import { EMPTY_DR_MEMORY, stepDr, type DrInput, type DrMemory, type DrOptions, type DrResult } from '../../src/dr/controller.ts';
import { EMPTY_RECONCILER_MEMORY, reconcile, type ObservedVm } from '../../src/fleet/reconciler.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const OPTIONS: DrOptions = { checkIntervalMs: 5_000, failAfterChecks: 3, stabilisationMs: 60_000, retryMs: 10_000 };

function fleet(failback: 'auto' | 'manual' = 'auto'): FleetStateMachine {
  const m = machineWith(registerRegion('dc1', [localProvider(8, 16)]), registerRegion('dc2', [localProvider(8, 16)]), registerRegion('dc3', [localProvider(8, 16)]));
  for (const c of [create(spec('web1')), assign('web1', 'dc1', 1), parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', failback })]) expect(m.apply(c)).toMatchObject({ ok: true });
  return m;
}

/** Steps one node's core through check rounds: `rounds[i]` maps region → ok at time i × interval. */
class Node {
  memory: DrMemory = EMPTY_DR_MEMORY;
  inFlight = new Set<string>();
  running = new Set<string>();
  readonly self: string;
  readonly m: FleetStateMachine;
  constructor(self: string, m: FleetStateMachine) {
    this.self = self;
    this.m = m;
  }
  step(at: number, checks: Record<string, boolean>, extra: Partial<DrInput> = {}): DrResult {
    const result = stepDr({
      self: this.self,
      now: at,
      fleet: this.m,
      local: { runningHere: (vm, g) => this.running.has(`${vm}@${g}`) },
      checks: Object.entries(checks).map(([region, ok]) => ({ region, ok, at })),
      logCurrent: true,
      memory: this.memory,
      inFlight: this.inFlight,
      options: OPTIONS,
      ...extra,
    });
    this.memory = result.memory;
    return result;
  }
}

const proposals = (r: DrResult) => r.effects.filter((e) => e.kind === 'propose');

describe('DR core: detection and failover', () => {
  it('fails a region over after exactly 3 consecutive failed checks, never after 2; a good check resets the count', () => {
    const node = new Node('dc3', fleet());
    expect(proposals(node.step(0, { dc1: false, dc2: true }))).toEqual([]);
    expect(proposals(node.step(5_000, { dc1: false, dc2: true }))).toEqual([]);
    expect(proposals(node.step(10_000, { dc1: true, dc2: true }))).toEqual([]);
    expect(proposals(node.step(15_000, { dc1: false, dc2: true }))).toEqual([]);
    expect(proposals(node.step(20_000, { dc1: false, dc2: true }))).toEqual([]);
    const third = node.step(25_000, { dc1: false, dc2: true });
    expect(third.effects[0]).toMatchObject({ kind: 'region-failed', region: 'dc1', firstFailedAt: 15_000 });
    expect(proposals(third)).toEqual([{ kind: 'propose', vm: 'web1', why: 'failover', command: { kind: 'failover', vm: 'web1', region: 'dc1', generation: 1, reason: 'dc1 failed 3 consecutive checks (seen from dc3)', since: 15_000, at: 25_000 } }]);
  });

  it('counts nothing while its own view of the log is not current, and forgets what it counted', () => {
    const node = new Node('dc3', fleet());
    node.step(0, { dc1: false, dc2: true });
    node.step(5_000, { dc1: false, dc2: true });
    expect(proposals(node.step(10_000, { dc1: false, dc2: false }, { logCurrent: false }))).toEqual([]);
    expect(proposals(node.step(15_000, { dc1: false, dc2: true }))).toEqual([]);
    expect(proposals(node.step(20_000, { dc1: false, dc2: true }))).toEqual([]);
    expect(proposals(node.step(25_000, { dc1: false, dc2: true }))).toHaveLength(1);
  });

  it('one proposal per VM at a time, again after retryMs; none into a failed DR region; the log takes one of several', () => {
    const m = fleet();
    const node = new Node('dc3', m);
    for (const at of [0, 5_000]) node.step(at, { dc1: false, dc2: false });
    expect(proposals(node.step(10_000, { dc1: false, dc2: false }))).toEqual([]);
    const other = new Node('dc2', m);
    for (const at of [0, 5_000]) other.step(at, { dc1: false, dc3: true });
    const [mine] = proposals(other.step(10_000, { dc1: false, dc3: true }));
    other.inFlight.add('web1');
    expect(proposals(other.step(15_000, { dc1: false, dc3: true }))).toEqual([]);
    other.inFlight.clear();
    expect(proposals(other.step(15_000, { dc1: false, dc3: true }))).toEqual([]);
    expect(proposals(other.step(20_000, { dc1: false, dc3: true }))).toHaveLength(1);
    // dc3 now sees dc2 healthy and proposes too: the log takes the first, refuses the second.
    for (const at of [15_000, 20_000]) node.step(at, { dc1: false, dc2: true });
    const [theirs] = proposals(node.step(25_000, { dc1: false, dc2: true }));
    if (mine?.kind !== 'propose' || theirs?.kind !== 'propose') throw new Error('expected two proposals');
    expect(m.apply(parseFleetCommand(mine.command))).toMatchObject({ ok: true, region: 'dc2', generation: 2 });
    expect(m.apply(parseFleetCommand(theirs.command))).toMatchObject({ ok: false, code: 'stale_generation' });
  });
});

describe('DR core: failback', () => {
  function failedOver(failback: 'auto' | 'manual' = 'auto'): { m: FleetStateMachine; node: Node } {
    const m = fleet(failback);
    expect(m.apply(parseFleetCommand({ kind: 'failover', vm: 'web1', region: 'dc1', generation: 1, reason: 'lost', since: 0, at: 0 }))).toMatchObject({ ok: true });
    const node = new Node('dc2', m);
    node.running.add('web1@2');
    return { m, node };
  }

  it('from the DR region, once the copy runs there and the home region passed every check for the window', () => {
    const { node } = failedOver();
    node.running.clear();
    for (let at = 0; at <= 60_000; at += 5_000) expect(proposals(node.step(at, { dc1: true, dc3: true }))).toEqual([]);
    node.running.add('web1@2');
    expect(proposals(node.step(65_000, { dc1: true, dc3: true }))).toEqual([{ kind: 'propose', vm: 'web1', why: 'failback', command: { kind: 'migration-start', vm: 'web1', generation: 2, region: 'dc1', provider: 'local', mode: 'warm', purpose: 'failback', at: 65_000 } }]);
  });

  it('a region that flaps inside the window never brings the VM back (no ping-pong); manual never does', () => {
    const { node } = failedOver();
    // Up 50 s, down once, up 50 s, down once...: every failed check restarts the window.
    for (let at = 0; at <= 300_000; at += 5_000) expect(proposals(node.step(at, { dc1: at % 55_000 !== 50_000, dc3: true }))).toEqual([]);
    const manual = failedOver('manual').node;
    for (let at = 0; at <= 300_000; at += 5_000) expect(proposals(manual.step(at, { dc1: true, dc3: true }))).toEqual([]);
    // Not from another region than the DR region either.
    const third = new Node('dc3', failedOver().m);
    for (let at = 0; at <= 300_000; at += 5_000) expect(proposals(third.step(at, { dc1: true, dc2: true }))).toEqual([]);
  });
});

describe('reconciler DR self-fencing', () => {
  const fence = { maxAttempts: 3, backoffBaseMs: 1_000, backoffCapMs: 5_000, dr: { fenceAfterMs: 10_000, fenceHoldMs: 20_000 } };
  const copy = (id: string, state: ObservedVm['state'], generation: number): ObservedVm => ({ provider: 'local', id, name: 'web1', state, managed: true, vmName: 'web1', generation });

  it('a region cut off longer than fenceAfterMs stops its protected copies and starts none; unprotected ones keep running', () => {
    const m = fleet();
    m.apply(create(spec('db1')));
    m.apply(assign('db1', 'dc1', 1));
    const observed = [copy('i-1', 'running', 1), { ...copy('i-2', 'running', 1), name: 'db1', vmName: 'db1' }];
    const base = { region: 'dc1', desired: m, observed, memory: EMPTY_RECONCILER_MEMORY, inFlight: new Set<string>(), options: fence };
    expect(reconcile({ ...base, now: 20_000, logSeenAt: 15_000 }).actions.filter((a) => a.kind === 'stop')).toEqual([]);
    const cut = reconcile({ ...base, now: 30_000, logSeenAt: 15_000 });
    expect(cut.actions.filter((a) => a.kind === 'stop')).toEqual([{ kind: 'stop', provider: 'local', id: 'i-1', vm: 'web1', generation: 1, fence: 'self-fence' }]);
    const stopped = reconcile({ ...base, observed: [copy('i-1', 'stopped', 1)], now: 30_000, logSeenAt: 15_000 });
    expect(stopped.actions.filter((a) => a.kind === 'start')).toEqual([]);
    expect(reconcile({ ...base, observed: [copy('i-1', 'stopped', 1)], now: 30_000, logSeenAt: 29_000 }).actions.filter((a) => a.kind === 'start')).toHaveLength(1);
  });

  it('a daemon that has not proven its view of the log current since it started changes nothing but self-fencing (its state may be mid-replay, or predate a failover)', () => {
    const m = fleet();
    m.apply(create(spec('db1')));
    m.apply(assign('db1', 'dc1', 1));
    const observed = [copy('i-1', 'stopped', 1), { ...copy('i-2', 'stopped', 1), name: 'db1', vmName: 'db1' }];
    const base = { region: 'dc1', desired: m, observed, memory: EMPTY_RECONCILER_MEMORY, inFlight: new Set<string>(), options: fence, now: 1_000, logSeenAt: 1_000 };
    const starts = (logConfirmed: boolean) => reconcile({ ...base, logConfirmed }).actions.filter((a) => a.kind === 'start').map((a) => a.vm);
    expect(starts(false)).toEqual([]);
    expect(starts(true).sort()).toEqual(['db1', 'web1']);
    // A copy its (stale) state calls stale is not fenced either; self-fencing still happens.
    const stale = { ...base, observed: [copy('i-1', 'running', 1), copy('i-9', 'running', 7)] };
    expect(reconcile({ ...stale, logConfirmed: false }).actions.filter((a) => a.kind === 'stop' || a.kind === 'terminate')).toEqual([]);
    expect(reconcile({ ...stale, logConfirmed: true }).actions.filter((a) => a.kind === 'stop').map((a) => a.kind === 'stop' && a.id)).toEqual(['i-9']);
    const cut = reconcile({ ...stale, logConfirmed: false, now: 30_000, logSeenAt: 1_000 });
    expect(cut.actions.filter((a) => a.kind === 'stop').map((a) => a.kind === 'stop' && a.fence)).toEqual(['self-fence']);
  });

  it('the DR region holds a failed-over copy for fenceHoldMs after it first saw the failover', () => {
    const m = fleet();
    m.apply(parseFleetCommand({ kind: 'failover', vm: 'web1', region: 'dc1', generation: 1, reason: 'lost', since: 0, at: 0 }));
    const base = { region: 'dc2', desired: m, observed: [], inFlight: new Set<string>(), options: fence };
    const first = reconcile({ ...base, memory: EMPTY_RECONCILER_MEMORY, now: 100_000, logSeenAt: 100_000 });
    expect(first.actions.map((a) => a.kind)).toEqual(['status']);
    const held = reconcile({ ...base, memory: first.memory, now: 119_000, logSeenAt: 119_000 });
    expect(held.actions.filter((a) => a.kind === 'create')).toEqual([]);
    const after = reconcile({ ...base, memory: held.memory, now: 120_000, logSeenAt: 120_000 });
    expect(after.actions.filter((a) => a.kind === 'create')).toMatchObject([{ vm: 'web1', generation: 2, provider: 'local' }]);
  });
});
