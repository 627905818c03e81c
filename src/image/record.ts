/**
 * The image catalog's records and where each lives, defined once:
 *
 *   federation log   images/<name>                  ImageRecord: what the name means (kind, format, parts, hashes)
 *   geo store        image-holders/<name>/<node>    HolderRecord: <node> holds the image's blobs (sha256, since)
 *   blob store       image/<name>/<role>/<sha256>   the bytes of each part (role: disk, kernel, initrd)
 *
 * Why two stores (docs/images.md): a name must resolve to the same bytes
 * on every node, so the binding is a compare-and-swap in the federation
 * log (first writer wins, linearizable reads); who holds a copy is each
 * node's own observation, written often and read as a hint (a stale
 * holder costs one refused fetch), so it is geo-store state with no
 * consensus round per copy.
 *
 * Invariants:
 * - Every record is validated here, with zod, on its way in from either
 *   store (anyone with the admin socket can write raw KV keys): a record
 *   that does not parse is refused with the field named, never used.
 * - A record's `sha256` is the SHA-256 of the disk file as added, or for a
 *   kernel pair `kernelPairSha256` of its parts' hashes; each part's own
 *   `sha256` is its file's, and `blob` the blob store's version (value
 *   hash) of the same bytes, so a copy is checked in both hash spaces.
 * - Names are ASCII without `/` (they are path segments of every key above).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { formatIssue } from '../config/issues.ts';
import { DwcpError } from '../errors.ts';
import { DISK_FORMATS } from './format.ts';

export const IMAGE_NAME_MAX = 128;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]*$/;
const HEX64 = /^[0-9a-f]{64}$/;
/** Linux's x86 COMMAND_LINE_SIZE: a longer -append is cut by the kernel. */
export const IMAGE_CMDLINE_MAX = 2048;
/** Federation-log key prefix of image records. */
export const IMAGE_RECORD_PREFIX = 'images/';
/** Geo-store key prefix of holder records. */
export const IMAGE_HOLDER_PREFIX = 'image-holders/';
export const IMAGE_PART_ROLES = ['disk', 'kernel', 'initrd'] as const;
export type ImagePartRole = (typeof IMAGE_PART_ROLES)[number];

export const ImageNameSchema = z
  .string()
  .min(1, { abort: true })
  .max(IMAGE_NAME_MAX)
  .regex(NAME, 'an image name (a letter or digit, then letters, digits and . _ : -)');

const Sha256 = z.string().regex(HEX64, '64 lower-case hex digits (a SHA-256)');
const Size = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const Timestamp = z.iso.datetime();
const NodeName = z.string().min(1).max(256);

const PartSchema = z.object({
  /** SHA-256 of the part's file. */
  sha256: Sha256,
  size: Size,
  /** The blob store's version (value hash) of the same bytes. */
  blob: Sha256,
});
export type ImagePart = z.infer<typeof PartSchema>;

const Common = {
  name: ImageNameSchema,
  sha256: Sha256,
  /** Bytes of every part together. */
  size: Size,
  addedBy: NodeName,
  addedAt: Timestamp,
};

export const ImageRecordSchema = z.discriminatedUnion('kind', [
  z.object({
    kind: z.literal('disk'),
    ...Common,
    format: z.enum(DISK_FORMATS),
    /** What the guest sees: qcow2's virtual size, or a raw file's size. */
    virtualSize: Size,
    disk: PartSchema,
  }),
  z.object({
    kind: z.literal('kernel'),
    ...Common,
    cmdline: z.string().max(IMAGE_CMDLINE_MAX),
    kernel: PartSchema,
    initrd: PartSchema,
  }),
]);
export type ImageRecord = z.infer<typeof ImageRecordSchema>;
export type DiskRecord = Extract<ImageRecord, { kind: 'disk' }>;
export type KernelRecord = Extract<ImageRecord, { kind: 'kernel' }>;

export const HolderRecordSchema = z.object({
  /** The image's sha256 this node holds: a holder of a name's earlier image is not one of the current. */
  sha256: Sha256,
  since: Timestamp,
});
export type HolderRecord = z.infer<typeof HolderRecordSchema>;

/** The parts of an image, by role, in the order they are fetched and written. */
export function imageParts(record: ImageRecord): [ImagePartRole, ImagePart][] {
  return record.kind === 'disk'
    ? [['disk', record.disk]]
    : [
        ['kernel', record.kernel],
        ['initrd', record.initrd],
      ];
}

export function imageRecordKey(name: string): string {
  return `${IMAGE_RECORD_PREFIX}${name}`;
}

export function imageHolderKey(name: string, node: string): string {
  return `${IMAGE_HOLDER_PREFIX}${name}/${node}`;
}

/**
 * A part's blob key names its content: a new image under an old name (after
 * `image remove`, or `--replace`) is a new key, so adding it never replaces
 * bytes another node may still be fetching, and a failed add leaves the old
 * image's blob as it was.
 */
export function imageBlobKey(name: string, role: ImagePartRole, sha256: string): string {
  return `${IMAGE_BLOB_PREFIX}${name}/${role}/${sha256}`;
}

/** Blob-store key prefix of every part of image `name` (all its versions on this node). */
export function imageBlobPrefix(name: string): string {
  return `${IMAGE_BLOB_PREFIX}${name}/`;
}

const IMAGE_BLOB_PREFIX = 'image/';

/** The blob keys a member may ask another to send it (/dwcp/image/1.0.0): image parts only, never other blobs. */
export function isImageBlobKey(key: string): boolean {
  const m = /^image\/(.+)\/([a-z]+)\/([0-9a-f]{64})$/.exec(key);
  return m !== null && NAME.test(m[1] ?? '') && (m[1] ?? '').length <= IMAGE_NAME_MAX && (IMAGE_PART_ROLES as readonly string[]).includes(m[2] ?? '');
}

/** The identity of a kernel pair: one hash over both parts' hashes, in role order (the command line is not content). */
export function kernelPairSha256(kernelSha256: string, initrdSha256: string): string {
  return createHash('sha256').update(`dwcp-kernel-pair-v1\nkernel ${kernelSha256}\ninitrd ${initrdSha256}\n`).digest('hex');
}

/** A name as given by an operator, or a DwcpError('invalid') naming the field. */
export function checkImageName(name: string): string {
  const parsed = ImageNameSchema.safeParse(name, { reportInput: true });
  if (!parsed.success) throw new DwcpError('invalid', formatIssue(parsed.error.issues[0] as z.core.$ZodIssue, () => 'name'), { details: { field: 'name' } });
  return parsed.data;
}

/** A command line as given by an operator: printable, no control characters, within the kernel's limit. */
export function checkCmdline(cmdline: string): string {
  if (Buffer.byteLength(cmdline, 'utf8') > IMAGE_CMDLINE_MAX) throw new DwcpError('invalid', `cmdline: ${Buffer.byteLength(cmdline, 'utf8')} bytes, above the kernel's ${IMAGE_CMDLINE_MAX}`, { details: { field: 'cmdline' } });
  if (/[\x00-\x1f\x7f]/.test(cmdline)) throw new DwcpError('invalid', 'cmdline: contains a control character (newline, tab, NUL …); give one line', { details: { field: 'cmdline' } });
  return cmdline;
}

function refusal(what: string, error: z.ZodError): string {
  return `${what}: ${error.issues.map((i) => formatIssue(i)).join('; ')}`;
}

/** Parses the bytes stored under images/<name>; a record that does not parse, or names another image, is `corrupt`. */
export function parseImageRecord(name: string, bytes: Uint8Array): ImageRecord {
  const where = `the federation log's record of image ${name}`;
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new DwcpError('corrupt', `${where} is not JSON`);
  }
  const parsed = ImageRecordSchema.safeParse(json, { reportInput: true });
  if (!parsed.success) throw new DwcpError('corrupt', refusal(`${where} is not a valid image record`, parsed.error));
  if (parsed.data.name !== name) throw new DwcpError('corrupt', `${where} names image ${parsed.data.name}`);
  return parsed.data;
}

export function encodeImageRecord(record: ImageRecord): Uint8Array {
  return Buffer.from(JSON.stringify(ImageRecordSchema.parse(record)), 'utf8');
}

/** A holder record, or null (logged by the caller) when it does not parse: a hint, so a bad one is skipped, not fatal. */
export function parseHolderRecord(bytes: Uint8Array): HolderRecord | null {
  try {
    const parsed = HolderRecordSchema.safeParse(JSON.parse(Buffer.from(bytes).toString('utf8')));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}

export function encodeHolderRecord(record: HolderRecord): Uint8Array {
  return Buffer.from(JSON.stringify(HolderRecordSchema.parse(record)), 'utf8');
}
