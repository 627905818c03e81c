/**
 * The image catalog and the image source over a real KV state machine (the
 * federation log) and real blob stores, in one process (image-fixtures.ts):
 *
 * - add binds a name once (first writer wins, also when two nodes race),
 *   records the hashes of the files as read, stores each part under a key
 *   named by its hash, refuses a bad file before storing anything, and with
 *   replace rebinds the name and drops the old parts here;
 * - materialise writes each part once per host, read-only, checked; fetches
 *   what this node lacks from a holder (nearest connected first, the adder
 *   when no holder record has arrived), shares one fetch and one write among
 *   concurrent callers, rebuilds a damaged file, refuses bytes that do not
 *   hash to the record (keeping nothing), and fails naming the image:
 *   not_found, corrupt, unavailable (each holder's reason);
 * - resolve falls back to this node's replica when the leader cannot be reached.
 */
import { createHash } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DwcpError } from '../../src/errors.ts';
import { BlobImageSource, holderOrder } from '../../src/image/source.ts';
import { imageBlobKey, imageHolderKey, kernelPairSha256 } from '../../src/image/record.ts';
import type { MemberConfig } from '../../src/config/schema.ts';
import { initrdImage, kernelImage, log, qcow2Header, TestFederation } from './image-fixtures.ts';

let fed: TestFederation;
let files: string;

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

async function file(name: string, bytes: Uint8Array): Promise<string> {
  const path = join(files, name);
  await writeFile(path, bytes);
  return path;
}

async function refusal(p: Promise<unknown>): Promise<DwcpError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof DwcpError) return err;
    throw err;
  }
  throw new Error('not refused');
}

function imageKeys(node: string): string[] {
  return fed
    .node(node)
    .store.list()
    .map((v) => v.key)
    .sort();
}

beforeEach(async () => {
  fed = await TestFederation.open(['n1', 'n2', 'n3']);
  files = join(fed.root, 'files');
  await mkdir(files);
});

afterEach(async () => {
  await fed.close();
});

describe('ImageCatalog.add', () => {
  it('binds a disk: the file hashed as read, its part stored under its hash, this node a holder', async () => {
    const bytes = qcow2Header({ virtualSize: 8 * 2 ** 30 });
    const record = await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d.qcow2', bytes) });
    expect(record).toMatchObject({ kind: 'disk', name: 'deb', format: 'qcow2', virtualSize: 8 * 2 ** 30, sha256: sha256(bytes), size: bytes.byteLength, addedBy: 'n1' });
    expect(record.kind === 'disk' && record.disk.blob).toBe(fed.node('n1').store.current(imageBlobKey('deb', 'disk', sha256(bytes)))?.version);
    expect(await fed.node('n3').catalog.resolve('deb')).toEqual(record);
    expect(await fed.node('n2').catalog.holdersOf(record)).toEqual(['n1']);
  });

  it('binds a kernel pair under one hash of both parts, with its command line', async () => {
    const kernel = kernelImage();
    const initrd = initrdImage();
    const record = await fed.node('n2').catalog.add({ kind: 'kernel', name: 'tiny', kernel: await file('k', kernel), initrd: await file('i', initrd), cmdline: 'console=ttyS0' });
    expect(record).toMatchObject({ kind: 'kernel', sha256: kernelPairSha256(sha256(kernel), sha256(initrd)), size: kernel.byteLength + initrd.byteLength, cmdline: 'console=ttyS0' });
    expect(imageKeys('n2')).toEqual([imageBlobKey('tiny', 'initrd', sha256(initrd)), imageBlobKey('tiny', 'kernel', sha256(kernel))]);
  });

  it('refuses a taken name, naming who has it; a bad file before anything is stored', async () => {
    const path = await file('d.qcow2', qcow2Header());
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path });
    const taken = await refusal(fed.node('n2').catalog.add({ kind: 'disk', name: 'deb', path }));
    expect(taken.code).toBe('rejected');
    expect(taken.message).toMatch(/^image deb already exists \(disk, sha256 [0-9a-f]{16}, added by n1 at .*\); remove it first or pass --replace$/);
    const badInitrd = await refusal(fed.node('n2').catalog.add({ kind: 'kernel', name: 'k', kernel: await file('k', kernelImage()), initrd: await file('i', kernelImage()) }));
    expect(badInitrd.message).toMatch(/is not an initramfs/);
    const missing = await refusal(fed.node('n2').catalog.add({ kind: 'disk', name: 'm', path: join(files, 'absent') }));
    expect(missing).toMatchObject({ code: 'not_found', message: `file ${join(files, 'absent')}: no such file` });
    expect(imageKeys('n2')).toEqual([]);
    expect((await fed.node('n2').catalog.list()).records.map((r) => r.name)).toEqual(['deb']);
  });

  it('two nodes adding one name at once: one binds, the other is refused and keeps nothing', async () => {
    const a = qcow2Header({ virtualSize: 2 ** 30 });
    const b = qcow2Header({ virtualSize: 2 ** 31 });
    const [pa, pb] = [await file('a.qcow2', a), await file('b.qcow2', b)];
    const results = await Promise.allSettled([fed.node('n1').catalog.add({ kind: 'disk', name: 'x', path: pa }), fed.node('n2').catalog.add({ kind: 'disk', name: 'x', path: pb })]);
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    const lost = results.find((r) => r.status === 'rejected');
    expect((lost?.reason as DwcpError).code).toBe('rejected');
    const winner = (await fed.node('n3').catalog.resolve('x')).addedBy;
    const loser = winner === 'n1' ? 'n2' : 'n1';
    expect(imageKeys(winner)).toHaveLength(1);
    expect(imageKeys(loser)).toEqual([]);
  });

  it('replace rebinds the name and drops the old parts here; remove unbinds, forgets holders, drops the copy', async () => {
    const old = qcow2Header({ virtualSize: 2 ** 30 });
    const next = qcow2Header({ virtualSize: 2 ** 31 });
    const n1 = fed.node('n1').catalog;
    await n1.add({ kind: 'disk', name: 'deb', path: await file('old', old) });
    const replaced = await n1.add({ kind: 'disk', name: 'deb', path: await file('new', next), replace: true });
    expect(replaced.sha256).toBe(sha256(next));
    expect(imageKeys('n1')).toEqual([imageBlobKey('deb', 'disk', sha256(next))]);
    await fed.node('n2').source.materialise('deb');
    expect(await n1.holdersOf(replaced)).toEqual(['n1', 'n2']);
    await n1.remove('deb');
    expect((await refusal(fed.node('n2').catalog.resolve('deb'))).code).toBe('not_found');
    expect(fed.state.geo.has(imageHolderKey('deb', 'n2'))).toBe(false);
    expect(imageKeys('n1')).toEqual([]);
    expect((await refusal(n1.remove('deb'))).message).toBe('image deb is not in the catalog');
  });

  it('list leaves out a record it cannot parse and says why', async () => {
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', qcow2Header()) });
    await fed.state.putRaw('images/junk', '{"kind":"disk"}');
    const { records, invalid } = await fed.node('n2').catalog.list();
    expect(records.map((r) => r.name)).toEqual(['deb']);
    expect(invalid).toEqual([{ name: 'junk', reason: expect.stringMatching(/^the federation log's record of image junk is not a valid image record: name: missing/) }]);
  });

  it("resolve reads this node's replica when the leader cannot be reached; a refusal of another kind is the answer", async () => {
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', qcow2Header()) });
    fed.state.strongFailure = new DwcpError('unavailable', 'no leader');
    expect((await fed.node('n2').catalog.resolve('deb')).name).toBe('deb');
    fed.state.strongFailure = new DwcpError('unsupported', 'no replica here');
    expect((await refusal(fed.node('n2').catalog.resolve('deb'))).message).toBe('no replica here');
  });
});

describe('BlobImageSource.materialise', () => {
  it('writes the part once per host, read-only and checked, and reuses it', async () => {
    const bytes = qcow2Header();
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', bytes) });
    const image = await fed.node('n1').source.materialise('deb');
    expect(image).toEqual({ kind: 'disk', name: 'deb', sha256: sha256(bytes), format: 'qcow2', path: join(fed.node('n1').dir, 'qemu', 'images', `${sha256(bytes)}.qcow2`) });
    if (image.kind !== 'disk') throw new Error('not a disk');
    expect(sha256(await readFile(image.path))).toBe(sha256(bytes));
    expect((await stat(image.path)).mode & 0o777).toBe(0o444);
    const again = await fed.node('n1').source.materialise('deb');
    expect(again).toEqual(image);
    const sources = (await fed.node('n1').metrics.materialiseSeconds.get()).values.filter((v) => v.metricName?.endsWith('_count')).map((v) => `${v.labels.source}=${v.value}`);
    expect(sources.sort()).toEqual(['file=1', 'store=1']);
  });

  it('fetches what this node lacks from the nearest holder, then holds it itself; kernel pairs too', async () => {
    const kernel = kernelImage();
    const initrd = initrdImage();
    await fed.node('n1').catalog.add({ kind: 'kernel', name: 'tiny', kernel: await file('k', kernel), initrd: await file('i', initrd), cmdline: 'console=ttyS0' });
    const image = await fed.node('n2').source.materialise('tiny');
    expect(image).toMatchObject({ kind: 'kernel', cmdline: 'console=ttyS0' });
    if (image.kind !== 'kernel') throw new Error('not a kernel pair');
    expect(sha256(await readFile(image.kernel))).toBe(sha256(kernel));
    expect(sha256(await readFile(image.initrd))).toBe(sha256(initrd));
    expect(fed.node('n2').fetches.map((f) => f.holder)).toEqual(['n1', 'n1']);
    // n2 announced itself; n1 gone, n3 fetches from n2.
    fed.connected.delete('n1');
    await fed.node('n3').source.materialise('tiny');
    expect(fed.node('n3').fetches.map((f) => f.holder)).toEqual(['n2', 'n2']);
  });

  it('concurrent materialisations share one fetch and one write; a caller that gives up stops waiting alone', async () => {
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', qcow2Header()) });
    const slow = Promise.withResolvers<void>();
    fed.node('n1').gate = slow.promise;
    const quitter = new AbortController();
    const waiting = [0, 1, 2].map(() => fed.node('n2').source.materialise('deb'));
    const gaveUp = fed.node('n2').source.materialise('deb', { signal: quitter.signal });
    quitter.abort(new DwcpError('cancelled', 'caller gave up'));
    await expect(gaveUp).rejects.toThrow('caller gave up');
    slow.resolve();
    const images = await Promise.all(waiting);
    expect(new Set(images.map((i) => (i.kind === 'disk' ? i.path : '')))).toHaveLength(1);
    expect(fed.node('n2').fetches).toHaveLength(1);
  });

  it('a damaged file is removed and written again from the blob store at its next use', async () => {
    const bytes = qcow2Header();
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', bytes) });
    const image = await fed.node('n1').source.materialise('deb');
    if (image.kind !== 'disk') throw new Error('not a disk');
    await chmod(image.path, 0o644);
    const damaged = Buffer.from(bytes);
    damaged.writeUInt8(damaged.readUInt8(5000) ^ 0xff, 5000);
    await writeFile(image.path, damaged);
    await fed.node('n1').source.materialise('deb');
    expect(sha256(await readFile(image.path))).toBe(sha256(bytes));
    expect((await fed.node('n1').metrics.filesRebuilt.get()).values[0]?.value).toBe(1);
  });

  it('a file whose mode was widened is narrowed again; a symbolic link in its place is replaced by the file', async () => {
    const bytes = qcow2Header();
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', bytes) });
    const image = await fed.node('n1').source.materialise('deb');
    if (image.kind !== 'disk') throw new Error('not a disk');
    await chmod(image.path, 0o664);
    await fed.node('n1').source.materialise('deb');
    expect((await stat(image.path)).mode & 0o777).toBe(0o444);
    await rm(image.path, { force: true });
    await symlink(join(files, 'd'), image.path);
    await fed.node('n1').source.materialise('deb');
    expect((await lstat(image.path)).isFile()).toBe(true);
    expect(sha256(await readFile(image.path))).toBe(sha256(bytes));
  });

  it('bytes that do not hash to the record are refused and nothing is kept', async () => {
    const real = qcow2Header();
    const record = await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', real) });
    if (record.kind !== 'disk') throw new Error('not a disk');
    // A forged record naming real's hash over other bytes, stored under the key that hash names.
    const other = await fed.node('n1').store.ingestBytes(imageBlobKey('forged', 'disk', record.sha256), Buffer.alloc(real.byteLength, 1));
    await fed.state.putRaw('images/forged', JSON.stringify({ ...record, name: 'forged', disk: { ...record.disk, blob: other.version } }));
    for (const node of ['n1', 'n2']) {
      const err = await refusal(fed.node(node).source.materialise('forged'));
      expect(err.code, node).toBe('corrupt');
      expect(err.message).toMatch(/^image forged: its disk reads back as \d+ bytes hashing to [0-9a-f]{16}…, the catalog recorded \d+ bytes hashing to [0-9a-f]{16}…; the file was not kept$/);
      expect(await readdir(join(fed.node(node).dir, 'qemu', 'images'))).toEqual([]);
    }
  });

  it("damage in this node's blob store is told apart from a record that does not match, and nothing is kept", async () => {
    await fed.node('n1').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', qcow2Header()) });
    const pack = join(fed.node('n1').dir, 'blobs', 'packs', '00000001.pack');
    const bytes = await readFile(pack);
    bytes.writeUInt8(bytes.readUInt8(300_000) ^ 0xff, 300_000);
    await writeFile(pack, bytes);
    const err = await refusal(fed.node('n1').source.materialise('deb'));
    expect(err.code).toBe('corrupt');
    expect(err.message).toMatch(/^image deb: its disk is damaged in this node's blob store: .*chunk at offset \d+ reads back hashing to [0-9a-f]{64}, stored as [0-9a-f]{64}; the file was not kept$/);
    expect(await readdir(join(fed.node('n1').dir, 'qemu', 'images'))).toEqual([]);
  });

  it('fails naming the image: not_found, unavailable with each holder\'s reason', async () => {
    expect(await refusal(fed.node('n1').source.materialise('nope'))).toMatchObject({ code: 'not_found', message: expect.stringMatching(/^image nope is not in the catalog/) });
    await fed.node('n3').catalog.add({ kind: 'disk', name: 'deb', path: await file('d', qcow2Header()) });
    fed.connected.delete('n3');
    const down = await refusal(fed.node('n1').source.materialise('deb'));
    expect(down).toMatchObject({ code: 'unavailable', retryable: true });
    expect(down.message).toBe('image deb: this node does not hold its disk and no holder sent it (n3: not connected)');
    // A holder record that lies (n2 says it holds deb, it does not): asked, refuses, the next reason follows.
    await fed.node('n2').catalog.announce(await fed.node('n2').catalog.resolve('deb'));
    const lied = await refusal(fed.node('n1').source.materialise('deb'));
    expect(lied.message).toMatch(/no holder sent it \(n3: not connected; n2: holds no copy of image\/deb\/disk\/[0-9a-f]{64}\)$/);
    const counts = (await fed.node('n1').metrics.materialisations.get()).values.map((v) => `${v.labels.result}=${v.value}`);
    expect(counts).toEqual(expect.arrayContaining(['not_found=1', 'unavailable=2', 'ok=0']));
  });

  it('temporary files a crash left are removed at open', async () => {
    const dir = join(fed.node('n1').dir, 'qemu', 'images');
    await writeFile(join(dir, '.abc.qcow2.tmp-123456'), 'half');
    await writeFile(join(dir, 'keep.qcow2'), 'x');
    const n1 = fed.node('n1');
    await BlobImageSource.open({ catalog: n1.catalog, store: n1.store, fetch: { fetch: () => Promise.reject(new Error('no')) }, members: () => [], dir, metrics: n1.metrics, log });
    expect(await readdir(dir)).toEqual(['keep.qcow2']);
  });
});

describe('holderOrder', () => {
  const m = (name: string): MemberConfig => ({ name, peerId: `p-${name}` }) as MemberConfig;
  it('asks connected holders nearest first, never itself; says why the others are not asked', () => {
    const links = [
      { member: m('far'), connected: true, rttMs: 80 },
      { member: m('near'), connected: true, rttMs: 2 },
      { member: m('unmeasured'), connected: true, rttMs: null },
      { member: m('down'), connected: false, rttMs: 1 },
    ];
    const out = holderOrder(['far', 'me', 'down', 'near', 'unmeasured', 'stranger', 'near'], 'me', links);
    expect(out.ask.map((a) => a.name)).toEqual(['near', 'far', 'unmeasured']);
    expect(out.skipped).toEqual(['down: not connected', "stranger: not in this node's member list"]);
  });
});
