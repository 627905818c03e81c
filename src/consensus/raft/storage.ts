/**
 * Durable Raft storage: one LMDB environment holding one node's log, hard
 * state and latest snapshot, written in the order and with the durability the
 * Ready contract (types.ts) asks for, and read back whole at restart.
 *
 * Layout (sub-databases of the environment at `dir`):
 * - `entries`: key = index as 8 bytes big-endian (so LMDB's byte order is log
 *   order), value = one entry record;
 * - `meta`: key "hard_state" = the hard state record;
 * - `snapshot`: key 0 = the snapshot meta record, keys 1..n = its data in
 *   1 MiB chunk records (a snapshot of hundreds of MB never needs one huge
 *   LMDB overflow run, and a damaged chunk is named by number).
 * Every record is `crc32 u32 | kind u8 | body`, big-endian, the CRC (zlib's
 * CRC-32) over kind and body (src/storage/lmdb-records.ts). Bodies (u64 = safe integer as two u32):
 * - normal entry (kind 1): index u64, term u64, data (the rest);
 * - config entry (kind 2): index u64, term u64, membership;
 * - hard state (kind 3): term u64, commit u64, hasVote u8, [vote text];
 * - snapshot meta (kind 4): index u64, term u64, membership, dataBytes u64,
 *   chunks u32, dataCrc u32 (over the whole data);
 * - snapshot chunk (kind 5): snapshot index u64, chunk number u32, data;
 * - membership = voters count u32, texts, learners count u32, texts; text =
 *   u16 byte length + UTF-8.
 *
 * Invariants:
 * - A record carries its own index (entries, chunks), so one stored under the
 *   wrong key fails like a bad checksum does.
 * - One persist() or saveSnapshot() lands whole or not at all. The calls made
 *   in one event-loop turn, and those arriving while a commit is in flight,
 *   share one LMDB transaction and one fsync (group commit,
 *   src/storage/group-commit.ts); each resolves only once that transaction is
 *   on disk. The environment is opened without
 *   lmdb-js's overlappingSync, so its commit promise means "synced", not just
 *   "visible" (with overlappingSync the promise resolves before the fsync).
 * - Stored entries are contiguous from snapshot index + 1; a snapshot replaces
 *   every entry it covers.
 * - After a failed commit every later write is refused: what reached the disk
 *   is then unknown, and a Raft node must not go on acknowledging on top of it.
 * - load() checks every record. Damage at or below the commit index throws
 *   StorageCorruptionError (committed data is gone); damage above it drops the
 *   log from there and says so through onRepair, because that is safe only if
 *   this node never acknowledged those entries, which storage cannot know.
 */
import { crc32 } from 'node:zlib';
import type { Database, RootDatabase } from 'lmdb';
import { GroupCommit } from '../../storage/group-commit.ts';
import type { CommitTimings } from '../../storage/group-commit.ts';
import {
  hex32,
  openEnvironment,
  RECORD_HEADER_BYTES,
  recordBuffer,
  recordHeaderProblem,
  removeKeys,
  stampChecksum,
  u64FromKey,
  u64Key,
} from '../../storage/lmdb-records.ts';
import type { Entry, HardState, Membership, PersistedState, Ready, Snapshot, SnapshotMeta } from './types.ts';
import { EMPTY_MEMBERSHIP, RaftInputError } from './types.ts';
import { DwcpError } from '../../errors.ts';

export interface StorageTimings {
  /** Encoding plus writing the records into the transaction. */
  appendSeconds: number;
  /** Committing the transaction, fsync included, until its promise resolved. */
  syncSeconds: number;
  entries: number;
  bytes: number;
}

export interface RaftStorageOptions {
  /** Skip fsync (tests, throwaway nodes): a crash of the machine may then lose acknowledged writes. */
  noSync?: boolean;
  /** Called once per committed transaction. */
  onWrite?: (timings: StorageTimings) => void;
  /** Called when load() drops a damaged log tail above the commit index; defaults to a process warning. */
  onRepair?: (message: string) => void;
}

/** Stored data that fails its checks; `record` names it (e.g. "log entry 1234"). */
export class StorageCorruptionError extends DwcpError<'corrupt'> {
  readonly record: string;
  readonly problem: string;
  constructor(record: string, problem: string) {
    super('corrupt', `raft storage ${record}: ${problem}`);
    this.record = record;
    this.problem = problem;
  }
}

/** Names and key shapes of the stored layout, for tools and tests that inspect it without the decoder. */
export const STORAGE_LAYOUT = {
  entries: 'entries',
  meta: 'meta',
  snapshot: 'snapshot',
  hardStateKey: 'hard_state',
  snapshotMetaKey: 0,
  snapshotChunkBytes: 1024 * 1024,
} as const;

const Kind = { normal: 1, config: 2, hardState: 3, snapshotMeta: 4, snapshotChunk: 5 } as const;
type Kind = (typeof Kind)[keyof typeof Kind];

const MAX_TEXT_BYTES = 0xffff;
const TWO_POW_32 = 2 ** 32;

export const entryKey = u64Key;

// ------------------------------------------------------------------ records

class RecordWriter {
  #buf: Buffer;
  #pos = RECORD_HEADER_BYTES;

  constructor(kind: Kind, bodyBytesHint: number) {
    this.#buf = recordBuffer(kind, bodyBytesHint);
  }

  #reserve(bytes: number): void {
    if (this.#pos + bytes <= this.#buf.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#pos + bytes));
    this.#buf.copy(grown, 0, 0, this.#pos);
    this.#buf = grown;
  }

  u8(value: number): void {
    this.#reserve(1);
    this.#buf[this.#pos++] = value;
  }

  u32(value: number): void {
    this.#reserve(4);
    this.#buf.writeUInt32BE(value, this.#pos);
    this.#pos += 4;
  }

  u64(value: number): void {
    this.u32(Math.floor(value / TWO_POW_32));
    this.u32(value >>> 0);
  }

  bytes(value: Uint8Array): void {
    this.#reserve(value.length);
    this.#buf.set(value, this.#pos);
    this.#pos += value.length;
  }

  text(value: string, field: string): void {
    const bytes = Buffer.from(value, 'utf8');
    if (bytes.length > MAX_TEXT_BYTES) {
      throw new RaftInputError(`raft storage: ${field} is ${bytes.length} bytes, over the ${MAX_TEXT_BYTES}-byte limit`);
    }
    this.#reserve(2);
    this.#buf.writeUInt16BE(bytes.length, this.#pos);
    this.#pos += 2;
    this.bytes(bytes);
  }

  membership(membership: Membership, field: string): void {
    for (const [list, ids] of [['voters', membership.voters], ['learners', membership.learners]] as const) {
      this.u32(ids.length);
      ids.forEach((id, i) => this.text(id, `${field}.${list}[${i}]`));
    }
  }

  finish(): Buffer {
    return stampChecksum(this.#buf.subarray(0, this.#pos));
  }
}

class RecordReader {
  readonly kind: Kind;
  readonly #buf: Buffer;
  readonly #record: string;
  #pos = RECORD_HEADER_BYTES;

  constructor(buf: Buffer, record: string, kinds: readonly Kind[]) {
    this.#buf = buf;
    this.#record = record;
    const problem = recordHeaderProblem(buf, kinds);
    if (problem !== null) this.fail(problem);
    this.kind = buf[4] as Kind;
  }

  fail(problem: string): never {
    throw new StorageCorruptionError(this.#record, problem);
  }

  #take(bytes: number, what: string): number {
    if (this.#pos + bytes > this.#buf.length) this.fail(`record ends at byte ${this.#buf.length} while reading ${what}`);
    const at = this.#pos;
    this.#pos += bytes;
    return at;
  }

  u8(what: string): number {
    return this.#buf[this.#take(1, what)] ?? 0;
  }

  u32(what: string): number {
    return this.#buf.readUInt32BE(this.#take(4, what));
  }

  u64(what: string): number {
    const at = this.#take(8, what);
    const high = this.#buf.readUInt32BE(at);
    if (high > 0x1fffff) this.fail(`${what} exceeds 2^53`);
    return high * TWO_POW_32 + this.#buf.readUInt32BE(at + 4);
  }

  text(what: string): string {
    const length = this.#buf.readUInt16BE(this.#take(2, what));
    const at = this.#take(length, what);
    return this.#buf.toString('utf8', at, at + length);
  }

  membership(what: string): Membership {
    const lists: string[][] = [];
    for (const list of ['voters', 'learners']) {
      const count = this.u32(`${what} ${list} count`);
      // Each id takes at least its 2-byte length, so a count past that is damage, not a huge allocation.
      if (count * 2 > this.#buf.length - this.#pos) this.fail(`${what} ${list} count ${count} exceeds the record`);
      lists.push(Array.from({ length: count }, (_, i) => this.text(`${what} ${list}[${i}]`)));
    }
    return { voters: lists[0] ?? [], learners: lists[1] ?? [] };
  }

  /** The bytes left, without copying. */
  rest(): Buffer {
    const at = this.#pos;
    this.#pos = this.#buf.length;
    return this.#buf.subarray(at);
  }

  end(): void {
    if (this.#pos !== this.#buf.length) this.fail(`${this.#buf.length - this.#pos} unexpected trailing bytes`);
  }
}

function checkCount(value: number, field: string, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RaftInputError(`raft storage: ${field} must be an integer >= ${min}, got ${String(value)}`);
  }
}

function membershipHint(membership: Membership): number {
  let bytes = 8;
  for (const id of [...membership.voters, ...membership.learners]) bytes += 2 + id.length * 3;
  return bytes;
}

function encodeEntry(entry: Entry): Buffer {
  const field = `entry ${entry.index}`;
  checkCount(entry.index, `${field} index`, 1);
  checkCount(entry.term, `${field} term`, 1);
  if (entry.kind === 'normal') {
    if (!(entry.data instanceof Uint8Array)) throw new RaftInputError(`raft storage: ${field} data must be a Uint8Array`);
    const w = new RecordWriter(Kind.normal, 16 + entry.data.length);
    w.u64(entry.index);
    w.u64(entry.term);
    w.bytes(entry.data);
    return w.finish();
  }
  if (entry.kind !== 'config') throw new RaftInputError(`raft storage: ${field} kind must be normal or config`);
  const w = new RecordWriter(Kind.config, 16 + membershipHint(entry.membership));
  w.u64(entry.index);
  w.u64(entry.term);
  w.membership(entry.membership, `${field} membership`);
  return w.finish();
}

function decodeEntry(raw: Buffer, index: number): Entry {
  const r = new RecordReader(raw, `log entry ${index}`, [Kind.normal, Kind.config]);
  const stored = r.u64('index');
  if (stored !== index) r.fail(`record holds index ${stored}`);
  const term = r.u64('term');
  if (term < 1) r.fail('term 0');
  if (r.kind === Kind.normal) return { kind: 'normal', index, term, data: r.rest() };
  const membership = r.membership('membership');
  r.end();
  return { kind: 'config', index, term, membership };
}

function encodeHardState(hs: HardState): Buffer {
  checkCount(hs.term, 'hard state term', 0);
  checkCount(hs.commit, 'hard state commit', 0);
  const w = new RecordWriter(Kind.hardState, 19 + (hs.vote?.length ?? 0) * 3);
  w.u64(hs.term);
  w.u64(hs.commit);
  w.u8(hs.vote === null ? 0 : 1);
  if (hs.vote !== null) w.text(hs.vote, 'hard state vote');
  return w.finish();
}

function decodeHardState(raw: Buffer): HardState {
  const r = new RecordReader(raw, 'hard state', [Kind.hardState]);
  const term = r.u64('term');
  const commit = r.u64('commit');
  const hasVote = r.u8('vote flag');
  if (hasVote > 1) r.fail(`vote flag ${hasVote}`);
  const vote = hasVote === 1 ? r.text('vote') : null;
  r.end();
  return { term, vote, commit };
}

interface EncodedSnapshot {
  readonly index: number;
  readonly meta: Buffer;
  /** Chunk records 1..n, encoded one at a time inside the transaction so a big snapshot is not copied whole. */
  readonly chunks: () => Iterable<Buffer>;
  readonly bytes: number;
}

function encodeSnapshot(snapshot: Snapshot): EncodedSnapshot {
  const { meta, data } = snapshot;
  checkCount(meta.index, 'snapshot index', 0);
  checkCount(meta.term, 'snapshot term', 0);
  if (!(data instanceof Uint8Array)) throw new RaftInputError('raft storage: snapshot data must be a Uint8Array');
  const chunkBytes = STORAGE_LAYOUT.snapshotChunkBytes;
  const chunks = Math.ceil(data.length / chunkBytes);
  const metaWriter = new RecordWriter(Kind.snapshotMeta, 32 + membershipHint(meta.membership));
  metaWriter.u64(meta.index);
  metaWriter.u64(meta.term);
  metaWriter.membership(meta.membership, 'snapshot membership');
  metaWriter.u64(data.length);
  metaWriter.u32(chunks);
  metaWriter.u32(crc32(data));
  const metaRecord = metaWriter.finish();
  function* chunkRecords(): Iterable<Buffer> {
    for (let n = 1; n <= chunks; n++) {
      const part = data.subarray((n - 1) * chunkBytes, n * chunkBytes);
      const w = new RecordWriter(Kind.snapshotChunk, 12 + part.length);
      w.u64(meta.index);
      w.u32(n);
      w.bytes(part);
      yield w.finish();
    }
  }
  const bytes = metaRecord.length + chunks * (RECORD_HEADER_BYTES + 12) + data.length;
  return { index: meta.index, meta: metaRecord, chunks: chunkRecords, bytes };
}

const EMPTY_SNAPSHOT: Snapshot = { meta: { index: 0, term: 0, membership: EMPTY_MEMBERSHIP }, data: new Uint8Array(0) };
const ZERO_HARD_STATE: HardState = { term: 0, vote: null, commit: 0 };

// ------------------------------------------------------------------ storage

interface Tables {
  readonly entries: Database<Buffer, Buffer>;
  readonly meta: Database<Buffer, string>;
  readonly snapshot: Database<Buffer, number>;
}

/** One caller's write, encoded up front so the transaction callback cannot fail on bad input. */
interface QueuedWrite {
  readonly apply: (tables: Tables) => void;
  readonly entries: number;
  readonly bytes: number;
  readonly encodeSeconds: number;
}

type PersistInput = Pick<Ready, 'hardState' | 'snapshot' | 'entries' | 'mustSync'>;

export class RaftStorage {
  readonly #dir: string;
  readonly #root: RootDatabase<Buffer, string>;
  readonly #tables: Tables;
  readonly #commits: GroupCommit<QueuedWrite>;
  readonly #onRepair: (message: string) => void;
  #closing: Promise<void> | null = null;

  private constructor(dir: string, root: RootDatabase<Buffer, string>, options: RaftStorageOptions) {
    this.#dir = dir;
    this.#root = root;
    this.#tables = {
      entries: root.openDB<Buffer, Buffer>(STORAGE_LAYOUT.entries, { keyEncoding: 'binary', encoding: 'binary' }),
      meta: root.openDB<Buffer, string>(STORAGE_LAYOUT.meta, { encoding: 'binary' }),
      snapshot: root.openDB<Buffer, number>(STORAGE_LAYOUT.snapshot, { keyEncoding: 'uint32', encoding: 'binary' }),
    };
    const { onWrite } = options;
    this.#commits = new GroupCommit<QueuedWrite>({
      env: root,
      label: `raft storage ${dir}`,
      apply: (write) => write.apply(this.#tables),
      ...(onWrite === undefined ? {} : { onCommit: (writes, timings) => onWrite(storageTimings(writes, timings)) }),
    });
    this.#onRepair = options.onRepair ?? ((message) => process.emitWarning(message, 'RaftStorageRepair'));
  }

  static async open(dir: string, options: RaftStorageOptions = {}): Promise<RaftStorage> {
    const root = await openEnvironment(dir, options.noSync === true ? { noSync: true } : {});
    return new RaftStorage(dir, root, options);
  }

  /**
   * null on a fresh directory; otherwise what RaftCore needs to restart (applied = snapshot index).
   * Call it before the first write: a repair it makes commits synchronously.
   */
  load(): PersistedState | null {
    const hardRaw = this.#tables.meta.get(STORAGE_LAYOUT.hardStateKey);
    const snapshotRaw = this.#tables.snapshot.get(STORAGE_LAYOUT.snapshotMetaKey);
    const anyEntry = this.#tables.entries.getKeysCount({ limit: 1 }) > 0;
    if (hardRaw === undefined && snapshotRaw === undefined && !anyEntry) return null;
    const hardState = hardRaw === undefined ? ZERO_HARD_STATE : decodeHardState(hardRaw);
    const snapshot = snapshotRaw === undefined ? EMPTY_SNAPSHOT : this.#loadSnapshot(snapshotRaw);
    const entries = this.#loadEntries(snapshot.meta, hardState.commit);
    return { hardState, snapshot, entries, applied: snapshot.meta.index };
  }

  #loadSnapshot(metaRaw: Buffer): Snapshot {
    const r = new RecordReader(metaRaw, 'snapshot meta', [Kind.snapshotMeta]);
    const index = r.u64('index');
    const term = r.u64('term');
    const membership = r.membership('membership');
    const dataBytes = r.u64('data length');
    const chunks = r.u32('chunk count');
    const dataCrc = r.u32('data checksum');
    r.end();
    const chunkBytes = STORAGE_LAYOUT.snapshotChunkBytes;
    if (chunks !== Math.ceil(dataBytes / chunkBytes)) r.fail(`${chunks} chunks cannot hold ${dataBytes} bytes`);
    const data = Buffer.allocUnsafe(dataBytes);
    for (let n = 1; n <= chunks; n++) {
      const record = `snapshot ${index} chunk ${n} of ${chunks}`;
      const raw = this.#tables.snapshot.get(n);
      if (raw === undefined) throw new StorageCorruptionError(record, 'missing');
      const c = new RecordReader(raw, record, [Kind.snapshotChunk]);
      const owner = c.u64('snapshot index');
      if (owner !== index) c.fail(`belongs to snapshot ${owner}`);
      const number = c.u32('chunk number');
      if (number !== n) c.fail(`record holds chunk number ${number}`);
      const part = c.rest();
      const expected = Math.min(chunkBytes, dataBytes - (n - 1) * chunkBytes);
      if (part.length !== expected) c.fail(`${part.length} bytes, expected ${expected}`);
      part.copy(data, (n - 1) * chunkBytes);
    }
    const computed = crc32(data);
    if (computed !== dataCrc) {
      throw new StorageCorruptionError(`snapshot ${index} data`, `checksum mismatch (stored 0x${hex32(dataCrc)}, computed 0x${hex32(computed)})`);
    }
    return { meta: { index, term, membership }, data };
  }

  #loadEntries(snapshot: SnapshotMeta, commit: number): Entry[] {
    const entries: Entry[] = [];
    let expected = snapshot.index + 1;
    let lastTerm = snapshot.term;
    let damage: { index: number; problem: string } | null = null;
    // Entries at or below the snapshot index are covered by it; none should be stored, and none matters.
    for (const { key, value } of this.#tables.entries.getRange({ start: entryKey(expected) })) {
      const index = u64FromKey(key);
      if (index === null) {
        damage = { index: expected, problem: `missing (the next stored key, 0x${key.toString('hex')}, is malformed)` };
        break;
      }
      if (index !== expected) {
        damage = { index: expected, problem: `missing (the next stored entry is ${index})` };
        break;
      }
      let entry: Entry;
      try {
        entry = decodeEntry(value, index);
      } catch (error) {
        if (!(error instanceof StorageCorruptionError)) throw error;
        damage = { index, problem: error.problem };
        break;
      }
      if (entry.term < lastTerm) {
        damage = { index, problem: `term ${entry.term} is below the previous entry's term ${lastTerm}` };
        break;
      }
      entries.push(entry);
      lastTerm = entry.term;
      expected++;
    }
    if (damage === null) {
      const lastIndex = expected - 1;
      if (lastIndex < commit) {
        throw new StorageCorruptionError(`log entry ${expected}`, `missing: the log ends at ${lastIndex} but the commit index is ${commit}`);
      }
      return entries;
    }
    if (damage.index <= commit) {
      throw new StorageCorruptionError(
        `log entry ${damage.index}`,
        `${damage.problem}; it is at or below the commit index ${commit}, so committed data is lost`,
      );
    }
    this.#truncateFrom(damage.index);
    this.#onRepair(
      `raft storage ${this.#dir}: log entry ${damage.index}: ${damage.problem}; dropped the log from ${damage.index} on ` +
        `(above the commit index ${commit}). Safe only if this node never acknowledged those entries; ` +
        'the leader will send them again.',
    );
    return entries;
  }

  /** Durably drops every stored entry from `index` on (load-time repair, before any write is queued). */
  #truncateFrom(index: number): void {
    const { entries } = this.#tables;
    this.#root.transactionSync(() => {
      for (const key of [...entries.getKeys({ start: entryKey(index) })]) entries.removeSync(key);
    });
  }

  /**
   * Persists one Ready's snapshot, entries (first dropping stored ones from entries[0].index on) and
   * hard state in one atomic step, and resolves once it is durable. Every write is synced, mustSync or
   * not: lmdb-js has no per-transaction opt-out for queued commits, and a group shares its fsync anyway.
   * Snapshot data must not change until the promise settles (it is copied into chunks at commit time).
   */
  async persist(ready: PersistInput): Promise<void> {
    const started = performance.now();
    const snapshot = ready.snapshot === null ? null : encodeSnapshot(ready.snapshot);
    const first = ready.entries[0];
    if (snapshot !== null && first !== undefined && first.index !== snapshot.index + 1) {
      throw new RaftInputError(`raft storage: entries start at ${first.index}, not right after snapshot index ${snapshot.index}`);
    }
    const records: Buffer[] = [];
    let previous: Entry | undefined;
    for (const entry of ready.entries) {
      if (previous !== undefined && (entry.index !== previous.index + 1 || entry.term < previous.term)) {
        throw new RaftInputError(
          `raft storage: entry ${entry.index} (term ${entry.term}) does not follow entry ${previous.index} (term ${previous.term})`,
        );
      }
      records.push(encodeEntry(entry));
      previous = entry;
    }
    const hardState = ready.hardState === null ? null : encodeHardState(ready.hardState);
    let bytes = (snapshot?.bytes ?? 0) + (hardState?.length ?? 0);
    for (const record of records) bytes += record.length;
    return this.#enqueue(
      (tables) => {
        if (snapshot !== null) {
          removeKeys(tables.entries, tables.entries.getKeys());
          writeSnapshot(tables, snapshot);
        }
        if (first !== undefined) {
          removeKeys(tables.entries, tables.entries.getKeys({ start: entryKey(first.index) }));
          records.forEach((record, i) => tables.entries.putSync(entryKey(first.index + i), record));
        }
        if (hardState !== null) tables.meta.putSync(STORAGE_LAYOUT.hardStateKey, hardState);
      },
      records.length,
      bytes,
      (performance.now() - started) / 1000,
    );
  }

  /** After RaftCore.compact(): stores the snapshot and drops the entries it covers, atomically (same data rule as persist). */
  async saveSnapshot(snapshot: Snapshot): Promise<void> {
    const started = performance.now();
    const encoded = encodeSnapshot(snapshot);
    return this.#enqueue(
      (tables) => {
        removeKeys(tables.entries, tables.entries.getKeys({ end: entryKey(encoded.index + 1) }));
        writeSnapshot(tables, encoded);
      },
      0,
      encoded.bytes,
      (performance.now() - started) / 1000,
    );
  }

  /** Waits for queued writes, then closes the environment; later calls are refused. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#commits.close();
      await this.#root.close();
    })();
    return this.#closing;
  }

  #enqueue(apply: (tables: Tables) => void, entries: number, bytes: number, encodeSeconds: number): Promise<void> {
    return this.#commits.enqueue({ apply, entries, bytes, encodeSeconds });
  }
}

function storageTimings(writes: readonly QueuedWrite[], commit: CommitTimings): StorageTimings {
  const timings: StorageTimings = { appendSeconds: commit.applySeconds, syncSeconds: commit.syncSeconds, entries: 0, bytes: 0 };
  for (const write of writes) {
    timings.appendSeconds += write.encodeSeconds;
    timings.entries += write.entries;
    timings.bytes += write.bytes;
  }
  return timings;
}

function writeSnapshot(tables: Tables, snapshot: EncodedSnapshot): void {
  removeKeys(tables.snapshot, tables.snapshot.getKeys());
  tables.snapshot.putSync(STORAGE_LAYOUT.snapshotMetaKey, snapshot.meta);
  let n = 1;
  for (const record of snapshot.chunks()) tables.snapshot.putSync(n++, record);
}
