/**
 * The Image admin service (image.proto) as the admin client exposes it: the
 * `.image` sub-client, with the .proto's snake_case types. As for the Blob
 * sub-client, Add streams and has no overall deadline (`timeoutMs` bounds
 * the wait between two messages); Pull carries its own timeout, which the
 * call's deadline leaves the daemon room to report.
 */
import { num, progressFromWire, type BlobClientTransport, type Num, type WireOf } from './blob-client.ts';
import { serverStream } from './server-stream.ts';
import type { BlobProgress, ImageAddRequest, ImageInfo, ImageListResponse, ImagePartInfo, ImagePullResponse } from './schema.ts';

export interface ImageClient {
  add(request: ImageAddRequest, onProgress?: (p: BlobProgress) => void): Promise<ImageInfo>;
  list(): Promise<ImageListResponse>;
  show(name: string): Promise<ImageInfo>;
  /** Materialises the image on the daemon's node; `timeoutMs` 0: the daemon's default. */
  pull(name: string, timeoutMs: number): Promise<ImagePullResponse>;
  remove(name: string): Promise<ImageInfo>;
}

type WireImage = Omit<WireOf<ImageInfo>, 'parts'> & { parts: WireOf<ImagePartInfo>[] };

export function imageFromWire(i: WireImage): ImageInfo {
  return {
    name: i.name,
    kind: i.kind,
    format: i.format,
    sha256: i.sha256,
    size: num(i.size),
    virtual_size: num(i.virtual_size),
    cmdline: i.cmdline,
    added_by: i.added_by,
    added_at: i.added_at,
    parts: i.parts.map((p) => ({ role: p.role, sha256: p.sha256, size: num(p.size), blob_version: p.blob_version, local: p.local, path: p.path ?? null })),
    holders: i.holders,
  };
}

/** The default Pull timeout the daemon applies, plus room; the client's own deadline when the request names none. */
const PULL_DEFAULT_MS = 10 * 60_000;

export function imageClient(t: BlobClientTransport): ImageClient {
  return {
    async add(request, onProgress) {
      let image: ImageInfo | null = null;
      type Event = { event: 'progress'; progress: WireOf<BlobProgress> } | { event: 'image'; image: WireImage };
      await serverStream<Event>(t, 'Add', request, (e) => {
        if (e.event === 'progress') onProgress?.(progressFromWire(e.progress));
        else image = imageFromWire(e.image);
      });
      if (image === null) throw new Error('Add: the daemon ended the call without the image');
      return image;
    },
    list: async () => {
      const r = await t.unary<object, { images: WireImage[]; problems: string[] }>('List', {});
      return { images: r.images.map(imageFromWire), problems: r.problems };
    },
    show: async (name) => imageFromWire(await t.unary<object, WireImage>('Show', { name })),
    pull: async (name, timeoutMs) => {
      const r = await t.unary<object, { image: WireImage; seconds: Num }>('Pull', { name, timeout_ms: timeoutMs }, timeoutMs === 0 ? PULL_DEFAULT_MS : timeoutMs);
      return { image: imageFromWire(r.image), seconds: num(r.seconds) };
    },
    remove: async (name) => imageFromWire(await t.unary<object, WireImage>('Remove', { name })),
  };
}
