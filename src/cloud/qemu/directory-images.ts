/**
 * An ImageSource over a plain directory: `<dir>/<name>/image.json` describes
 * one image (a kernel and initrd pair for direct boot, or a disk) whose files
 * sit beside it, with the sha256 of each. This is what `scripts/guest-image
 * --out DIR` writes, and what tests and a single node use until the
 * blob-backed image catalog is configured; the catalog implements the same
 * interface (image-source.ts).
 *
 * Invariants:
 * - `materialise` returns only files whose sha256 matches the manifest: a
 *   mismatch is `corrupt` and names the image and the file (the file is
 *   left in place: this directory is the operator's, not ours to delete);
 *   a missing image or file is `not_found`.
 * - A file is hashed again only when its size or mtime changed since it was
 *   last checked, so a create does not re-read a kernel each time.
 * - The image's own sha256 is a function of the manifest's content (kind,
 *   files' hashes, command line or format), so two directories holding the
 *   same image report the same hash.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { DwcpError } from '../../errors.ts';
import type { GuestImage, ImageSource } from './image-source.ts';

export const IMAGE_MANIFEST = 'image.json';

const fileName = z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, 'a file name in the image directory (letters, digits, ".", "_", "-")');
const sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'a sha256 in lowercase hex');

export const ImageManifestSchema = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('kernel'),
    kernel: fileName,
    initrd: fileName,
    cmdline: z.string().max(1024),
    files: z.record(fileName, sha256),
    /** Where the files came from (kernel version, busybox version), for people. */
    source: z.record(z.string(), z.string()).default({}),
  }),
  z.strictObject({
    kind: z.literal('disk'),
    disk: fileName,
    format: z.enum(['qcow2', 'raw']),
    files: z.record(fileName, sha256),
    source: z.record(z.string(), z.string()).default({}),
  }),
]);
export type ImageManifest = z.infer<typeof ImageManifestSchema>;
export type KernelImageManifest = Extract<ImageManifest, { kind: 'kernel' }>;

/** The image's hash: of its kind, its files' hashes in manifest order, and its command line or format. */
export function manifestDigest(m: ImageManifest): string {
  const parts = m.kind === 'kernel' ? ['kernel', m.files[m.kernel] ?? '', m.files[m.initrd] ?? '', m.cmdline] : ['disk', m.files[m.disk] ?? '', m.format];
  return createHash('sha256').update(parts.join('\n')).digest('hex');
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export class DirectoryImageSource implements ImageSource {
  readonly dir: string;
  /** path -> "size:mtimeMs" of the last content that matched its hash. */
  readonly #checked = new Map<string, string>();

  constructor(dir: string) {
    this.dir = dir;
  }

  async materialise(name: string): Promise<GuestImage> {
    if (!IMAGE_NAME.test(name)) throw new DwcpError('invalid', `image: ${JSON.stringify(name)} is not an image name (lowercase letters, digits, ".", "_", "-"; at most 63)`);
    const base = join(this.dir, name);
    const manifest = await this.#manifest(name, base);
    const path = (file: string) => join(base, file);
    const wanted = manifest.kind === 'kernel' ? [manifest.kernel, manifest.initrd] : [manifest.disk];
    for (const file of wanted) await this.#check(name, path(file), manifest.files[file]);
    const digest = manifestDigest(manifest);
    if (manifest.kind === 'kernel') return { kind: 'kernel', name, sha256: digest, kernel: path(manifest.kernel), initrd: path(manifest.initrd), cmdline: manifest.cmdline };
    return { kind: 'disk', name, sha256: digest, path: path(manifest.disk), format: manifest.format };
  }

  async #manifest(name: string, base: string): Promise<ImageManifest> {
    const file = join(base, IMAGE_MANIFEST);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DwcpError('not_found', `image ${name}: no such image in ${this.dir} (${file} is missing)`);
      throw new DwcpError('unavailable', `image ${name}: cannot read ${file}: ${(err as Error).message}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new DwcpError('corrupt', `image ${name}: ${file} is not JSON`);
    }
    const parsed = ImageManifestSchema.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new DwcpError('corrupt', `image ${name}: ${file}: ${issue ? `${issue.path.join('.') || '(top level)'}: ${issue.message}` : 'does not match its schema'}`);
    }
    return parsed.data;
  }

  async #check(name: string, path: string, expected: string | undefined): Promise<void> {
    if (expected === undefined) throw new DwcpError('corrupt', `image ${name}: ${IMAGE_MANIFEST} lists no sha256 for ${path}`);
    let s;
    try {
      s = await stat(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DwcpError('not_found', `image ${name}: ${path} is missing`);
      throw new DwcpError('unavailable', `image ${name}: cannot read ${path}: ${(err as Error).message}`);
    }
    if (!s.isFile()) throw new DwcpError('corrupt', `image ${name}: ${path} is not a regular file`);
    const stamp = `${s.size}:${s.mtimeMs}`;
    if (this.#checked.get(path) === stamp) return;
    const actual = await sha256File(path);
    if (actual !== expected) {
      this.#checked.delete(path);
      throw new DwcpError('corrupt', `image ${name}: ${path} has sha256 ${actual}, the manifest says ${expected}: not used`);
    }
    this.#checked.set(path, stamp);
  }
}
