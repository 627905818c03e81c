/**
 * What the qemu provider needs from wherever guest images come from: a named
 * image turned into files on this host whose content hash has been checked.
 *
 * The provider only consumes this interface; the blob-store-backed catalog
 * (`dwcpctl image add|list`) implements it, and tests may implement it over a
 * plain directory. Keeping it this narrow means the provider never learns how
 * images are stored, replicated or named across the federation.
 *
 * Invariants:
 * - Every path returned exists, is a regular file, and is not written again
 *   while any guest may use it (base files are immutable: a new version of an
 *   image is a new hash, hence a new file).
 * - `sha256` is the hash the catalog recorded when the image was added, and
 *   the files were checked against it before `materialise` resolved.
 * - Failures are DwcpErrors naming the image: `not_found` (no such image),
 *   `corrupt` (hash mismatch: the file is removed, never used),
 *   `unavailable` (the blob could not be fetched from any holder).
 */

export type GuestImageKind = 'disk' | 'kernel';
export type DiskFormat = 'qcow2' | 'raw';

export interface DiskImage {
  readonly kind: 'disk';
  readonly name: string;
  readonly sha256: string;
  /** The base disk: qcow2 overlays are created on top of it, never written. */
  readonly path: string;
  readonly format: DiskFormat;
}

export interface KernelImage {
  readonly kind: 'kernel';
  readonly name: string;
  /** The hash of the image as added (the catalog's manifest of the pair). */
  readonly sha256: string;
  /** For direct boot: `-kernel`, `-initrd`, `-append`. */
  readonly kernel: string;
  readonly initrd: string;
  /** The kernel command line recorded with the image (console=ttyS0 …), possibly empty. */
  readonly cmdline: string;
}

export type GuestImage = DiskImage | KernelImage;

export interface ImageSource {
  /** The image named, as checked files on this host; fetched once per host and reused. */
  materialise(name: string, options?: { signal?: AbortSignal }): Promise<GuestImage>;
}
