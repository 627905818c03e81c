/**
 * Wal: an append-only write-ahead log of checksummed records in one
 * directory, in preallocated segment files, written with group commit: the
 * records appended while a write is syncing go out together in the next
 * one, as one write() and one fdatasync() on the libuv thread pool. The
 * records are opaque bytes to it; what they mean is the caller's (the Raft
 * log, src/consensus/raft/storage.ts).
 *
 * On disk: `<dir>/<seq as 16 hex digits>.wal`, each a header (magic, seq)
 * and then frames `length u32 | crc32 u32 | body`, big-endian, the CRC
 * (zlib's CRC-32) over the body; the rest of a segment is zeros (a length of
 * 0 ends it). Segments are zero-filled and synced to their full size before
 * use (a spare is prepared in the background), so a data sync never has to
 * update the file's size or allocation: one device flush per group. The
 * segment being written is open with O_DSYNC, so a group's write returns
 * once it is durable: one system call, one trip to the thread pool.
 *
 * Invariants:
 * - append() resolves only once its records are durable; appends resolve in
 *   the order they were made, and a crash loses a suffix of them (a
 *   partially written group can leave some of its records; none is ever
 *   acknowledged).
 * - At most one write is in flight. After a failed write or sync every later
 *   append is refused: what reached the disk is then unknown.
 * - read() returns every record. A torn frame in the last segment ends the
 *   log there: a write cut short by a crash, never acknowledged (as etcd
 *   tells it: the frame fails its checks and one of its 512-byte sectors is
 *   all zeros, which a segment zero-filled before use shows wherever a write
 *   did not land). Any other bad frame, and a torn one in an earlier segment,
 *   is damage and throws WalCorruptionError: nothing is guessed. open()
 *   zeroes a torn tail durably before anything is appended, so no stale bytes
 *   behind the new end can ever be read as records.
 * - A new segment's first records are the caller's `preamble`, which must
 *   describe only what is already durable (it is written in the same write as
 *   the group that needed the new segment, and a torn write may keep it
 *   without the group). Older segments can then be dropped (release) without
 *   losing state.
 * - A directory entry (a new segment, a removed one) is synced before any
 *   record that depends on it is acknowledged.
 */
import { constants, readdirSync, readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { DwcpError } from '../errors.ts';
import { CommitQueue } from './commit-queue.ts';

const MAGIC = Buffer.from('DWCPWAL1', 'latin1');
const HEADER_BYTES = 16;
const FRAME_HEADER_BYTES = 8;
const SEGMENT_NAME = /^([0-9a-f]{16})\.wal$/;
const SPARE_NAME = 'spare.tmp';
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** A record larger than this is not one we wrote (a damaged length field). */
export const WAL_MAX_RECORD_BYTES = 256 * 1024 * 1024;

export interface WalTimings {
  /** Building the group's buffer. */
  readonly encodeSeconds: number;
  /** write() and fdatasync() until both returned. */
  readonly syncSeconds: number;
  readonly records: number;
  /** Sum of the appends' `count` (what the caller counts, e.g. log entries). */
  readonly count: number;
  readonly bytes: number;
}

export interface AppendOptions {
  /** The caller's number for these records (the Raft log's last index), kept per segment for release(). */
  readonly mark?: number;
  /** What they count for in WalTimings.count. */
  readonly count?: number;
}

export interface WalOptions {
  /** Names the log in errors, e.g. "raft storage /var/lib/dwcp/raft". */
  readonly label: string;
  /** Size each segment is preallocated to; a group larger than what is left starts a new one. */
  readonly segmentBytes: number;
  /** Skip fsync (tests, throwaway nodes): a crash of the machine may then lose acknowledged records. */
  readonly noSync?: boolean;
  /** Records that start every new segment: the durable state a reader needs without the older segments (see the header). */
  readonly preamble: () => Uint8Array[];
  readonly onCommit?: (timings: WalTimings) => void;
}

/** A torn write at the end of the log, where it is. */
export interface WalTornTail {
  readonly segment: string;
  readonly offset: number;
  readonly problem: string;
}

export interface WalRecord {
  readonly body: Buffer;
  /** Sequence number of the segment holding it. */
  readonly segment: number;
  /** Its frame's offset in that segment (names it in errors). */
  readonly offset: number;
}

export interface WalContents {
  readonly records: WalRecord[];
  /** A write cut short at the end, if any; records stop before it. */
  readonly torn: WalTornTail | null;
}

export class WalCorruptionError extends DwcpError<'corrupt'> {
  readonly segment: string;
  readonly offset: number;
  readonly problem: string;
  constructor(label: string, segment: string, offset: number, problem: string) {
    super('corrupt', `${label}: segment ${segment} at byte ${offset}: ${problem}`);
    this.segment = segment;
    this.offset = offset;
    this.problem = problem;
  }
}

/** Sector size assumed for torn-write detection: the unit a device writes whole or not at all. */
const SECTOR_BYTES = 512;

interface Segment {
  readonly seq: number;
  readonly path: string;
  handle: fs.FileHandle | null;
  /** Where the next frame goes. */
  end: number;
  /** The largest mark of any record in it (see append); segments are released by mark. */
  mark: number;
}

/** One append waiting for its group. */
interface Pending {
  readonly records: readonly Uint8Array[];
  readonly mark: number;
  readonly count: number;
}

function segmentName(seq: number): string {
  return `${seq.toString(16).padStart(16, '0')}.wal`;
}

/** Whether [from, to) of `buf` has a sector (or the part of one it covers) that is all zeros. */
function hasZeroSector(buf: Buffer, from: number, to: number): boolean {
  for (let start = from; start < to; ) {
    const end = Math.min(to, (Math.floor(start / SECTOR_BYTES) + 1) * SECTOR_BYTES);
    let zero = true;
    for (let i = start; i < end && zero; i++) zero = buf[i] === 0;
    if (zero) return true;
    start = end;
  }
  return false;
}

type FrameAt = { body: Buffer; next: number } | { problem: string; torn: boolean } | null;

function frameAt(buf: Buffer, offset: number): FrameAt {
  if (offset + FRAME_HEADER_BYTES > buf.length) {
    for (let i = offset; i < buf.length; i++) if (buf[i] !== 0) return { problem: `a frame header cut short (${buf.length - offset} bytes left)`, torn: true };
    return null;
  }
  const length = buf.readUInt32BE(offset);
  const stored = buf.readUInt32BE(offset + 4);
  if (length === 0) {
    if (stored !== 0) return { problem: 'a frame of length 0 with a checksum', torn: false };
    return null; // the zeroed rest of the segment
  }
  if (length > WAL_MAX_RECORD_BYTES) return { problem: `a frame length of ${length} bytes`, torn: false };
  const end = offset + FRAME_HEADER_BYTES + length;
  if (end > buf.length) {
    // A frame longer than what is left: a write that grew the file and was cut short, or a damaged length.
    return { problem: `a frame of ${length} bytes runs past the end of the segment (${buf.length - offset - FRAME_HEADER_BYTES} left)`, torn: hasZeroSector(buf, offset, buf.length) || buf.length - offset < SECTOR_BYTES };
  }
  const body = buf.subarray(offset + FRAME_HEADER_BYTES, end);
  const computed = crc32(body);
  if (computed !== stored) {
    return {
      problem: `checksum mismatch (stored 0x${stored.toString(16).padStart(8, '0')}, computed 0x${computed.toString(16).padStart(8, '0')})`,
      torn: hasZeroSector(buf, offset, end),
    };
  }
  return { body, next: end };
}

/** Segment sequence numbers in `dir`, ascending (none if it does not exist). */
function listSegments(dir: string): number[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const seqs: number[] = [];
  for (const name of names) {
    const match = SEGMENT_NAME.exec(name);
    if (match?.[1] !== undefined) seqs.push(Number.parseInt(match[1], 16));
  }
  return seqs.sort((a, b) => a - b);
}

interface ScannedSegment {
  readonly seq: number;
  readonly records: { body: Buffer; offset: number }[];
  /** Offset after the last good frame. */
  readonly end: number;
  readonly size: number;
  /** Why the frames stop before the zeroed rest of the segment, if they do. */
  readonly problem: { text: string; torn: boolean } | null;
  /** Bytes after `end` that are not zero (what a torn write left, or damage). */
  readonly garbage: boolean;
}

function scanSegment(seq: number, buf: Buffer): ScannedSegment {
  const records: { body: Buffer; offset: number }[] = [];
  const stop = (end: number, problem: { text: string; torn: boolean } | null): ScannedSegment => {
    let garbage = false;
    for (let i = end; i < buf.length && !garbage; i++) garbage = buf[i] !== 0;
    return { seq, records, end, size: buf.length, problem, garbage };
  };
  // A header not (wholly) written is a segment being made when the process died.
  if (buf.length < HEADER_BYTES || !buf.subarray(0, MAGIC.length).equals(MAGIC)) return stop(0, { text: 'no segment header', torn: hasZeroSector(buf, 0, Math.min(buf.length, HEADER_BYTES)) || buf.length < HEADER_BYTES });
  const stated = buf.readUInt32BE(8) * 2 ** 32 + buf.readUInt32BE(12);
  if (stated !== seq) return stop(0, { text: `the header names segment ${stated}`, torn: false });
  let offset = HEADER_BYTES;
  for (;;) {
    const frame = frameAt(buf, offset);
    if (frame === null) {
      const scanned = stop(offset, null);
      // Non-zero bytes behind the zeroed end: pieces of a write whose start did not land.
      return scanned.garbage ? { ...scanned, problem: { text: 'data after the end of the log (a write whose first sector did not land)', torn: true } } : scanned;
    }
    if ('problem' in frame) return stop(offset, { text: frame.problem, torn: frame.torn });
    records.push({ body: frame.body, offset });
    offset = frame.next;
  }
}

export class Wal {
  readonly #dir: string;
  readonly #opts: WalOptions;
  readonly #segments: Segment[];
  /** Group commit: appends queued in one turn, or while a write is in flight, become one write. */
  readonly #queue: CommitQueue<Pending>;
  #closing = false;
  /** The next segment, zero-filled and synced, prepared in the background. */
  #spare: Promise<fs.FileHandle> | null = null;

  private constructor(dir: string, opts: WalOptions, segments: Segment[]) {
    this.#dir = dir;
    this.#opts = opts;
    this.#segments = segments;
    this.#queue = new CommitQueue({ label: opts.label, commit: (group) => this.#write(group) });
  }

  /**
   * Reads every record in `dir`, synchronously (a store reads its log at
   * start, before it serves anything). Damage in the last segment ends the
   * records there and is returned; damage anywhere else throws
   * WalCorruptionError.
   */
  static read(dir: string, label: string): WalContents {
    const seqs = listSegments(dir);
    const records: WalRecord[] = [];
    for (const [i, seq] of seqs.entries()) {
      const scanned = scanSegment(seq, readFileSync(join(dir, segmentName(seq))));
      for (const { body, offset } of scanned.records) records.push({ body, segment: seq, offset });
      const { problem } = scanned;
      if (problem === null) continue;
      const last = i === seqs.length - 1;
      if (!last || !problem.torn) {
        const where = last ? 'and it is not a write cut short (no sector of it is unwritten)' : 'in a segment that is not the last, so records after it exist';
        throw new WalCorruptionError(label, segmentName(seq), scanned.end, `${problem.text}, ${where}`);
      }
      return { records, torn: { segment: segmentName(seq), offset: scanned.end, problem: problem.text } };
    }
    return { records, torn: null };
  }

  /**
   * Opens the log for appending after read(): a damaged tail (see read) is
   * zeroed durably first, so the caller must have decided it may be dropped.
   * `marks` gives each existing segment's mark (for release).
   */
  static async open(dir: string, opts: WalOptions, marks: ReadonlyMap<number, number> = new Map()): Promise<Wal> {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await fs.rm(join(dir, SPARE_NAME), { force: true });
    const seqs = listSegments(dir);
    const segments: Segment[] = [];
    for (const [i, seq] of seqs.entries()) {
      const path = join(dir, segmentName(seq));
      const last = i === seqs.length - 1;
      const segment: Segment = { seq, path, handle: null, end: 0, mark: marks.get(seq) ?? 0 };
      if (last) {
        const buf = await fs.readFile(path);
        const scanned = scanSegment(seq, buf);
        if (scanned.problem !== null && scanned.end < HEADER_BYTES) {
          // Not even its header made it (a crash while it was being made): start it afresh.
          await fs.rm(path);
          await syncDir(dir, opts.noSync);
          continue;
        }
        segment.handle = await fs.open(path, dataSyncFlags(opts.noSync));
        segment.end = scanned.end;
        if (scanned.problem !== null || scanned.garbage) await zeroFrom(segment.handle, scanned.end, scanned.size, opts.noSync);
      }
      segments.push(segment);
    }
    return new Wal(dir, opts, segments);
  }

  /** Bytes past the header in the active segment (for tests and status). */
  get activeSegment(): { seq: number; end: number } | null {
    const s = this.#segments.at(-1);
    return s === undefined ? null : { seq: s.seq, end: s.end };
  }

  get segmentCount(): number {
    return this.#segments.length;
  }

  /** Queues `records`, resolving once they are durable. */
  append(records: readonly Uint8Array[], opts: AppendOptions = {}): Promise<void> {
    const { label } = this.#opts;
    const refused = this.#queue.refusal();
    if (refused !== null) return Promise.reject(refused);
    for (const record of records) {
      if (record.byteLength === 0 || record.byteLength > WAL_MAX_RECORD_BYTES) {
        return Promise.reject(new RangeError(`${label}: a record must be 1 to ${WAL_MAX_RECORD_BYTES} bytes, got ${record.byteLength}`));
      }
    }
    return this.#queue.push({ records, mark: opts.mark ?? 0, count: opts.count ?? 0 });
  }

  /**
   * Deletes every segment but the active one whose records all have a mark
   * of at most `mark` (their state lives on in later segments' preambles and
   * in what the caller stored elsewhere, e.g. a snapshot).
   */
  async release(mark: number): Promise<void> {
    const removable = this.#segments.slice(0, -1).filter((s) => s.mark <= mark);
    if (removable.length === 0) return;
    for (const segment of removable) {
      this.#segments.splice(this.#segments.indexOf(segment), 1);
      await segment.handle?.close();
      await fs.rm(segment.path, { force: true });
    }
    await syncDir(this.#dir, this.#opts.noSync);
  }

  /** Refuses later appends, waits for the queued ones, closes the files. */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    await this.#queue.close();
    for (const segment of this.#segments) await segment.handle?.close();
    const spare = this.#spare;
    this.#spare = null;
    if (spare !== null) {
      await spare.then((h) => h.close(), () => {});
      await fs.rm(join(this.#dir, SPARE_NAME), { force: true });
    }
  }

  /** Writes one group of appends as one O_DSYNC write (rotating first when it does not fit); the queue settles them. */
  async #write(group: Pending[]): Promise<void> {
    const started = performance.now();
    let bytes = 0;
    let records = 0;
    let count = 0;
    let mark = 0;
    for (const p of group) {
      for (const r of p.records) bytes += FRAME_HEADER_BYTES + r.byteLength;
      records += p.records.length;
      count += p.count;
      mark = Math.max(mark, p.mark);
    }
    let segment = this.#segments.at(-1);
    let preamble: Uint8Array[] = [];
    if (segment === undefined || (bytes > 0 && segment.end + bytes > this.#opts.segmentBytes)) {
      preamble = this.#opts.preamble();
      segment = await this.#rotate();
      for (const r of preamble) bytes += FRAME_HEADER_BYTES + r.byteLength;
    }
    const buf = Buffer.allocUnsafe(bytes);
    let at = 0;
    const put = (record: Uint8Array): void => {
      buf.writeUInt32BE(record.byteLength, at);
      buf.writeUInt32BE(crc32(record), at + 4);
      buf.set(record, at + FRAME_HEADER_BYTES);
      at += FRAME_HEADER_BYTES + record.byteLength;
    };
    for (const r of preamble) put(r);
    for (const p of group) for (const r of p.records) put(r);
    const encoded = performance.now();
    // O_DSYNC: durable once the write returns.
    if (bytes > 0) await writeFully(segment.handle as fs.FileHandle, buf, segment.end);
    segment.end += bytes;
    segment.mark = Math.max(segment.mark, mark);
    this.#opts.onCommit?.({ encodeSeconds: (encoded - started) / 1000, syncSeconds: (performance.now() - encoded) / 1000, records, count, bytes });
  }

  /** Makes the spare the next segment (header written, directory synced) and starts preparing another. */
  async #rotate(): Promise<Segment> {
    const previous = this.#segments.at(-1);
    const seq = (previous?.seq ?? 0) + 1;
    const spare = await (this.#spare ?? this.#prepareSpare());
    this.#spare = null;
    await spare.close();
    const path = join(this.#dir, segmentName(seq));
    await fs.rename(join(this.#dir, SPARE_NAME), path);
    const handle = await fs.open(path, dataSyncFlags(this.#opts.noSync));
    const header = Buffer.alloc(HEADER_BYTES);
    MAGIC.copy(header, 0);
    header.writeUInt32BE(Math.floor(seq / 2 ** 32), 8);
    header.writeUInt32BE(seq >>> 0, 12);
    await writeFully(handle, header, 0);
    // The new name must be durable before anything written into the file is acknowledged.
    await syncDir(this.#dir, this.#opts.noSync);
    if (previous !== undefined) {
      await previous.handle?.close();
      previous.handle = null;
    }
    const segment: Segment = { seq, path, handle, end: HEADER_BYTES, mark: 0 };
    this.#segments.push(segment);
    this.#spare = this.#prepareSpare();
    // A failure shows when the spare is needed; until then nothing waits on it.
    this.#spare.catch(() => {});
    return segment;
  }

  async #prepareSpare(): Promise<fs.FileHandle> {
    const handle = await fs.open(join(this.#dir, SPARE_NAME), constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC, 0o600);
    await zeroFrom(handle, 0, this.#opts.segmentBytes, this.#opts.noSync);
    return handle;
  }
}

/** How the segment being written is opened: every write durable when it returns, unless syncing is off. */
function dataSyncFlags(noSync: boolean | undefined): number {
  return noSync === true ? constants.O_RDWR : constants.O_RDWR | constants.O_DSYNC;
}

/** Writes all of `buf` at `position` (a write may take fewer bytes than asked). */
export async function writeFully(handle: fs.FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.byteLength; ) {
    const { bytesWritten } = await handle.write(buf, done, buf.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/** Writes zeros over [from, to) and syncs: preallocation, and wiping a damaged tail. */
async function zeroFrom(handle: fs.FileHandle, from: number, to: number, noSync: boolean | undefined): Promise<void> {
  const zeros = Buffer.alloc(Math.min(ZERO_CHUNK_BYTES, Math.max(0, to - from)));
  for (let at = from; at < to; at += zeros.length) await writeFully(handle, zeros.subarray(0, Math.min(zeros.length, to - at)), at);
  if (noSync !== true) await handle.sync();
}

async function syncDir(dir: string, noSync: boolean | undefined): Promise<void> {
  if (noSync === true) return;
  const handle = await fs.open(dir, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
