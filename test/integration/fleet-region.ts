/**
 * Node i of a real-process fleet test as a fleet region: one local provider
 * of declared capacity and price, instant provider transitions, and fleet
 * timings short enough for a test (reports every 500 ms, reconcile passes
 * every 500 ms, quick back-off); and the wait until every region declared
 * itself to the federation log (its own log line, no polling).
 */
import type { RaftCluster } from './raft-cluster.ts';

export interface LocalRegion {
  readonly vcpus: number;
  readonly pricePerVcpuHour: number;
  readonly jurisdiction: string;
}

/** The config of node i (index from 0) as such a region, to merge as RaftCluster's `extra`. */
export function localFleetRegion(i: number, r: LocalRegion): Record<string, unknown> {
  return {
    node: { jurisdiction: r.jurisdiction },
    clouds: {
      providers: [
        { kind: 'local', region: `dc${i + 1}`, capacity: { vcpus: r.vcpus, memoryGiB: 32, diskGiB: 500 }, pricePerVcpuHour: r.pricePerVcpuHour, pricePerGiBHour: 0, inventoryIntervalMs: 500, transitionDelayMs: 0 },
      ],
    },
    fleet: { publishIntervalMs: 500, staleAfterMs: 5_000, reconcileIntervalMs: 500, backoffBaseMs: 100, backoffCapMs: 400 },
  };
}

export async function regionsDeclared(cluster: RaftCluster): Promise<void> {
  await Promise.all(cluster.up.map((i) => cluster.daemon(i).waitForLog((l) => l.msg === 'fleet region declared', `n${i + 1} declares its region`)));
}
