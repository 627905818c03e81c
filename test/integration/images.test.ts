/**
 * Guest images across a federation of three real dwcpd processes (Raft
 * carries the federation log), driven by the real dwcpctl:
 *
 * - `image add` on n1 (a qcow2 made by qemu-img, a raw disk of random bytes,
 *   a kernel + initrd pair) binds names every node lists alike, with the
 *   sha256 of the files as added;
 * - `image pull` on n2 fetches the blob from n1 and writes a read-only file
 *   whose SHA-256 the test checks itself; n2 then shows as a holder;
 * - three pulls of one image at once on n3 share one fetch;
 * - a materialised file damaged on disk is detected at the next use and
 *   written again from the blob store; bytes that do not hash to the
 *   record (a forged record over a real blob) are refused and nothing is
 *   kept; a record that is not an image record is named as such;
 * - an unknown image, a disk in an unknown format, a taken name: one line each;
 * - `image remove` unbinds a name everywhere;
 * - an image whose only holder is down is `unavailable`, naming the holder.
 *
 * No sleeps as synchronisation: outcomes are awaited through dwcpctl and log
 * lines, another node's view polled with a deadline.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, readFile, stat, writeFile, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAdmin, type AdminClient } from '../../src/admin/client.ts';
import type { ImageInfo, ImagePullResponse } from '../../src/admin/schema.ts';
import { lintMetrics } from '../support/promtool.ts';
import { eventually, metricValue, type CtlResult } from './harness.ts';
import { RaftCluster } from './raft-cluster.ts';

const MIB = 1024 * 1024;
/** A fetch and write of a few MiB on a loaded 2-core machine, with a leader to find first. */
const CTL_TIMEOUT = '60s';
const CALL_TIMEOUT_MS = 60_000;
/** A test makes a dozen calls, some spawning dwcpctl (a second or more each on a loaded machine). */
const TEST_MS = 120_000;
const clients = new Map<number, AdminClient>();

let cluster: RaftCluster;
let dir: string;
const files: Record<string, string> = {};

function ctl(i: number, ...args: string[]): Promise<CtlResult> {
  return cluster.ctl(i, '--timeout', CTL_TIMEOUT, ...args);
}

function json<T>(r: CtlResult, what: string): T {
  expect(r.stderr, what).toBe('');
  expect(r.code, what).toBe(0);
  return JSON.parse(r.stdout) as T;
}

const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** Checks that are not about dwcpctl's own output go through one admin connection per node (no process per call). */
function admin(i: number): AdminClient {
  let client = clients.get(i);
  if (client === undefined) clients.set(i, (client = connectAdmin(cluster.nodes[i]!.socket, { timeoutMs: CALL_TIMEOUT_MS })));
  return client;
}

function list(i: number): Promise<{ images: ImageInfo[]; problems: string[] }> {
  return admin(i).image.list();
}

function pull(i: number, name: string): Promise<ImagePullResponse> {
  return admin(i).image.pull(name, CALL_TIMEOUT_MS);
}

async function kvPut(key: string, value: string): Promise<void> {
  const r = await admin(0).kv.put(key, Buffer.from(value), { scope: 'federation', client_id: '', seq: 0, timeout_ms: CALL_TIMEOUT_MS });
  expect(r.ok).toBe(true);
}

async function blobKeys(i: number): Promise<string[]> {
  return (await admin(i).blob.status()).values.map((v) => v.key);
}

beforeAll(async () => {
  cluster = await RaftCluster.start('images', 3);
  dir = join(cluster.nodes[0]!.dir, '..', 'files');
  execFileSync('mkdir', ['-p', dir]);
  files.raw = join(dir, 'disk.raw');
  await writeFile(files.raw, randomBytes(3 * MIB));
  // A qcow2 with data in it: qemu-img converts the random raw disk.
  files.qcow2 = join(dir, 'disk.qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', files.raw, files.qcow2]);
  files.vmdk = join(dir, 'disk.vmdk');
  execFileSync('qemu-img', ['create', '-f', 'vmdk', files.vmdk, '16M'], { stdio: 'ignore' });
  // A kernel as QEMU's -kernel wants it (the bzImage "HdrS" header) and a gzip'd initrd.
  const kernel = randomBytes(MIB);
  kernel.write('HdrS', 0x202, 'latin1');
  files.kernel = join(dir, 'vmlinuz');
  await writeFile(files.kernel, kernel);
  files.initrd = join(dir, 'initrd.gz');
  await writeFile(files.initrd, Buffer.concat([Buffer.from([0x1f, 0x8b]), randomBytes(256 * 1024)]));
  files.other = join(dir, 'other.raw');
  await writeFile(files.other, randomBytes(MIB));
}, 120_000);

afterAll(async () => {
  for (const c of clients.values()) c.close();
  await cluster?.destroy();
});

describe('images in a federation of three', () => {
  it('image add on n1 binds names that every node lists alike, with the hashes of the files as added', async () => {
    const q = json<ImageInfo>(await ctl(0, 'image', 'add', files.qcow2!, '--name', 'deb', '--json'), 'add qcow2');
    expect(q).toMatchObject({ name: 'deb', kind: 'disk', format: 'qcow2', sha256: sha256(await readFile(files.qcow2!)), virtual_size: 3 * MIB, added_by: 'n1', holders: ['n1'] });
    expect(q.parts).toEqual([expect.objectContaining({ role: 'disk', local: true, path: null })]);
    const r = json<ImageInfo>(await ctl(0, 'image', 'add', files.raw!, '--name', 'raw', '--format', 'raw', '--json'), 'add raw');
    expect(r).toMatchObject({ format: 'raw', size: 3 * MIB, sha256: sha256(await readFile(files.raw!)) });
    const k = await ctl(0, 'image', 'add', '--kernel', files.kernel!, '--initrd', files.initrd!, '--cmdline', 'console=ttyS0 dwcp.dirty_mib_s=1', '--name', 'tiny');
    expect(k.stderr).toBe('');
    expect(k.stdout).toMatch(/^added tiny: kernel, 1\.3 MiB, sha256 [0-9a-f]{64}\n$/);
    const views = await Promise.all([0, 1, 2].map(async (i) => (await list(i)).images.map((img) => `${img.name} ${img.kind} ${img.sha256} ${img.added_by}`)));
    expect(views[1]).toEqual(views[0]);
    expect(views[2]).toEqual(views[0]);
    expect(views[0]).toHaveLength(3);
    const table = await ctl(0, 'image', 'list');
    expect(table.stdout).toMatch(/^NAME\s+KIND\s+SIZE\s+SHA256\s+ADDED\s+BY\s+HOLDERS\s+HERE\n/);
    expect(table.stdout).toMatch(/\ndeb\s+disk\/qcow2\s+[\d.]+ MiB\s+[0-9a-f]{12}\s+\S+ \S+\s+n1\s+n1\s+blobs\n/);
  }, TEST_MS);

  it('image pull on n2 fetches the blob from n1 and writes a read-only file with the recorded SHA-256; n2 becomes a holder', async () => {
    const out = await pull(1, 'deb');
    const path = out.image.parts[0]?.path ?? '';
    expect(path).toBe(join(cluster.nodes[1]!.dir, 'qemu', 'images', `${out.image.sha256}.qcow2`));
    expect(sha256(await readFile(path))).toBe(sha256(await readFile(files.qcow2!)));
    expect((await stat(path)).mode & 0o777).toBe(0o444);
    const fetched = await cluster.daemon(1).waitForLog((l) => l.msg === 'image part fetched' && l.image === 'deb', 'deb fetched on n2');
    expect(fetched).toMatchObject({ holder: 'n1', role: 'disk', kind: 'full' });
    // Its holder record reaches n1 through the geo store.
    await eventually('n2 listed as a holder of deb on n1', 30_000, async () => ((await list(0)).images.find((i) => i.name === 'deb')?.holders.includes('n2') ? true : undefined));
    // The kernel pair: both files, and the command line as recorded.
    const tiny = await pull(1, 'tiny');
    expect(tiny.image.parts.map((p) => p.role)).toEqual(['kernel', 'initrd']);
    expect(sha256(await readFile(tiny.image.parts[0]!.path!))).toBe(sha256(await readFile(files.kernel!)));
    expect(sha256(await readFile(tiny.image.parts[1]!.path!))).toBe(sha256(await readFile(files.initrd!)));
    expect(tiny.image.cmdline).toBe('console=ttyS0 dwcp.dirty_mib_s=1');
  }, TEST_MS);

  it('three pulls of one image at once on n3 share one fetch', async () => {
    const after = cluster.daemon(2).lines.length;
    const outs = await Promise.all([0, 1, 2].map(() => pull(2, 'raw')));
    expect(new Set(outs.map((o) => o.image.parts[0]?.path)).size).toBe(1);
    expect(sha256(await readFile(outs[0]!.image.parts[0]!.path!))).toBe(sha256(await readFile(files.raw!)));
    const fetches = cluster.daemon(2).lines.slice(after).filter((l) => l.msg === 'image part fetched' && l.image === 'raw');
    const written = cluster.daemon(2).lines.slice(after).filter((l) => l.msg === 'image file materialised' && l.image === 'raw');
    expect(fetches).toHaveLength(1);
    expect(written).toHaveLength(1);
  }, TEST_MS);

  it('a materialised file damaged on disk is caught at its next use and written again from the blob store', async () => {
    const path = (await pull(1, 'deb')).image.parts[0]!.path!;
    await chmod(path, 0o644);
    const fh = await open(path, 'r+');
    await fh.write(Buffer.from('damage'), 0, 6, 4096);
    await fh.close();
    const after = cluster.daemon(1).lines.length;
    const again = await pull(1, 'deb');
    expect(again.image.parts[0]?.path).toBe(path);
    expect(sha256(await readFile(path))).toBe(sha256(await readFile(files.qcow2!)));
    expect((await stat(path)).mode & 0o777).toBe(0o444);
    const caught = cluster.daemon(1).lines.slice(after).find((l) => l.msg === 'materialised image file does not match its hash; removed, writing it again from the blob store');
    expect(caught).toMatchObject({ image: 'deb', role: 'disk', path });
    // Written from n2's own blob store: no second fetch.
    expect(cluster.daemon(1).lines.slice(after).filter((l) => l.msg === 'image part fetched')).toHaveLength(0);
    expect(metricValue(await cluster.daemon(1).scrape(), 'dwcp_image_files_rebuilt_total')).toBe(1);
  }, TEST_MS);

  it('bytes that do not hash to the record are refused, fetched or not, and nothing is kept; a malformed record is named', async () => {
    // A forged record: the raw image's sha256 over another file's blob, stored under the key that sha names.
    const rawSha = sha256(await readFile(files.raw!));
    const put = await admin(0).blob.put({ path: files.other!, key: `image/forged/disk/${rawSha}`, to: '', streams: 0 });
    const part = { sha256: rawSha, size: put.stored.size, blob: put.stored.version };
    const record = { kind: 'disk', name: 'forged', sha256: rawSha, size: part.size, addedBy: 'n1', addedAt: new Date().toISOString(), format: 'raw', virtualSize: part.size, disk: part };
    await kvPut('images/forged', JSON.stringify(record));
    const forged = /image forged: its disk reads back as 1048576 bytes hashing to [0-9a-f]{16}…, the catalog recorded 1048576 bytes hashing to [0-9a-f]{16}…; the file was not kept/;
    // Here, from n1's own store; on n2, fetched from n1 first.
    await expect(pull(0, 'forged')).rejects.toThrow(forged);
    const refused = await ctl(1, 'image', 'pull', 'forged');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(forged);
    for (const i of [0, 1]) {
      const left = (await readdir(join(cluster.nodes[i]!.dir, 'qemu', 'images'))).filter((f) => f.startsWith(rawSha.slice(0, 16)) || f.startsWith('.'));
      // n3 pulled the real raw image (same sha256, another name) earlier; n1 and n2 never did: nothing of the forged bytes is left.
      expect(left, `n${i + 1}`).toEqual([]);
    }
    expect(metricValue(await cluster.daemon(1).scrape(), 'dwcp_image_materialisations_total', { result: 'corrupt' })).toBe(1);
    // A record that is not an image record at all.
    await kvPut('images/junk', '{"kind":"disk","name":"junk"}');
    await expect(pull(2, 'junk')).rejects.toThrow(/the federation log's record of image junk is not a valid image record: sha256: missing/);
    const listed = await list(2);
    expect(listed.problems).toEqual([expect.stringMatching(/record of image junk is not a valid image record/)]);
    expect(listed.images.map((i) => i.name)).toEqual(['deb', 'forged', 'raw', 'tiny']);
    expect((await admin(0).kv.delete('images/junk', { scope: 'federation', client_id: '', seq: 0, timeout_ms: CALL_TIMEOUT_MS })).ok).toBe(true);
  }, TEST_MS);

  it('mistakes get one line and exit 1 (2 for usage): an unknown image, a VMDK, a raw disk not said to be raw, a taken name', async () => {
    const unknown = await ctl(1, 'image', 'show', 'nope');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/image nope is not in the catalog/);
    const vmdk = await ctl(0, 'image', 'add', files.vmdk!, '--name', 'v');
    expect(vmdk.code).toBe(1);
    expect(vmdk.stderr).toMatch(/disk\.vmdk: is a VMDK image; images are qcow2 or raw: convert it with qemu-img convert -O qcow2/);
    const unsaid = await ctl(0, 'image', 'add', files.other!, '--name', 'o');
    expect(unsaid.stderr).toMatch(/is not qcow2 \(no QFI\\xfb magic at its start\) and raw images have no magic to detect; pass --format raw/);
    const taken = await ctl(2, 'image', 'add', files.other!, '--name', 'deb', '--format', 'raw');
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/image deb already exists \(disk, sha256 [0-9a-f]{16}, added by n1 at .*\); remove it first or pass --replace/);
    const usage = await ctl(0, 'image', 'add', '--kernel', files.kernel!, '--name', 'k');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/image add needs both --kernel and --initrd/);
    // None of these left a blob behind.
    expect((await blobKeys(0)).map((k) => k.split('/')[1]).sort()).toEqual(['deb', 'forged', 'raw', 'tiny', 'tiny']);
    await expect(pull(1, 'nope')).rejects.toThrow(/image nope is not in the catalog/);
  }, TEST_MS);

  it('image remove unbinds a name everywhere and drops this node\'s copy', async () => {
    const removed = await ctl(2, 'image', 'remove', 'raw');
    expect(removed.stdout).toMatch(/^removed raw \(sha256 [0-9a-f]{16}…\) from the catalog/);
    for (const i of [0, 1, 2]) expect((await list(i)).images.map((img) => img.name), `n${i + 1}`).not.toContain('raw');
    await expect(pull(0, 'raw')).rejects.toThrow(/image raw is not in the catalog/);
    expect((await blobKeys(2)).filter((k) => k.startsWith('image/raw/'))).toEqual([]);
  }, TEST_MS);

  it('metrics are in valid exposition format', async (ctx) => {
    const text = await cluster.daemon(1).scrape();
    expect(metricValue(text, 'dwcp_image_materialisations_total', { result: 'ok' })).toBeGreaterThanOrEqual(3);
    expect(metricValue(text, 'dwcp_image_materialise_duration_seconds_count', { source: 'fetched' })).toBeGreaterThanOrEqual(1);
    const verdict = lintMetrics(text, ctx);
    if (verdict) expect(verdict.status, verdict.output).toBe(0);
  }, TEST_MS);

  it('an image whose only holder is down is unavailable, naming the holder', async () => {
    await admin(2).image.add({ name: 'only-n3', path: files.other!, format: 'raw', kernel: '', initrd: '', cmdline: '', replace: false });
    admin(2).close();
    clients.delete(2);
    await cluster.stopNode(2, 'SIGTERM');
    const pulled = await ctl(0, 'image', 'pull', 'only-n3');
    expect(pulled.code).toBe(1);
    expect(pulled.stderr).toMatch(/image only-n3: this node does not hold its disk and no holder sent it \(n3: /);
    expect(pulled.stderr).toMatch(/\(retryable\)\n$/);
  }, TEST_MS);
});
