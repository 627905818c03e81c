/**
 * The reply cache: per client, the last request executed (by timestamp), the
 * sequence number it executed at and its result. It is what makes execution
 * at-most-once per (client, timestamp), and it is part of the checkpointed
 * state, so a replica that installs a checkpoint deduplicates exactly like
 * one that executed every batch.
 *
 * Invariants: a client's timestamp never decreases; the table holds at most
 * `capacity` clients, and when full forgets the one with the smallest
 * (seq, client), a rule every replica applies identically whatever path
 * (execution or state transfer) built its table.
 */
import type { ClientId, ClientRecord } from './types.ts';
import { invariant } from './types.ts';

export class ClientTable {
  readonly #capacity: number;
  readonly #records = new Map<ClientId, ClientRecord>();

  constructor(capacity: number, records: readonly ClientRecord[] = []) {
    this.#capacity = capacity;
    for (const r of records) this.#records.set(r.client, r);
  }

  get size(): number {
    return this.#records.size;
  }

  get(client: ClientId): ClientRecord | undefined {
    return this.#records.get(client);
  }

  /** Highest timestamp executed for the client, or -1. */
  timestamp(client: ClientId): number {
    return this.#records.get(client)?.timestamp ?? -1;
  }

  record(entry: ClientRecord): void {
    const previous = this.#records.get(entry.client);
    invariant(
      previous === undefined || previous.timestamp < entry.timestamp,
      () => `client ${entry.client} executed timestamp ${entry.timestamp} after ${String(previous?.timestamp)}`,
    );
    this.#records.set(entry.client, entry);
    if (this.#records.size > this.#capacity) this.#evictOldest();
  }

  #evictOldest(): void {
    let oldest: ClientRecord | null = null;
    for (const r of this.#records.values()) {
      if (oldest === null || r.seq < oldest.seq || (r.seq === oldest.seq && r.client < oldest.client)) oldest = r;
    }
    if (oldest !== null) this.#records.delete(oldest.client);
  }

  /** The canonical form for a checkpoint: sorted by client. */
  records(): ClientRecord[] {
    return [...this.#records.values()].sort((a, b) => (a.client < b.client ? -1 : a.client > b.client ? 1 : 0));
  }

  replace(records: readonly ClientRecord[]): void {
    this.#records.clear();
    for (const r of records) this.#records.set(r.client, r);
  }
}
