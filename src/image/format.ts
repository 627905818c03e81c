/**
 * What kind of file an operator hands `dwcpctl image add`, judged from its
 * first bytes: a disk image is qcow2 (by its magic) or raw (only when the
 * operator says so, since raw has no magic), a kernel is a Linux boot image,
 * an initrd a cpio archive or a compressed one. Pure: bytes in, a verdict or
 * a DwcpError('invalid') naming the file, the field and what to do, out.
 *
 * Invariants:
 * - A disk is never recorded as raw by guessing: without `--format raw` a
 *   file that is not qcow2 is refused (QEMU's own raw probing is what lets a
 *   guest that writes a qcow2 header into its raw disk make the host open a
 *   file of its choosing as a backing file; the catalog records the format
 *   and the provider passes it explicitly).
 * - A qcow2 base must stand alone: no backing file, no external data file,
 *   not encrypted (the provider has no key), not marked dirty or corrupt
 *   (opened read-only as a base, QEMU could not repair it).
 * - Formats QEMU knows but the provider does not use (vmdk, vdi, vhdx, vpc,
 *   qed, LUKS) are refused by name with the `qemu-img convert` that makes
 *   them usable, even with `--format raw`: read as raw, they would boot
 *   garbage. A compressed file is refused too, unless `--format raw` is
 *   given: compression magics are 2 to 6 bytes, which a raw disk's first
 *   sector may hold by chance.
 */
import { DwcpError } from '../errors.ts';

export const DISK_FORMATS = ['qcow2', 'raw'] as const;
export type DiskFormat = (typeof DISK_FORMATS)[number];

/** Bytes of a file's start every check here needs (the largest offset read is an ISO/VDI/qcow2 header field well inside it). */
export const HEADER_BYTES = 64 * 1024;

const QCOW2_MAGIC = 0x514649fb; // 'QFI\xfb'
const QCOW2_INCOMPATIBLE = [
  [0, 'marked dirty (not closed cleanly); repair it with qemu-img check -r all'],
  [1, 'marked corrupt; repair it with qemu-img check -r all'],
  [2, 'has an external data file; make it self-contained with qemu-img convert -O qcow2'],
] as const;

/** Container formats QEMU reads that are not qcow2: refused by name with what converts them. */
const OTHER_DISKS: readonly { name: string; at: number; magic: Uint8Array }[] = [
  { name: 'VMDK', at: 0, magic: ascii('KDMV') },
  { name: 'VMDK (descriptor file)', at: 0, magic: ascii('# Disk DescriptorFile') },
  { name: 'VHDX', at: 0, magic: ascii('vhdxfile') },
  { name: 'VHD (dynamic)', at: 0, magic: ascii('conectix') },
  { name: 'VDI', at: 0x40, magic: Uint8Array.of(0x7f, 0x10, 0xda, 0xbe) },
  { name: 'QED', at: 0, magic: Uint8Array.of(0x51, 0x45, 0x44, 0x00) },
  { name: 'LUKS', at: 0, magic: Uint8Array.of(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe) },
];

/** Compressions an initrd may use (the kernel unpacks them), and which a disk image must not be wrapped in. */
const COMPRESSED: readonly { name: string; magic: Uint8Array }[] = [
  { name: 'gzip', magic: Uint8Array.of(0x1f, 0x8b) },
  { name: 'xz', magic: Uint8Array.of(0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00) },
  { name: 'zstd', magic: Uint8Array.of(0x28, 0xb5, 0x2f, 0xfd) },
  { name: 'bzip2', magic: ascii('BZh') },
  { name: 'lz4', magic: Uint8Array.of(0x02, 0x21, 0x4c, 0x18) },
  { name: 'lz4', magic: Uint8Array.of(0x04, 0x22, 0x4d, 0x18) },
  { name: 'lzo', magic: Uint8Array.of(0x89, 0x4c, 0x5a, 0x4f) },
  { name: 'lzma', magic: Uint8Array.of(0x5d, 0x00, 0x00) },
];

const CPIO: readonly Uint8Array[] = [ascii('070701'), ascii('070702'), ascii('070707'), Uint8Array.of(0xc7, 0x71), Uint8Array.of(0x71, 0xc7)];

function ascii(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function has(header: Uint8Array, at: number, magic: Uint8Array): boolean {
  if (header.byteLength < at + magic.byteLength) return false;
  for (let i = 0; i < magic.byteLength; i++) if (header[at + i] !== magic[i]) return false;
  return true;
}

function view(header: Uint8Array): DataView {
  return new DataView(header.buffer, header.byteOffset, header.byteLength);
}

function u64(dv: DataView, at: number): number {
  return dv.getUint32(at) * 2 ** 32 + dv.getUint32(at + 4);
}

export interface DiskVerdict {
  format: DiskFormat;
  /** The size the guest sees: qcow2's virtual size, a raw file's length. */
  virtualSize: number;
}

/**
 * The format of a disk image from its first bytes (at least HEADER_BYTES, or
 * the whole file if shorter) and its length; `declared` is `--format` when
 * given. `file` names it in refusals.
 */
export function judgeDisk(file: string, header: Uint8Array, fileSize: number, declared: DiskFormat | undefined): DiskVerdict {
  const refuse = (why: string) => new DwcpError('invalid', `${file}: ${why}`, { details: { field: 'format' } });
  const other = OTHER_DISKS.find((o) => has(header, o.at, o.magic));
  if (other !== undefined) throw refuse(`is a ${other.name} image; images are qcow2 or raw: convert it with qemu-img convert -O qcow2 ${file} OUT.qcow2`);
  const packed = COMPRESSED.find((c) => has(header, 0, c.magic));
  if (packed !== undefined && declared !== 'raw') throw refuse(`is ${packed.name}-compressed; decompress it first (images are qcow2 or raw)`);
  const isQcow2 = header.byteLength >= 4 && view(header).getUint32(0) === QCOW2_MAGIC;
  if (declared === 'raw') {
    if (isQcow2) throw refuse('starts with the qcow2 magic but --format raw was given; leave --format out (or say qcow2) to add it as qcow2');
    return { format: 'raw', virtualSize: fileSize };
  }
  if (!isQcow2) {
    throw refuse(
      declared === 'qcow2' ? 'is not qcow2 (no QFI\\xfb magic at its start)' : 'is not qcow2 (no QFI\\xfb magic at its start) and raw images have no magic to detect; pass --format raw if it is a raw disk',
    );
  }
  return { format: 'qcow2', virtualSize: checkQcow2(header, refuse) };
}

/** A qcow2 header a base image may have; returns the virtual size. */
function checkQcow2(header: Uint8Array, refuse: (why: string) => DwcpError): number {
  if (header.byteLength < 72) throw refuse(`qcow2 header cut short (${header.byteLength} bytes)`);
  const dv = view(header);
  const version = dv.getUint32(4);
  if (version !== 2 && version !== 3) throw refuse(`qcow2 version ${version} (QEMU writes 2 and 3)`);
  if (u64(dv, 8) !== 0) throw refuse('has a backing file; a base image must stand alone: flatten it with qemu-img convert -O qcow2');
  if (dv.getUint32(32) !== 0) throw refuse('is encrypted; the provider holds no key for it: decrypt it with qemu-img convert');
  if (version === 3) {
    if (header.byteLength < 104) throw refuse(`qcow2 v3 header cut short (${header.byteLength} bytes)`);
    const incompatible = u64(dv, 72);
    for (const [bit, why] of QCOW2_INCOMPATIBLE) if (Math.floor(incompatible / 2 ** bit) % 2 === 1) throw refuse(`is ${why}`);
  }
  return u64(dv, 24);
}

/** Refuses a file that is not a Linux boot image (an x86 bzImage, or an arm64 Image). */
export function checkKernel(file: string, header: Uint8Array): void {
  if (has(header, 0x202, ascii('HdrS')) || has(header, 0x38, Uint8Array.of(0x41, 0x52, 0x4d, 0x64))) return;
  throw new DwcpError('invalid', `${file}: is not a Linux kernel image (no bzImage "HdrS" header at 0x202, nor an arm64 Image magic): pass the vmlinuz QEMU boots with -kernel`, {
    details: { field: 'kernel' },
  });
}

/** Refuses a file that is neither a cpio archive nor compressed with something the kernel unpacks. */
export function checkInitrd(file: string, header: Uint8Array): void {
  if (CPIO.some((m) => has(header, 0, m)) || COMPRESSED.some((c) => has(header, 0, c.magic))) return;
  throw new DwcpError('invalid', `${file}: is not an initramfs (neither a cpio archive nor gzip, xz, zstd, bzip2, lz4, lzo or lzma data)`, { details: { field: 'initrd' } });
}
