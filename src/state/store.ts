/**
 * The durable side of the geo-distributed store: one LMDB environment under
 * <dataDir>/state (the embedded store Raft uses, opened the same way, so a
 * commit promise means fsynced), holding every entry and the replica's
 * counters, written a Ready at a time.
 *
 * Layout: sub-database `entries`, key = the entry's store key ("or-set:vms"),
 * value = a checksummed record (src/storage/lmdb-records.ts) of kind 1 whose
 * body is the entry's canonical JSON; sub-database `meta`, key "replica" = a
 * record of kind 2 holding {writeCounter, hlc}.
 *
 * Invariants:
 * - One persist() lands whole or not at all; the persists of one event-loop
 *   turn, and those queued while a commit is in flight, share one transaction
 *   and one fsync (GroupCommit), and each resolves only once it is on disk.
 * - load() checks every record. A damaged or undecodable entry is dropped and
 *   reported through onRepair rather than refusing to start: every entry is
 *   replicated, and anti-entropy fetches it again from the other regions (only
 *   writes of this region that never left it are lost, and they are named).
 *   The write counter is kept in `meta`, so a dropped entry never lets this
 *   region reuse a counter (entry.ts explains why that matters).
 */
import { join } from 'node:path';
import type { Database, RootDatabase } from 'lmdb';
import { GroupCommit, type CommitTimings } from '../storage/group-commit.ts';
import { openEnvironment, recordBuffer, recordHeaderProblem, RECORD_HEADER_BYTES, stampChecksum } from '../storage/lmdb-records.ts';
import { HLC_ZERO, decodeHlc, encodeHlc } from './clock/hlc.ts';
import { readCount, readObject } from './crdt/decode.ts';
import { decodeEntry, entryBytes, readKey, type Entry } from './entry.ts';
import type { PersistedReplica, Ready } from './replica.ts';

export const STATE_DIR = 'state';
const Kind = { entry: 1, meta: 2 } as const;
const META_KEY = 'replica';

export interface StateStoreOptions {
  /** Skip fsync (tests only): a machine crash may then lose acknowledged writes. */
  readonly noSync?: boolean;
  /** Called for each damaged record load() drops; defaults to a process warning. */
  readonly onRepair?: (message: string) => void;
  /** After each committed transaction. */
  readonly onCommit?: (timings: CommitTimings, entries: number) => void;
}

type PersistBatch = Pick<Ready, 'persist' | 'meta'>;

/** A batch encoded up front, so the transaction only puts bytes (and cannot fail on content). */
interface EncodedBatch {
  readonly records: ReadonlyMap<string, Buffer | null>;
  readonly meta: Buffer | null;
}

function record(kind: number, body: Uint8Array): Buffer {
  const buf = recordBuffer(kind, body.byteLength);
  buf.set(body, RECORD_HEADER_BYTES);
  return stampChecksum(buf);
}

function parseRecord(raw: Buffer, kind: number): unknown {
  const problem = recordHeaderProblem(raw, [kind]);
  if (problem !== null) throw new Error(problem);
  return JSON.parse(raw.subarray(RECORD_HEADER_BYTES).toString('utf8'));
}

export class StateStore {
  readonly dir: string;
  readonly #root: RootDatabase<Buffer, string>;
  readonly #entries: Database<Buffer, string>;
  readonly #meta: Database<Buffer, string>;
  readonly #commits: GroupCommit<EncodedBatch>;
  readonly #onRepair: (message: string) => void;

  private constructor(dir: string, root: RootDatabase<Buffer, string>, options: StateStoreOptions) {
    this.dir = dir;
    this.#root = root;
    this.#entries = root.openDB<Buffer, string>('entries', { encoding: 'binary' });
    this.#meta = root.openDB<Buffer, string>('meta', { encoding: 'binary' });
    this.#onRepair = options.onRepair ?? ((message) => process.emitWarning(message, 'StateStoreRepair'));
    this.#commits = new GroupCommit<EncodedBatch>({
      env: root,
      label: `state store ${dir}`,
      apply: (batch) => this.#apply(batch),
      ...(options.onCommit === undefined
        ? {}
        : { onCommit: (batches, timings) => options.onCommit?.(timings, batches.reduce((n, b) => n + b.records.size, 0)) }),
    });
  }

  /** Opens (creating if needed) the store under `dataDir`/state. */
  static async open(dataDir: string, options: StateStoreOptions = {}): Promise<StateStore> {
    const dir = join(dataDir, STATE_DIR);
    return new StateStore(dir, await openEnvironment(dir, options.noSync === true ? { noSync: true } : {}), options);
  }

  /** Everything stored, checked; damaged entries are dropped (see the module comment). */
  load(): PersistedReplica & { readonly entries: readonly [string, Entry][] } {
    const entries: [string, Entry][] = [];
    const damaged: string[] = [];
    for (const { key, value } of this.#entries.getRange()) {
      try {
        const storeKey = readKey(key, 'key');
        entries.push([storeKey, decodeEntry(parseRecord(value, Kind.entry), storeKey)]);
      } catch (err) {
        damaged.push(key);
        this.#onRepair(`state store ${this.dir}: entry ${JSON.stringify(String(key).slice(0, 200))} is damaged (${err instanceof Error ? err.message : String(err)}); dropped, anti-entropy will fetch it again from other regions`);
      }
    }
    if (damaged.length > 0) this.#root.transactionSync(() => damaged.forEach((key) => this.#entries.removeSync(key)));
    const metaRaw = this.#meta.get(META_KEY);
    if (metaRaw === undefined) return { entries, writeCounter: 0, hlc: HLC_ZERO };
    let meta: Record<string, unknown>;
    try {
      meta = readObject(parseRecord(metaRaw, Kind.meta), 'meta', ['writeCounter', 'hlc']);
      return { entries, writeCounter: readCount(meta.writeCounter, 'meta.writeCounter'), hlc: decodeHlc(meta.hlc, 'meta.hlc') };
    } catch (err) {
      // Without the counter this region could reissue counters peers have seen: refuse rather than guess.
      throw new Error(`state store ${this.dir}: the replica record is damaged (${err instanceof Error ? err.message : String(err)}); move ${this.dir} away to rejoin with an empty store`);
    }
  }

  /** Makes one Ready's entries and counters durable; resolves once they are on disk. */
  persist(batch: PersistBatch): Promise<void> {
    const records = new Map<string, Buffer | null>();
    for (const [key, entry] of batch.persist) records.set(key, entry === null ? null : record(Kind.entry, entryBytes(entry)));
    const meta =
      batch.meta === null ? null : record(Kind.meta, Buffer.from(JSON.stringify({ writeCounter: batch.meta.writeCounter, hlc: encodeHlc(batch.meta.hlc) }), 'utf8'));
    return this.#commits.enqueue({ records, meta });
  }

  /** Waits for queued writes, then closes the environment. */
  async close(): Promise<void> {
    await this.#commits.close();
    await this.#root.close();
  }

  #apply(batch: EncodedBatch): void {
    for (const [key, value] of batch.records) {
      if (value === null) this.#entries.removeSync(key);
      else this.#entries.putSync(key, value);
    }
    if (batch.meta !== null) this.#meta.putSync(META_KEY, batch.meta);
  }
}
