/**
 * The blob store on disk: values read back byte for byte (from a file or
 * memory), chunks stored once however often they occur, a key replaced by a
 * new version, garbage collection that keeps what is current, pinned or
 * retained and compacts the rest, everything back after a reopen, damage
 * detected on read, unverified chunks refused, and the file checks (regular
 * files only, no symlinks, size limit, key bounds).
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, rm, stat, symlink, writeFile, open as openFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Prng, vmImageLike } from '../../bench/codec.ts';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import { buildManifest, valueHash } from '../../src/blob/manifest.ts';
import { BlobStore, BlobStoreError, decodeManifestRecord, encodeManifestRecord } from '../../src/blob/store.ts';
import { readBack } from '../support/blob-read.ts';

const KIB = 1024;
const MIB = 1024 * KIB;
const CHUNKING = chunkingForAverage(4 * KIB);

let dir: string;
let retained: string[];
const stores: BlobStore[] = [];

async function openStore(maxValueBytes = 64 * MIB): Promise<BlobStore> {
  const store = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: CHUNKING, maxValueBytes, noSync: true, retainedVersions: () => retained });
  stores.push(store);
  return store;
}


function random(size: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  return Uint8Array.from({ length: size }, () => rng.below(256));
}

async function packBytes(): Promise<number> {
  let total = 0;
  for (const f of await readdir(join(dir, 'blobs', 'packs'))) total += (await stat(join(dir, 'blobs', 'packs', f))).size;
  return total;
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-blob-store-'));
  retained = [];
});

afterEach(async () => {
  for (const s of stores.splice(0)) await s.close();
  await rm(dir, { recursive: true, force: true });
});

describe('BlobStore', () => {
  it('stores a file and reads it back exactly; the version is the value hash of its manifest', async () => {
    const store = await openStore();
    const value = vmImageLike(3 * MIB + 123, 1);
    await writeFile(join(dir, 'v.img'), value);
    const progress: number[] = [];
    const stored = await store.ingestFile('vm/a', join(dir, 'v.img'), { onProgress: (p) => progress.push(p.bytesDone) });
    expect(stored).toMatchObject({ key: 'vm/a', size: value.byteLength, source: 'local' });
    expect(stored.version).toBe(buildManifest('vm/a', 'x', value, CHUNKING).hash);
    expect(progress.at(-1)).toBe(value.byteLength);
    expect((await readBack(store, 'vm/a')).equals(Buffer.from(value))).toBe(true);
    expect(store.list().map((v) => v.key)).toEqual(['vm/a']);
  });

  it('onRead sees every byte of the file once, in order; a throw from it commits nothing', async () => {
    const store = await openStore();
    const value = random(9 * MIB + 7, 11);
    await writeFile(join(dir, 'v.img'), value);
    const digest = createHash('sha256');
    let seen = 0;
    await store.ingestFile('vm/a', join(dir, 'v.img'), {
      onRead: (bytes) => {
        digest.update(bytes);
        seen += bytes.byteLength;
      },
    });
    expect(seen).toBe(value.byteLength);
    expect(digest.digest('hex')).toBe(createHash('sha256').update(value).digest('hex'));
    // A key named after the content, known only once every byte was read.
    const named = createHash('sha256');
    const stored = await store.ingestFile(() => `by-sha/${named.digest('hex')}`, join(dir, 'v.img'), { onRead: (bytes) => named.update(bytes) });
    expect(stored.key).toBe(`by-sha/${createHash('sha256').update(value).digest('hex')}`);
    expect(store.current(stored.key)?.version).toBe(stored.version);
    const refused = store.ingestFile('vm/b', join(dir, 'v.img'), {
      onRead: () => {
        throw new BlobStoreError('invalid', 'not this one');
      },
    });
    await expect(refused).rejects.toThrow('not this one');
    expect(store.current('vm/b')).toBeUndefined();
  });

  it('remove forgets a key; GC then drops the chunks no other key names', async () => {
    const store = await openStore();
    const shared = random(256 * KIB, 12);
    await store.ingestBytes('a', shared);
    await store.ingestBytes('b', Buffer.concat([shared, random(256 * KIB, 13)]));
    expect(await store.remove('b')).toBe(true);
    expect(await store.remove('b')).toBe(false);
    expect(store.current('b')).toBeUndefined();
    expect(store.list().map((v) => v.key)).toEqual(['a']);
    const gc = await store.gc();
    expect(gc.chunksDropped).toBeGreaterThan(0);
    expect((await readBack(store, 'a')).equals(Buffer.from(shared))).toBe(true);
  });

  it('writes each distinct chunk once, across values and within one (zero runs)', async () => {
    const store = await openStore();
    const value = random(MIB, 2);
    await store.ingestBytes('one', value);
    const once = await packBytes();
    await store.ingestBytes('two', value);
    expect(await packBytes()).toBe(once);
    await store.ingestBytes('zeros', new Uint8Array(4 * MIB));
    expect((await packBytes()) - once).toBeLessThan(CHUNKING.maxSize * 2);
    expect((await readBack(store, 'zeros')).equals(Buffer.alloc(4 * MIB))).toBe(true);
  });

  it('a new version replaces the key; GC drops the old chunks and keeps a manifest only while it is retained', async () => {
    const store = await openStore();
    const v1 = random(2 * MIB, 3);
    const first = await store.ingestBytes('k', v1);
    const v2 = random(2 * MIB, 4);
    const second = await store.ingestBytes('k', v2);
    expect(store.current('k')?.version).toBe(second.version);
    retained = [first.version];
    const result = await store.gc();
    expect(result.chunksDropped).toBeGreaterThan(100);
    expect(store.manifest(first.version)).toBeDefined();
    retained = [];
    expect((await store.gc()).manifestsDropped).toBe(1);
    expect(store.manifest(first.version)).toBeUndefined();
    // Both versions were in the active pack, which GC never touches: the value is whole.
    expect((await readBack(store, 'k')).equals(Buffer.from(v2))).toBe(true);
  });

  it('pinned chunks survive GC even when no key holds them', async () => {
    const store = await openStore();
    const v = random(256 * KIB, 5);
    const stored = await store.ingestBytes('k', v);
    const m = store.manifest(stored.version, 'k');
    if (m === undefined) throw new Error('no manifest');
    await store.ingestBytes('k', random(64 * KIB, 6));
    const release = store.pin(m.chunks.map((c) => c.hash));
    expect((await store.gc()).chunksDropped).toBe(0);
    expect(store.hasChunk(m.chunks[0]!.hash)).toBe(true);
    release();
    expect((await store.gc()).chunksDropped).toBe(m.chunks.length);
    expect(store.hasChunk(m.chunks[0]!.hash)).toBe(false);
  });

  it('compacts a mostly dead sealed pack and removes a dead one, keeping every live value readable', async () => {
    const store = await openStore();
    const live = random(MIB, 7);
    await store.ingestBytes('live', live);
    await store.ingestBytes('dead', random(3 * MIB, 8));
    // GC leaves the pack being appended to alone; a reopen moves on to a new pack once the last one is full.
    const packsBefore = (await readdir(join(dir, 'blobs', 'packs'))).length;
    expect(packsBefore).toBe(1);
    await store.close();
    stores.pop();
    const fh = await openFile(join(dir, 'blobs', 'packs', '00000001.pack'), 'r+');
    await fh.truncate((await fh.stat()).size + 130 * MIB); // sparse: makes the pack "full" without writing 130 MiB
    await fh.close();
    const reopened = await openStore();
    await reopened.ingestBytes('dead', new Uint8Array(10)); // replaces the 3 MiB value
    const result = await reopened.gc();
    expect(result.packsCompacted + result.packsRemoved).toBe(1);
    expect((await readBack(reopened, 'live')).equals(Buffer.from(live))).toBe(true);
    expect((await readdir(join(dir, 'blobs', 'packs'))).includes('00000001.pack')).toBe(false);
  });

  it('everything is back after a reopen', async () => {
    const store = await openStore();
    const value = vmImageLike(MIB, 9);
    const stored = await store.ingestBytes('persist', value);
    await store.close();
    stores.pop();
    const again = await openStore();
    expect(again.current('persist')).toEqual(stored);
    expect((await readBack(again, 'persist')).equals(Buffer.from(value))).toBe(true);
    await again.ingestBytes('after', random(64 * KIB, 10));
    expect((await readBack(again, 'persist')).equals(Buffer.from(value))).toBe(true);
  });

  it('detects damage in a pack on read, naming the offset', async () => {
    const store = await openStore();
    await store.ingestBytes('damaged', random(128 * KIB, 11));
    const pack = join(dir, 'blobs', 'packs', '00000001.pack');
    const fh = await openFile(pack, 'r+');
    await fh.write(Buffer.from([0xde, 0xad]), 0, 2, 5000);
    await fh.close();
    await expect(readBack(store, 'damaged')).rejects.toThrow(/damaged: chunk at offset \d+ reads back hashing to/);
  });

  it('refuses received chunks whose bytes do not match their hash, writing nothing', async () => {
    const store = await openStore();
    const staged = store.stage();
    const bytes = random(4 * KIB, 12);
    const hash = createHash('sha256').update(bytes).digest('hex');
    const wrong = bytes.slice();
    wrong[0] = (wrong[0] as number) ^ 1;
    await expect(staged.writeVerified([{ hash, bytes: wrong }])).rejects.toThrow(BlobStoreError);
    expect(store.hasChunk(hash)).toBe(false);
    await staged.writeVerified([{ hash, bytes }]);
    expect(store.hasChunk(hash)).toBe(true);
    // Not committed: released, the chunk is garbage.
    staged.release();
    expect(store.hasChunk(hash)).toBe(false);
  });

  it('writes a batch of more chunks than one writev takes, and values past the early write-back, with fsync on', async () => {
    const synced = { dir: join(dir, 'synced'), chunking: CHUNKING, maxValueBytes: 64 * MIB, earlySyncBytes: 256 * KIB, retainedVersions: () => retained };
    const store = await BlobStore.open(synced);
    stores.push(store);
    // 600 chunks in one write: 1 200 buffers (header, bytes) in more than one writev call.
    const chunks = Array.from({ length: 600 }, (_, i) => random(1000 + i, 100 + i));
    const staged = store.stage();
    await staged.writeVerified(chunks.map((bytes) => ({ hash: createHash('sha256').update(bytes).digest('hex'), bytes })));
    const value = Buffer.concat(chunks);
    let offset = 0;
    const refs = chunks.map((bytes) => {
      const ref = { offset, length: bytes.byteLength, hash: createHash('sha256').update(bytes).digest('hex') };
      offset += bytes.byteLength;
      return ref;
    });
    const manifest = { ...buildManifest('many', 'x', value, CHUNKING), chunks: refs };
    manifest.hash = valueHash(value.byteLength, refs);
    await staged.commit('many', manifest, 'test');
    staged.release();
    // Appends pass the early write-back threshold several times while the commit still syncs.
    const big = random(2 * MIB, 7);
    await store.ingestBytes('big', big);
    await store.close();
    const reopened = await BlobStore.open(synced);
    stores.push(reopened);
    expect((await readBack(reopened, 'many')).equals(value)).toBe(true);
    expect((await readBack(reopened, 'big')).equals(Buffer.from(big))).toBe(true);
  });

  it('a chunk a staged value holds pending, unpinned, outlives GC of another copy\'s index entry: its commit indexes it again', async () => {
    const store = await openStore();
    const value = random(256 * KIB, 21);
    const m = buildManifest('held', 'v', value, CHUNKING);
    const staged = store.stage();
    try {
      await staged.writeVerified(m.chunks.map((c) => ({ hash: c.hash, bytes: value.subarray(c.offset, c.offset + c.length) })));
      // Another value with the same bytes shares the pending chunks, indexes them at commit, then goes away.
      await store.ingestBytes('other', value);
      expect(await store.remove('other')).toBe(true);
      // Nothing pins them (the staged value holds them pending), so GC drops their index entries ...
      expect((await store.gc()).chunksDropped).toBe(m.chunks.length);
      // ... and the staged value's commit indexes them again, where they still are.
      await staged.commit('held', m, 'test');
    } finally {
      staged.release();
    }
    expect((await store.gc()).chunksDropped).toBe(0);
    expect((await readBack(store, 'held')).equals(Buffer.from(value))).toBe(true);
  });

  it('a commit naming a chunk the store does not hold is refused', async () => {
    const store = await openStore();
    const value = random(64 * KIB, 13);
    const m = buildManifest('k', 'v', value, CHUNKING);
    const staged = store.stage();
    try {
      await expect(staged.commit('k', m, 'local')).rejects.toThrow(/neither received nor in the store/);
      expect(store.current('k')).toBeUndefined();
    } finally {
      staged.release();
    }
  });

  it('refuses symlinks, non-files, oversize files and bad keys by name', async () => {
    const store = await openStore(MIB);
    await writeFile(join(dir, 'big'), new Uint8Array(MIB + 1));
    await symlink(join(dir, 'big'), join(dir, 'link'));
    await expect(store.ingestFile('k', join(dir, 'link'))).rejects.toThrow(/is a symbolic link/);
    await expect(store.ingestFile('k', dir)).rejects.toThrow(/not a regular file/);
    await expect(store.ingestFile('k', join(dir, 'missing'))).rejects.toThrow(/no such file/);
    await expect(store.ingestFile('k', join(dir, 'big'))).rejects.toThrow(/above blob.maxValueBytes \(1048576\)/);
    await expect(store.ingestBytes('', new Uint8Array(1))).rejects.toThrow(/key: required/);
    await expect(store.ingestBytes('x'.repeat(1025), new Uint8Array(1))).rejects.toThrow(/key: 1025 bytes/);
  });

  it('manifest records round-trip and refuse damage', () => {
    const m = buildManifest('k', 'v', vmImageLike(256 * KIB, 14), CHUNKING);
    const record = encodeManifestRecord(m);
    const back = decodeManifestRecord('k', record);
    expect(back).toEqual({ ...m, version: m.hash });
    const damaged = Buffer.from(record);
    damaged[40] = (damaged[40] as number) ^ 1;
    expect(() => decodeManifestRecord('k', damaged)).toThrow(/checksum mismatch/);
  });
});
