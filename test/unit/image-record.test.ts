/**
 * The image catalog's edges: the records it reads from the federation log
 * and the geo store (zod schemas, refusals naming the field), the names and
 * keys it builds, and the judgement of operators' files from their first
 * bytes (qcow2 by magic and its header's flags, raw only when said, other
 * disk formats and compressed files named, kernel and initrd magics).
 */
import { describe, expect, it } from 'vitest';
import { DwcpError } from '../../src/errors.ts';
import { FetchMessageSchema } from '../../src/image/fetch.ts';
import { checkInitrd, checkKernel, judgeDisk } from '../../src/image/format.ts';
import {
  checkCmdline,
  checkImageName,
  encodeImageRecord,
  imageBlobKey,
  isImageBlobKey,
  kernelPairSha256,
  parseHolderRecord,
  parseImageRecord,
  type ImageRecord,
} from '../../src/image/record.ts';
import { initrdImage, kernelImage, qcow2Header } from './image-fixtures.ts';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const C = 'c'.repeat(64);

const disk: ImageRecord = {
  kind: 'disk',
  name: 'debian-12',
  sha256: A,
  size: 1000,
  addedBy: 'n1',
  addedAt: '2025-06-01T10:00:00.000Z',
  format: 'qcow2',
  virtualSize: 2 ** 30,
  disk: { sha256: A, size: 1000, blob: B },
};

function refusal(run: () => unknown): DwcpError {
  try {
    run();
  } catch (err) {
    if (err instanceof DwcpError) return err;
    throw err;
  }
  throw new Error('not refused');
}

describe('image records', () => {
  it('a record round-trips; a kernel pair too', () => {
    expect(parseImageRecord('debian-12', encodeImageRecord(disk))).toEqual(disk);
    const pair: ImageRecord = {
      kind: 'kernel',
      name: 'tiny',
      sha256: kernelPairSha256(A, C),
      size: 30,
      addedBy: 'n2',
      addedAt: '2025-06-01T10:00:00.000Z',
      cmdline: 'console=ttyS0',
      kernel: { sha256: A, size: 10, blob: B },
      initrd: { sha256: C, size: 20, blob: B },
    };
    expect(parseImageRecord('tiny', encodeImageRecord(pair))).toEqual(pair);
  });

  it('a record that is not one is corrupt, naming the image and the field', () => {
    const bytes = (v: unknown) => Buffer.from(JSON.stringify(v));
    expect(refusal(() => parseImageRecord('x', Buffer.from('{'))).message).toBe("the federation log's record of image x is not JSON");
    const noSha = refusal(() => parseImageRecord('debian-12', bytes({ ...disk, sha256: undefined })));
    expect(noSha.code).toBe('corrupt');
    expect(noSha.message).toMatch(/record of image debian-12 is not a valid image record: sha256: missing/);
    expect(refusal(() => parseImageRecord('debian-12', bytes({ ...disk, format: 'vmdk' }))).message).toMatch(/format: "vmdk" is not one of qcow2\|raw/);
    expect(refusal(() => parseImageRecord('debian-12', bytes({ ...disk, disk: { ...disk.disk, blob: 'XYZ' } }))).message).toMatch(/disk\.blob: "XYZ" is not 64 lower-case hex digits/);
    expect(refusal(() => parseImageRecord('debian-12', bytes({ ...disk, kind: 'iso' }))).message).toMatch(/kind/);
    expect(refusal(() => parseImageRecord('other', encodeImageRecord(disk))).message).toBe("the federation log's record of image other names image debian-12");
  });

  it('holder records that do not parse are skipped (null), not fatal', () => {
    expect(parseHolderRecord(Buffer.from(JSON.stringify({ sha256: A, since: '2025-06-01T10:00:00.000Z' })))).toEqual({ sha256: A, since: '2025-06-01T10:00:00.000Z' });
    expect(parseHolderRecord(Buffer.from('nope'))).toBeNull();
    expect(parseHolderRecord(Buffer.from(JSON.stringify({ sha256: 'short', since: 'x' })))).toBeNull();
  });

  it('names are path segments: no slash, no leading dot, bounded', () => {
    expect(checkImageName('debian-12.4_x86:latest')).toBe('debian-12.4_x86:latest');
    for (const bad of ['', '../etc', 'a/b', '.hidden', 'sp ace', 'x'.repeat(129), 'é']) {
      const err = refusal(() => checkImageName(bad));
      expect(err.code, bad).toBe('invalid');
      expect(err.message, bad).toMatch(/^name: /);
    }
  });

  it('blob keys name the part and its content; only those may be fetched', () => {
    expect(imageBlobKey('deb', 'disk', A)).toBe(`image/deb/disk/${A}`);
    expect(isImageBlobKey(imageBlobKey('deb', 'initrd', A))).toBe(true);
    for (const key of ['vm/disk0', `image/deb/swap/${A}`, `image/deb/disk/${A.slice(1)}`, `image/a/b/disk/${A}`, `image//disk/${A}`]) expect(isImageBlobKey(key), key).toBe(false);
  });

  it('a kernel pair hash depends on both parts, in role order', () => {
    expect(kernelPairSha256(A, C)).toMatch(/^[0-9a-f]{64}$/);
    expect(kernelPairSha256(A, C)).toBe(kernelPairSha256(A, C));
    expect(kernelPairSha256(A, C)).not.toBe(kernelPairSha256(C, A));
  });

  it('a command line is one printable line within the kernel limit', () => {
    expect(checkCmdline('console=ttyS0 dwcp.dirty_mib_s=4')).toBe('console=ttyS0 dwcp.dirty_mib_s=4');
    expect(refusal(() => checkCmdline('a\nb')).message).toMatch(/^cmdline: contains a control character/);
    expect(refusal(() => checkCmdline('x'.repeat(2049))).message).toBe("cmdline: 2049 bytes, above the kernel's 2048");
  });
});

describe('judging files from their first bytes', () => {
  it('qcow2 is found by its magic and its virtual size read; v2 too', () => {
    expect(judgeDisk('/d.qcow2', qcow2Header({ virtualSize: 5 * 2 ** 30 }), 1 << 20, undefined)).toEqual({ format: 'qcow2', virtualSize: 5 * 2 ** 30 });
    expect(judgeDisk('/d.qcow2', qcow2Header({ version: 2 }), 1 << 20, 'qcow2').format).toBe('qcow2');
  });

  it('a qcow2 base that cannot stand alone is refused, saying how to fix it', () => {
    const judge = (h: Buffer) => refusal(() => judgeDisk('/d.qcow2', h, h.byteLength, undefined)).message;
    expect(judge(qcow2Header({ backing: true }))).toBe('/d.qcow2: has a backing file; a base image must stand alone: flatten it with qemu-img convert -O qcow2');
    expect(judge(qcow2Header({ encrypted: true }))).toMatch(/is encrypted/);
    expect(judge(qcow2Header({ incompatible: 1 }))).toMatch(/marked dirty .* qemu-img check -r all/);
    expect(judge(qcow2Header({ incompatible: 4 }))).toMatch(/external data file/);
    expect(judge(qcow2Header({ version: 4 }))).toMatch(/qcow2 version 4/);
    expect(judge(qcow2Header({ bytes: 40 }))).toMatch(/header cut short \(40 bytes\)/);
  });

  it('raw is only what the operator says; a qcow2 said to be raw is refused', () => {
    const random = Buffer.alloc(8192, 0x55);
    expect(refusal(() => judgeDisk('/r.img', random, 8192, undefined)).message).toMatch(/is not qcow2 .* pass --format raw if it is a raw disk/);
    expect(judgeDisk('/r.img', random, 8192, 'raw')).toEqual({ format: 'raw', virtualSize: 8192 });
    expect(refusal(() => judgeDisk('/r.img', random, 8192, 'qcow2')).message).toBe('/r.img: is not qcow2 (no QFI\\xfb magic at its start)');
    expect(refusal(() => judgeDisk('/q', qcow2Header(), 1 << 20, 'raw')).message).toMatch(/starts with the qcow2 magic but --format raw was given/);
  });

  it('other disk formats are named, even said to be raw; compressed files unless said to be raw', () => {
    const vmdk = Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(1000)]);
    for (const format of [undefined, 'raw'] as const) expect(refusal(() => judgeDisk('/d.vmdk', vmdk, 1004, format)).message).toMatch(/is a VMDK image; .* qemu-img convert -O qcow2 \/d\.vmdk/);
    const vdi = Buffer.alloc(1000);
    vdi.set([0x7f, 0x10, 0xda, 0xbe], 0x40);
    expect(refusal(() => judgeDisk('/d.vdi', vdi, 1000, undefined)).message).toMatch(/is a VDI image/);
    const xz = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 1, 2]);
    expect(refusal(() => judgeDisk('/d.raw.xz', xz, 8, undefined)).message).toBe('/d.raw.xz: is xz-compressed; decompress it first (images are qcow2 or raw)');
    expect(judgeDisk('/d.raw', xz, 8, 'raw').format).toBe('raw');
  });

  it('a kernel is a Linux boot image; an initrd a cpio archive or compressed', () => {
    expect(() => checkKernel('/k', kernelImage())).not.toThrow();
    const arm64 = Buffer.alloc(128);
    arm64.write('ARM\x64', 0x38, 'latin1');
    expect(() => checkKernel('/k', arm64)).not.toThrow();
    expect(refusal(() => checkKernel('/k', initrdImage())).message).toMatch(/^\/k: is not a Linux kernel image/);
    expect(() => checkInitrd('/i', initrdImage())).not.toThrow();
    expect(() => checkInitrd('/i', Buffer.from('070701000000'))).not.toThrow();
    expect(refusal(() => checkInitrd('/i', kernelImage())).message).toMatch(/^\/i: is not an initramfs/);
    expect(refusal(() => checkInitrd('/i', kernelImage())).details).toEqual({ field: 'initrd' });
  });
});

describe('/dwcp/image/1.0.0 messages', () => {
  it('round-trip; a request for anything but an image part, or an answer with an unknown code, is refused naming the field', () => {
    const request = { kind: 'request' as const, request: { key: imageBlobKey('deb', 'disk', A), version: B } };
    expect(FetchMessageSchema.decode(FetchMessageSchema.encode(request))).toEqual(request);
    const result = { kind: 'result' as const, result: { code: 'not_found', message: 'holds no copy', kind: '', wireBytes: 0 } };
    expect(FetchMessageSchema.decode(FetchMessageSchema.encode(result))).toEqual(result);
    expect(() => FetchMessageSchema.encode({ kind: 'request', request: { key: 'vm/disk0', version: B } })).toThrow(/field request\.key must be image\/<name>\/<disk\|kernel\|initrd>\/<sha256>, got "vm\/disk0"/);
    expect(() => FetchMessageSchema.encode({ kind: 'request', request: { key: request.request.key, version: 'x' } })).toThrow(/field request\.version must be 64 hex digits/);
    expect(() => FetchMessageSchema.encode({ kind: 'result', result: { ...result.result, code: 'oops' } })).toThrow(/field result\.code is "oops", not an error code/);
  });
});
