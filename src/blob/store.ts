/**
 * The durable local store of large values under <dataDir>/blobs: chunk data
 * content-addressed in append-only pack files, and an LMDB index holding
 * where each chunk lives, one manifest per value version, and which version
 * each key holds now.
 *
 *   packs/00000001.pack   records: SHA-256 (32) | length u32 BE | bytes
 *   index/                LMDB: chunks   hash → pack u32 | offset u32 | length u32
 *                               manifests value hash → manifest record
 *                               keys     key (UTF-8) → key record (JSON)
 *
 * Invariants:
 * - The store only holds bytes that match their hash: ingested chunks are
 *   hashed here, received ones are verified here before they are written.
 * - A value is committed (its key points to its version) only after every
 *   chunk it names is on disk: pack writes are fsync'd first, then one LMDB
 *   transaction (synced before its promise resolves) adds the new chunks'
 *   index entries, the manifest and the key. A crash before that leaves only
 *   unindexed pack bytes, which compaction reclaims; a crash after it loses
 *   nothing. So a committed manifest's chunks are always indexed.
 * - A key holds one version; committing another replaces it. Manifests of
 *   replaced versions are kept while the caller's `retainedVersions` names
 *   them (the baseline cache needs them to plan deltas), their chunks are not.
 * - Garbage collection (mark and sweep) runs under the same lock as commits,
 *   and never drops a chunk that an in-flight ingest, receive or send has
 *   pinned, nor touches a pack holding a pending (written, unindexed) chunk,
 *   so nothing it relies on disappears under it; an entry it has marked dead
 *   and is removing counts as absent to a staged write's lookup (a pin taken
 *   after the mark comes too late). A staged value pins only the
 *   indexed chunks it relies on; the ones it holds pending need no pin (their
 *   bytes stay, and its commit indexes them again if GC dropped another
 *   copy's index entry meanwhile). Compaction copies a
 *   mostly dead pack's live chunks into the active pack (fsync'd) before the
 *   index points at the copies and the old file is removed; a reader that
 *   looked a chunk up just before retries once.
 * - A pack is at most 4 GiB (offsets are u32); a new one starts at PACK_BYTES.
 */
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, rm, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { open as openLmdb, type Database, type RootDatabase } from 'lmdb';
import type { Logger } from '../log.ts';
import { chunkValue, validateChunking, type ChunkingOptions } from './chunker.ts';
import { adoptHashList, chunkHashList, sameChunking, sha256Hex, valueHash, type ChunkRef, type Manifest } from './manifest.ts';
import { DwcpError, type DwcpErrorCode } from '../errors.ts';

const HASH_BYTES = 32;
const RECORD_HEADER_BYTES = HASH_BYTES + 4;
const LOCATION_BYTES = 12;
/** Start a new pack beyond this size; small enough that compaction copies little at a time. */
export const PACK_BYTES = 128 * 1024 * 1024;
/** Bytes read from a file per step while ingesting. */
const INGEST_WINDOW_BYTES = 8 * 1024 * 1024;
/** Bytes read per step when streaming a value out. */
const READ_RUN_BYTES = 4 * 1024 * 1024;
/** Appended bytes after which the pack's dirty pages start going to disk, ahead of the commit's fsync. */
export const EARLY_SYNC_BYTES = 32 * 1024 * 1024;
/** A pack whose live bytes fall below this share of its size is compacted. */
const COMPACT_BELOW = 0.5;
const MANIFEST_RECORD_VERSION = 1;
const DECODED_MANIFESTS_KEPT = 8;
export const BLOB_MAX_KEY_BYTES = 1024;

export type BlobStoreErrorReason = 'invalid' | 'not-found' | 'too-large' | 'corrupt' | 'closed';

const CODE_OF_REASON = {
  invalid: 'invalid',
  'not-found': 'not_found',
  'too-large': 'too_large',
  corrupt: 'corrupt',
  closed: 'stopped',
} as const satisfies Record<BlobStoreErrorReason, DwcpErrorCode>;

/** `reason` is the store's own word (also a metrics label); the code is what a caller acts on. */
export class BlobStoreError extends DwcpError<(typeof CODE_OF_REASON)[BlobStoreErrorReason]> {
  readonly reason: BlobStoreErrorReason;
  constructor(reason: BlobStoreErrorReason, message: string) {
    super(CODE_OF_REASON[reason], message);
    this.reason = reason;
  }
}

/** The refusal of a received chunk named `hash` (`length` bytes) whose bytes hash to `actual` (also raised by the blob chunk verifier). */
export function chunkMismatch(hash: string, length: number, actual: string): BlobStoreError {
  return new BlobStoreError('corrupt', `chunk ${hash} (${length} bytes) hashes to ${actual}`);
}

/** What a key holds now. */
export interface StoredValue {
  key: string;
  /** The value hash, which is also the version id. */
  version: string;
  size: number;
  chunks: number;
  storedAt: string;
  /** `local` for an ingested value, else the member it came from. */
  source: string;
}

interface Location {
  pack: number;
  offset: number;
  length: number;
}

export interface IngestProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface GcResult {
  chunksDropped: number;
  manifestsDropped: number;
  packsRemoved: number;
  packsCompacted: number;
  bytesReclaimed: number;
}

export interface BlobStoreOptions {
  /** <dataDir>/blobs */
  dir: string;
  chunking: ChunkingOptions;
  maxValueBytes: number;
  /** Skip fsync (tests): a machine crash may then lose committed values. */
  noSync?: boolean;
  /** Appended bytes after which a pack's dirty pages start going to disk ahead of the commit (default EARLY_SYNC_BYTES; tests use less). */
  earlySyncBytes?: number;
  /** Versions whose manifests must outlive their key's current version (the baseline cache's). */
  retainedVersions?: () => Iterable<string>;
  log?: Logger;
}

export function checkBlobKey(key: string): void {
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes === 0) throw new BlobStoreError('invalid', 'key: required');
  if (bytes > BLOB_MAX_KEY_BYTES) throw new BlobStoreError('invalid', `key: ${bytes} bytes of UTF-8, above the ${BLOB_MAX_KEY_BYTES}-byte limit`);
  if (!key.isWellFormed()) throw new BlobStoreError('invalid', 'key: not well-formed Unicode');
}

function hashKey(hex: string): Buffer {
  return Buffer.from(hex, 'hex');
}

function encodeLocation(loc: Location): Buffer {
  const b = Buffer.allocUnsafe(LOCATION_BYTES);
  b.writeUInt32BE(loc.pack, 0);
  b.writeUInt32BE(loc.offset, 4);
  b.writeUInt32BE(loc.length, 8);
  return b;
}

function decodeLocation(b: Buffer): Location {
  if (b.length !== LOCATION_BYTES) throw new BlobStoreError('corrupt', `chunk index entry of ${b.length} bytes, expected ${LOCATION_BYTES}`);
  return { pack: b.readUInt32BE(0), offset: b.readUInt32BE(4), length: b.readUInt32BE(8) };
}

/** crc32 u32 | version u8 | size u64 | min u32 | avg u32 | max u32 | count u32 | per chunk: length u32 | hash 32, all BE. */
export function encodeManifestRecord(m: Manifest): Buffer {
  // The per-chunk part is the value hash's own list (computed once per manifest, see chunkHashList).
  const perChunk = chunkHashList(m.size, m.chunks).list.subarray(8);
  const b = Buffer.allocUnsafe(4 + 1 + 8 + 12 + 4 + perChunk.byteLength);
  b.writeUInt8(MANIFEST_RECORD_VERSION, 4);
  b.writeUInt32BE(Math.floor(m.size / 2 ** 32), 5);
  b.writeUInt32BE(m.size >>> 0, 9);
  b.writeUInt32BE(m.chunking.minSize, 13);
  b.writeUInt32BE(m.chunking.avgSize, 17);
  b.writeUInt32BE(m.chunking.maxSize, 21);
  b.writeUInt32BE(m.chunks.length, 25);
  b.set(perChunk, 29);
  b.writeUInt32BE(crc32(b.subarray(4)), 0);
  return b;
}

export function decodeManifestRecord(key: string, b: Buffer): Manifest {
  const bad = (problem: string) => new BlobStoreError('corrupt', `manifest record of ${key}: ${problem}`);
  if (b.length < 29) throw bad(`${b.length} bytes, shorter than its header`);
  if (b.readUInt32BE(0) !== crc32(b.subarray(4))) throw bad('checksum mismatch');
  if (b.readUInt8(4) !== MANIFEST_RECORD_VERSION) throw bad(`record version ${b.readUInt8(4)}`);
  const size = b.readUInt32BE(5) * 2 ** 32 + b.readUInt32BE(9);
  const chunking = { minSize: b.readUInt32BE(13), avgSize: b.readUInt32BE(17), maxSize: b.readUInt32BE(21) };
  const count = b.readUInt32BE(25);
  if (b.length !== 29 + count * (4 + HASH_BYTES)) throw bad(`${b.length} bytes for ${count} chunks`);
  const chunks: ChunkRef[] = new Array(count);
  let offset = 0;
  for (let i = 0, at = 29; i < count; i++, at += 4 + HASH_BYTES) {
    const length = b.readUInt32BE(at);
    chunks[i] = { offset, length, hash: b.toString('hex', at + 4, at + 4 + HASH_BYTES) };
    offset += length;
  }
  if (offset !== size) throw bad(`chunks cover ${offset} bytes of ${size}`);
  // The record's per-chunk part is the hash list's: the root comes from it without converting 170 000 hashes back.
  const list = Buffer.allocUnsafe(8 + b.length - 29);
  list.writeUInt32BE(Math.floor(size / 2 ** 32), 0);
  list.writeUInt32BE(size >>> 0, 4);
  b.copy(list, 8, 29);
  const hash = adoptHashList(size, chunks, list);
  return { key, version: hash, size, hash, chunking, chunks };
}

interface KeyRecord {
  version: string;
  size: number;
  chunks: number;
  storedAt: string;
  source: string;
}

/** A one-at-a-time lock; GC and commits take it so a mark never misses a commit. */
class Mutex {
  #tail: Promise<void> = Promise.resolve();
  async run<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(work);
    this.#tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }
}

/** Buffers per writev call: well under the kernel's IOV_MAX (1024). */
const WRITEV_BUFFERS = 512;

/** Writes `parts` (`total` bytes) at `position`, in as few writev calls as the kernel takes; a short write continues where it stopped. */
async function writeAllAt(fh: FileHandle, parts: readonly Uint8Array[], total: number, position: number, pack: number): Promise<void> {
  let done = 0;
  let queue = parts.filter((p) => p.byteLength > 0);
  while (queue.length > 0) {
    const batch = queue.slice(0, WRITEV_BUFFERS);
    const { bytesWritten } = await fh.writev(batch, position + done);
    if (bytesWritten === 0) throw new Error(`pack ${pack}: write made no progress at ${position + done} (${done} of ${total} bytes written)`);
    done += bytesWritten;
    // Drop what was written, keeping the unwritten tail of a part cut short.
    let skip = bytesWritten;
    let i = 0;
    for (; i < queue.length && skip >= (queue[i] as Uint8Array).byteLength; i++) skip -= (queue[i] as Uint8Array).byteLength;
    queue = queue.slice(i);
    if (skip > 0 && queue[0] !== undefined) queue[0] = queue[0].subarray(skip);
  }
  if (done !== total) throw new Error(`short write to pack ${pack}: ${done} of ${total} bytes`);
}

function packName(n: number): string {
  return `${String(n).padStart(8, '0')}.pack`;
}

/** A chunk with its hash, as appended to a pack. */
export interface HashedChunk {
  hash: string;
  bytes: Uint8Array;
}

/** A chunk with its hash also in binary (the index key and the pack record's header), converted once per write. */
interface KeyedChunk extends HashedChunk {
  key: Buffer;
}

/**
 * A written chunk not yet indexed; `key` is its binary hash, kept so a commit
 * does not convert the hex again. Its holders keep the entry itself, not the
 * hash, so letting go is no lookup; an entry is in the pending map exactly
 * while holders > 0.
 */
interface PendingChunk {
  hash: string;
  loc: Location;
  key: Buffer;
  holders: number;
  /** The number of the last commit that listed it (#commit's dedup, without a Set of every hash). */
  listedBy: number;
}

export class BlobStore {
  readonly dir: string;
  readonly chunking: ChunkingOptions;
  readonly maxValueBytes: number;
  readonly #opts: BlobStoreOptions;
  readonly #root: RootDatabase<Buffer, Buffer>;
  readonly #chunks: Database<Buffer, Buffer>;
  readonly #manifests: Database<Buffer, Buffer>;
  readonly #keys: Database<Buffer, Buffer>;
  readonly #packsDir: string;
  readonly #handles = new Map<number, FileHandle>();
  /** Written but not yet indexed: by hash, with how many staged writes hold it. */
  readonly #pending = new Map<string, PendingChunk>();
  readonly #pins = new Map<string, number>();
  /** Whole manifests pinned (a value being sent or read, a baseline being relied on): O(1) to pin, expanded only by GC. */
  readonly #pinnedManifests = new Map<number, Manifest>();
  #nextPin = 0;
  readonly #dirtyPacks = new Set<number>();
  readonly #decoded = new Map<string, Manifest>();
  readonly #indexLock = new Mutex();
  #active = 0;
  #activeSize = 0;
  /** Bytes appended since the last early write-back started (#writeBackEarly). */
  #unsyncedBytes = 0;
  #earlySync: Promise<void> | undefined;
  #earlySyncFailure: Error | undefined;
  #writes: Promise<void> = Promise.resolve();
  /** Commits begun, numbering them for PendingChunk.listedBy. */
  #commits = 0;
  /**
   * Hex hashes of the index entries GC has marked dead and is removing (set from its mark until its transaction is
   * done, else undefined): a staged write looking one up meanwhile must not take it as indexed, since its pin comes
   * after the mark and the entry goes anyway.
   */
  #dropping: Set<string> | undefined;
  #closed = false;

  private constructor(opts: BlobStoreOptions, root: RootDatabase<Buffer, Buffer>) {
    this.#opts = opts;
    this.dir = opts.dir;
    this.chunking = { ...opts.chunking };
    this.maxValueBytes = opts.maxValueBytes;
    this.#root = root;
    const sub = (name: string) => root.openDB<Buffer, Buffer>({ name, encoding: 'binary', keyEncoding: 'binary' });
    this.#chunks = sub('chunks');
    this.#manifests = sub('manifests');
    this.#keys = sub('keys');
    this.#packsDir = join(opts.dir, 'packs');
  }

  static async open(opts: BlobStoreOptions): Promise<BlobStore> {
    validateChunking(opts.chunking);
    await mkdir(join(opts.dir, 'packs'), { recursive: true, mode: 0o700 });
    await mkdir(join(opts.dir, 'index'), { recursive: true, mode: 0o700 });
    const root = openLmdb<Buffer, Buffer>({
      path: join(opts.dir, 'index'),
      encoding: 'binary',
      keyEncoding: 'binary',
      // A commit promise must mean "on disk" (see the module comment); with overlappingSync it resolves before the fsync.
      overlappingSync: false,
      noSync: opts.noSync === true,
      maxDbs: 8,
    });
    const store = new BlobStore(opts, root);
    await store.#openActivePack();
    return store;
  }

  async #openActivePack(): Promise<void> {
    const packs = await this.#packNumbers();
    const last = packs.at(-1);
    if (last === undefined) {
      await this.#startPack(1);
      return;
    }
    if ((await stat(join(this.#packsDir, packName(last)))).size >= PACK_BYTES) await this.#startPack(last + 1);
    else await this.#startPack(last);
  }

  async #packNumbers(): Promise<number[]> {
    const names = await readdir(this.#packsDir);
    return names
      .map((n) => /^(\d{8})\.pack$/.exec(n)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /** Makes pack `n` (new, or the last one after a restart) the one appends go to, at its end. */
  async #startPack(n: number): Promise<void> {
    // Read-write without O_APPEND, so writes land at the offsets we track (Linux ignores pwrite's offset under O_APPEND).
    const fh = await open(join(this.#packsDir, packName(n)), fsConstants.O_RDWR | fsConstants.O_CREAT, 0o600);
    await this.#handles.get(n)?.close();
    this.#handles.set(n, fh);
    this.#active = n;
    this.#activeSize = (await fh.stat()).size;
  }

  async #handle(pack: number): Promise<FileHandle> {
    let fh = this.#handles.get(pack);
    if (fh === undefined) {
      fh = await open(join(this.#packsDir, packName(pack)), 'r');
      this.#handles.set(pack, fh);
    }
    return fh;
  }

  #checkOpen(): void {
    if (this.#closed) throw new BlobStoreError('closed', 'the blob store is closed');
  }

  // ------------------------------------------------------------------ reads

  /** The value `key` holds now, or undefined. */
  current(key: string): StoredValue | undefined {
    const raw = this.#keys.getBinary(Buffer.from(key, 'utf8'));
    if (raw === undefined) return undefined;
    return { key, ...(JSON.parse(raw.toString('utf8')) as KeyRecord) };
  }

  /** The manifest of `key`'s current version. */
  currentManifest(key: string): Manifest | undefined {
    const held = this.current(key);
    return held === undefined ? undefined : this.manifest(held.version, key);
  }

  /** A manifest by version (value hash), if the store keeps it; `key` only fills in the returned manifest's key. */
  manifest(version: string, key = ''): Manifest | undefined {
    const cached = this.#decoded.get(version);
    if (cached !== undefined) return { ...cached, key };
    if (!/^[0-9a-f]{64}$/.test(version)) return undefined;
    const raw = this.#manifests.getBinary(hashKey(version));
    if (raw === undefined) return undefined;
    const m = decodeManifestRecord(key, raw);
    if (m.hash !== version) throw new BlobStoreError('corrupt', `manifest stored under ${version} hashes to ${m.hash}`);
    this.#remember(m);
    return { ...m, key };
  }

  /** Keeps a decoded manifest for the next lookups (a 1 GiB value's takes ~100 ms to decode). */
  #remember(m: Manifest): void {
    this.#decoded.delete(m.hash);
    this.#decoded.set(m.hash, m);
    if (this.#decoded.size > DECODED_MANIFESTS_KEPT) this.#decoded.delete(this.#decoded.keys().next().value as string);
  }

  /** Whether a key starting with `prefix` holds `version` now (its manifest and chunks are then committed and indexed). */
  holdsVersion(version: string, prefix: string): boolean {
    return this.list(prefix).some((v) => v.version === version);
  }

  /** The stored values, in key order; with `prefix`, only the keys that start with it (a range read, not a scan). */
  list(prefix = ''): StoredValue[] {
    const out: StoredValue[] = [];
    const start = Buffer.from(prefix, 'utf8');
    for (const { key, value } of this.#keys.getRange(prefix === '' ? {} : { start })) {
      if (!key.subarray(0, start.length).equals(start)) break;
      out.push({ key: key.toString('utf8'), ...(JSON.parse(value.toString('utf8')) as KeyRecord) });
    }
    return out;
  }

  hasChunk(hash: string): boolean {
    return this.#pending.has(hash) || this.#chunks.doesExist(hashKey(hash));
  }

  #locate(hash: string): Location | undefined {
    const pending = this.#pending.get(hash);
    if (pending !== undefined) return pending.loc;
    const raw = this.#chunks.getBinaryFast(hashKey(hash));
    return raw === undefined ? undefined : decodeLocation(raw);
  }

  /**
   * The bytes of `refs` (chunks the store holds), in order; reads of chunks
   * that lie next to each other in a pack are merged. Not verified: the
   * sender's receiver verifies, and `readValue` verifies for export.
   *
   * With `into`, the reads land in it (front to back, while it has room; the
   * rest in fresh buffers) and the returned arrays are views of it, so a
   * caller that reuses its buffers allocates nothing per read: a sender's
   * fresh 1 MiB per batch outlived young-generation collections in flight
   * and cost the sending daemon a mark-compact every ~32 MiB.
   */
  async readChunks(refs: readonly { hash: string; length: number }[], into?: Uint8Array): Promise<Uint8Array[]> {
    this.#checkOpen();
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#readChunksOnce(refs, into);
      } catch (err) {
        // Compaction may have moved a chunk between lookup and read; the index says where it went.
        const code = (err as NodeJS.ErrnoException).code;
        if (attempt === 0 && (code === 'ENOENT' || code === 'EBADF')) continue;
        throw err;
      }
    }
  }

  async #readChunksOnce(refs: readonly { hash: string; length: number }[], into?: Uint8Array): Promise<Uint8Array[]> {
    const locs = refs.map((r) => {
      const loc = this.#locate(r.hash);
      if (loc === undefined) throw new BlobStoreError('not-found', `chunk ${r.hash} is not in the store`);
      if (loc.length !== r.length) throw new BlobStoreError('corrupt', `chunk ${r.hash} is stored with ${loc.length} bytes, expected ${r.length}`);
      return loc;
    });
    const out: Uint8Array[] = new Array(refs.length);
    let used = 0;
    for (let i = 0; i < locs.length; ) {
      const first = locs[i] as Location;
      let end = first.offset + first.length;
      let j = i + 1;
      for (; j < locs.length; j++) {
        const next = locs[j] as Location;
        if (next.pack !== first.pack || next.offset !== end + RECORD_HEADER_BYTES || end - first.offset > READ_RUN_BYTES) break;
        end = next.offset + next.length;
      }
      const size = end - first.offset;
      const buf = into !== undefined && used + size <= into.byteLength ? into.subarray(used, (used += size)) : Buffer.allocUnsafe(size);
      const fh = await this.#handle(first.pack);
      const { bytesRead } = await fh.read(buf, 0, buf.length, first.offset);
      if (bytesRead !== buf.length) throw new BlobStoreError('corrupt', `pack ${first.pack} ends before chunk ${refs[i]?.hash} (offset ${first.offset})`);
      for (let k = i; k < j; k++) {
        const loc = locs[k] as Location;
        out[k] = buf.subarray(loc.offset - first.offset, loc.offset - first.offset + loc.length);
      }
      i = j;
    }
    return out;
  }

  /**
   * Streams `manifest`'s value out in order, every chunk checked against its
   * hash; `verify: false` skips that for a caller that checks the whole value
   * against a digest of its own (and comes back with verify on to say which
   * chunk is damaged when it does not match).
   */
  async *readValue(manifest: Manifest, opts: { verify?: boolean } = {}): AsyncGenerator<Uint8Array> {
    const verify = opts.verify !== false;
    const release = this.pinManifest(manifest);
    try {
      for (let i = 0; i < manifest.chunks.length; ) {
        const run: ChunkRef[] = [];
        for (let bytes = 0; i < manifest.chunks.length && bytes < READ_RUN_BYTES; i++) {
          const c = manifest.chunks[i] as ChunkRef;
          run.push(c);
          bytes += c.length;
        }
        const data = await this.readChunks(run);
        for (const [k, bytes] of data.entries()) {
          const c = run[k] as ChunkRef;
          const actual = verify ? sha256Hex(bytes) : c.hash;
          if (actual !== c.hash) throw new BlobStoreError('corrupt', `${manifest.key}: chunk at offset ${c.offset} reads back hashing to ${actual}, stored as ${c.hash}`);
          yield bytes;
        }
      }
    } finally {
      release();
    }
  }

  /** Keeps every chunk of `m` from garbage collection until the returned function is called. */
  pinManifest(m: Manifest): () => void {
    const id = this.#nextPin++;
    this.#pinnedManifests.set(id, m);
    return () => void this.#pinnedManifests.delete(id);
  }

  /** Keeps these chunks from garbage collection until the returned function is called. */
  pin(hashes: Iterable<string>): () => void {
    const held = [...new Set(hashes)];
    for (const h of held) this.#pins.set(h, (this.#pins.get(h) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const h of held) {
        const n = (this.#pins.get(h) ?? 1) - 1;
        if (n === 0) this.#pins.delete(h);
        else this.#pins.set(h, n);
      }
    };
  }

  // ------------------------------------------------------------------ writes

  /**
   * Appends records to the active pack, one write for all of them, and
   * publishes them as pending (one holder each) as soon as the write is done,
   * in the same step, so GC never sees a written chunk that is not pending.
   * The chunks' bytes are written where they lie (writev), not copied.
   */
  #append(chunks: readonly KeyedChunk[]): Promise<{ locs: Location[]; held: PendingChunk[] }> {
    const total = chunks.reduce((sum, c) => sum + RECORD_HEADER_BYTES + c.bytes.byteLength, 0);
    const written = this.#writes.then(async () => {
      this.#checkOpen();
      if (this.#activeSize > 0 && this.#activeSize + total > PACK_BYTES) await this.#startPack(this.#active + 1);
      const headers = Buffer.allocUnsafe(chunks.length * RECORD_HEADER_BYTES);
      const parts: Uint8Array[] = [];
      const locs: Location[] = [];
      let at = 0;
      for (const [i, c] of chunks.entries()) {
        const header = headers.subarray(i * RECORD_HEADER_BYTES, (i + 1) * RECORD_HEADER_BYTES);
        header.set(c.key, 0);
        header.writeUInt32BE(c.bytes.byteLength, HASH_BYTES);
        parts.push(header, c.bytes);
        locs.push({ pack: this.#active, offset: this.#activeSize + at + RECORD_HEADER_BYTES, length: c.bytes.byteLength });
        at += RECORD_HEADER_BYTES + c.bytes.byteLength;
      }
      const fh = await this.#handle(this.#active);
      await writeAllAt(fh, parts, total, this.#activeSize, this.#active);
      this.#activeSize += total;
      this.#dirtyPacks.add(this.#active);
      const held = chunks.map((c, i) => this.#holdPending(c, locs[i] as Location));
      this.#writeBackEarly(fh, total);
      return { locs, held };
    });
    this.#writes = written.then(
      () => {},
      () => {},
    );
    return written;
  }

  /**
   * Starts writing a pack's dirty pages to disk (a datasync nobody waits for)
   * after every EARLY_SYNC_BYTES appended, so a large value's commit, whose
   * fsync is what makes it durable, finds most of it on disk already instead
   * of flushing the whole value at once. Durability is unchanged: commit still
   * datasyncs every pack it wrote before it answers. A failed early sync is
   * kept and thrown by the next commit's sync, as a failed commit sync would.
   */
  #writeBackEarly(fh: FileHandle, appended: number): void {
    if (this.#opts.noSync === true) return;
    this.#unsyncedBytes += appended;
    if (this.#unsyncedBytes < (this.#opts.earlySyncBytes ?? EARLY_SYNC_BYTES) || this.#earlySync !== undefined) return;
    this.#unsyncedBytes = 0;
    this.#earlySync = fh.datasync().then(
      () => {
        this.#earlySync = undefined;
      },
      (err: unknown) => {
        this.#earlySync = undefined;
        this.#earlySyncFailure ??= err instanceof Error ? err : new Error(String(err));
      },
    );
  }

  #dropPending(p: PendingChunk): void {
    if (p.holders === 0) return;
    if (--p.holders === 0 && this.#pending.get(p.hash) === p) this.#pending.delete(p.hash);
  }

  async #syncPacks(): Promise<void> {
    await this.#writes;
    const dirty = [...this.#dirtyPacks];
    this.#dirtyPacks.clear();
    if (this.#opts.noSync === true) return;
    try {
      await this.#earlySync;
      const failed = this.#earlySyncFailure;
      this.#earlySyncFailure = undefined;
      if (failed !== undefined) throw failed;
      for (const pack of dirty) await (await this.#handle(pack)).datasync();
    } catch (err) {
      // Still dirty: a retried commit (or the next one) must sync them again before it answers, not find none to sync.
      for (const pack of dirty) this.#dirtyPacks.add(pack);
      throw err;
    }
  }

  #holdPending(c: KeyedChunk, loc: Location): PendingChunk {
    let p = this.#pending.get(c.hash);
    if (p === undefined) this.#pending.set(c.hash, (p = { hash: c.hash, loc, key: c.key, holders: 0, listedBy: 0 }));
    p.holders++;
    return p;
  }

  /** A write of one new value: chunks go to packs as they come, the key changes only at commit. */
  stage(): StagedValue {
    this.#checkOpen();
    return new StagedValue({
      indexed: (key) => this.#chunks.doesExist(key) && !(this.#dropping?.has(key.toString('hex')) ?? false),
      share: (hash) => {
        const p = this.#pending.get(hash);
        if (p !== undefined) p.holders++;
        return p;
      },
      append: async (chunks) => (await this.#append(chunks)).held,
      drop: (p) => this.#dropPending(p),
      pin: (hashes) => this.pin(hashes),
      pinManifest: (m) => this.pinManifest(m),
      commit: (key, manifest, source, known) => this.#commit(key, manifest, source, known),
    });
  }

  /** `known[i]` set: chunk i comes from a committed manifest the caller pinned, so it is indexed and not looked up again. */
  async #commit(key: string, manifest: Manifest, source: string, known: Uint8Array | undefined): Promise<StoredValue> {
    checkBlobKey(key);
    if (manifest.size > this.maxValueBytes) throw new BlobStoreError('too-large', `${key}: ${manifest.size} bytes, above the ${this.maxValueBytes}-byte limit`);
    const root = valueHash(manifest.size, manifest.chunks);
    if (root !== manifest.hash) throw new BlobStoreError('corrupt', `${key}: the chunk list hashes to ${root}, the manifest says ${manifest.hash}`);
    return this.#indexLock.run(async () => {
      this.#checkOpen();
      const fresh: [Buffer, Location][] = [];
      // A chunk listed twice is indexed once: a pending one is marked with this commit's number (commits run one
      // at a time, under the lock); an indexed one listed twice is only looked up twice.
      const commit = ++this.#commits;
      for (const [i, c] of manifest.chunks.entries()) {
        if (known !== undefined && ((known[i >> 3] as number) & (1 << (i & 7))) !== 0) continue;
        const p = this.#pending.get(c.hash);
        if (p !== undefined) {
          if (p.listedBy === commit) continue;
          p.listedBy = commit;
          if (!this.#chunks.doesExist(p.key)) fresh.push([p.key, p.loc]);
        } else if (!this.#chunks.doesExist(hashKey(c.hash))) {
          throw new BlobStoreError('not-found', `${key}: chunk ${c.hash} at offset ${c.offset} is neither received nor in the store`);
        }
      }
      await this.#syncPacks();
      const record: KeyRecord = { version: manifest.hash, size: manifest.size, chunks: manifest.chunks.length, storedAt: new Date().toISOString(), source };
      const keyBytes = Buffer.from(key, 'utf8');
      const previous = this.current(key)?.version;
      await this.#root.transaction(() => {
        for (const [chunkKey, loc] of fresh) this.#chunks.putSync(chunkKey, encodeLocation(loc));
        this.#manifests.putSync(hashKey(manifest.hash), encodeManifestRecord(manifest));
        this.#keys.putSync(keyBytes, Buffer.from(JSON.stringify(record), 'utf8'));
      });
      this.#remember({ ...manifest, key: '', version: manifest.hash });
      if (previous !== undefined && previous !== manifest.hash) this.#opts.log?.debug({ blobKey: key, previous, version: manifest.hash }, 'blob version replaced');
      return { key, ...record };
    });
  }

  /**
   * Reads `path` (a regular file), chunks and stores it, and makes it `key`'s
   * current version. `onRead` sees every byte read, in order, before it is
   * chunked: a caller that needs more of the file than its chunks (a whole-file
   * digest, a format check of its header) gets it from the same single pass,
   * so what it checked is exactly what was stored; a throw from it abandons
   * the ingest (nothing is committed). `key` may be a function, called once
   * after the last read and before the commit, for a key named after the
   * content (a digest taken through onRead).
   */
  async ingestFile(key: string | (() => string), path: string, opts: { onProgress?: (p: IngestProgress) => void; onRead?: (bytes: Uint8Array) => void; signal?: AbortSignal } = {}): Promise<StoredValue> {
    if (typeof key === 'string') checkBlobKey(key);
    let fh: FileHandle;
    try {
      // O_NOFOLLOW: the caller named this file; a symlink swapped in meanwhile is refused, not followed.
      fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied (the daemon cannot read it)' : e.code === 'ELOOP' ? 'is a symbolic link' : e.message;
      throw new BlobStoreError(e.code === 'ENOENT' ? 'not-found' : 'invalid', `${path}: ${why}`);
    }
    try {
      const info = await fh.stat();
      if (!info.isFile()) throw new BlobStoreError('invalid', `${path}: not a regular file`);
      if (info.size > this.maxValueBytes) throw new BlobStoreError('too-large', `${path}: ${info.size} bytes, above blob.maxValueBytes (${this.maxValueBytes})`);
      const total = info.size;
      let offset = 0;
      return await this.#ingest(key, total, async (into) => {
        opts.signal?.throwIfAborted();
        const { bytesRead } = await fh.read(into, 0, into.byteLength, offset);
        if (bytesRead > 0) opts.onRead?.(into.subarray(0, bytesRead));
        offset += bytesRead;
        opts.onProgress?.({ bytesDone: offset, bytesTotal: total });
        return bytesRead;
      });
    } finally {
      await fh.close();
    }
  }

  /** Stores `value` as `key`'s current version (small values, tests). */
  async ingestBytes(key: string, value: Uint8Array): Promise<StoredValue> {
    checkBlobKey(key);
    if (value.byteLength > this.maxValueBytes) throw new BlobStoreError('too-large', `${key}: ${value.byteLength} bytes, above blob.maxValueBytes (${this.maxValueBytes})`);
    let offset = 0;
    return this.#ingest(key, value.byteLength, async (into) => {
      const n = Math.min(into.byteLength, value.byteLength - offset);
      into.set(value.subarray(offset, offset + n));
      offset += n;
      return n;
    });
  }

  /** Chunks a value read window by window through `read` (0 = end), writing only chunks the store lacks. */
  async #ingest(keyOf: string | (() => string), expected: number, read: (into: Uint8Array) => Promise<number>): Promise<StoredValue> {
    const staged = this.stage();
    try {
      const window = Buffer.allocUnsafe(INGEST_WINDOW_BYTES + this.chunking.maxSize);
      const chunks: ChunkRef[] = [];
      let carried = 0;
      let offset = 0;
      for (let eof = false; !eof; ) {
        const n = await read(window.subarray(carried, carried + INGEST_WINDOW_BYTES));
        eof = n === 0;
        const filled = carried + n;
        const cuts = chunkValue(window.subarray(0, filled), this.chunking, eof);
        const hashed: HashedChunk[] = [];
        for (const cut of cuts) {
          const bytes = window.subarray(cut.offset, cut.offset + cut.length);
          const hash = sha256Hex(bytes);
          chunks.push({ offset: offset + cut.offset, length: cut.length, hash });
          hashed.push({ hash, bytes });
        }
        // Copies what it writes before it resolves, so the window can be reused after.
        await staged.writeTrusted(hashed);
        const used = cuts.reduce((sum, c) => sum + c.length, 0);
        window.copyWithin(0, used, filled);
        carried = filled - used;
        offset += used;
      }
      const key = typeof keyOf === 'string' ? keyOf : keyOf();
      checkBlobKey(key);
      if (offset !== expected) throw new BlobStoreError('invalid', `${key}: read ${offset} bytes, expected ${expected} (the file changed while it was read)`);
      const hash = valueHash(offset, chunks);
      const manifest: Manifest = { key, version: hash, size: offset, hash, chunking: { ...this.chunking }, chunks };
      return await staged.commit(key, manifest, 'local');
    } finally {
      staged.release();
    }
  }

  /**
   * Forgets which version `key` holds (true if it held one). Its chunks and
   * manifest become garbage for the next GC unless something else names them;
   * a send or read already running has pinned what it reads.
   */
  async remove(key: string): Promise<boolean> {
    checkBlobKey(key);
    return this.#indexLock.run(async () => {
      this.#checkOpen();
      const keyBytes = Buffer.from(key, 'utf8');
      if (this.#keys.getBinary(keyBytes) === undefined) return false;
      await this.#root.transaction(() => {
        this.#keys.removeSync(keyBytes);
      });
      return true;
    });
  }

  // ------------------------------------------------------------------ garbage collection

  /** Drops chunks and manifests nothing needs, removes dead packs and compacts mostly dead ones. */
  async gc(): Promise<GcResult> {
    return this.#indexLock.run(async () => {
      this.#checkOpen();
      const result: GcResult = { chunksDropped: 0, manifestsDropped: 0, packsRemoved: 0, packsCompacted: 0, bytesReclaimed: 0 };
      const currentVersions = new Set(this.list().map((v) => v.version));
      const retained = new Set([...currentVersions, ...(this.#opts.retainedVersions?.() ?? [])]);
      const live = new Set<string>();
      for (const version of currentVersions) for (const c of this.manifest(version)?.chunks ?? []) live.add(c.hash);
      for (const m of this.#pinnedManifests.values()) for (const c of m.chunks) live.add(c.hash);
      const deadChunks: Buffer[] = [];
      const dropping = new Set<string>();
      const liveBytes = new Map<number, number>();
      for (const { key, value } of this.#chunks.getRange({})) {
        const hash = key.toString('hex');
        const loc = decodeLocation(value);
        if (live.has(hash) || this.#pins.has(hash)) liveBytes.set(loc.pack, (liveBytes.get(loc.pack) ?? 0) + RECORD_HEADER_BYTES + loc.length);
        else {
          deadChunks.push(Buffer.from(key));
          dropping.add(hash);
        }
      }
      this.#dropping = dropping;
      const deadManifests: Buffer[] = [];
      for (const key of this.#manifests.getKeys({})) if (!retained.has(key.toString('hex'))) deadManifests.push(Buffer.from(key));
      try {
        if (deadChunks.length > 0 || deadManifests.length > 0) {
          await this.#root.transaction(() => {
            for (const k of deadChunks) this.#chunks.removeSync(k);
            for (const k of deadManifests) this.#manifests.removeSync(k);
          });
          for (const k of deadManifests) this.#decoded.delete(k.toString('hex'));
        }
      } finally {
        this.#dropping = undefined;
      }
      result.chunksDropped = deadChunks.length;
      result.manifestsDropped = deadManifests.length;
      // Appends only ever go to the active pack or a newer one, and publish pending as they finish: see #append.
      const active = this.#active;
      const pendingPacks = new Set([...this.#pending.values()].map((p) => p.loc.pack));
      for (const pack of await this.#packNumbers()) {
        if (pack >= active || pendingPacks.has(pack)) continue;
        const size = (await stat(join(this.#packsDir, packName(pack)))).size;
        const liveInPack = liveBytes.get(pack) ?? 0;
        if (liveInPack === 0) {
          await this.#removePack(pack);
          result.packsRemoved++;
          result.bytesReclaimed += size;
        } else if (liveInPack < size * COMPACT_BELOW) {
          await this.#compact(pack);
          result.packsCompacted++;
          result.bytesReclaimed += size - liveInPack;
        }
      }
      if (result.chunksDropped + result.manifestsDropped + result.packsRemoved + result.packsCompacted > 0) this.#opts.log?.debug({ ...result }, 'blob store garbage collected');
      return result;
    });
  }

  async #removePack(pack: number): Promise<void> {
    await this.#handles.get(pack)?.close();
    this.#handles.delete(pack);
    // Nothing in it is needed, so nothing to sync: left dirty, the next commit's sync would open a file that is gone.
    this.#dirtyPacks.delete(pack);
    await rm(join(this.#packsDir, packName(pack)), { force: true });
  }

  /** Copies a pack's indexed chunks to the active pack, repoints the index, removes the pack. Runs under the index lock. */
  async #compact(pack: number): Promise<void> {
    const moving: { key: Buffer; hash: string; loc: Location }[] = [];
    for (const { key, value } of this.#chunks.getRange({})) {
      const loc = decodeLocation(value);
      if (loc.pack === pack) moving.push({ key: Buffer.from(key), hash: key.toString('hex'), loc });
    }
    const moved: { key: Buffer; loc: Location }[] = [];
    for (let i = 0; i < moving.length; ) {
      const group: typeof moving = [];
      for (let bytes = 0; i < moving.length && bytes < READ_RUN_BYTES; i++) {
        const m = moving[i] as (typeof moving)[number];
        group.push(m);
        bytes += m.loc.length;
      }
      const data = await this.#readChunksOnce(group.map((g) => ({ hash: g.hash, length: g.loc.length })));
      const copies = group.map((g, k) => ({ hash: g.hash, key: g.key, bytes: data[k] as Uint8Array }));
      const { locs, held } = await this.#append(copies);
      for (const [k, g] of group.entries()) moved.push({ key: g.key, loc: locs[k] as Location });
      for (const p of held) this.#dropPending(p);
    }
    await this.#syncPacks();
    await this.#root.transaction(() => {
      for (const m of moved) this.#chunks.putSync(m.key, encodeLocation(m.loc));
    });
    await this.#removePack(pack);
  }

  /** Bytes in pack files and the number of indexed chunks and stored keys. */
  async usage(): Promise<{ packBytes: number; packs: number; chunks: number; keys: number }> {
    let packBytes = 0;
    const packs = await this.#packNumbers();
    for (const p of packs) packBytes += (await stat(join(this.#packsDir, packName(p)))).size;
    return { packBytes, packs: packs.length, chunks: this.#chunks.getCount({}), keys: this.#keys.getCount({}) };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#writes;
    await this.#indexLock.run(async () => {
      this.#closed = true;
    });
    for (const fh of this.#handles.values()) await fh.close().catch(() => {});
    this.#handles.clear();
    await this.#root.close();
  }

  /** Whether a manifest's chunking matches this store's (a delta against it is possible). */
  chunksAlike(m: Manifest): boolean {
    return sameChunking(m.chunking, this.chunking);
  }
}

interface StagingHooks {
  /** Whether the index holds the chunk whose binary hash is `key`. */
  indexed(key: Buffer): boolean;
  /** Adds a holder to a chunk a write (another, or this one before) has pending; undefined if none has. */
  share(hash: string): PendingChunk | undefined;
  /** Writes the chunks and makes each pending with this write as a holder: the entries held, in order. */
  append(chunks: readonly KeyedChunk[]): Promise<PendingChunk[]>;
  /** Lets go of one hold. */
  drop(p: PendingChunk): void;
  pin(hashes: Iterable<string>): () => void;
  pinManifest(m: Manifest): () => void;
  commit(key: string, manifest: Manifest, source: string, known: Uint8Array | undefined): Promise<StoredValue>;
}

/**
 * One value being written: chunks it received or ingested are on disk and
 * findable (pending) but not yet indexed, and every chunk it wrote or relies
 * on is pinned against GC; `release` (always, after commit or on abort) lets
 * go of both. A chunk the store already indexes, or another write already
 * has pending, is not written again.
 */
export class StagedValue {
  readonly #hooks: StagingHooks;
  /** One entry per hold taken (a chunk met again, in a later batch, is held twice and let go twice). */
  readonly #held: PendingChunk[] = [];
  readonly #unpins: (() => void)[] = [];
  #released = false;

  constructor(hooks: StagingHooks) {
    this.#hooks = hooks;
  }

  /** Keeps the chunks of a committed manifest this value reuses (its baseline) from GC until release. */
  rely(baseline: Manifest): void {
    this.#unpins.push(this.#hooks.pinManifest(baseline));
  }

  /** Chunks whose hashes the caller computed from the bytes itself. */
  async writeTrusted(chunks: readonly HashedChunk[]): Promise<void> {
    if (this.#released) throw new BlobStoreError('closed', 'this staged value was released');
    // Each hash in binary once, all in one buffer: the index lookup's key, then the pack record's header.
    const keys = Buffer.allocUnsafe(chunks.length * HASH_BYTES);
    const fresh: KeyedChunk[] = [];
    const queued = new Set<string>();
    const indexed: string[] = [];
    for (const [i, c] of chunks.entries()) {
      if (queued.has(c.hash)) continue;
      const key = keys.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES);
      key.write(c.hash, 0, HASH_BYTES, 'hex');
      if (this.#hooks.indexed(key)) {
        indexed.push(c.hash);
        continue;
      }
      const shared = this.#hooks.share(c.hash);
      if (shared !== undefined) {
        this.#held.push(shared);
        continue;
      }
      queued.add(c.hash);
      fresh.push({ hash: c.hash, key, bytes: c.bytes });
    }
    // Only the chunks found indexed need a pin (taken in the same step as the lookup, so no GC comes between):
    // the others are pending and held by this value, and GC never takes a pending chunk's bytes (see BlobStore.gc).
    if (indexed.length > 0) this.#unpins.push(this.#hooks.pin(indexed));
    if (fresh.length === 0) return;
    const held = await this.#hooks.append(fresh);
    // A release while the write was in flight has let go of #held already (an aborted transfer's batches still
    // being written): these holds go now, or the pending entries, and GC's hands off their pack, would last forever.
    for (const p of held) {
      if (this.#released) this.#hooks.drop(p);
      else this.#held.push(p);
    }
  }

  /** Chunks from elsewhere: each is checked against its hash before anything is written. */
  async writeVerified(chunks: readonly HashedChunk[]): Promise<void> {
    for (const c of chunks) {
      const actual = sha256Hex(c.bytes);
      if (actual !== c.hash) throw chunkMismatch(c.hash, c.bytes.byteLength, actual);
    }
    await this.writeTrusted(chunks);
  }

  /**
   * Makes `manifest` the key's current version once every chunk it names is
   * on disk. `fromRelied` (a bitmap over the chunks) marks chunks taken from
   * a manifest passed to `rely`: those are indexed and pinned already, so a
   * delta's commit looks up only what it received.
   */
  async commit(key: string, manifest: Manifest, source: string, fromRelied?: Uint8Array): Promise<StoredValue> {
    if (this.#released) throw new BlobStoreError('closed', 'this staged value was released');
    return this.#hooks.commit(key, manifest, source, fromRelied);
  }

  /** Lets go of pending chunks and pins; chunks written but never indexed become garbage for compaction. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    for (const p of this.#held) this.#hooks.drop(p);
    for (const unpin of this.#unpins) unpin();
  }
}
