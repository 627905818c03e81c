/**
 * RaftStorage on a real LMDB environment in a temp dir: round trips, log
 * overwrite and compaction, reopen, load-time checks against records damaged
 * through a raw lmdb handle (bypassing the encoder), and group commit.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { entryKey, RaftStorage, STORAGE_LAYOUT, StorageCorruptionError } from '../../src/consensus/raft/storage.ts';
import type { StorageTimings } from '../../src/consensus/raft/storage.ts';
import type { Entry, HardState, PersistedState, Snapshot } from '../../src/consensus/raft/types.ts';
import { RaftInputError } from '../../src/consensus/raft/types.ts';

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
    snapshot: { meta: state.snapshot.meta, data: bytes(state.snapshot.data) },
    entries: state.entries.map((e) => (e.kind === 'normal' ? { ...e, data: bytes(e.data) } : e)),
  };
}

function indices(state: PersistedState | null): number[] {
  return (state?.entries ?? []).map((e) => e.index);
}

/** Edits stored records through a plain lmdb handle, as media damage or a stray writer would. */
async function tamper(edit: (raw: RawTables) => void): Promise<void> {
  const raw = rawTables(dir);
  raw.root.transactionSync(() => edit(raw));
  await raw.root.close();
}

type RawTables = ReturnType<typeof rawTables>;

function rawTables(path: string) {
  const root = open<Buffer, string>(path, { encoding: 'binary', overlappingSync: false });
  return {
    root,
    entries: root.openDB<Buffer, Buffer>(STORAGE_LAYOUT.entries, { keyEncoding: 'binary', encoding: 'binary' }),
    meta: root.openDB<Buffer, string>(STORAGE_LAYOUT.meta, { encoding: 'binary' }),
    snapshot: root.openDB<Buffer, number>(STORAGE_LAYOUT.snapshot, { keyEncoding: 'uint32', encoding: 'binary' }),
  };
}

function flipLastByte(value: Buffer | undefined, what: string): Buffer {
  if (value === undefined) throw new Error(`${what} is not stored`);
  const copy = Buffer.from(value);
  copy[copy.length - 1] = (copy[copy.length - 1] ?? 0) ^ 0x5a;
  return copy;
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
    expect(Buffer.from(state?.snapshot.data ?? []).equals(Buffer.from(snapshot.data))).toBe(true);
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

  it('compacts through saveSnapshot: entries up to the snapshot go, later ones stay', async () => {
    let storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 8 }));
    const snapshot = snapshotOf(6, 1, 2.5 * STORAGE_LAYOUT.snapshotChunkBytes); // three chunks
    await storage.saveSnapshot(snapshot);
    storage = await reopen(storage);
    let state = storage.load();
    expect(state?.snapshot.meta).toEqual(snapshot.meta);
    expect(Buffer.from(state?.snapshot.data ?? []).equals(Buffer.from(snapshot.data))).toBe(true);
    expect(indices(state)).toEqual([7, 8, 9, 10]);
    expect(state?.applied).toBe(6);

    // A later, smaller snapshot leaves no chunk of the old one behind.
    const smaller = snapshotOf(9, 1, 100, 42);
    await storage.saveSnapshot(smaller);
    storage = await reopen(storage);
    state = storage.load();
    expect(Array.from(state?.snapshot.data ?? [])).toEqual(Array.from(smaller.data));
    expect(indices(state)).toEqual([10]);
    await tamper(({ snapshot }) => expect([...snapshot.getKeys()]).toEqual([0, 1]));
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

describe('RaftStorage load-time checks', () => {
  async function storedLog(): Promise<void> {
    const storage = await RaftStorage.open(dir);
    await storage.persist(persistOf(range(1, 10, 2), HARD)); // commit 5
    await storage.close();
  }

  it('drops a corrupt entry above the commit index and everything after it, durably, and says so', async () => {
    await storedLog();
    await tamper(({ entries }) => entries.putSync(entryKey(8), flipLastByte(entries.get(entryKey(8)), 'entry 8')));
    const repairs: string[] = [];
    let storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(repairs).toHaveLength(1);
    expect(repairs[0]).toMatch(/log entry 8: checksum mismatch .*dropped the log from 8 on \(above the commit index 5\)/);

    storage = await reopen(storage, { onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(repairs).toHaveLength(1);
    await storage.persist(persistOf([normal(8, 2, 'again')]));
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('treats a gap above the commit index like damage', async () => {
    await storedLog();
    await tamper(({ entries }) => entries.removeSync(entryKey(7)));
    const repairs: string[] = [];
    const storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(repairs[0]).toMatch(/log entry 7: missing \(the next stored entry is 8\)/);
  });

  it('catches a record stored under the wrong key', async () => {
    await storedLog();
    await tamper(({ entries }) => {
      const ninth = entries.get(entryKey(9));
      if (ninth === undefined) throw new Error('entry 9 is not stored');
      entries.putSync(entryKey(8), ninth);
    });
    const repairs: string[] = [];
    const storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    expect(indices(storage.load())).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(repairs[0]).toMatch(/log entry 8: record holds index 9/);
  });

  it('throws StorageCorruptionError naming the entry and the commit index when damage is at or below commit', async () => {
    await storedLog();
    await tamper(({ entries }) => entries.putSync(entryKey(5), flipLastByte(entries.get(entryKey(5)), 'entry 5')));
    const repairs: string[] = [];
    const storage = await openStorage({ onRepair: (m) => repairs.push(m) });
    const error = (() => {
      try {
        storage.load();
      } catch (e) {
        return e;
      }
      return null;
    })();
    expect(error).toBeInstanceOf(StorageCorruptionError);
    expect((error as StorageCorruptionError).record).toBe('log entry 5');
    expect((error as Error).message).toMatch(/log entry 5: checksum mismatch .*at or below the commit index 5/);
    expect(repairs).toEqual([]);
  });

  it('throws when committed entries are missing from the end of the log', async () => {
    await storedLog();
    await tamper(({ entries }) => {
      for (const index of [4, 5, 6, 7, 8, 9, 10]) entries.removeSync(entryKey(index));
    });
    const storage = await openStorage();
    expect(() => storage.load()).toThrow(/log entry 4: missing: the log ends at 3 but the commit index is 5/);
  });

  it('throws StorageCorruptionError for a damaged hard state', async () => {
    await storedLog();
    await tamper(({ meta }) => meta.putSync(STORAGE_LAYOUT.hardStateKey, flipLastByte(meta.get(STORAGE_LAYOUT.hardStateKey), 'hard state')));
    const storage = await openStorage();
    expect(() => storage.load()).toThrow(StorageCorruptionError);
    expect(() => storage.load()).toThrow(/raft storage hard state: checksum mismatch/);
  });

  it('throws StorageCorruptionError for a damaged or missing snapshot chunk', async () => {
    const storage = await openStorage();
    await storage.persist(persistOf(range(1, 10, 1), { term: 1, vote: null, commit: 10 }));
    await storage.saveSnapshot(snapshotOf(6, 1, 1.5 * STORAGE_LAYOUT.snapshotChunkBytes));
    await storage.close();
    opened.splice(0);
    await tamper(({ snapshot }) => snapshot.putSync(2, flipLastByte(snapshot.get(2), 'chunk 2')));
    let reopened = await openStorage();
    expect(() => reopened.load()).toThrow(/raft storage snapshot 6 chunk 2 of 2: checksum mismatch/);
    await reopened.close();
    opened.splice(0);
    await tamper(({ snapshot }) => snapshot.removeSync(2));
    reopened = await openStorage();
    expect(() => reopened.load()).toThrow(/raft storage snapshot 6 chunk 2 of 2: missing/);
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
    expect(indices(storage.load())).toHaveLength(51);
  });

  it('sequential persist() calls each get their own transaction', async () => {
    const writes: StorageTimings[] = [];
    const storage = await openStorage({ onWrite: (t) => writes.push(t) });
    for (let i = 1; i <= 5; i++) await storage.persist(persistOf([normal(i, 1)]));
    expect(writes.map((t) => t.entries)).toEqual([1, 1, 1, 1, 1]);
  });
});
