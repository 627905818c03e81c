/**
 * `dwcpctl image` without a daemon: the table and the fields it prints, and
 * the admin service's reading of an Add request (a disk or a kernel pair,
 * never both, each mistake named by its field) before any file is read.
 */
import { describe, expect, it } from 'vitest';
import { addRequestFromWire } from '../../src/admin/image-service.ts';
import type { ImageAddRequest, ImageInfo } from '../../src/admin/schema.ts';
import { formatImage, formatImageList } from '../../src/cli/image.ts';
import { DwcpError } from '../../src/errors.ts';

const disk: ImageInfo = {
  name: 'deb',
  kind: 'disk',
  format: 'qcow2',
  sha256: 'ab'.repeat(32),
  size: 3 * 1024 * 1024,
  virtual_size: 8 * 2 ** 30,
  cmdline: '',
  added_by: 'n1',
  added_at: '2025-06-01T14:03:27.123Z',
  parts: [{ role: 'disk', sha256: 'ab'.repeat(32), size: 3 * 1024 * 1024, blob_version: 'cd'.repeat(32), local: true, path: '/var/lib/dwcp/qemu/images/abab.qcow2' }],
  holders: ['n1', 'n2'],
};

const pair: ImageInfo = {
  ...disk,
  name: 'tiny',
  kind: 'kernel',
  format: '',
  virtual_size: 0,
  cmdline: 'console=ttyS0',
  parts: [
    { role: 'kernel', sha256: 'ef'.repeat(32), size: 1024, blob_version: 'cd'.repeat(32), local: true, path: null },
    { role: 'initrd', sha256: '01'.repeat(32), size: 1024, blob_version: 'cd'.repeat(32), local: false, path: null },
  ],
  holders: [],
};

describe('image list and show', () => {
  it('a table of kind, size, hash prefix, when and by whom, holders, and what this node has', () => {
    expect(formatImageList([disk, pair], ['the federation log\'s record of image junk is not a valid image record: sha256: missing'])).toBe(
      [
        'NAME  KIND        SIZE     SHA256        ADDED             BY  HOLDERS  HERE',
        `deb   disk/qcow2  3.0 MiB  abababababab  2025-06-01 14:03  n1  n1,n2    files`,
        `tiny  kernel      3.0 MiB  abababababab  2025-06-01 14:03  n1  -        partial`,
        "not listed: the federation log's record of image junk is not a valid image record: sha256: missing",
        '',
      ].join('\n'),
    );
    expect(formatImageList([])).toBe('(no images; dwcpctl image add stores one)\n');
  });

  it('show gives the record and where each part is here', () => {
    const text = formatImage(disk);
    expect(text).toMatch(/^Name: {5}deb\n/);
    expect(text).toMatch(/\nSize: {5}3\.0 MiB \(the guest sees 8\.0 GiB\)\n/);
    expect(text).toMatch(/\nParts: {4}disk: 3\.0 MiB, sha256 abababababababab…, \/var\/lib\/dwcp\/qemu\/images\/abab\.qcow2\n$/);
    const kernel = formatImage(pair);
    expect(kernel).toMatch(/\nCmdline: {2}console=ttyS0\n/);
    expect(kernel).toMatch(/\nHolders: {2}\(none recorded\)\n/);
    expect(kernel).toMatch(/kernel: 1\.0 KiB, sha256 efefefefefefefef…, in the blob store here\n\s+initrd: 1\.0 KiB, sha256 0101010101010101…, not on this node\n$/);
  });
});

describe('an Add request as the admin service reads it', () => {
  const base: ImageAddRequest = { name: 'n', path: '', format: '', kernel: '', initrd: '', cmdline: '', replace: false };
  const refused = (r: Partial<ImageAddRequest>) => {
    try {
      addRequestFromWire({ ...base, ...r });
    } catch (err) {
      if (err instanceof DwcpError) return `${err.code}: ${err.message}`;
      throw err;
    }
    return 'accepted';
  };

  it('a disk or a kernel pair, with absolute paths', () => {
    expect(addRequestFromWire({ ...base, path: '/d.qcow2', replace: true })).toEqual({ kind: 'disk', name: 'n', path: '/d.qcow2', replace: true });
    expect(addRequestFromWire({ ...base, path: '/d.raw', format: 'raw' })).toEqual({ kind: 'disk', name: 'n', path: '/d.raw', format: 'raw', replace: false });
    expect(addRequestFromWire({ ...base, kernel: '/k', initrd: '/i', cmdline: 'quiet' })).toEqual({ kind: 'kernel', name: 'n', kernel: '/k', initrd: '/i', cmdline: 'quiet', replace: false });
  });

  it('each mistake named by its field', () => {
    expect(refused({ name: '', path: '/d' })).toBe('invalid: name: required');
    expect(refused({})).toBe('invalid: path: required (a disk image), or a kernel and an initrd');
    expect(refused({ path: '/d', kernel: '/k' })).toBe('invalid: path: give a disk image or a kernel and initrd, not both');
    expect(refused({ path: 'rel.qcow2' })).toBe('invalid: path: "rel.qcow2" is not an absolute path');
    expect(refused({ path: '/d', format: 'vmdk' })).toBe('invalid: format: "vmdk" is not one of qcow2, raw');
    expect(refused({ path: '/d', cmdline: 'x' })).toBe('invalid: cmdline: applies to a kernel and initrd, not a disk image');
    expect(refused({ kernel: '/k' })).toBe('invalid: initrd: required with a kernel');
    expect(refused({ kernel: '/k', initrd: '/i', format: 'raw' })).toBe('invalid: format: applies to a disk image, not a kernel and initrd');
  });
});
