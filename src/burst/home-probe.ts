/**
 * Reads this region's load for the burst driver: asks each on-premises
 * provider of this node (through the same UtilisationSource the cost
 * collector reads) what its running VMs used over the last `lookbackMs`,
 * keeps each VM's newest sample, and aggregates them over the capacity the
 * region declared in the log (home-load.ts). Cloud providers configured on
 * the home node are not home capacity and are left out.
 *
 * A provider's failure is logged and leaves its VMs without a sample (they
 * add nothing): a partial reading, never an invented one.
 */
import type { CloudInventory } from '../cloud/inventory.ts';
import type { Logger } from '../log.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import { homeCapacity, homeLoad, type MeasuredVm } from './home-load.ts';
import type { RegionSample } from './windows.ts';

export interface HomeProbeOptions {
  readonly region: string;
  readonly inventory: Pick<CloudInventory, 'list' | 'usageSources'>;
  readonly state: () => FleetState;
  readonly lookbackMs: number;
  readonly log: Logger;
  readonly now?: () => number;
}

export function homeProbe(o: HomeProbeOptions): () => Promise<RegionSample | null> {
  const now = o.now ?? Date.now;
  return async () => {
    const { instances } = await o.inventory.list();
    const vms: MeasuredVm[] = [];
    for (const { provider, kind, source } of o.inventory.usageSources()) {
      if (kind !== 'local' && kind !== 'qemu') continue;
      const running = instances.filter((e) => e.provider === provider && e.instance.state === 'running').map((e) => e.instance);
      if (running.length === 0) continue;
      const until = now();
      let newest = new Map<string, { atMs: number; cpu: number | null; memory: number | null }>();
      try {
        for (const s of await source.usage({ instances: running, sinceMs: until - o.lookbackMs, untilMs: until })) {
          const known = newest.get(s.instanceId);
          if (known === undefined || s.atMs > known.atMs) newest.set(s.instanceId, s);
        }
      } catch (err) {
        o.log.warn({ provider, err: err instanceof Error ? err.message : String(err) }, 'burst: home utilisation query failed; its VMs add nothing to this reading');
        newest = new Map();
      }
      for (const i of running) vms.push({ vcpus: i.vcpus, memoryMiB: i.memoryMiB, sample: newest.get(i.id) ?? null });
    }
    return homeLoad(vms, homeCapacity(o.state().region(o.region)));
  };
}
