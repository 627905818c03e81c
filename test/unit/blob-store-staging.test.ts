/**
 * A staged value against garbage collection, in a sealed pack (GC never
 * touches the active one, so a staged chunk must be in a pack already
 * rotated away for GC's pending-pack rule to be what keeps it): shared
 * pending chunks released before or after the other's commit, a chunk listed
 * twice, compaction while a value relies on indexed chunks, release twice, a
 * commit refused mid-way then retried, and GC's sweep racing a staged write.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, open as openFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import { buildManifest, valueHash, type Manifest } from '../../src/blob/manifest.ts';
import { BlobStore, PACK_BYTES, type StagedValue } from '../../src/blob/store.ts';
import { readBack } from '../support/blob-read.ts';

const KIB = 1024;
const MIB = 1024 * KIB;
const CHUNKING = chunkingForAverage(4 * KIB);

let dir: string;
const stores: BlobStore[] = [];

function open(hooks: { retainedVersions?: () => Iterable<string> } = {}): Promise<BlobStore> {
  return BlobStore.open({ dir: join(dir, 'blobs'), chunking: CHUNKING, maxValueBytes: 64 * MIB, noSync: true, ...hooks }).then((s) => {
    stores.push(s);
    return s;
  });
}

/** A store whose active pack (1) has `room` bytes left: its writes go there, the next big one rotates it into a sealed pack. */
async function nearlyFull(room: number, hooks: { retainedVersions?: () => Iterable<string> } = {}): Promise<BlobStore> {
  const first = await open();
  await first.close();
  stores.pop();
  const fh = await openFile(join(dir, 'blobs', 'packs', '00000001.pack'), 'r+');
  await fh.truncate(PACK_BYTES - room); // sparse
  await fh.close();
  return open(hooks);
}

/** Writes more than any room these tests leave, so pack 1 is sealed (the filler is removed, garbage). */
async function rotate(store: BlobStore): Promise<void> {
  await store.ingestBytes('filler', randomBytes(6 * MIB));
  await store.remove('filler');
  expect((await readdir(join(dir, 'blobs', 'packs'))).length).toBeGreaterThan(1);
}


function chunksOf(m: Manifest, value: Uint8Array) {
  return m.chunks.map((c) => ({ hash: c.hash, bytes: value.subarray(c.offset, c.offset + c.length) }));
}

async function stageAll(store: BlobStore, m: Manifest, value: Uint8Array): Promise<StagedValue> {
  const s = store.stage();
  await s.writeVerified(chunksOf(m, value));
  return s;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-blob-staging-'));
});

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  await rm(dir, { recursive: true, force: true });
});

describe('StagedValue against GC, in a sealed pack', () => {
  it('its unpinned pending chunks keep their sealed pack through GC that drops another copy\'s index entry; its commit indexes them again', async () => {
    const store = await nearlyFull(MIB);
    const value = randomBytes(256 * KIB);
    const m = buildManifest('held', 'v', value, CHUNKING);
    const s = await stageAll(store, m, value);
    await store.ingestBytes('other', value); // shares the pending chunks, indexes them in pack 1
    await store.remove('other');
    await rotate(store);
    const gc = await store.gc();
    expect(gc.chunksDropped).toBeGreaterThanOrEqual(m.chunks.length);
    expect(gc.packsRemoved + gc.packsCompacted).toBe(0); // pack 1 holds pending chunks
    await s.commit('held', m, 'test');
    s.release();
    const after = await store.gc(); // now pack 1 is mostly hole: compacted
    expect(after.packsCompacted + after.packsRemoved).toBe(1);
    expect((await readBack(store, 'held')).equals(value)).toBe(true);
  });

  for (const order of ['before', 'after'] as const) {
    it(`two values share pending chunks; one releases ${order} the other's commit; GC in between keeps them`, async () => {
      const store = await nearlyFull(MIB);
      const value = randomBytes(256 * KIB);
      const m = buildManifest('k', 'v', value, CHUNKING);
      const a = await stageAll(store, m, value);
      const b = await stageAll(store, m, value); // shares a's entries
      await rotate(store);
      if (order === 'before') {
        a.release();
        a.release(); // twice: must not let go of b's hold
        expect((await store.gc()).packsRemoved).toBe(0);
        await b.commit('k', m, 'b');
      } else {
        await b.commit('k', m, 'b');
        a.release();
        a.release();
      }
      const held = await store.gc(); // the filler's chunks go; pack 1 (b's pending chunks) is left alone
      expect(held.packsCompacted + held.packsRemoved).toBe(0);
      b.release();
      const gc = await store.gc();
      expect(gc.chunksDropped).toBe(0);
      expect(gc.packsCompacted).toBe(1);
      expect((await readBack(store, 'k')).equals(value)).toBe(true);
    });
  }

  it('a chunk listed twice in a manifest is indexed once and survives compaction', async () => {
    const store = await nearlyFull(MIB);
    const block = randomBytes(64 * KIB);
    const value = Buffer.concat([block, block, block, randomBytes(16 * KIB)]);
    const m = buildManifest('dup', 'v', value, CHUNKING);
    expect(new Set(m.chunks.map((c) => c.hash)).size).toBeLessThan(m.chunks.length);
    const s = await stageAll(store, m, value);
    await s.commit('dup', m, 'test');
    s.release();
    expect((await store.usage()).chunks).toBe(new Set(m.chunks.map((c) => c.hash)).size + 0);
    await rotate(store);
    expect((await store.gc()).packsCompacted).toBe(1);
    expect((await readBack(store, 'dup')).equals(value)).toBe(true);
  });

  it('compaction moves the indexed chunks a staged value relies on; its commit finds them', async () => {
    const store = await nearlyFull(4 * MIB);
    const base = randomBytes(MIB);
    await store.ingestBytes('base', base);
    await rotate(store);
    const next = Buffer.concat([base.subarray(0, 768 * KIB), randomBytes(64 * KIB)]);
    const m = buildManifest('next', 'v', next, CHUNKING);
    const s = await stageAll(store, m, next); // most chunks found indexed in sealed pack 1: pinned
    await store.remove('base');
    const gc = await store.gc();
    expect(gc.packsCompacted).toBe(1);
    await s.commit('next', m, 'test');
    s.release();
    expect((await readBack(store, 'next')).equals(next)).toBe(true);
  });

  it('a commit refused mid-way (a chunk missing) then retried with the right manifest indexes every pending chunk', async () => {
    const store = await nearlyFull(MIB);
    const value = randomBytes(256 * KIB);
    const m = buildManifest('k', 'v', value, CHUNKING);
    const s = await stageAll(store, m, value);
    const missing = { offset: value.byteLength, length: 10, hash: 'ab'.repeat(32) };
    const chunks = [...m.chunks, missing];
    const bad: Manifest = { ...m, size: value.byteLength + 10, chunks, hash: valueHash(value.byteLength + 10, chunks) };
    bad.version = bad.hash;
    await expect(s.commit('k', bad, 'test')).rejects.toThrow(/neither received nor in the store/);
    await s.commit('k', m, 'test');
    s.release();
    await rotate(store);
    await store.gc(); // drops the filler's chunks; pack 1 is compacted
    expect(store.current('k')?.version).toBe(m.hash);
    expect((await readBack(store, 'k')).equals(value)).toBe(true);
  });

  it('a staged write that looks a chunk up between GC\'s mark and its index removal still commits', async () => {
    // GC decides which index entries are dead in one synchronous pass, then removes them in an LMDB transaction it
    // awaits; a staged write running meanwhile finds the doomed entries still there, pins them (too late: the mark
    // is done) and does not write them, so its commit finds neither an index entry nor a pending copy.
    let during: (() => void) | undefined;
    const store = await nearlyFull(MIB, {
      retainedVersions: () => {
        // Called in GC's synchronous mark; the microtask runs at its first await, the index transaction.
        if (during !== undefined) queueMicrotask(during);
        during = undefined;
        return [];
      },
    });
    const value = randomBytes(256 * KIB);
    const m = buildManifest('k', 'v', value, CHUNKING);
    await store.ingestBytes('old', value);
    await store.remove('old'); // its chunks are indexed and dead
    await rotate(store);
    const s = store.stage();
    let written: Promise<void> | undefined;
    during = () => {
      written = s.writeVerified(chunksOf(m, value));
    };
    await store.gc();
    expect(written).toBeDefined();
    await written;
    try {
      await s.commit('k', m, 'test');
    } finally {
      s.release();
    }
    expect((await readBack(store, 'k')).equals(value)).toBe(true);
  });

  it('a release while a write is still in flight lets go of what that write then holds: the pack is reclaimed', async () => {
    const store = await nearlyFull(MIB);
    const value = randomBytes(256 * KIB);
    const m = buildManifest('k', 'v', value, CHUNKING);
    const s = store.stage();
    const written = s.writeVerified(chunksOf(m, value));
    s.release(); // an aborted transfer: #end releases while batches are being written
    await written;
    await rotate(store);
    const gc = await store.gc();
    expect(gc.packsRemoved + gc.packsCompacted).toBe(1); // pack 1 held only the released value's chunks
    expect(store.hasChunk(m.chunks[0]!.hash)).toBe(false);
  });

  it('a commit whose pack sync failed syncs the pack again when retried, before it answers', async () => {
    const store = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: CHUNKING, maxValueBytes: 64 * MIB });
    stores.push(store);
    const value = randomBytes(256 * KIB);
    const m = buildManifest('k', 'v', value, CHUNKING);
    const s = await stageAll(store, m, value);
    // The failure is injected at the OS call (an EIO from the disk); everything else is the real store.
    const probe = await openFile(join(dir, 'blobs', 'packs', '00000001.pack'), 'r');
    const proto = Object.getPrototypeOf(probe) as { datasync: () => Promise<void> };
    await probe.close();
    const datasync = vi.spyOn(proto, 'datasync').mockRejectedValueOnce(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    try {
      await expect(s.commit('k', m, 'test')).rejects.toThrow(/EIO/);
      const before = datasync.mock.calls.length;
      await s.commit('k', m, 'test');
      expect(datasync.mock.calls.length).toBeGreaterThan(before); // the written pack, synced this time
    } finally {
      datasync.mockRestore();
      s.release();
    }
  });

  it('GC removing a pack written since the last sync does not fail the next commit\'s sync', async () => {
    // fsync on; pack 1 nearly full, written since the last sync by aborted values only, then sealed by another's write.
    const first = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: CHUNKING, maxValueBytes: 64 * MIB });
    await first.close();
    const fh = await openFile(join(dir, 'blobs', 'packs', '00000001.pack'), 'r+');
    await fh.truncate(PACK_BYTES - MIB);
    await fh.close();
    const store = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: CHUNKING, maxValueBytes: 64 * MIB });
    stores.push(store);
    for (const size of [256 * KIB, 6 * MIB]) {
      const v = randomBytes(size);
      const aborted = await stageAll(store, buildManifest('x', 'v', v, CHUNKING), v);
      aborted.release();
    }
    expect((await store.gc()).packsRemoved).toBe(1);
    await store.ingestBytes('after', randomBytes(64 * KIB));
    expect((await readBack(store, 'after')).byteLength).toBe(64 * KIB);
  });
});
