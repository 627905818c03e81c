/**
 * Durable Raft storage: one node's log, hard state and latest snapshot in one
 * directory, written in the order and with the durability the Ready contract
 * (types.ts) asks for, and read back whole at restart. The log is a
 * write-ahead log (src/storage/wal.ts: preallocated segments, one write and
 * one fdatasync per group of Readys, as etcd's WAL); a snapshot is a file of
 * its own, written and synced before the log record that refers to it.
 *
 * Layout of `dir`:
 * - `<seq>.wal`: the log's records, in the order they were persisted;
 * - `snapshot-<index as 16 hex digits>.snap`: magic `DWCPSNP1`, one frame
 *   (`length u32 | crc32 u32 | meta`) holding the snapshot meta record, then
 *   the data. Only the snapshot the log refers to last is kept.
 * A record is `kind u8 | body`, big-endian (the WAL frame checksums it).
 * Bodies (u64 = safe integer as two u32):
 * - normal entry (kind 1): index u64, term u64, data (the rest);
 * - config entry (kind 2): index u64, term u64, membership;
 * - hard state (kind 3): term u64, commit u64, hasVote u8, [vote text];
 * - snapshot meta (kind 4, in the snapshot file): index u64, term u64,
 *   membership, dataBytes u64, dataCrc u32;
 * - snapshot installed (kind 6): index u64, term u64: the log is replaced by
 *   the snapshot at index (a leader's InstallSnapshot);
 * - snapshot base (kind 7): index u64, term u64: entries up to index are
 *   compacted into the snapshot at index (a compaction, or the start of a
 *   segment, which repeats the base and the hard state durable so far);
 * - membership = voters count u32, texts, learners count u32, texts; text =
 *   u16 byte length + UTF-8.
 * Replaying the records in order rebuilds the state: an entry at an index
 * already in the log replaces it and everything after (an overwrite); one at
 * or below the base is compacted and skipped; the last hard state wins.
 *
 * Invariants:
 * - One persist() or saveSnapshot() lands whole or is lost whole with every
 *   later one (a crash loses a suffix); each resolves only once durable, in
 *   call order (a write waiting for its snapshot file holds back the later
 *   ones, not only itself).
 * - A snapshot file is synced, renamed into place and its directory synced
 *   before the record naming it is written; it is deleted only once a record
 *   naming a newer one is durable. A compaction's file is written from the
 *   state machine's encoder a piece at a time (writeSnapshot), alongside the
 *   log's writes, and the snapshot then reads from its file on demand
 *   (SnapshotFile): a member never holds its whole state encoded in memory
 *   (one received from a leader arrives whole, and is written whole).
 * - After a failed write every later write is refused: what reached the disk
 *   is then unknown, and a Raft node must not go on acknowledging on top of it.
 * - open() checks every record. A torn write at the end of the log (a write
 *   cut short by a crash, which was never acknowledged; see wal.ts for how it
 *   is told from damage) is dropped, durably, and reported through onRepair,
 *   unless the log would then end below the hard state's commit index
 *   (StorageCorruptionError). Any other damage, a snapshot that fails its
 *   checks or records that do not fit together are StorageCorruptionError:
 *   nothing is guessed. (Unlike the LMDB layout before it, damage at the tail
 *   is not dropped even above the commit index: the hard state that would
 *   tell may be among what is damaged.)
 */
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { Wal, WalCorruptionError, writeFully, type WalRecord, type WalTimings } from '../../storage/wal.ts';
import type { Entry, HardState, Membership, PersistedState, Ready, Snapshot, SnapshotMeta, SnapshotSource } from './types.ts';
import { EMPTY_MEMBERSHIP, RaftInputError, snapshotBytes } from './types.ts';
import { DwcpError } from '../../errors.ts';

export interface StorageTimings {
  /** Encoding the records (and the group's buffer). */
  appendSeconds: number;
  /** write() and fdatasync() of the group, until both returned. */
  syncSeconds: number;
  entries: number;
  bytes: number;
}

export interface RaftStorageOptions {
  /** Skip fsync (tests, throwaway nodes): a crash of the machine may then lose acknowledged writes. */
  noSync?: boolean;
  /** Called once per committed group. */
  onWrite?: (timings: StorageTimings) => void;
  /** Called when open() drops a damaged log tail above the commit index; defaults to a process warning. */
  onRepair?: (message: string) => void;
  /** Size of a log segment; 16 MiB unless told (tests make it small to exercise rotation). */
  segmentBytes?: number;
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

/** Names in the stored layout, for tools and tests that inspect it without the decoder. */
export const STORAGE_LAYOUT = {
  snapshotFile: (index: number) => `snapshot-${index.toString(16).padStart(16, '0')}.snap`,
  snapshotMagic: 'DWCPSNP1',
  segmentBytes: 16 * 1024 * 1024,
} as const;

const Kind = { normal: 1, config: 2, hardState: 3, snapshotMeta: 4, snapshotInstalled: 6, snapshotBase: 7 } as const;
type Kind = (typeof Kind)[keyof typeof Kind];

const MAX_TEXT_BYTES = 0xffff;
const TWO_POW_32 = 2 ** 32;
const SNAPSHOT_FILE = /^snapshot-([0-9a-f]{16})\.snap$/;
/** The LMDB file of the layout before the write-ahead log. */
const LEGACY_LMDB_FILE = 'data.mdb';

// ------------------------------------------------------------------ records

class RecordWriter {
  #buf: Buffer;
  #pos = 1;

  constructor(kind: Kind, bodyBytesHint: number) {
    this.#buf = Buffer.allocUnsafe(1 + bodyBytesHint);
    this.#buf[0] = kind;
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
    return this.#buf.subarray(0, this.#pos);
  }
}

class RecordReader {
  readonly kind: number;
  readonly #buf: Buffer;
  readonly #record: string;
  #pos = 1;

  constructor(buf: Buffer, record: string) {
    this.#buf = buf;
    this.#record = record;
    this.kind = buf[0] ?? 0;
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

function decodeEntry(r: RecordReader, index: number, term: number): Entry {
  // The record is copied out of the segment buffer: an entry kept in memory must not pin a whole segment.
  if (r.kind === Kind.normal) return { kind: 'normal', index, term, data: new Uint8Array(r.rest()) };
  const membership = r.membership('membership');
  r.end();
  return { kind: 'config', index, term, membership };
}

function encodeHardState(hs: HardState): Buffer {
  checkCount(hs.term, 'hard state term', 0);
  checkCount(hs.commit, 'hard state commit', 0);
  const w = new RecordWriter(Kind.hardState, 17 + (hs.vote?.length ?? 0) * 3 + 2);
  w.u64(hs.term);
  w.u64(hs.commit);
  w.u8(hs.vote === null ? 0 : 1);
  if (hs.vote !== null) w.text(hs.vote, 'hard state vote');
  return w.finish();
}

function decodeHardState(r: RecordReader): HardState {
  const term = r.u64('term');
  const commit = r.u64('commit');
  const hasVote = r.u8('vote flag');
  if (hasVote > 1) r.fail(`vote flag ${hasVote}`);
  const vote = hasVote === 1 ? r.text('vote') : null;
  r.end();
  return { term, vote, commit };
}

function encodeSnapshotMark(kind: typeof Kind.snapshotInstalled | typeof Kind.snapshotBase, index: number, term: number): Buffer {
  const w = new RecordWriter(kind, 16);
  w.u64(index);
  w.u64(term);
  return w.finish();
}

/** The file's head: magic, the meta frame (length, crc32, record). Its size does not depend on the data's length or checksum. */
function snapshotHead(meta: SnapshotMeta, dataBytes: number, dataCrc: number): Buffer {
  const w = new RecordWriter(Kind.snapshotMeta, 32 + membershipHint(meta.membership));
  w.u64(meta.index);
  w.u64(meta.term);
  w.membership(meta.membership, 'snapshot membership');
  w.u64(dataBytes);
  w.u32(dataCrc);
  const record = w.finish();
  const magic = STORAGE_LAYOUT.snapshotMagic.length;
  const head = Buffer.allocUnsafe(magic + 8 + record.length);
  head.write(STORAGE_LAYOUT.snapshotMagic, 0, 'latin1');
  head.writeUInt32BE(record.length, magic);
  head.writeUInt32BE(crc32(record), magic + 4);
  record.copy(head, magic + 8);
  return head;
}

function checkMeta(meta: SnapshotMeta): void {
  checkCount(meta.index, 'snapshot index', 0);
  checkCount(meta.term, 'snapshot term', 0);
}

function checkSnapshot(snapshot: Snapshot): void {
  checkMeta(snapshot.meta);
  const { data } = snapshot;
  if (data === null || typeof data !== 'object' || !Number.isSafeInteger(data.byteLength) || typeof data.subarray !== 'function') {
    throw new RaftInputError('raft storage: snapshot data must be a Uint8Array or a SnapshotData');
  }
}

/** Writes all of `bytes` at `position` (a file write may be short). */
/**
 * A stored snapshot's data, read from its file a chunk at a time (the core
 * asks for one chunk per message to a follower that needs the snapshot). The
 * file stays while the core can ask: it is deleted only once a newer snapshot
 * is named in the log, and the core has replaced this one by then. A read
 * that fails (the disk) throws: the node stops, as on any storage failure.
 */
export class SnapshotFile {
  readonly path: string;
  readonly byteLength: number;
  /** Where the data starts in the file (after the head). */
  readonly #at: number;

  constructor(path: string, at: number, byteLength: number) {
    this.path = path;
    this.#at = at;
    this.byteLength = byteLength;
  }

  subarray(start: number, end: number): Uint8Array {
    const from = Math.max(0, Math.min(start, this.byteLength));
    const out = Buffer.allocUnsafe(Math.max(0, Math.min(end, this.byteLength) - from));
    const fd = openSync(this.path, 'r');
    try {
      for (let done = 0; done < out.length; ) {
        const n = readSync(fd, out, done, out.length - done, this.#at + from + done);
        if (n === 0) throw new StorageCorruptionError(`snapshot file ${this.path}`, `ends before byte ${this.#at + from + done}`);
        done += n;
      }
    } finally {
      closeSync(fd);
    }
    return out;
  }
}

function hex32(value: number): string {
  return value.toString(16).padStart(8, '0');
}

const EMPTY_SNAPSHOT: Snapshot = { meta: { index: 0, term: 0, membership: EMPTY_MEMBERSHIP }, data: new Uint8Array(0) };
const ZERO_HARD_STATE: HardState = { term: 0, vote: null, commit: 0 };

// ------------------------------------------------------------------ replay

interface Replayed {
  hardState: HardState | null;
  /** The snapshot the log is based on (index 0: none). */
  base: { index: number; term: number };
  entries: Entry[];
  /** Whether any record was found. */
  any: boolean;
  /** Per segment, the largest entry index it holds (what release() goes by). */
  marks: Map<number, number>;
}

function recordName(record: WalRecord): string {
  return `log record at segment ${record.segment} byte ${record.offset}`;
}

/**
 * The snapshot the log is finally based on (the last marker's: markers never
 * go down along the log), and the position of the last installed snapshot,
 * before which no entry counts (it replaced the whole log).
 */
function finalBase(records: readonly WalRecord[]): { index: number; term: number; installedAt: number } {
  let base: { index: number; term: number } | null = null;
  for (let i = records.length - 1; i >= 0; i--) {
    const record = records[i] as WalRecord;
    const kind = record.body[0];
    if (kind !== Kind.snapshotInstalled && kind !== Kind.snapshotBase) continue;
    if (base === null) {
      const r = new RecordReader(record.body, recordName(record));
      base = { index: r.u64('snapshot index'), term: r.u64('snapshot term') };
    }
    if (kind === Kind.snapshotInstalled) return { ...base, installedAt: i };
  }
  return { ...(base ?? { index: 0, term: 0 }), installedAt: -1 };
}

/**
 * Rebuilds the log from the records. It starts from the final base: segments
 * before a compaction may have been deleted while a later one still holds
 * entries at or below it, and those are covered by the snapshot.
 */
function replay(records: readonly WalRecord[]): Replayed {
  const { installedAt, ...base } = finalBase(records);
  const state: Replayed = { hardState: null, base, entries: [], any: records.length > 0, marks: new Map() };
  for (const [position, record] of records.entries()) {
    const r = new RecordReader(record.body, recordName(record));
    switch (r.kind) {
      case Kind.normal:
      case Kind.config: {
        const index = r.u64('index');
        const term = r.u64('term');
        if (term < 1) r.fail('term 0');
        const entry = decodeEntry(r, index, term);
        const name = `log entry ${index}`;
        state.marks.set(record.segment, Math.max(state.marks.get(record.segment) ?? 0, index));
        if (index <= state.base.index || position < installedAt) break;
        const keep = index - state.base.index - 1;
        if (keep > state.entries.length) {
          throw new StorageCorruptionError(name, `missing: the log ends at ${state.base.index + state.entries.length} (${recordName(record)} holds ${index})`);
        }
        state.entries.length = keep;
        const previousTerm = state.entries.at(-1)?.term ?? state.base.term;
        if (term < previousTerm) throw new StorageCorruptionError(name, `term ${term} is below the previous entry's term ${previousTerm}`);
        state.entries.push(entry);
        break;
      }
      case Kind.hardState:
        state.hardState = decodeHardState(r);
        break;
      case Kind.snapshotInstalled:
      case Kind.snapshotBase: {
        const index = r.u64('snapshot index');
        const term = r.u64('snapshot term');
        r.end();
        if (index > base.index) r.fail(`names snapshot ${index}, past the last one named (${base.index})`);
        break;
      }
      default:
        r.fail(`record kind ${r.kind} is not one of a Raft log`);
    }
  }
  return state;
}

function readSnapshotFile(dir: string, index: number, term: number): Snapshot {
  const name = STORAGE_LAYOUT.snapshotFile(index);
  const what = `snapshot ${index}`;
  let raw: Buffer;
  try {
    raw = readFileSync(join(dir, name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new StorageCorruptionError(what, `missing: the log is based on it but ${name} does not exist`);
    throw err;
  }
  const magic = STORAGE_LAYOUT.snapshotMagic;
  if (raw.length < magic.length + 8 || raw.toString('latin1', 0, magic.length) !== magic) throw new StorageCorruptionError(what, `${name} has no snapshot header`);
  const length = raw.readUInt32BE(magic.length);
  const stored = raw.readUInt32BE(magic.length + 4);
  const metaAt = magic.length + 8;
  if (metaAt + length > raw.length) throw new StorageCorruptionError(`${what} meta`, `runs past the end of ${name}`);
  const metaRaw = raw.subarray(metaAt, metaAt + length);
  const computedMeta = crc32(metaRaw);
  if (computedMeta !== stored) throw new StorageCorruptionError(`${what} meta`, `checksum mismatch (stored 0x${hex32(stored)}, computed 0x${hex32(computedMeta)})`);
  const r = new RecordReader(metaRaw, `${what} meta`);
  if (r.kind !== Kind.snapshotMeta) r.fail(`record kind ${r.kind}, expected ${Kind.snapshotMeta}`);
  const metaIndex = r.u64('index');
  const metaTerm = r.u64('term');
  const membership = r.membership('membership');
  const dataBytes = r.u64('data length');
  const dataCrc = r.u32('data checksum');
  r.end();
  if (metaIndex !== index || metaTerm !== term) r.fail(`holds (${metaIndex}, term ${metaTerm}), the log names (${index}, term ${term})`);
  const data = raw.subarray(metaAt + length);
  if (data.length !== dataBytes) throw new StorageCorruptionError(`${what} data`, `${data.length} bytes, the meta says ${dataBytes}`);
  const computed = crc32(data);
  if (computed !== dataCrc) throw new StorageCorruptionError(`${what} data`, `checksum mismatch (stored 0x${hex32(dataCrc)}, computed 0x${hex32(computed)})`);
  // Checked whole once; from now on it is read from the file as needed, not held.
  return { meta: { index, term, membership }, data: new SnapshotFile(join(dir, name), metaAt + length, dataBytes) };
}

function snapshotFiles(dir: string): number[] {
  const indices: number[] = [];
  for (const name of readdirSync(dir)) {
    const match = SNAPSHOT_FILE.exec(name);
    if (match?.[1] !== undefined) indices.push(Number.parseInt(match[1], 16));
  }
  return indices;
}

// ------------------------------------------------------------------ storage

type PersistInput = Pick<Ready, 'hardState' | 'snapshot' | 'entries' | 'mustSync'>;

export class RaftStorage {
  readonly #dir: string;
  readonly #opts: RaftStorageOptions;
  readonly #wal: Wal;
  /** What a new segment starts with: the base and hard state already durable. */
  #durableBase: Buffer | null;
  #durableHardState: Buffer | null;
  /** The snapshot index the durable log is based on (older snapshot files may go). */
  #durableSnapshot: number;
  /** Set while a snapshot file is being written: later writes queue behind it, in order. */
  #gate: Promise<void> | null = null;
  #encodeSeconds = 0;
  #closing: Promise<void> | null = null;

  private constructor(dir: string, opts: RaftStorageOptions, wal: Wal, loaded: Replayed) {
    this.#dir = dir;
    this.#opts = opts;
    this.#wal = wal;
    this.#durableBase = loaded.base.index > 0 ? encodeSnapshotMark(Kind.snapshotBase, loaded.base.index, loaded.base.term) : null;
    this.#durableHardState = loaded.hardState === null ? null : encodeHardState(loaded.hardState);
    this.#durableSnapshot = loaded.base.index;
  }

  /**
   * Opens the storage in `dir` (created if missing), checking what is stored
   * and dropping a damaged log tail above the commit index (see the header).
   */
  static async open(dir: string, options: RaftStorageOptions = {}): Promise<RaftStorage> {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    if (existsSync(join(dir, LEGACY_LMDB_FILE))) {
      throw new DwcpError(
        'unsupported',
        `raft storage ${dir} holds an LMDB log (${LEGACY_LMDB_FILE}), the layout of dwcp before its write-ahead log; this version cannot read it. ` +
          'Start the member with an empty raft directory and let it catch up from the leader (raft.join after removing it from the group), or run the version that wrote it',
      );
    }
    const label = `raft storage ${dir}`;
    const { state, torn } = RaftStorage.#read(dir, label);
    if (torn !== null) {
      const lastIndex = state.base.index + state.entries.length;
      const commit = state.hardState?.commit ?? 0;
      if (lastIndex < commit) {
        throw new StorageCorruptionError(
          `log segment ${torn.segment}`,
          `${torn.problem} at byte ${torn.offset}; the log then ends at ${lastIndex}, below the commit index ${commit}, so committed data is lost`,
        );
      }
      const onRepair = options.onRepair ?? ((message: string) => process.emitWarning(message, 'RaftStorageRepair'));
      onRepair(
        `${label}: log segment ${torn.segment} at byte ${torn.offset}: ${torn.problem}: a write cut short by a crash, never acknowledged; ` +
          `dropped it (the log ends at ${lastIndex}, at or above the commit index ${commit})`,
      );
    }
    const storage: { current: RaftStorage | null } = { current: null };
    const wal = await Wal.open(
      dir,
      {
        label,
        segmentBytes: options.segmentBytes ?? STORAGE_LAYOUT.segmentBytes,
        ...(options.noSync === true ? { noSync: true } : {}),
        preamble: () => (storage.current === null ? [] : storage.current.#preamble()),
        onCommit: (t) => {
          if (storage.current !== null) storage.current.#committed(t);
        },
      },
      state.marks,
    );
    storage.current = new RaftStorage(dir, options, wal, state);
    return storage.current;
  }

  static #read(dir: string, label: string): { state: Replayed; torn: ReturnType<typeof Wal.read>['torn'] } {
    let contents: ReturnType<typeof Wal.read>;
    try {
      contents = Wal.read(dir, label);
    } catch (err) {
      if (err instanceof WalCorruptionError) throw new StorageCorruptionError(`log segment ${err.segment}`, `at byte ${err.offset}: ${err.problem}`);
      throw err;
    }
    return { state: replay(contents.records), torn: contents.torn };
  }

  /**
   * null on a fresh directory; otherwise what RaftCore needs to restart
   * (applied = snapshot index). Reads the whole log and the snapshot from
   * disk; throws StorageCorruptionError for anything that fails its checks.
   */
  load(): PersistedState | null {
    const { state, torn } = RaftStorage.#read(this.#dir, `raft storage ${this.#dir}`);
    if (!state.any) return null;
    const hardState = state.hardState ?? ZERO_HARD_STATE;
    const lastIndex = state.base.index + state.entries.length;
    if (lastIndex < hardState.commit) {
      const where = torn === null ? '' : ` (${torn.problem} in segment ${torn.segment} at byte ${torn.offset})`;
      throw new StorageCorruptionError(`log entry ${lastIndex + 1}`, `missing: the log ends at ${lastIndex} but the commit index is ${hardState.commit}${where}`);
    }
    const snapshot = state.base.index === 0 ? EMPTY_SNAPSHOT : readSnapshotFile(this.#dir, state.base.index, state.base.term);
    return { hardState, snapshot, entries: state.entries, applied: snapshot.meta.index };
  }

  /**
   * Persists one Ready's snapshot (it replaces the whole log), entries (an
   * entry at an index already stored replaces it and everything after) and
   * hard state as one step, and resolves once it is durable. Writes resolve in
   * call order. Snapshot data must not change until the promise settles.
   */
  async persist(ready: PersistInput): Promise<void> {
    const started = performance.now();
    const { snapshot } = ready;
    if (snapshot !== null) checkSnapshot(snapshot);
    const first = ready.entries[0];
    if (snapshot !== null && first !== undefined && first.index !== snapshot.meta.index + 1) {
      throw new RaftInputError(`raft storage: entries start at ${first.index}, not right after snapshot index ${snapshot.meta.index}`);
    }
    const records: Buffer[] = [];
    if (snapshot !== null) records.push(encodeSnapshotMark(Kind.snapshotInstalled, snapshot.meta.index, snapshot.meta.term));
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
    if (hardState !== null) records.push(hardState);
    this.#encodeSeconds += (performance.now() - started) / 1000;
    const base = snapshot === null ? null : encodeSnapshotMark(Kind.snapshotBase, snapshot.meta.index, snapshot.meta.term);
    const mark = previous?.index ?? snapshot?.meta.index ?? 0;
    await this.#write(records, { mark, count: ready.entries.length }, snapshot, async () => {
      if (hardState !== null) this.#durableHardState = hardState;
      if (base !== null && snapshot !== null) await this.#snapshotDurable(base, snapshot.meta.index);
    });
  }

  /**
   * Writes the file of a snapshot at `meta` from `source`, a piece at a time,
   * alongside the log's writes (it changes nothing the log says until
   * saveSnapshot names it), and resolves once the file is durable and in
   * place, with the snapshot reading from it.
   */
  async writeSnapshot(meta: SnapshotMeta, source: SnapshotSource): Promise<Snapshot & { data: SnapshotFile }> {
    checkMeta(meta);
    if (this.#closing !== null) throw new Error(`raft storage ${this.#dir} is closed`);
    return { meta, data: await this.#writeSnapshotFile(meta, source) };
  }

  /**
   * After RaftCore.compact(): stores the snapshot (its file, unless
   * writeSnapshot wrote it) and drops the entries it covers (same ordering
   * and data rule as persist); log segments that hold only compacted entries
   * are deleted once it is durable.
   */
  async saveSnapshot(snapshot: Snapshot): Promise<void> {
    checkSnapshot(snapshot);
    const base = encodeSnapshotMark(Kind.snapshotBase, snapshot.meta.index, snapshot.meta.term);
    const written = snapshot.data instanceof SnapshotFile && snapshot.data.path === join(this.#dir, STORAGE_LAYOUT.snapshotFile(snapshot.meta.index));
    await this.#write([base], {}, written ? null : snapshot, () => this.#snapshotDurable(base, snapshot.meta.index));
    await this.#wal.release(snapshot.meta.index);
  }

  /** Waits for queued writes, then closes the log; later calls are refused. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#gate?.catch(() => {});
      await this.#wal.close();
    })();
    return this.#closing;
  }

  /**
   * Appends `records` after every earlier write, the snapshot file first when
   * there is one; `durable` runs once they are on disk, before the next
   * group starts (it updates what a new segment's preamble repeats).
   */
  #write(records: readonly Buffer[], opts: { mark?: number; count?: number }, snapshot: Snapshot | null, durable: () => void | Promise<void>): Promise<void> {
    if (this.#closing !== null) return Promise.reject(new Error(`raft storage ${this.#dir} is closed`));
    const append = (): Promise<void> => this.#wal.append(records, opts).then(durable);
    if (snapshot === null && this.#gate === null) return append();
    const gate = (this.#gate ?? Promise.resolve()).then(async () => {
      if (snapshot === null) return;
      const bytes = snapshotBytes(snapshot.data);
      await this.#writeSnapshotFile(snapshot.meta, { byteLength: bytes.byteLength, chunks: () => [bytes] });
    });
    const written = gate.then(append);
    // Later writes queue behind this one's file; once nothing waits, they go straight to the log again.
    const next: Promise<void> = written.then(
      () => {
        if (this.#gate === next) this.#gate = null;
      },
      (err: unknown) => {
        if (this.#gate === next) this.#gate = null;
        throw err;
      },
    );
    this.#gate = next;
    next.catch(() => {});
    return written;
  }

  /**
   * Writes `<name>.tmp` (the head with the data's checksum left for last,
   * then the data as the source yields it), syncs it, renames it into place
   * and syncs the directory.
   */
  async #writeSnapshotFile(meta: SnapshotMeta, source: SnapshotSource): Promise<SnapshotFile> {
    const path = join(this.#dir, STORAGE_LAYOUT.snapshotFile(meta.index));
    const tmp = `${path}.tmp`;
    const dataAt = snapshotHead(meta, source.byteLength, 0).length;
    const handle = await fs.open(tmp, 'w', 0o600);
    try {
      let crc = 0;
      let written = 0;
      for (const chunk of source.chunks()) {
        if (written + chunk.byteLength > source.byteLength) break;
        crc = crc32(chunk, crc);
        await writeFully(handle, chunk, dataAt + written);
        written += chunk.byteLength;
      }
      if (written !== source.byteLength) {
        throw new RaftInputError(`raft storage: snapshot ${meta.index}'s source gave other than the ${source.byteLength} bytes it announced`);
      }
      await writeFully(handle, snapshotHead(meta, written, crc), 0);
      if (this.#opts.noSync !== true) await handle.sync();
    } catch (err) {
      await handle.close();
      await fs.rm(tmp, { force: true });
      throw err;
    }
    await handle.close();
    await fs.rename(tmp, path);
    if (this.#opts.noSync !== true) {
      const dir = await fs.open(this.#dir, 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
    }
    return new SnapshotFile(path, dataAt, source.byteLength);
  }

  /** A record naming the snapshot at `index` is durable: it is what new segments repeat, and older snapshot files may go. */
  async #snapshotDurable(base: Buffer, index: number): Promise<void> {
    // Synchronously first: a segment started from now on must repeat this base.
    this.#durableBase = base;
    this.#durableSnapshot = index;
    for (const old of snapshotFiles(this.#dir)) {
      if (old !== index) await fs.rm(join(this.#dir, STORAGE_LAYOUT.snapshotFile(old)), { force: true });
    }
  }

  #preamble(): Buffer[] {
    const records: Buffer[] = [];
    if (this.#durableBase !== null) records.push(this.#durableBase);
    if (this.#durableHardState !== null) records.push(this.#durableHardState);
    return records;
  }

  #committed(t: WalTimings): void {
    const encodeSeconds = this.#encodeSeconds;
    this.#encodeSeconds = 0;
    this.#opts.onWrite?.({ appendSeconds: encodeSeconds + t.encodeSeconds, syncSeconds: t.syncSeconds, entries: t.count, bytes: t.bytes });
  }

  /** The snapshot the durable log is based on (for tests and status). */
  get snapshotIndex(): number {
    return this.#durableSnapshot;
  }
}
