/**
 * The migrator (the coordinator's driver) in one process: two regions, each
 * with a real cloud inventory over a local provider and its real region
 * reconciler, one FleetStateMachine standing in for the federation log, and
 * the target's inventory published as the fleet view the migrator reads.
 * A cold migration completes (the log moves the VM, the source copy is
 * fenced, the metrics count it); a target that stops reporting makes it
 * roll back with the VM running at the source again.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counter, Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudsSchema } from '../../src/cloud/config.ts';
import { CloudInventory } from '../../src/cloud/inventory.ts';
import { createCloudMetrics } from '../../src/cloud/metrics.ts';
import { parseFleetCommand, type FleetCommandInput } from '../../src/fleet/commands.ts';
import type { FleetView, RegionView, VmView } from '../../src/fleet/fleet-view.ts';
import { DESIRED_VM_TAG } from '../../src/fleet/reconciler.ts';
import { RegionReconciler } from '../../src/fleet/region-reconciler.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { createLogger } from '../../src/log.ts';
import { createMigrationMetrics } from '../../src/migration/metrics.ts';
import { Migrator } from '../../src/migration/migrator.ts';
import { localTransfer } from '../../src/migration/transfer.ts';
import { eventually } from '../integration/harness.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

const log = createLogger('silent');

async function inventory(): Promise<CloudInventory> {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-migrator-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const inv = await CloudInventory.open({
    clouds: CloudsSchema.parse({ providers: [{ kind: 'local', transitionDelayMs: 0, capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 } }] }),
    dataDir: dir,
    metrics: createCloudMetrics([new Registry()]),
    log,
  });
  inv.start();
  cleanup.push(() => inv.stop());
  return inv;
}

interface World {
  machine: FleetStateMachine;
  inventories: Record<'r1' | 'r2', CloudInventory>;
  migrator: Migrator;
  registry: Registry;
  /** Whether r2's report is current in the view the migrator reads. */
  reporting: { r2: boolean };
  apply(command: FleetCommandInput): void;
}

async function world(): Promise<World> {
  const machine = machineWith(registerRegion('r1', [localProvider(8, 16)]), registerRegion('r2', [localProvider(8, 16)]));
  const inventories = { r1: await inventory(), r2: await inventory() };
  const loops: { kick(): void; stop(): Promise<void>; start(): void }[] = [];
  const kickAll = () => loops.forEach((l) => l.kick());
  const apply = (command: FleetCommandInput) => {
    const result = machine.apply(parseFleetCommand(command));
    kickAll();
    return result;
  };
  const reconcileActions = new Counter({ name: 'test_actions', help: 'x', labelNames: ['action', 'result'], registers: [] });
  for (const region of ['r1', 'r2'] as const) {
    loops.push(new RegionReconciler({ region, desired: () => machine, inventory: inventories[region], metrics: { reconcileActions }, log, intervalMs: 50 }));
  }
  // The target's report as the geo store would carry it: refreshed from its inventory, current while `reporting`.
  const reporting = { r2: true };
  let published: VmView[] = [];
  const publisher = setInterval(() => {
    void inventories.r2.list({}).then(({ instances }) => {
      published = instances.map((e) => ({ region: 'r2', provider: e.provider, id: e.instance.id, tags: e.instance.tags, desiredVm: e.instance.tags[DESIRED_VM_TAG] ?? null, lastState: e.instance.state, shownState: e.instance.state }) as unknown as VmView);
    });
  }, 20);
  cleanup.push(() => clearInterval(publisher));
  const view = (): FleetView =>
    ({ self: 'r1', nowMs: Date.now(), staleAfterMs: 1000, regions: [{ region: 'r2', report: reporting.r2 ? 'current' : 'stale', reportAgeSeconds: reporting.r2 ? 0 : 30 } as unknown as RegionView], vms: reporting.r2 ? published : [] }) as FleetView;
  const registry = new Registry();
  const migrator = new Migrator({
    region: 'r1',
    desired: () => machine,
    commit: async (command) => apply(command),
    inventory: inventories.r1,
    view,
    transfers: { local: localTransfer() },
    metrics: createMigrationMetrics([registry]),
    log,
    coordinator: { prepareTimeoutMs: 400, transferIdleTimeoutMs: 2_000, verifyTimeoutMs: 5_000, cleanupTimeoutMs: 5_000, retryMs: 50, maxAttempts: 3 },
    intervalMs: 50,
    commitTimeoutMs: 1_000,
  });
  loops.push(migrator);
  for (const l of loops) l.start();
  cleanup.push(() => Promise.all(loops.map((l) => l.stop())).then(() => undefined));
  expect(machine.apply(create(spec('web1', { vcpus: 1, memoryBytes: 1024 ** 3 }))).ok).toBe(true);
  expect(machine.apply(assign('web1', 'r1', 1)).ok).toBe(true);
  kickAll();
  await running(inventories.r1, 'web1', '1');
  return { machine, inventories, migrator, registry, reporting, apply };
}

async function running(inv: CloudInventory, vm: string, generation: string): Promise<void> {
  await eventually(`${vm} g${generation} running`, 20_000, async () => {
    const { instances } = await inv.list({});
    return instances.find((e) => e.instance.tags[DESIRED_VM_TAG] === vm && e.instance.tags['dwcp-generation'] === generation && e.instance.state === 'running');
  }, 20);
}

async function ended(w: World, id: string) {
  return eventually(`${id} ended`, 20_000, async () => {
    const m = w.machine.migration(id);
    return m?.result === null ? undefined : m;
  }, 20);
}

describe('migrator', () => {
  it('drives a cold migration to its end: the log moves the VM, the target runs it, the source copy is fenced, the metrics count it', async () => {
    const w = await world();
    w.apply({ kind: 'migration-start', vm: 'web1', generation: 1, region: 'r2', provider: 'local', mode: 'cold', at: Date.now() });
    const m = await ended(w, 'm1');
    expect(m).toMatchObject({ result: 'completed', phase: 'cleanup', facts: { bytes: 0, rounds: 0 } });
    expect(m?.facts.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(w.machine.vm('web1')?.assignment).toEqual({ region: 'r2', provider: 'local', generation: 2 });
    await running(w.inventories.r2, 'web1', '2');
    const { instances } = await w.inventories.r1.list({});
    expect(instances.filter((e) => e.instance.tags[DESIRED_VM_TAG] === 'web1' && e.instance.state !== 'terminated')).toEqual([]);
    expect(w.machine.usage('r1', 'local')?.vcpus).toBe(0);
    expect(w.migrator.progress('m1')).toBeUndefined();
    const metrics = await w.registry.metrics();
    expect(metrics).toContain('dwcp_migrations_total{mode="cold",result="completed"} 1');
    expect(metrics).toMatch(/dwcp_migration_downtime_seconds_count\{mode="cold"\} 1/);
  }, 30_000);

  it('rolls back when the target stops reporting: the VM is not stopped for it, and runs at the source at its generation', async () => {
    const w = await world();
    w.reporting.r2 = false;
    w.apply({ kind: 'migration-start', vm: 'web1', generation: 1, region: 'r2', provider: 'local', mode: 'cold', at: Date.now() });
    const m = await ended(w, 'm1');
    expect(m).toMatchObject({ result: 'rolled-back', reason: expect.stringMatching(/r2\/local did not prepare a copy of web1 within 0.4 s \(its report is not current\)/) });
    expect(w.machine.vm('web1')?.assignment).toEqual({ region: 'r1', provider: 'local', generation: 1 });
    await running(w.inventories.r1, 'web1', '1');
    // The target's prepared copy is stale now and torn down by its reconciler.
    await eventually('the incoming copy gone', 20_000, async () => {
      const { instances } = await w.inventories.r2.list({});
      return instances.every((e) => e.instance.state === 'terminated') ? true : undefined;
    }, 20);
    expect(await w.registry.metrics()).toContain('dwcp_migrations_total{mode="cold",result="rolled-back"} 1');
  }, 30_000);
});
