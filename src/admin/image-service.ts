/**
 * The admin socket's Image service (image.proto) over the image catalog and
 * this node's image source: Add streams ingest progress and ends with the
 * image; List, Show, Pull and Remove are unary.
 *
 * Invariants:
 * - Add reads files by path with the daemon's privileges, as Blob.Put does
 *   (docs/blob.md: the socket is the daemon user's alone, paths must be
 *   absolute, symbolic links and non-files are refused); a request that
 *   mixes a disk with a kernel pair, or leaves a needed field out, is
 *   refused naming the field before anything is read.
 * - What an image looks like here is one function (imageInfo) for every
 *   call: the record, which parts this node's store holds and which files
 *   are materialised, and the holders the geo store names.
 * - Failures are DwcpErrors and travel as status.ts maps their codes.
 */
import { access } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { ImageCatalog, AddImageRequest } from '../image/catalog.ts';
import { DISK_FORMATS, type DiskFormat } from '../image/format.ts';
import { imageParts, type HolderRecord, type ImageRecord } from '../image/record.ts';
import { imageFilePath } from '../image/source.ts';
import type { ImageSource } from '../cloud/qemu/image-source.ts';
import { asyncStreaming, asyncUnary, requireTimeout, send } from './call.ts';
import { progressReporter } from './blob-service.ts';
import { IMAGE_SERVICE, loadAdminPackage, type ImageAddRequest, type ImageInfo } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';

/** A pull of a large image over a slow link takes minutes; 10 unless the request says. */
const PULL_TIMEOUT_MS = 10 * 60_000;

export interface ImageAdminOptions {
  catalog: ImageCatalog;
  source: ImageSource;
  /** Where materialised files are (<dataDir>/qemu/images). */
  dir: string;
  log: Logger;
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

function invalid(field: string, problem: string): DwcpError {
  return new DwcpError('invalid', `${field}: ${problem}`, { details: { field } });
}

function absolute(field: string, path: string): string {
  if (!isAbsolute(path)) throw invalid(field, `${JSON.stringify(path)} is not an absolute path`);
  return path;
}

/** The wire request as the catalog's: a disk (path) or a kernel pair (kernel + initrd), never both. */
export function addRequestFromWire(r: ImageAddRequest): AddImageRequest {
  if (r.name === '') throw invalid('name', 'required');
  const disk = r.path !== '';
  const pair = r.kernel !== '' || r.initrd !== '';
  if (disk && pair) throw invalid('path', 'give a disk image or a kernel and initrd, not both');
  if (!disk && !pair) throw invalid('path', 'required (a disk image), or a kernel and an initrd');
  if (disk) {
    if (r.cmdline !== '') throw invalid('cmdline', 'applies to a kernel and initrd, not a disk image');
    const format = DISK_FORMATS.find((f) => f === r.format);
    if (r.format !== '' && format === undefined) throw invalid('format', `${JSON.stringify(r.format)} is not one of ${DISK_FORMATS.join(', ')}`);
    return { kind: 'disk', name: r.name, path: absolute('path', r.path), ...(format === undefined ? {} : { format: format satisfies DiskFormat }), replace: r.replace };
  }
  if (r.format !== '') throw invalid('format', 'applies to a disk image, not a kernel and initrd');
  if (r.kernel === '') throw invalid('kernel', 'required with an initrd');
  if (r.initrd === '') throw invalid('initrd', 'required with a kernel');
  return { kind: 'kernel', name: r.name, kernel: absolute('kernel', r.kernel), initrd: absolute('initrd', r.initrd), cmdline: r.cmdline, replace: r.replace };
}

export function imageServiceRegistration(opts: ImageAdminOptions): AdminServiceRegistration {
  const { catalog, source, dir, log } = opts;

  const info = async (record: ImageRecord, holders: ReadonlyMap<string, HolderRecord> | undefined): Promise<ImageInfo> => ({
    name: record.name,
    kind: record.kind,
    format: record.kind === 'disk' ? record.format : '',
    sha256: record.sha256,
    size: record.size,
    virtual_size: record.kind === 'disk' ? record.virtualSize : 0,
    cmdline: record.kind === 'kernel' ? record.cmdline : '',
    added_by: record.addedBy,
    added_at: record.addedAt,
    parts: await Promise.all(
      imageParts(record).map(async ([role, part]) => {
        const path = imageFilePath(dir, record, role, part);
        return { role, sha256: part.sha256, size: part.size, blob_version: part.blob, local: catalog.holdsPart(record.name, role, part), path: (await exists(path)) ? path : null };
      }),
    ),
    holders: [...(holders ?? [])]
      .filter(([, h]) => h.sha256 === record.sha256)
      .map(([node]) => node)
      .sort(),
  });

  const described = async (record: ImageRecord) => info(record, (await catalog.holders()).get(record.name));

  const add = async (call: grpc.ServerWritableStream<ImageAddRequest, unknown>): Promise<void> => {
    const request = addRequestFromWire(call.request);
    const cancelled = new AbortController();
    call.on('cancelled', () => cancelled.abort(new DwcpError('cancelled', 'the client cancelled the add')));
    const progress = progressReporter(call);
    try {
      const record = await catalog.add(request, { signal: cancelled.signal, onPart: (role, p) => progress.phase(role, p) });
      progress.flush();
      await send(call, { image: await described(record) });
      call.end();
    } finally {
      progress.stop();
    }
  };

  const unary = <Req, Res>(method: string, fn: (request: Req) => Promise<Res>) => asyncUnary<Req, Res>(log, method, fn);
  type Ref = { name: string; timeout_ms: number };
  const named = (r: Ref): string => {
    if (r.name === '') throw invalid('name', 'required');
    return r.name;
  };

  return {
    name: IMAGE_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Add: asyncStreaming<ImageAddRequest>(log, 'Add', add),
      List: unary('List', async () => {
        const [{ records, invalid }, holders] = await Promise.all([catalog.list(), catalog.holders()]);
        return { images: await Promise.all(records.map((r) => info(r, holders.get(r.name)))), problems: invalid.map((i) => i.reason) };
      }),
      Show: unary('Show', async (r: Ref) => {
        const name = named(r);
        const bound = await catalog.find(name, 'strong');
        if (bound === undefined) throw new DwcpError('not_found', `image ${name} is not in the catalog`);
        return described(bound.record);
      }),
      Pull: unary('Pull', async (r: Ref) => {
        const name = named(r);
        const started = performance.now();
        const timeoutMs = requireTimeout(r.timeout_ms, PULL_TIMEOUT_MS);
        const late = new AbortController();
        const timer = setTimeout(() => late.abort(new DwcpError('timeout', `image ${name} not materialised within ${timeoutMs} ms; the work goes on here, pull again to wait for it`)), timeoutMs);
        try {
          await source.materialise(name, { signal: late.signal });
        } finally {
          clearTimeout(timer);
        }
        const bound = await catalog.find(name, 'serializable');
        if (bound === undefined) throw new DwcpError('not_found', `image ${name} was removed while it was pulled`);
        return { image: await described(bound.record), seconds: (performance.now() - started) / 1000 };
      }),
      Remove: unary('Remove', async (r: Ref) => info(await catalog.remove(named(r)), undefined)),
    },
  };
}
