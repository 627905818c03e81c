/**
 * An ImageSource bound after it is handed out: the daemon opens its cloud
 * providers first (a bad pricing file must stop the start before any port is
 * bound), but the image catalog needs the mesh, the blob store and the KV
 * router, which come later. The qemu provider gets this placeholder at open
 * and the catalog is bound to it once the daemon has built it.
 *
 * Invariant: before bind, every materialise fails `unavailable` naming the
 * image (a create that early is retried by its reconciler like any other
 * provider failure); after bind, every call goes to the bound source. Bound
 * at most once.
 */
import { DwcpError } from '../../errors.ts';
import type { GuestImage, ImageSource } from './image-source.ts';

export class LateImageSource implements ImageSource {
  #source: ImageSource | null = null;

  bind(source: ImageSource): void {
    if (this.#source !== null) throw new Error('LateImageSource: already bound');
    this.#source = source;
  }

  materialise(name: string, options?: { signal?: AbortSignal }): Promise<GuestImage> {
    if (this.#source === null) return Promise.reject(new DwcpError('unavailable', `image ${name}: the image catalog is not open yet (the daemon is still starting)`, { retryable: true }));
    return this.#source.materialise(name, options);
  }
}
