/**
 * RaftStorage on real files in a temp dir: round trips, log overwrite and
 * compaction, segment rotation and release, reopen, open/load-time checks
 * against log segments and snapshot files damaged in place (bypassing the
 * encoder), and group commit.
 */
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RaftStorage, STORAGE_LAYOUT, StorageCorruptionError } from '../../src/consensus/raft/storage.ts';
import type { StorageTimings } from '../../src/consensus/raft/storage.ts';
import type { Entry, HardState, PersistedState, Snapshot } from '../../src/consensus/raft/types.ts';
import { RaftInputError, snapshotBytes } from '../../src/consensus/raft/types.ts';

let dir: string;
const opened: RaftStorage[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'raft-storage-'));
});

afterEach(async () => {
  for (const storage of opened.splice(0)) await storage.close();
  await rm(dir, { recursive: true, force: true });
});

interface OpenOptions {
  onWrite?: (t: StorageTimings) => void;
  onRepair?: (message: string) => void;
  segmentBytes?: number;
}

async function openStorage(options: OpenOptions = {}): Promise<RaftStorage> {
  const storage = await RaftStorage.open(dir, options);
  opened.push(storage);
  return storage;
}

async function reopen(storage: RaftStorage, options: OpenOptions = {}): Promise<RaftStorage> {
  await storage.close();
  return openStorage(options);
}

function normal(index: number, term: number, text = `cmd-${index}`): Entry {
  return { kind: 'normal', index, term, data: new TextEncoder().encode(text) };
}

function config(index: number, term: number, voters: string[], learners: string[] = []): Entry {
  return { kind: 'config', index, term, membership: { voters, learners } };
}

function range(from: number, to: number, term: number): Entry[] {
  return Array.from({ length: to - from + 1 }, (_, i) => normal(from + i, term));
}

function persistOf(entries: Entry[], hardState: HardState | null = null, snapshot: Snapshot | null = null) {
  return { entries, hardState, snapshot, mustSync: true };
}

function snapshotOf(index: number, term: number, bytes: number, seed = index): Snapshot {
  const data = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) data[i] = (i * 7 + seed) & 0xff;
  return { meta: { index, term, membership: { voters: ['a', 'b', 'c'], learners: ['d'] } }, data };
}

/** Comparable view of a load: Buffers and Uint8Arrays differ in class, not in content. */
function plain(state: PersistedState | null) {
  if (state === null) return null;
  const bytes = (data: Uint8Array) => Array.from(data);
  return {
    hardState: state.hardState,
    applied: state.applied,
    snapshot: { meta: state.snapshot.meta, data: bytes(snapshotBytes(state.snapshot.data)) },
    entries: state.entries.map((e) => (e.kind === 'normal' ? { ...e, data: bytes(e.data) } : e)),
  };
}

function indices(state: PersistedState | null): number[] {
  return (state?.entries ?? []).map((e) => e.index);
}

/** The frames of one segment file as stored: where each starts, its kind and (for entries) its index. */
interface StoredFrame {
  offset: number;
  length: number;
  kind: number;
  index: number | null;
}

async function segments(): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.endsWith('.wal')).sort();
}

async function frames(segment: string): Promise<StoredFrame[]> {
  const buf = await readFile(join(dir, segment));
  const out: StoredFrame[] = [];
  for (let at = 16; at + 8 <= buf.length; ) {
    const length = buf.readUInt32BE(at);
    if (length === 0) break;
    const kind = buf[at + 8] ?? 0;
    const index = kind === 1 || kind === 2 ? buf.readUInt32BE(at + 13) : null;
    out.push({ offset: at, length, kind, index });
    at += 8 + length;
  }
  return out;
}

/** Changes bytes of a stored file in place, as media damage or a torn write would. */
async function edit(name: string, change: (buf: Buffer) => void): Promise<void> {
  const path = join(dir, name);
  const buf = await readFile(path);
  change(buf);
  await writeFile(path, buf);
}

async function frameOf(index: number): Promise<{ segment: string; frame: StoredFrame }> {
  for (const segment of await segments()) {
    const frame = (await frames(segment)).find((f) => f.index === index);
    if (frame !== undefined) return { segment, frame };
  }
  throw new Error(`entry ${index} is not stored`);
}

function flipLastByte(buf: Buffer, frame: StoredFrame): void {
  const at = frame.offset + 8 + frame.length - 1;
  buf[at] = (buf[at] ?? 0) ^ 0x5a;
}

const HARD: HardState = { term: 3, vote: 'node-b', commit: 5 };

describe('RaftStorage round trip', () => {
  it('returns null on a fresh directory', async () => {
    const storage = await openStorage();
    expect(storage.load()).toBeNull();
  });

  it('stores normal and config entries, the hard state and a snapshot, and reads them back after reopen', async () => {
    let storage = await openStorage();
    const entries: Entry[] = [
      config(1, 1, ['a', 'b', 'c']),
      normal(2, 1, ''),
      normal(3, 2, 'héllo ✓'),
      config(4, 2, ['a', 'b', 'c'], ['node-d', 'ünï']),
      { kind: 'normal', index: 5, term: 3, data: new Uint8Array(70_000).fill(9) },
    ];
    await storage.persist(persistOf(entries, HARD));
    const expected = {
      hardState: HARD,
      applied: 0,
      snapshot: { meta: { index: 0, term: 0, membership: { voters: [], learners: [] } }, data: [] },
      entries: entries.map((e) => (e.kind === 'normal' ? { ...e, data: Array.from(e.data) } : e)),
    };
    expect(plain(storage.load())).toEqual(expected);
    storage = await reopen(storage);
    expect(plain(storage.load())).toEqual(expected);
  });

  it('keeps a vote of null and an unchanged hard state when a Ready carries none', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 2, 1), { term: 1, vote: null, commit: 0 }));
    await storage.persist(persistOf(range(3, 3, 1)));
    storage = await reopen(storage);
    const state = storage.load();
    expect(state?.hardState).toEqual({ term: 1, vote: null, commit: 0 });
    expect(indices(state)).toEqual([1, 2, 3]);
  });

  it('installs a snapshot from a Ready, replacing the whole log, with entries after it', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 8, 1), { term: 1, vote: null, commit: 8 }));
    const snapshot = snapshotOf(20, 4, 5000);
    await storage.persist(persistOf(range(21, 22, 4), { term: 4, vote: null, commit: 20 }, snapshot));
    storage = await reopen(storage);
    const state = storage.load();
    expect(state?.snapshot.meta).toEqual(snapshot.meta);
    expect(Buffer.from(snapshotBytes(state?.snapshot.data ?? new Uint8Array())).equals(Buffer.from(snapshotBytes(snapshot.data)))).toBe(true);
    expect(indices(state)).toEqual([21, 22]);
    expect(state?.applied).toBe(20);
  });
});

describe('RaftStorage log changes', () => {
  it('deletes stored entries from the first new index on before appending (overwrite)', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 3 }));
    await storage.persist(persistOf([normal(6, 2, 'new-6'), normal(7, 2, 'new-7')], { term: 2, vote: 'x', commit: 3 }));
    const repairs: string[] = [];
    storage = await reopen(storage, { onRepair: (m) => repairs.push(m) });
    const state = storage.load();
    expect(repairs).toEqual([]); // a left-over stale tail would otherwise be "repaired" away here
    expect(indices(state)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(state?.entries.map((e) => e.term)).toEqual([1, 1, 1, 1, 1, 2, 2]);
    const sixth = state?.entries[5];
    expect(sixth?.kind === 'normal' && new TextDecoder().decode(sixth.data)).toBe('new-6');
  });

  it('compacts through saveSnapshot: entries up to the snapshot go, later ones stay, and only the newest snapshot file is kept', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 8 }));
    const snapshot = snapshotOf(6, 1, 2_500_000);
    await storage.saveSnapshot(snapshot);
    storage = await reopen(storage);
    let state = storage.load();
    expect(state?.snapshot.meta).toEqual(snapshot.meta);
    expect(Buffer.from(snapshotBytes(state?.snapshot.data ?? new Uint8Array())).equals(Buffer.from(snapshotBytes(snapshot.data)))).toBe(true);
    expect(indices(state)).toEqual([7, 8, 9, 10]);
    expect(state?.applied).toBe(6);

    // A later, smaller snapshot replaces the file of the old one.
    const smaller = snapshotOf(9, 1, 100, 42);
    await storage.saveSnapshot(smaller);
    storage = await reopen(storage);
    state = storage.load();
    expect(Array.from(snapshotBytes(state?.snapshot.data ?? new Uint8Array()))).toEqual(Array.from(snapshotBytes(smaller.data)));
    expect(indices(state)).toEqual([10]);
    expect((await readdir(dir)).filter((n) => n.endsWith('.snap'))).toEqual([STORAGE_LAYOUT.snapshotFile(9)]);
  });

  it('writes a snapshot from its pieces beside the log, reads it back from the file a chunk at a time, and names it only when saved', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 8 }));
    const whole = snapshotOf(6, 1, 300_000);
    const bytes = snapshotBytes(whole.data);
    // Pieces from one reused buffer, as the KV encoder hands them out.
    const reused = new Uint8Array(70_000);
    const source = {
      byteLength: bytes.byteLength,
      *chunks() {
        for (let at = 0; at < bytes.byteLength; at += reused.byteLength) {
          const piece = bytes.subarray(at, at + reused.byteLength);
          reused.set(piece);
          yield reused.subarray(0, piece.byteLength);
        }
      },
    };
    const written = await storage.writeSnapshot(whole.meta, source);
    expect(written.data).not.toBeInstanceOf(Uint8Array);
    expect(Buffer.from(written.data.subarray(123_456, 200_000)).equals(Buffer.from(bytes.subarray(123_456, 200_000)))).toBe(true);
    expect(written.data.subarray(299_990, 400_000).byteLength).toBe(10);
    // Written but not named: a restart still sees the log it had.
    storage = await reopen(storage);
    expect(storage.load()?.snapshot.meta.index).toBe(0);
    const again = await storage.writeSnapshot(whole.meta, source);
    await storage.saveSnapshot(again);
    storage = await reopen(storage);
    const state = storage.load();
    expect(state?.snapshot.meta).toEqual(whole.meta);
    expect(Buffer.from(snapshotBytes(state?.snapshot.data ?? new Uint8Array())).equals(Buffer.from(bytes))).toBe(true);
    expect(indices(state)).toEqual([7, 8, 9, 10]);
    // A source that gives other than it announced is refused, and leaves nothing behind.
    await expect(storage.writeSnapshot({ ...whole.meta, index: 8 }, { byteLength: 10, chunks: () => [new Uint8Array(9)] })).rejects.toThrow(/announced/);
    expect((await readdir(dir)).filter((n) => n.includes('.snap'))).toEqual([STORAGE_LAYOUT.snapshotFile(6)]);
  });

  it('starts new segments when one is full, each repeating the durable base and hard state, and deletes those a snapshot covers', async () => {
    let storage = await openStorage({ segmentBytes: 4096 });
    for (let i = 1; i <= 60; i++) await storage.persist(persistOf([normal(i, 1, 'x'.repeat(100))], { term: 1, vote: 'b', commit: i - 1 }));
    expect((await segments()).length).toBeGreaterThan(2);
    await storage.saveSnapshot(snapshotOf(50, 1, 10));
    const left = await segments();
    // Only segments holding entries above 50 (and the active one) stay.
    for (const segment of left.slice(0, -1)) expect(Math.max(...(await frames(segment)).map((f) => f.index ?? 0))).toBeGreaterThan(50);
    for (let i = 61; i <= 80; i++) await storage.persist(persistOf([normal(i, 1, 'y'.repeat(100))], { term: 1, vote: 'b', commit: i - 1 }));
    storage = await reopen(storage, { segmentBytes: 4096 });
    const state = storage.load();
    expect(state?.snapshot.meta.index).toBe(50);
    expect(indices(state)).toEqual(Array.from({ length: 30 }, (_, i) => 51 + i));
    expect(state?.hardState).toEqual({ term: 1, vote: 'b', commit: 79 });
    // The newest segment begins with the base (kind 7) and the hard state (kind 3) durable before it.
    const newest = await frames((await segments()).at(-1) ?? '');
    expect(newest.slice(0, 2).map((f) => f.kind)).toEqual([7, 3]);
  });

  it('a snapshot installed from a Ready replaces the log even where the old log ran past it', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 30, 1), { term: 1, vote: null, commit: 5 }));
    const snapshot = snapshotOf(20, 3, 300);
    await storage.persist(persistOf([normal(21, 3, 'after')], { term: 3, vote: null, commit: 20 }, snapshot));
    storage = await reopen(storage);
    const state = storage.load();
    expect(state?.snapshot.meta.index).toBe(20);
    expect(state?.entries.map((e) => [e.index, e.term])).toEqual([[21, 3]]);
  });

  it('rejects entries that are not contiguous, and text fields over the limit, naming them', async () => {
    const storage = await openStorage();
    await expect(storage.persist(persistOf([normal(1, 1), normal(3, 1)]))).rejects.toThrow(/entry 3 \(term 1\) does not follow entry 1/);
    await expect(storage.persist(persistOf([normal(1, 2), normal(2, 1)]))).rejects.toThrow(RaftInputError);
    await expect(storage.persist(persistOf([], { term: 1, vote: 'v'.repeat(70_000), commit: 0 }))).rejects.toThrow(/hard state vote is 70000 bytes/);
    await expect(storage.persist(persistOf([normal(0, 1)]))).rejects.toThrow(/entry 0 index must be an integer >= 1/);
    await expect(storage.persist(persistOf([normal(5, 1)], null, snapshotOf(2, 1, 10)))).rejects.toThrow(/not right after snapshot index 2/);
    expect(storage.load()).toBeNull();
  });

  it('refuses writes after close', async () => {
    const storage = await RaftStorage.open(dir);
    await storage.close();
    await expect(storage.persist(persistOf(range(1, 1, 1)))).rejects.toThrow(/is closed/);
  });
});

describe('RaftStorage open- and load-time checks', () => {
  async function storedLog(): Promise<void> {
    const storage = await RaftStorage.open(dir);
    for (let i = 1; i <= 10; i += 2) await storage.persist(persistOf(range(i, i + 1, 2), { ...HARD, commit: Math.min(5, i + 1) })); // commit 5
    await storage.close();
  }

  /** What a crash in the middle of write() leaves: the frame's first bytes landed, the rest of it (whole sectors) did not. */
  function tear(buf: Buffer, frame: StoredFrame): void {
    const end = frame.offset + 8 + frame.length;
    const firstSector = Math.ceil((frame.offset + 8) / 512) * 512;
    buf.fill(0, Math.min(firstSector, end - 1));
  }

  it('drops a write cut short by a crash at the end of the log, durably, says so, and never reads the stale bytes behind the new end', async () => {
    const storage0 = await RaftStorage.open(dir);
    await storage0.persist(persistOf(range(1, 4, 2), { ...HARD, commit: 4 }));
    // The last write: a large entry, so that its frame spans sectors.
    await storage0.persist(persistOf([normal(5, 2, 'v'.repeat(3000)), normal(6, 2)], { ...HARD, commit: 4 }));
    await storage0.close();
    const { segment, frame } = await frameOf(5);
    await edit(segment, (buf) => tear(buf, frame));
    const repairs: string[] = [];
    let storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4]);
    expect(repairs).toHaveLength(1);
    expect(repairs[0]).toMatch(/log segment 0+1\.wal at byte \d+: .*a write cut short by a crash, never acknowledged; dropped it \(the log ends at 4, at or above the commit index 4\)/);
    // The rest of the segment was zeroed: nothing of the old write survives behind what comes next.
    const raw = await readFile(join(dir, segment));
    expect(raw.subarray(frame.offset).every((b) => b === 0)).toBe(true);

    await storage.persist(persistOf([normal(5, 2, 'again')]));
    storage = await reopen(storage, { onRepair: (m) => repairs.push(m) });
    const state = storage.load();
    expect(indices(state)).toEqual([1, 2, 3, 4, 5]);
    expect(repairs).toHaveLength(1);
    const fifth = state?.entries.at(-1);
    expect(fifth?.kind === 'normal' && new TextDecoder().decode(fifth.data)).toBe('again');
  });

  it('drops the pieces of a write whose first sector did not land', async () => {
    await storedLog();
    const { segment, frame } = await frameOf(9);
    await edit(segment, (buf) => buf.fill(0, frame.offset, frame.offset + 8)); // its header never landed; the rest did
    const repairs: string[] = [];
    const storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(repairs[0]).toMatch(/data after the end of the log/);
  });

  it('throws StorageCorruptionError for a damaged record that is not a torn write, wherever it is', async () => {
    await storedLog();
    const { segment, frame } = await frameOf(9);
    await edit(segment, (buf) => flipLastByte(buf, frame));
    const repairs: string[] = [];
    const error = await openStorage({ onRepair: (m) => repairs.push(m) }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(StorageCorruptionError);
    expect((error as Error).message).toMatch(/raft storage log segment 0+1\.wal: at byte \d+: checksum mismatch .*not a write cut short/);
    expect(repairs).toEqual([]);
  });

  it('throws StorageCorruptionError for damage in a segment that is not the last', async () => {
    const storage = await openStorage({ segmentBytes: 2048 });
    for (let i = 1; i <= 40; i++) await storage.persist(persistOf([normal(i, 1, 'z'.repeat(100))], { term: 1, vote: null, commit: i - 1 }));
    await storage.close();
    opened.splice(0);
    const [first] = await segments();
    const victim = (await frames(first ?? '')).at(-1);
    if (first === undefined || victim === undefined) throw new Error('no frames');
    await edit(first, (buf) => flipLastByte(buf, victim));
    await expect(RaftStorage.open(dir, { segmentBytes: 2048 })).rejects.toThrow(/raft storage log segment 0+1\.wal: at byte \d+: checksum mismatch .*, in a segment that is not the last/);
  });

  it('throws when records do not fit together: a gap, or a term going down', async () => {
    const storage = await openStorage();
    await storage.persist(persistOf([normal(1, 2), normal(2, 2)], HARD));
    // An entry record whose index skips one: written through the encoder, so only the order is wrong.
    await storage.persist(persistOf([normal(4, 2)]));
    expect(() => storage.load()).toThrow(/log entry 4: missing: the log ends at 2/);
  });

  it('throws StorageCorruptionError for a damaged, mismatched or missing snapshot file', async () => {
    const storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 10 }));
    await storage.saveSnapshot(snapshotOf(6, 1, 5000));
    const name = STORAGE_LAYOUT.snapshotFile(6);
    const original = await readFile(join(dir, name));
    await edit(name, (buf) => {
      buf[buf.length - 1] = (buf[buf.length - 1] ?? 0) ^ 1;
    });
    expect(() => storage.load()).toThrow(/raft storage snapshot 6 data: checksum mismatch/);
    await edit(name, (buf) => {
      original.copy(buf);
      buf[20] = (buf[20] ?? 0) ^ 1; // inside the meta record
    });
    expect(() => storage.load()).toThrow(/raft storage snapshot 6 meta: checksum mismatch/);
    await rm(join(dir, name));
    expect(() => storage.load()).toThrow(/raft storage snapshot 6: missing: the log is based on it but snapshot-0+6\.snap does not exist/);
  });

  it('refuses a directory holding the LMDB log of an earlier version, saying what to do', async () => {
    await writeFile(join(dir, 'data.mdb'), Buffer.alloc(16));
    await expect(RaftStorage.open(dir)).rejects.toThrow(/holds an LMDB log \(data\.mdb\).*cannot read it/);
  });
});

describe('RaftStorage group commit', () => {
  it('commits 100 persist() calls of one turn in one transaction, each resolving once durable', async () => {
    const writes: StorageTimings[] = [];
    let storage = await openStorage({ onWrite: (t) => writes.push(t) });
    const call = (i: number) => storage.persist(persistOf([normal(i, 1)], { term: 1, vote: null, commit: i - 1 }));
    const calls = Array.from({ length: 50 }, (_, i) => call(i + 1));
    await Promise.resolve(); // calls issued after an await within the same turn join too
    for (let i = 51; i <= 100; i++) calls.push(call(i));
    await Promise.all(calls);
    expect(writes.map((t) => t.entries)).toEqual([100]);
    const [t] = writes;
    expect(t?.bytes).toBeGreaterThan(100 * 20);
    expect(t?.appendSeconds).toBeGreaterThan(0);
    expect(t?.syncSeconds).toBeGreaterThan(0);
    storage = await reopen(storage);
    const state = storage.load();
    expect(indices(state)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(state?.hardState.commit).toBe(99); // the last call's hard state wins
  });

  it('groups the calls that arrive while a commit is in flight into the next transaction', async () => {
    const writes: StorageTimings[] = [];
    const storage = await openStorage({ onWrite: (t) => writes.push(t) });
    const first = storage.persist(persistOf([normal(1, 1)]));
    await new Promise((resolve) => setImmediate(resolve)); // the first commit has started, and cannot have finished
    const rest = Array.from({ length: 50 }, (_, i) => storage.persist(persistOf([normal(i + 2, 1)])));
    await Promise.all([first, ...rest]);
    expect(writes.map((t) => t.entries)).toEqual([1, 50]);
    expect(writes[1]?.syncSeconds).toBeGreaterThan(0);
    expect(indices(storage.load())).toHaveLength(51);
  });

  it('sequential persist() calls each get their own transaction', async () => {
    const writes: StorageTimings[] = [];
    const storage = await openStorage({ onWrite: (t) => writes.push(t) });
    for (let i = 1; i <= 5; i++) await storage.persist(persistOf([normal(i, 1)]));
    expect(writes.map((t) => t.entries)).toEqual([1, 1, 1, 1, 1]);
  });
});
