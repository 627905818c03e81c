/**
 * Where the daemon keeps its `local` provider's simulated VMs: one JSON file
 * in the data directory, so local VMs survive a restart with the same
 * lifecycle (a VM pending at shutdown settles to running on the next read).
 *
 * Invariants: the file is rewritten whole and atomically on every change
 * (state-file.ts); reads come from memory, as copies (MemoryVmStore); the
 * provider already serialises its store accesses, and writes are queued
 * besides, so the file always holds the latest change. A corrupt file is moved aside and reported
 * by `open`, and the store starts empty.
 */
import { z } from 'zod';
import { INSTANCE_STATES } from '../provider.ts';
import { readStateFile, writeStateFile, WriteQueue } from '../state-file.ts';
import { MemoryVmStore, type LocalVmRecord } from './local-provider.ts';

const state = z.enum(INSTANCE_STATES);
const RecordSchema = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  type: z.string(),
  image: z.string(),
  tags: z.record(z.string(), z.string()),
  spot: z.boolean(),
  userData: z.string().nullable(),
  idempotencyToken: z.string().nullable(),
  state,
  transition: z.object({ to: state, at: z.number() }).nullable(),
  createdAt: z.number(),
  stateSince: z.number(),
  launchTime: z.number().nullable(),
  privateIp: z.string(),
});
const FileSchema = z.object({ version: z.literal(1), vms: z.array(RecordSchema) });

export class FileVmStore extends MemoryVmStore {
  readonly path: string;
  readonly #writes = new WriteQueue();

  private constructor(path: string, records: LocalVmRecord[]) {
    super(records);
    this.path = path;
  }

  /** `corrupt` says where an unreadable file was moved and why; the store then starts empty. */
  static async open(path: string): Promise<{ store: FileVmStore; corrupt: { movedTo: string; reason: string } | null }> {
    const read = await readStateFile(path, FileSchema);
    if (read.state === 'corrupt') return { store: new FileVmStore(path, []), corrupt: { movedTo: read.movedTo, reason: read.reason } };
    return { store: new FileVmStore(path, read.state === 'ok' ? read.value.vms : []), corrupt: null };
  }

  override async put(record: LocalVmRecord): Promise<void> {
    await super.put(record);
    await this.#save();
  }

  override async delete(id: string): Promise<void> {
    if ((await this.get(id)) === undefined) return;
    await super.delete(id);
    await this.#save();
  }

  #save(): Promise<void> {
    // The records are read when the write runs, so queued writes never store an older state over a newer one.
    return this.#writes.run(async () => writeStateFile(this.path, { version: 1, vms: await this.list() }));
  }
}
