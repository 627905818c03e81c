/**
 * BlobImageSource: the qemu provider's ImageSource (src/cloud/qemu/image-source.ts)
 * over the image catalog and the blob store. `materialise(name)` resolves the
 * name in the federation log, makes sure this node's blob store holds the
 * image's parts (fetching each from a holder over /dwcp/image/1.0.0 when it
 * does not), and writes each part once per host to
 *
 *   <dataDir>/qemu/images/<sha256>.<qcow2|raw|kernel|initrd>    mode 0444
 *
 * Invariants (the interface's, and how they are kept):
 * - A path returned exists, is a regular file whose SHA-256 was checked
 *   against the catalog's record before `materialise` resolved, and is never
 *   written again: files are named by that hash, written to a temporary file
 *   in the same directory (fsync'd, hash checked), made read-only and renamed
 *   into place (then the directory is fsync'd), so a reader sees a whole,
 *   checked file or none. Leftover temporaries are removed at open.
 * - A file already here is hashed again on its first use by this process,
 *   then trusted while its inode, size and change time stay the same (a file
 *   can only be altered by changing those). One that fails its check is
 *   removed and rebuilt from the blob store, whose chunks are checked as they
 *   are read; if the rebuilt bytes still do not hash to the record, the
 *   temporary file is removed and the answer is `corrupt`.
 * - Concurrent materialisations of one image share one fetch and one write
 *   (in-flight work is keyed by blob key and by file); a caller that gives up
 *   (its signal) stops waiting, the shared work goes on for the others.
 * - Failures are DwcpErrors naming the image: not_found (no such name),
 *   corrupt (bytes that do not match the record: nothing kept), unavailable
 *   (no holder could send a part; each holder's reason is listed),
 *   exhausted (no room for the file).
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, lstat, mkdir, open, readdir, rename, rm, stat, statfs, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { MemberConfig } from '../config/schema.ts';
import type { Logger } from '../log.ts';
import type { BlobStore } from '../blob/store.ts';
import type { GuestImage, ImageSource } from '../cloud/qemu/image-source.ts';
import { DwcpError } from '../errors.ts';
import type { ImageCatalog } from './catalog.ts';
import type { ImageFetch } from './fetch.ts';
import type { ImageMetrics, MaterialiseResult, MaterialiseSource } from './metrics.ts';
import { imageBlobKey, imageParts, type ImagePart, type ImagePartRole, type ImageRecord } from './record.ts';

/** Where materialised images live under the data directory. */
export function imagesDir(dataDir: string): string {
  return join(dataDir, 'qemu', 'images');
}

const TEMP_MARK = '.tmp-';
const HASH_READ_BYTES = 4 * 1024 * 1024;
/** Room left free on the filesystem besides the file itself: overlays and logs live there too. */
const SPARE_BYTES = 64 * 1024 * 1024;

/** A member as the fetch needs it, with its link as this node sees it now. */
export interface MemberLink {
  member: MemberConfig;
  connected: boolean;
  rttMs: number | null;
}

/**
 * Whom to ask for an image, in order: the nodes that say they hold it, and
 * the node that added it (its holder record may not have reached us yet),
 * not this one; connected members first, nearest first, then by name. The
 * rest are returned with the reason they are not asked.
 */
export function holderOrder(holders: Iterable<string>, self: string, links: readonly MemberLink[]): { ask: MemberConfig[]; skipped: string[] } {
  const byName = new Map(links.map((l) => [l.member.name, l]));
  const ask: MemberLink[] = [];
  const skipped: string[] = [];
  for (const name of new Set(holders)) {
    if (name === self) continue;
    const link = byName.get(name);
    if (link === undefined) skipped.push(`${name}: not in this node's member list`);
    else if (!link.connected) skipped.push(`${name}: not connected`);
    else ask.push(link);
  }
  ask.sort((a, b) => (a.rttMs ?? Infinity) - (b.rttMs ?? Infinity) || a.member.name.localeCompare(b.member.name));
  return { ask: ask.map((l) => l.member), skipped };
}

export interface BlobImageSourceOptions {
  catalog: Pick<ImageCatalog, 'resolve' | 'holdersOf' | 'announce' | 'holdsPart' | 'node'>;
  store: Pick<BlobStore, 'manifest' | 'readValue'>;
  fetch: Pick<ImageFetch, 'fetch'>;
  /** The federation's members and their links now. */
  members: () => readonly MemberLink[];
  /** <dataDir>/qemu/images */
  dir: string;
  metrics: ImageMetrics;
  log: Logger;
  /** Skip fsync (tests). */
  noSync?: boolean;
}

/** What a file was when it was last checked: while these hold, its bytes have not changed. */
interface Checked {
  ino: number;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function fileName(record: ImageRecord, role: ImagePartRole, part: ImagePart): string {
  return `${part.sha256}.${role === 'disk' && record.kind === 'disk' ? record.format : role}`;
}

/** Where a part's file is (or would be) materialised in `dir`. */
export function imageFilePath(dir: string, record: ImageRecord, role: ImagePartRole, part: ImagePart): string {
  return join(dir, fileName(record, role, part));
}

/** `work`, or the caller's signal's reason if it fires first (the work goes on for whoever else waits on it). */
function until<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return work;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

export class BlobImageSource implements ImageSource {
  readonly #opts: BlobImageSourceOptions;
  readonly #checked = new Map<string, Checked>();
  readonly #files = new Map<string, Promise<MaterialiseSource>>();
  readonly #fetches = new Map<string, Promise<void>>();
  readonly #stopping = new AbortController();

  private constructor(opts: BlobImageSourceOptions) {
    this.#opts = opts;
  }

  /** Creates the directory (0700) and removes temporary files a crash left behind. */
  static async open(opts: BlobImageSourceOptions): Promise<BlobImageSource> {
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(opts.dir)) {
      if (name.startsWith('.') && name.includes(TEMP_MARK)) await rm(join(opts.dir, name), { force: true });
    }
    return new BlobImageSource(opts);
  }

  stop(): void {
    this.#stopping.abort(new DwcpError('stopped', 'the daemon is stopping'));
  }

  async materialise(name: string, options: { signal?: AbortSignal } = {}): Promise<GuestImage> {
    const started = performance.now();
    try {
      if (this.#stopping.signal.aborted) throw this.#stopping.signal.reason as Error;
      const record = await until(this.#opts.catalog.resolve(name), options.signal);
      const parts = imageParts(record);
      const sources = await until(Promise.all(parts.map(([role, part]) => this.#file(record, role, part))), options.signal);
      const source: MaterialiseSource = sources.includes('fetched') ? 'fetched' : sources.includes('store') ? 'store' : 'file';
      this.#opts.metrics.materialisations.inc({ result: 'ok' });
      this.#opts.metrics.materialiseSeconds.observe({ source }, (performance.now() - started) / 1000);
      const path = (role: ImagePartRole, part: ImagePart) => imageFilePath(this.#opts.dir, record, role, part);
      if (record.kind === 'disk') return { kind: 'disk', name, sha256: record.sha256, path: path('disk', record.disk), format: record.format };
      return { kind: 'kernel', name, sha256: record.sha256, kernel: path('kernel', record.kernel), initrd: path('initrd', record.initrd), cmdline: record.cmdline };
    } catch (err) {
      const code = err instanceof DwcpError ? err.code : 'internal';
      const result: MaterialiseResult = code === 'not_found' || code === 'corrupt' || code === 'unavailable' ? code : 'failed';
      this.#opts.metrics.materialisations.inc({ result });
      throw err;
    }
  }

  /** One part's file, checked; shared by every caller that wants it at the same time. Says where its bytes came from. */
  #file(record: ImageRecord, role: ImagePartRole, part: ImagePart): Promise<MaterialiseSource> {
    const path = imageFilePath(this.#opts.dir, record, role, part);
    let running = this.#files.get(path);
    if (running === undefined) {
      running = this.#produce(record, role, part, path).finally(() => this.#files.delete(path));
      this.#files.set(path, running);
    }
    return running;
  }

  async #produce(record: ImageRecord, role: ImagePartRole, part: ImagePart, path: string): Promise<MaterialiseSource> {
    if (await this.#stillGood(record, role, part, path)) return 'file';
    const fetched = await this.#ensureBlob(record, role, part);
    await this.#write(record, role, part, path);
    return fetched ? 'fetched' : 'store';
  }

  /** Whether the file is here and holds the part's bytes; a file that does not is removed. */
  async #stillGood(record: ImageRecord, role: ImagePartRole, part: ImagePart, path: string): Promise<boolean> {
    let info;
    try {
      // lstat: a symbolic link put in place of a file is not the file (it fails the check and is removed).
      info = await lstat(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    const seen = this.#checked.get(path);
    if (seen !== undefined && seen.ino === info.ino && seen.size === info.size && seen.mtimeMs === info.mtimeMs && seen.ctimeMs === info.ctimeMs) return true;
    const actual = info.isFile() && info.size === part.size ? await this.#hashFile(path) : null;
    if (actual === part.sha256) {
      // Read-only once materialised: a mode someone widened (the bytes checked out) is narrowed again.
      if ((info.mode & 0o222) !== 0) await chmod(path, 0o444);
      const now = await lstat(path);
      this.#checked.set(path, { ino: now.ino, size: now.size, mtimeMs: now.mtimeMs, ctimeMs: now.ctimeMs });
      return true;
    }
    this.#checked.delete(path);
    this.#opts.log.warn(
      { image: record.name, role, path, expected: part.sha256, actual, size: info.size, expectedSize: part.size },
      'materialised image file does not match its hash; removed, writing it again from the blob store',
    );
    this.#opts.metrics.filesRebuilt.inc();
    await rm(path, { force: true });
    return false;
  }

  async #hashFile(path: string): Promise<string> {
    const hash = createHash('sha256');
    const fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      const buf = Buffer.allocUnsafe(HASH_READ_BYTES);
      for (let at = 0; ; ) {
        this.#stopping.signal.throwIfAborted();
        const { bytesRead } = await fh.read(buf, 0, buf.byteLength, at);
        if (bytesRead === 0) break;
        hash.update(buf.subarray(0, bytesRead));
        at += bytesRead;
      }
    } finally {
      await fh.close();
    }
    return hash.digest('hex');
  }

  /** Makes this node's blob store hold the part, fetching it from a holder if need be; true if it was fetched. Shared per blob. */
  async #ensureBlob(record: ImageRecord, role: ImagePartRole, part: ImagePart): Promise<boolean> {
    const { catalog } = this.#opts;
    if (catalog.holdsPart(record.name, role, part)) return false;
    const key = imageBlobKey(record.name, role, part.sha256);
    let running = this.#fetches.get(key);
    if (running === undefined) {
      running = this.#fetchPart(record, role, part, key).finally(() => this.#fetches.delete(key));
      this.#fetches.set(key, running);
    }
    await running;
    return true;
  }

  async #fetchPart(record: ImageRecord, role: ImagePartRole, part: ImagePart, key: string): Promise<void> {
    const { catalog, log } = this.#opts;
    const holders = await catalog.holdersOf(record);
    const { ask, skipped } = holderOrder([...holders, record.addedBy], catalog.node, this.#opts.members());
    const reasons = [...skipped];
    for (const holder of ask) {
      const started = performance.now();
      try {
        const out = await this.#opts.fetch.fetch(holder, key, part.blob, { signal: this.#stopping.signal, arrived: () => catalog.holdsPart(record.name, role, part) });
        if (!catalog.holdsPart(record.name, role, part)) throw new DwcpError('unavailable', `${holder.name}: answered, but the ${role} is not in this node's store at version ${part.blob.slice(0, 16)}`);
        log.info({ image: record.name, role, holder: holder.name, kind: out.kind, size: part.size, wireBytes: out.wireBytes, seconds: (performance.now() - started) / 1000 }, 'image part fetched');
        // Every part here now: this node is a holder the others may ask.
        if (imageParts(record).every(([r, p]) => catalog.holdsPart(record.name, r, p))) await catalog.announce(record);
        return;
      } catch (err) {
        if (this.#stopping.signal.aborted) throw err;
        log.warn({ image: record.name, role, holder: holder.name, err: errorText(err) }, 'image part not fetched from this holder; asking the next');
        reasons.push(errorText(err));
      }
    }
    const why = reasons.length === 0 ? 'no other node is known to hold it' : reasons.join('; ');
    throw new DwcpError('unavailable', `image ${record.name}: this node does not hold its ${role} and no holder sent it (${why})`);
  }

  /** Writes the part from the blob store to a temporary file, checks it, and renames it into place. */
  async #write(record: ImageRecord, role: ImagePartRole, part: ImagePart, path: string): Promise<void> {
    const { dir, noSync } = this.#opts;
    const key = imageBlobKey(record.name, role, part.sha256);
    const manifest = this.#opts.store.manifest(part.blob, key);
    if (manifest === undefined) throw new DwcpError('unavailable', `image ${record.name}: its ${role} left this node's blob store before it was written out (removed meanwhile?); ask again`);
    const free = await statfs(dir);
    const room = free.bavail * free.bsize;
    if (room < part.size + SPARE_BYTES) {
      throw new DwcpError('exhausted', `image ${record.name}: its ${role} needs ${part.size} bytes in ${dir}, which has ${room} free (keeping ${SPARE_BYTES} spare)`);
    }
    const temp = join(dir, `.${fileName(record, role, part)}${TEMP_MARK}${randomBytes(6).toString('hex')}`);
    const fh = await open(temp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
    let kept = false;
    try {
      const hash = createHash('sha256');
      let size = 0;
      // The file's own SHA-256 is the check: the chunks' hashes would only hash the same bytes twice.
      for await (const bytes of this.#opts.store.readValue(manifest, { verify: false })) {
        this.#stopping.signal.throwIfAborted();
        hash.update(bytes);
        await writeAll(fh, bytes);
        size += bytes.byteLength;
      }
      const actual = hash.digest('hex');
      if (actual !== part.sha256 || size !== part.size) {
        // Damage in this node's store, or a record that does not describe the blob: the chunk hashes tell which.
        try {
          for await (const _ of this.#opts.store.readValue(manifest)) this.#stopping.signal.throwIfAborted();
        } catch (err) {
          if (err instanceof DwcpError && err.code === 'corrupt') throw new DwcpError('corrupt', `image ${record.name}: its ${role} is damaged in this node's blob store: ${err.message}; the file was not kept`);
          throw err;
        }
        throw new DwcpError(
          'corrupt',
          `image ${record.name}: its ${role} reads back as ${size} bytes hashing to ${actual.slice(0, 16)}…, the catalog recorded ${part.size} bytes hashing to ${part.sha256.slice(0, 16)}…; the file was not kept`,
        );
      }
      await fh.chmod(0o444);
      if (noSync !== true) await fh.sync();
      await fh.close();
      await rename(temp, path);
      kept = true;
      if (noSync !== true) await syncDir(dir);
      const info = await stat(path);
      this.#checked.set(path, { ino: info.ino, size: info.size, mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs });
      this.#opts.log.info({ image: record.name, role, path, size }, 'image file materialised');
    } finally {
      if (!kept) {
        await fh.close().catch(() => {});
        await rm(temp, { force: true });
      }
    }
  }
}

/** fs writes to a regular file may be short in principle; loop until all is written. */
async function writeAll(fh: FileHandle, bytes: Uint8Array): Promise<void> {
  for (let at = 0; at < bytes.byteLength; ) {
    const { bytesWritten } = await fh.write(bytes, at, bytes.byteLength - at);
    at += bytesWritten;
  }
}

/** Makes a rename in `dir` durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
