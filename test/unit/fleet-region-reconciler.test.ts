/**
 * RegionReconciler against the real cloud inventory and local provider (the
 * core is tested alone in fleet-reconciler.test.ts): a desired VM assigned
 * to this region is created with the fleet's tags and reported running.
 * Regression: the copy's tags carried the create-token tag, which the
 * inventory reserves for itself and refused, so no managed create ever
 * reached a provider.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, expect, it } from 'vitest';
import { CREATE_TOKEN_TAG, CloudsSchema } from '../../src/cloud/config.ts';
import { CloudInventory } from '../../src/cloud/inventory.ts';
import { createCloudMetrics } from '../../src/cloud/metrics.ts';
import { RegionReconciler, uuidFromToken } from '../../src/fleet/region-reconciler.ts';
import { DESIRED_VM_TAG, createToken } from '../../src/fleet/reconciler.ts';
import { createLogger } from '../../src/log.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

it('creates an assigned VM through the real inventory with the fleet tags and reports it running', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-region-reconciler-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const log = createLogger('silent');
  const inventory = await CloudInventory.open({
    clouds: CloudsSchema.parse({ providers: [{ kind: 'local', transitionDelayMs: 0, capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 100 } }] }),
    dataDir: dir,
    metrics: createCloudMetrics([new Registry()]),
    log,
  });
  inventory.start();
  cleanup.push(() => inventory.stop());
  const machine = machineWith(registerRegion('r1', [localProvider(8, 16)]));
  for (const command of [create(spec('web1', { vcpus: 1, memoryBytes: 1024 ** 3 })), assign('web1', 'r1', 1)]) expect(machine.apply(command).ok).toBe(true);
  const failures: string[] = [];
  const reconciler = new RegionReconciler({
    region: 'r1',
    desired: () => machine,
    inventory,
    metrics: { reconcileActions: { inc: (labels?: { result?: string }) => void (labels?.result === 'error' && failures.push('error')) } as never },
    log,
    intervalMs: 60_000,
  });
  reconciler.start();
  cleanup.push(() => reconciler.stop());
  // Passes until the copy runs: the create, then an inventory sync that sees it running (asked for here; the daemon's is on its interval).
  for (let i = 0; i < 50 && reconciler.reports().get('web1')?.status !== 'running'; i++) {
    await inventory.list({ refresh: true });
    await reconciler.nextPass();
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  expect(reconciler.reports().get('web1')).toMatchObject({ status: 'running', generation: 1 });
  expect(failures).toEqual([]);
  const copies = (await inventory.list({})).instances.filter((e) => e.instance.tags[DESIRED_VM_TAG] === 'web1');
  expect(copies).toHaveLength(1);
  // The inventory set the token tag itself, from the idempotency token the reconciler derived.
  expect(copies[0]?.instance.tags[CREATE_TOKEN_TAG]).toBe(uuidFromToken(createToken('web1', 1)));
});
