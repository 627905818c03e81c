/**
 * The pending-create journal: one durable entry per VM create this daemon
 * has started and not yet finished, so a create that stops half way (the
 * launch went through but the daemon crashed, timed out, was cancelled, or
 * could not tag the VM) is found and finished by a later inventory sync
 * instead of leaking a VM nobody accounts for.
 *
 * Invariants:
 * - An entry is durable (fsynced) BEFORE the launch request is sent, and is
 *   removed only once the VM carries its tags, the provider refused the
 *   launch outright, or the VM never appeared within the grace period.
 * - The entry's token is the launch's idempotency token (EC2 ClientToken,
 *   GCE requestId) and also a tag on the VM from its launch, which is how a
 *   sync finds the VM even when the daemon never learned its id.
 * - At most MAX_PENDING_CREATES entries: past that, creates are refused
 *   until syncs have resolved some, rather than the file growing unbounded.
 */
import { z } from 'zod';
import { CoalescedWrites, readStateFile, writeStateFile } from './state-file.ts';
import { DwcpError } from '../errors.ts';

/** Above the most creates a region runs at once (the local provider's 1 024), so a full region's failover fits. */
export const MAX_PENDING_CREATES = 4_096;

const EntrySchema = z.object({
  token: z.string().min(1),
  /** The configured provider name. */
  provider: z.string().min(1),
  name: z.string(),
  type: z.string(),
  /** The tags still to apply once the VM is recorded (the provider's default tags). */
  tags: z.record(z.string(), z.string()),
  /** ISO 8601. */
  requestedAt: z.string(),
  /** Known once the provider accepted the launch. */
  instanceId: z.string().nullable(),
});
const FileSchema = z.object({ version: z.literal(1), pending: z.array(EntrySchema) });

export type PendingCreate = z.infer<typeof EntrySchema>;

export class JournalFullError extends DwcpError<'exhausted'> {
  constructor(message: string) {
    super('exhausted', message);
  }
}

export class CreateJournal {
  readonly path: string;
  readonly #entries = new Map<string, PendingCreate>();
  // Concurrent creates share writes (group commit): each change still resolves only once a write holding it is on disk.
  readonly #writes = new CoalescedWrites(() => writeStateFile(this.path, { version: 1, pending: [...this.#entries.values()] }));

  private constructor(path: string, entries: PendingCreate[]) {
    this.path = path;
    for (const e of entries) this.#entries.set(e.token, e);
  }

  /** `corrupt` says where an unreadable journal was moved and why; the journal then starts empty. */
  static async open(path: string): Promise<{ journal: CreateJournal; corrupt: { movedTo: string; reason: string } | null }> {
    const read = await readStateFile(path, FileSchema);
    if (read.state === 'corrupt') return { journal: new CreateJournal(path, []), corrupt: { movedTo: read.movedTo, reason: read.reason } };
    return { journal: new CreateJournal(path, read.state === 'ok' ? read.value.pending : []), corrupt: null };
  }

  list(provider?: string): PendingCreate[] {
    return [...this.#entries.values()].filter((e) => provider === undefined || e.provider === provider).map((e) => ({ ...e, tags: { ...e.tags } }));
  }

  /** How many entries (of one provider): list().length without copying them. */
  count(provider?: string): number {
    if (provider === undefined) return this.#entries.size;
    let n = 0;
    for (const e of this.#entries.values()) if (e.provider === provider) n++;
    return n;
  }

  has(token: string): boolean {
    return this.#entries.has(token);
  }

  async add(entry: PendingCreate): Promise<void> {
    if (this.#entries.size >= MAX_PENDING_CREATES) {
      throw new JournalFullError(`${this.#entries.size} creates are already pending completion (limit ${MAX_PENDING_CREATES}); let inventory syncs finish them first`);
    }
    this.#entries.set(entry.token, { ...entry, tags: { ...entry.tags } });
    await this.#save();
  }

  async setInstanceId(token: string, instanceId: string): Promise<void> {
    const entry = this.#entries.get(token);
    if (!entry) return;
    // Already set (by the create's progress event, not awaited): resolve once the write carrying it is done.
    if (entry.instanceId === instanceId) return this.#writes.drain();
    entry.instanceId = instanceId;
    await this.#save();
  }

  async remove(token: string): Promise<void> {
    if (this.#entries.delete(token)) await this.#save();
  }

  /** Resolves once every change so far is on disk. */
  flush(): Promise<void> {
    return this.#writes.drain();
  }

  #save(): Promise<void> {
    return this.#writes.save();
  }
}
