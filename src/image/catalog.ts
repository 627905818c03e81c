/**
 * ImageCatalog: the federation's guest images by name. `add` stores an
 * operator's file (a disk, or a kernel and initrd) in this node's blob store
 * and binds the name to it in the federation log; `resolve` and `list` read
 * the bindings back; `remove` unbinds a name; holder records in the geo store
 * say which nodes hold each image's blobs (record.ts says why two stores).
 *
 * Invariants:
 * - A name is bound by compare-and-swap at consistency strong in the
 *   federation scope: the first add of a name wins and every later one is
 *   refused (or, with `replace`, wins only over the revision it read), so a
 *   name resolves to the same image on every node, single-node or federated.
 * - Nothing is bound before its bytes are stored and checked: each file is
 *   read once, judged from its header (format.ts) before its bytes are
 *   chunked, hashed whole (SHA-256) in the same pass, and stored under a key
 *   named by that hash. A file that changes while it is read is refused.
 *   An add that fails after storing drops the parts it stored, unless the
 *   name's bound image uses the same bytes.
 * - Records from either store are parsed with their zod schemas on the way in
 *   (record.ts): a malformed image record is `corrupt` naming the image; a
 *   malformed holder record is skipped with a warning (a hint only).
 * - Holder records are hints: a fetch from a stale one is refused by the
 *   holder (it checks the version) and the next holder is asked.
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { open } from 'node:fs/promises';
import type { Logger } from '../log.ts';
import type { BlobService } from '../blob/service.ts';
import type { TransferProgress } from '../blob/progress.ts';
import { DwcpError } from '../errors.ts';
import type { KvRouter } from '../kv/router.ts';
import type { KvReadLevel } from '../kv/consistency.ts';
import { checkInitrd, checkKernel, HEADER_BYTES, judgeDisk, type DiskFormat, type DiskVerdict } from './format.ts';
import {
  checkCmdline,
  checkImageName,
  encodeHolderRecord,
  encodeImageRecord,
  IMAGE_HOLDER_PREFIX,
  IMAGE_RECORD_PREFIX,
  imageBlobKey,
  imageBlobPrefix,
  imageHolderKey,
  imageParts,
  imageRecordKey,
  kernelPairSha256,
  parseHolderRecord,
  parseImageRecord,
  type HolderRecord,
  type ImagePart,
  type ImagePartRole,
  type ImageRecord,
} from './record.ts';

export type AddImageRequest =
  | { kind: 'disk'; name: string; path: string; format?: DiskFormat; replace?: boolean }
  | { kind: 'kernel'; name: string; kernel: string; initrd: string; cmdline?: string; replace?: boolean };

export interface AddOptions {
  signal?: AbortSignal;
  /** Each part's ingest as it starts (disk; or kernel, then initrd). */
  onPart?: (role: ImagePartRole, progress: TransferProgress) => void;
}

export interface ImageCatalogOptions {
  /** This node's member name: who adds, who holds. */
  node: string;
  /** The federation log (records) and the geo store (holders). */
  kv: Pick<KvRouter, 'read' | 'write'>;
  blob: Pick<BlobService, 'put' | 'remove' | 'store'>;
  /** Deadline of each log or geo-store call. */
  timeoutMs: number;
  log: Logger;
  now?: () => Date;
}

/** A record with the log revision it was read at (the compare-and-swap of a replace names it). */
export interface BoundImage {
  record: ImageRecord;
  revision: number;
}

/** Levels at which a failed strong read is retried on this node's replica: the leader is away, not the record. */
const FALLBACK_CODES = new Set(['unavailable', 'no_leader', 'no_quorum', 'timeout', 'dropped']);

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The first bytes of a file the daemon is about to ingest, opened as the store will open it (no symlinks, regular files only). */
async function readHeader(path: string, field: string): Promise<{ header: Uint8Array; size: number }> {
  let fh;
  try {
    fh = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied (the daemon cannot read it)' : e.code === 'ELOOP' ? 'is a symbolic link' : e.message;
    throw new DwcpError(e.code === 'ENOENT' ? 'not_found' : 'invalid', `${field} ${path}: ${why}`, { details: { field } });
  }
  try {
    const info = await fh.stat();
    if (!info.isFile()) throw new DwcpError('invalid', `${field} ${path}: not a regular file`, { details: { field } });
    const header = Buffer.alloc(Math.min(HEADER_BYTES, info.size));
    let got = 0;
    while (got < header.byteLength) {
      const { bytesRead } = await fh.read(header, got, header.byteLength - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return { header: header.subarray(0, got), size: info.size };
  } finally {
    await fh.close();
  }
}

export class ImageCatalog {
  readonly #opts: ImageCatalogOptions;
  readonly #now: () => Date;

  constructor(opts: ImageCatalogOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? (() => new Date());
  }

  get node(): string {
    return this.#opts.node;
  }

  // ------------------------------------------------------------------ names

  /** Stores the request's files and binds the name; refused before any byte is stored if the name is taken (without replace) or a file is not what it should be. */
  async add(req: AddImageRequest, opts: AddOptions = {}): Promise<ImageRecord> {
    const name = checkImageName(req.name);
    const cmdline = req.kind === 'kernel' ? checkCmdline(req.cmdline ?? '') : '';
    const existing = await this.find(name, 'strong');
    if (existing !== undefined && req.replace !== true) {
      const r = existing.record;
      throw new DwcpError('rejected', `image ${name} already exists (${r.kind}, sha256 ${r.sha256.slice(0, 16)}, added by ${r.addedBy} at ${r.addedAt}); remove it first or pass --replace`, {
        details: { field: 'name' },
      });
    }
    // Judge every file before storing any, so a bad initrd does not cost a stored kernel.
    let record: ImageRecord;
    const stored: [ImagePartRole, ImagePart][] = [];
    const common = { name, addedBy: this.#opts.node, addedAt: this.#now().toISOString() };
    try {
      if (req.kind === 'disk') {
        const head = await readHeader(req.path, 'file');
        const verdict: DiskVerdict = judgeDisk(req.path, head.header, head.size, req.format);
        const disk = await this.#ingest(name, 'disk', req.path, head.header, opts);
        stored.push(['disk', disk]);
        // A raw disk is what the guest sees: its size as stored, not as it was when its header was judged.
        const virtualSize = verdict.format === 'raw' ? disk.size : verdict.virtualSize;
        record = { kind: 'disk', ...common, sha256: disk.sha256, size: disk.size, format: verdict.format, virtualSize, disk };
      } else {
        const kernelHead = await readHeader(req.kernel, 'kernel');
        checkKernel(req.kernel, kernelHead.header);
        const initrdHead = await readHeader(req.initrd, 'initrd');
        checkInitrd(req.initrd, initrdHead.header);
        const kernel = await this.#ingest(name, 'kernel', req.kernel, kernelHead.header, opts);
        stored.push(['kernel', kernel]);
        const initrd = await this.#ingest(name, 'initrd', req.initrd, initrdHead.header, opts);
        stored.push(['initrd', initrd]);
        record = { kind: 'kernel', ...common, sha256: kernelPairSha256(kernel.sha256, initrd.sha256), size: kernel.size + initrd.size, cmdline, kernel, initrd };
      }
      await this.#bind(record, existing?.revision ?? 0);
    } catch (err) {
      await this.#dropUnbound(name, stored);
      throw err;
    }
    this.#opts.log.info({ image: name, kind: record.kind, sha256: record.sha256, size: record.size, replaced: existing?.record.sha256 ?? null }, 'image added');
    await this.announce(record);
    if (existing !== undefined) await this.#pruneLocal(name, record);
    return record;
  }

  /** The image a name is bound to, or undefined; `strong` sees every bind acknowledged before it, `serializable` is this node's replica. */
  async find(name: string, level: Extract<KvReadLevel, 'strong' | 'serializable'>): Promise<BoundImage | undefined> {
    const answer = await this.#opts.kv.read({ key: imageRecordKey(name), prefix: false, limit: 0, level, scope: 'federation', timeoutMs: this.#opts.timeoutMs });
    if (answer.keyspace !== 'log') throw new DwcpError('internal', 'an image record was read outside the federation log');
    const entry = answer.entries[0];
    return entry === undefined ? undefined : { record: parseImageRecord(name, entry.value), revision: entry.revision };
  }

  /**
   * The image `name` is bound to, as the provider needs it: strong, and when
   * no leader answers, this node's replica (a binding only changes by an
   * explicit remove or replace, and a VM on a cut-off region should still
   * start from an image it already has). Unknown names are `not_found`.
   */
  async resolve(name: string): Promise<ImageRecord> {
    checkImageName(name);
    let bound: BoundImage | undefined;
    try {
      bound = await this.find(name, 'strong');
    } catch (err) {
      if (!(err instanceof DwcpError) || !FALLBACK_CODES.has(err.code)) throw err;
      this.#opts.log.warn({ image: name, err: err.message }, "image record not confirmed by the federation log's leader; using this node's replica");
      bound = await this.find(name, 'serializable');
    }
    if (bound === undefined) throw new DwcpError('not_found', `image ${name} is not in the catalog (dwcpctl image list shows what is; dwcpctl image add stores one)`);
    return bound.record;
  }

  /**
   * Every bound image, by name, read at consistency strong; a record that
   * does not parse is left out and reported in `invalid` (one bad record must
   * not hide the others).
   */
  async list(): Promise<{ records: ImageRecord[]; invalid: { name: string; reason: string }[] }> {
    const answer = await this.#opts.kv.read({ key: IMAGE_RECORD_PREFIX, prefix: true, limit: 0, level: 'strong', scope: 'federation', timeoutMs: this.#opts.timeoutMs });
    if (answer.keyspace !== 'log') throw new DwcpError('internal', 'image records were read outside the federation log');
    if (answer.more) throw new DwcpError('too_large', `more image records than one read of the federation log returns (${answer.entries.length}); listing them needs paging, which the catalog does not do yet`);
    const records: ImageRecord[] = [];
    const invalid: { name: string; reason: string }[] = [];
    for (const e of answer.entries) {
      const name = e.key.slice(IMAGE_RECORD_PREFIX.length);
      try {
        records.push(parseImageRecord(name, e.value));
      } catch (err) {
        invalid.push({ name, reason: errorText(err) });
      }
    }
    return { records, invalid };
  }

  /** Unbinds a name, forgets every holder of it and drops this node's copy; materialised files stay (guests may use them). */
  async remove(name: string): Promise<ImageRecord> {
    checkImageName(name);
    const bound = await this.find(name, 'strong');
    if (bound === undefined) throw new DwcpError('not_found', `image ${name} is not in the catalog`);
    await this.#write({ op: 'delete', key: imageRecordKey(name) }, 'strong');
    for (const node of (await this.holders()).get(name)?.keys() ?? []) {
      await this.#write({ op: 'delete', key: imageHolderKey(name, node) }, 'local').catch((err: unknown) =>
        this.#opts.log.warn({ image: name, node, err: errorText(err) }, 'holder record of a removed image not deleted'),
      );
    }
    await this.#pruneLocal(name, undefined);
    this.#opts.log.info({ image: name, sha256: bound.record.sha256 }, 'image removed');
    return bound.record;
  }

  // ------------------------------------------------------------------ holders

  /** Every holder record this node's geo replica has, by image name, then node. */
  async holders(): Promise<Map<string, Map<string, HolderRecord>>> {
    const answer = await this.#opts.kv.read({ key: IMAGE_HOLDER_PREFIX, prefix: true, limit: 0, level: 'local', scope: null, timeoutMs: this.#opts.timeoutMs });
    if (answer.keyspace !== 'geo') throw new DwcpError('internal', 'holder records were read outside the geo store');
    const out = new Map<string, Map<string, HolderRecord>>();
    for (const item of answer.items) {
      const rest = item.key.slice(IMAGE_HOLDER_PREFIX.length);
      const slash = rest.lastIndexOf('/');
      const record = parseHolderRecord(item.value);
      if (slash <= 0 || record === null) {
        this.#opts.log.warn({ key: item.key }, 'holder record skipped: not a valid holder record');
        continue;
      }
      const name = rest.slice(0, slash);
      let byNode = out.get(name);
      if (byNode === undefined) out.set(name, (byNode = new Map()));
      byNode.set(rest.slice(slash + 1), record);
    }
    return out;
  }

  /** The nodes that say they hold `record`'s bytes (its sha256, not an earlier image of the name), this one included if it does. */
  async holdersOf(record: ImageRecord): Promise<string[]> {
    const byNode = (await this.holders()).get(record.name) ?? new Map<string, HolderRecord>();
    return [...byNode].filter(([, h]) => h.sha256 === record.sha256).map(([node]) => node);
  }

  /** Says, in the geo store, that this node holds `record`'s blobs. A failure is logged: the add or fetch it follows stands. */
  async announce(record: ImageRecord): Promise<void> {
    const value = encodeHolderRecord({ sha256: record.sha256, since: this.#now().toISOString() });
    await this.#write({ op: 'put', key: imageHolderKey(record.name, this.#opts.node), value }, 'local').catch((err: unknown) =>
      this.#opts.log.warn({ image: record.name, err: errorText(err) }, 'holder record not written; other nodes will not ask this one for the image until it is'),
    );
  }

  /** Whether this node's blob store holds the part's bytes (at the recorded version). */
  holdsPart(name: string, role: ImagePartRole, part: ImagePart): boolean {
    return this.#opts.blob.store.current(imageBlobKey(name, role, part.sha256))?.version === part.blob;
  }

  holdsImage(record: ImageRecord): boolean {
    return imageParts(record).every(([role, part]) => this.holdsPart(record.name, role, part));
  }

  // ------------------------------------------------------------------ internals

  /**
   * One file into the blob store: its bytes read once, the first of them
   * compared with the header that was judged (a file swapped or rewritten
   * since is refused), SHA-256 over all of them, stored under the key that
   * hash names.
   */
  async #ingest(name: string, role: ImagePartRole, path: string, judged: Uint8Array, opts: AddOptions): Promise<ImagePart> {
    const digest = createHash('sha256');
    let sha256 = '';
    let offset = 0;
    const changed = () => new DwcpError('invalid', `${role} ${path}: changed while it was being added; add it again once nothing writes to it`, { details: { field: role } });
    const out = await this.#opts.blob.put(
      path,
      () => {
        sha256 = digest.digest('hex');
        return imageBlobKey(name, role, sha256);
      },
      {
        ...(opts.signal ? { signal: opts.signal } : {}),
        onPhase: (_phase, progress) => opts.onPart?.(role, progress),
        onRead: (bytes) => {
          if (offset < judged.byteLength && Buffer.compare(bytes.subarray(0, judged.byteLength - offset), judged.subarray(offset, offset + bytes.byteLength)) !== 0) throw changed();
          offset += bytes.byteLength;
          digest.update(bytes);
        },
      },
    );
    if (out.stored.size < judged.byteLength) {
      await this.#opts.blob.remove(out.stored.key);
      throw changed();
    }
    return { sha256, size: out.stored.size, blob: out.stored.version };
  }

  async #bind(record: ImageRecord, expectedRevision: number): Promise<void> {
    const answer = await this.#write({ op: 'cas', key: imageRecordKey(record.name), expectedRevision, value: encodeImageRecord(record) }, 'strong');
    if (answer.ok) return;
    if (answer.reason === 'cas_mismatch') {
      throw new DwcpError('rejected', `image ${record.name} was bound or changed by another add or remove while this one stored its files; nothing was bound (list it, then add again)`, {
        details: { field: 'name' },
      });
    }
    throw new DwcpError('exhausted', `the federation log refused image ${record.name}: ${answer.reason}`);
  }

  /** Drops parts an add stored but did not bind, unless the name's bound image uses the same bytes. */
  async #dropUnbound(name: string, stored: readonly [ImagePartRole, ImagePart][]): Promise<void> {
    if (stored.length === 0) return;
    const bound = await this.find(name, 'serializable').catch(() => undefined);
    const keep = new Set(bound === undefined ? [] : imageParts(bound.record).map(([role, part]) => imageBlobKey(name, role, part.sha256)));
    for (const [role, part] of stored) {
      const key = imageBlobKey(name, role, part.sha256);
      if (!keep.has(key)) await this.#opts.blob.remove(key).catch((err: unknown) => this.#opts.log.warn({ blobKey: key, err: errorText(err) }, 'unbound image part not removed'));
    }
  }

  /** Drops this node's blobs of `name` that `keep` (the name's image now, if any) does not use. */
  async #pruneLocal(name: string, keep: ImageRecord | undefined): Promise<void> {
    const wanted = new Set(keep === undefined ? [] : imageParts(keep).map(([role, part]) => imageBlobKey(name, role, part.sha256)));
    // Names have no "/", so the prefix of image "a" is no other image's.
    const prefix = imageBlobPrefix(name);
    for (const v of this.#opts.blob.store.list()) if (v.key.startsWith(prefix) && !wanted.has(v.key)) await this.#opts.blob.remove(v.key);
  }

  async #write(op: Parameters<KvRouter['write']>[0]['op'], level: 'strong' | 'local') {
    const answer = await this.#opts.kv.write({ op, level, scope: level === 'strong' ? 'federation' : null, clientId: '', seq: 0, ttlMs: 0, timeoutMs: this.#opts.timeoutMs });
    if (answer.keyspace === 'geo') return { ok: true as const };
    const { result } = answer;
    if (result.ok) return { ok: true as const };
    if (result.reason === 'cas_mismatch') return { ok: false as const, reason: 'cas_mismatch' as const };
    return { ok: false as const, reason: result.reason };
  }
}
