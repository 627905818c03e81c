/**
 * The last inventory of one provider on disk (`<dataDir>/cloud/<name>/
 * inventory.json`), so a restarted daemon answers `vm list` at once with the
 * previous inventory and its age, before its first sync. This is the local
 * stand-in for the geo-replicated state records other regions will read.
 *
 * Invariants: written atomically and only when the instances changed (an
 * idle fleet costs no disk writes), so `syncedAt` on disk is the time of the
 * last sync that changed something; a restored snapshot is shown as such
 * until the first sync. An unreadable snapshot is moved aside and the
 * provider starts with no inventory until it syncs.
 */
import { z } from 'zod';
import { INSTANCE_STATES, PROVIDER_KINDS, type Instance } from './provider.ts';
import { readStateFile, writeStateFile, type StateFileRead } from './state-file.ts';

const isoDate = z.iso.datetime().transform((s) => new Date(s));

const InstanceSchema = z.object({
  id: z.string(),
  name: z.string(),
  provider: z.enum(PROVIDER_KINDS),
  region: z.string(),
  zone: z.string(),
  type: z.string(),
  vcpus: z.number().nullable(),
  memoryMiB: z.number().nullable(),
  state: z.enum(INSTANCE_STATES),
  providerState: z.string(),
  tags: z.record(z.string(), z.string()),
  spot: z.boolean(),
  launchTime: isoDate.nullable(),
  image: z.string().nullable(),
  privateIp: z.string().nullable(),
  publicIp: z.string().nullable(),
});

const SnapshotSchema = z.object({ version: z.literal(1), syncedAt: isoDate, instances: z.array(InstanceSchema) });

export interface InventorySnapshot {
  syncedAt: Date;
  instances: Instance[];
}

export function readSnapshot(path: string): Promise<StateFileRead<InventorySnapshot>> {
  return readStateFile(path, SnapshotSchema);
}

/** The instances part only: a sync that found nothing new leaves the file alone. */
export function instancesKey(instances: readonly Instance[]): string {
  return JSON.stringify([...instances].sort((a, b) => a.id.localeCompare(b.id)));
}

export function writeSnapshot(path: string, snapshot: InventorySnapshot): Promise<void> {
  return writeStateFile(path, { version: 1, syncedAt: snapshot.syncedAt, instances: snapshot.instances });
}
