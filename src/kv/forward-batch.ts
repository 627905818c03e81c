/**
 * ForwardBatch: what one side of a /dwcp/kv/2.0.0 stream has to send during
 * one event-loop turn (a follower's forwarded requests, or the leader's
 * responses to them), written as few frames as the frame limits allow. Under
 * load many writes are forwarded per turn; each frame costs a Noise
 * encryption, a yamux header and a socket write on both ends, so one frame
 * per turn instead of one per write takes most of that off the path.
 *
 * Invariants: items leave in the order they were pushed, within the turn
 * they were pushed in (a flush runs on setImmediate, after the I/O of the
 * turn); a frame holds at least one and at most `maxItems` items, and no
 * more than `maxBytes` of estimated size unless a single item is larger
 * (the encoder then refuses it, and only it fails). A failed write is
 * reported with the items it carried; later frames are still attempted (the
 * stream fails them too if it is gone).
 */

export interface ForwardBatchOptions<T> {
  /** Writes one frame of `items` (the FramedStream of the link). */
  write(items: T[]): Promise<void>;
  maxItems: number;
  maxBytes: number;
  /** An upper estimate of an item's encoded size. */
  sizeOf(item: T): number;
  /** The frame holding `items` could not be written. */
  failed(err: unknown, items: readonly T[]): void;
}

export class ForwardBatch<T> {
  readonly #opts: ForwardBatchOptions<T>;
  #queued: T[] = [];
  #scheduled = false;

  constructor(opts: ForwardBatchOptions<T>) {
    this.#opts = opts;
  }

  push(item: T): void {
    this.#queued.push(item);
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    const items = this.#queued;
    this.#queued = [];
    const { maxItems, maxBytes, sizeOf } = this.#opts;
    let frame: T[] = [];
    let bytes = 0;
    for (const item of items) {
      const size = sizeOf(item);
      if (frame.length > 0 && (frame.length === maxItems || bytes + size > maxBytes)) {
        this.#send(frame);
        frame = [];
        bytes = 0;
      }
      frame.push(item);
      bytes += size;
    }
    if (frame.length > 0) this.#send(frame);
  }

  #send(frame: T[]): void {
    this.#opts.write(frame).catch((err: unknown) => this.#opts.failed(err, frame));
  }
}
