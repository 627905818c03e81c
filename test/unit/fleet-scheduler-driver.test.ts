/**
 * The scheduler's driver over a real fleet state machine standing in for the
 * federation log (applying each command at once, as a log of one would):
 * plans commit, a plan that lost its capacity to another scheduler is
 * re-planned on fresh state, a failed request deletes the VM it created, and
 * a node whose own region is not declared yet still places (RTT is then
 * scored from nowhere).
 */
import { describe, expect, it } from 'vitest';
import { Counter, Histogram, Registry } from 'prom-client';
import { FleetScheduler, type SchedulerMetrics } from '../../src/fleet/fleet-scheduler.ts';
import { FleetLog, type FleetLogPort } from '../../src/fleet/log.ts';
import { DEFAULT_PLACEMENT_OPTIONS } from '../../src/fleet/placement.ts';
import { resolveSchedulerOptions } from '../../src/fleet/scheduler.ts';
import { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

function logOver(machine: FleetStateMachine, before?: (n: number) => void): FleetLog {
  let n = 0;
  const port: FleetLogPort = {
    state: () => machine,
    commit: async (command) => {
      before?.(n++);
      return machine.applyEntry(command);
    },
  };
  return new FleetLog(port, 'test-client');
}

/** Real prom-client metrics on a registry of their own; `seen` reads the placements counter back. */
function metrics(): SchedulerMetrics & { seen: () => Promise<string[]> } {
  const registers = [new Registry()];
  const placements = new Counter({ name: 'dwcp_fleet_placements_total', help: 'test', labelNames: ['result'], registers });
  const placementDuration = new Histogram({ name: 'dwcp_fleet_placement_duration_seconds', help: 'test', registers });
  const seen = async () => (await placements.get()).values.flatMap((v) => Array.from({ length: v.value }, () => String(v.labels.result)));
  return { placements, placementDuration, seen };
}

function scheduler(log: FleetLog, origin: string | null, m = metrics()): FleetScheduler {
  return new FleetScheduler({ log, observed: () => ({}), options: resolveSchedulerOptions({ placement: { ...DEFAULT_PLACEMENT_OPTIONS, origin } }), metrics: m });
}

describe('FleetScheduler (driver)', () => {
  it('commits create and assign on the cheapest region that fits', async () => {
    const machine = machineWith(registerRegion('a', [localProvider(4, 8, 0.03)]), registerRegion('b', [localProvider(4, 8, 0.01)]));
    const m = metrics();
    const outcome = await scheduler(logOver(machine), 'a', m).create(spec('web1'), 'running', 5_000);
    expect(outcome).toMatchObject({ ok: true, region: 'b', generation: 1, attempts: 1 });
    expect(machine.vm('web1')?.assignment).toMatchObject({ region: 'b', generation: 1 });
    expect(await m.seen()).toEqual(['placed']);
  });

  it('re-plans on fresh state when another scheduler took the capacity between plan and commit', async () => {
    const machine = machineWith(registerRegion('a', [localProvider(4, 8, 0.03)]), registerRegion('b', [localProvider(2, 8, 0.01)]));
    // Just before our first command commits, a rival fills b.
    const rival = (n: number) => {
      if (n !== 0) return;
      machine.apply({ kind: 'create', spec: spec('rival'), power: 'running' });
      machine.apply({ kind: 'assign', vm: 'rival', region: 'b', provider: 'local', generation: 1 });
    };
    const outcome = await scheduler(logOver(machine, rival), 'a').create(spec('web1'), 'running', 5_000);
    expect(outcome).toMatchObject({ ok: true, region: 'a', attempts: 2 });
    expect(machine.regionUsage('b').vcpus).toBe(2);
  });

  it('deletes and purges the VM it created when, after its create, no plan fits any more, and reports every reason', async () => {
    const machine = machineWith(registerRegion('a', [localProvider(2, 8)]));
    // Our create commits; just before our assign, a rival takes the only slot.
    const rival = (n: number) => {
      if (n !== 1) return;
      machine.apply({ kind: 'create', spec: spec('rival'), power: 'running' });
      machine.apply({ kind: 'assign', vm: 'rival', region: 'a', provider: 'local', generation: 1 });
    };
    const outcome = await scheduler(logOver(machine, rival), 'a').create(spec('web1'), 'running', 5_000);
    expect(outcome).toMatchObject({ ok: false, code: 'no_fit' });
    expect(outcome.ok ? [] : outcome.reasons.join('; ')).toMatch(/insufficient_capacity/);
    expect(machine.vm('web1')).toBeUndefined();
  });

  it('places from a node whose own region the log does not know yet', async () => {
    const machine = machineWith(registerRegion('b', [localProvider(4, 8)]));
    const decision = scheduler(logOver(machine), 'a').place(spec('web1'));
    expect(decision).toMatchObject({ ok: true, choice: { region: 'b' } });
  });
});
