/**
 * The test guest builder (scripts/guest-image): the newc writer read back by
 * busybox's own cpio, module load order from modules.dep, the ELF checks,
 * a deterministic initramfs, and the built image as the DirectoryImageSource
 * reads it (hashes checked, a changed file refused). Booting it is the
 * provider tests' job (qemu-provider.test.ts).
 */
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { newcArchive } from '../../scripts/guest-image/cpio.ts';
import { buildInitramfs, guestSources, hasInterpreter, hasPvhEntry, moduleLoadOrder } from '../../scripts/guest-image/build.ts';
import { DirectoryImageSource } from '../../src/cloud/qemu/directory-images.ts';
import { GUEST_IMAGE, guestImagesDir } from '../support/qemu.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-guest-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('newc cpio writer', () => {
  it('writes an archive busybox cpio unpacks: directories, files with modes, symlinks, in path order', async () => {
    const archive = newcArchive([
      { type: 'file', path: 'bin/tool', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
      { type: 'dir', path: 'bin' },
      { type: 'symlink', path: 'bin/alias', target: 'tool' },
      { type: 'file', path: 'odd', data: Buffer.from('abc') },
    ]);
    expect(archive.length % 4).toBe(0);
    const out = join(dir, 'unpacked');
    const run = spawnSync('sh', ['-c', `mkdir -p ${out} && cd ${out} && busybox cpio -i -d`], { input: archive });
    expect(run.status, run.stderr.toString()).toBe(0);
    expect(await readFile(join(out, 'bin/tool'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect((await stat(join(out, 'bin/tool'))).mode & 0o777).toBe(0o755);
    expect(await readlink(join(out, 'bin/alias'))).toBe('tool');
    expect(await readFile(join(out, 'odd'), 'utf8')).toBe('abc');
    const listing = spawnSync('busybox', ['cpio', '-t'], { input: archive }).stdout.toString().trim().split('\n');
    expect(listing).toEqual(['bin', 'bin/alias', 'bin/tool', 'odd']);
  });

  it('refuses absolute, dotted and repeated paths', () => {
    expect(() => newcArchive([{ type: 'dir', path: '/etc' }])).toThrow(/not a relative path/);
    expect(() => newcArchive([{ type: 'dir', path: 'a/../b' }])).toThrow(/not a relative path/);
    expect(() => newcArchive([{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a' }])).toThrow(/given twice/);
  });
});

describe('guest image builder', () => {
  it('orders modules after their dependencies and names one that is missing', () => {
    const dep = ['kernel/a/virtio.ko:', 'kernel/a/virtio_ring.ko:', 'kernel/b/virtio_blk.ko: kernel/a/virtio.ko kernel/a/virtio_ring.ko', 'kernel/c/evdev.ko:'].join('\n');
    expect(moduleLoadOrder(dep, ['virtio_blk', 'evdev'])).toEqual(['kernel/a/virtio.ko', 'kernel/a/virtio_ring.ko', 'kernel/b/virtio_blk.ko', 'kernel/c/evdev.ko']);
    expect(() => moduleLoadOrder(dep, ['nope'])).toThrow(/kernel module nope is not in modules.dep/);
  });

  it('builds the same initramfs twice from the same packages, with a static busybox', async () => {
    const sources = await guestSources();
    expect(hasInterpreter(await readFile(sources.busybox))).toBe(false);
    expect(hasInterpreter(await readFile(process.execPath))).toBe(true);
    const [a, b] = [await buildInitramfs(sources), await buildInitramfs(sources)];
    expect(a.bytes.equals(b.bytes)).toBe(true);
    expect(a.modules).toContain('virtio_blk.ko');
    expect(a.modules.indexOf('virtio.ko')).toBeLessThan(a.modules.indexOf('virtio_blk.ko'));
  });

  it('writes a kernel QEMU boots directly (PVH) and a manifest the directory source checks', async () => {
    const images = await guestImagesDir();
    const image = await new DirectoryImageSource(images).materialise(GUEST_IMAGE);
    expect(image).toMatchObject({ kind: 'kernel', name: GUEST_IMAGE, cmdline: 'console=ttyS0 quiet' });
    if (image.kind !== 'kernel') throw new Error('not a kernel image');
    expect(image.kernel.endsWith('vmlinux')).toBe(true);
    expect(hasPvhEntry(await readFile(image.kernel))).toBe(true);

    // A copy with one byte of the initrd changed is refused, naming the image and the file.
    const copy = join(dir, 'images');
    await cp(join(images, GUEST_IMAGE), join(copy, 'bad'), { recursive: true });
    const initrd = join(copy, 'bad', 'initrd.img');
    const bytes = await readFile(initrd);
    bytes[100] = (bytes[100] ?? 0) ^ 0xff;
    await writeFile(initrd, bytes);
    const source = new DirectoryImageSource(copy);
    await expect(source.materialise('bad')).rejects.toMatchObject({ code: 'corrupt', message: expect.stringMatching(/^image bad: .*initrd\.img has sha256 [0-9a-f]{64}, the manifest says/) });
    await expect(source.materialise('absent')).rejects.toMatchObject({ code: 'not_found', message: expect.stringContaining('image absent: no such image') });
    await expect(source.materialise('../etc')).rejects.toMatchObject({ code: 'invalid' });
  });
});
