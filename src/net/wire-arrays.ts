/**
 * The arrays a Noise stream seals its flushes into (noise-stream.ts), reused
 * once the TCP socket has written them instead of allocated per flush. A
 * bulk sender flushed one fresh ~64 KiB array per 64 KiB of stream, and V8
 * starts a full mark-compact per ~64 MB of ArrayBuffers allocated whatever
 * their age (bench/RESULTS.md, migrate, "Where the relay's CPU goes"), so
 * these arrays were most of a sending end's garbage; fresh memory also costs
 * page faults on the first write into it.
 *
 * When an array is free: libp2p's TCP connection passes what it is sent to
 * `net.Socket.write` at once, or holds it in its own write buffer until the
 * socket drains; the socket holds an array until libuv has written it (a
 * write the kernel took whole completes within write()). So once both the
 * connection's write buffer and the socket's `writableLength` are empty,
 * every array handed to that connection before has left both and is free.
 * That is checked at each flush; arrays of a connection whose socket is
 * backed up stay in flight until a later flush finds both queues empty.
 *
 * Invariants:
 * - An array is reused only after the connection's write buffer and its
 *   socket's write queue were both seen empty after it was sent; a
 *   connection whose socket cannot be seen (not TCP: an in-memory test
 *   transport) gets fresh arrays, as does a flush larger than a pooled
 *   array, so nothing is ever overwritten while a queue may still hold it.
 * - A closed connection's arrays in flight are forgotten, never reused (a
 *   destroyed socket's queue says nothing about what libuv still holds).
 * - A queue pins at most MAX_PINNED_PER_BYTE times the bytes it holds: a
 *   small flush (a heartbeat, a window update) to a connection whose queues
 *   are not empty gets an array of its own size, not a pooled one, or a
 *   peer that stopped reading would pin 256 KiB per flush until the socket's
 *   high-water mark (16 KiB of wire) asked for a drain.
 * - Bounded: at most FREE_ARRAYS arrays wait for reuse in the process
 *   (2 MiB of the Noise stream's 256 KiB arrays), and a connection tracks at most MAX_IN_FLIGHT; beyond that
 *   arrays are left to the collector as before.
 */
import type { MessageStream } from '@libp2p/interface';

/** Free arrays kept for the whole process, shared by its connections. */
const FREE_ARRAYS = 8;
/** Arrays one connection tracks until its queues are seen empty; older ones are left to the collector. */
const MAX_IN_FLIGHT = 16;
/**
 * Bytes of array a flush may pin in a busy queue per byte it sends: a flush
 * under a quarter of a pooled array, to a connection whose queues are not
 * empty, gets an array of its own size instead.
 */
const MAX_PINNED_PER_BYTE = 4;

/** What of `net.Socket` is read: how many bytes it still holds. */
interface SocketQueue {
  readonly writableLength: number;
  readonly destroyed: boolean;
}

function socketOf(raw: MessageStream): SocketQueue | undefined {
  const socket = (raw as { socket?: Partial<SocketQueue> }).socket;
  if (typeof socket !== 'object' || socket === null) return undefined;
  return typeof socket.writableLength === 'number' && typeof socket.destroyed === 'boolean' ? (socket as SocketQueue) : undefined;
}

/** How flushes got their arrays, process-wide: for tests and diagnostics. */
export interface WireArrayCounts {
  /** A free array was reused. */
  reused: number;
  /** None was free: a pooled array was allocated. */
  fresh: number;
  /** Not poolable (no visible socket, or larger than a pooled array): a one-off array. */
  unpooled: number;
  /** A check found arrays in flight that a queue may still hold, so they were not reclaimed then. */
  held: number;
}

const counts: WireArrayCounts = { reused: 0, fresh: 0, unpooled: 0, held: 0 };

export function wireArrayCounts(): WireArrayCounts {
  return { ...counts };
}

/** Free arrays by size (one size in practice: the Noise stream's largest flush). */
const free = new Map<number, Buffer[]>();

export class WireArrays {
  readonly #raw: MessageStream;
  readonly #socket: SocketQueue | undefined;
  readonly #size: number;
  readonly #free: Buffer[];
  #inFlight: Buffer[] = [];

  /** Arrays of `size` bytes for flushes to `raw`. */
  constructor(raw: MessageStream, size: number) {
    this.#raw = raw;
    this.#socket = socketOf(raw);
    this.#size = size;
    let shared = free.get(size);
    if (shared === undefined) free.set(size, (shared = []));
    this.#free = shared;
  }

  /** An array of at least `bytes` for the next flush: a written one when one is free, else a fresh one. */
  take(bytes: number): Buffer {
    if (this.#socket === undefined || bytes > this.#size) {
      counts.unpooled++;
      return Buffer.allocUnsafe(bytes);
    }
    this.#reclaim();
    // A flush into a busy queue stays there until the socket gets to it, and its view keeps the whole array alive:
    // 50 bytes of heartbeat pinned 256 KiB, 100 such flushes to a stalled peer 25 MiB. So a small flush only gets a
    // pooled array when the queues are empty (it is then almost always written within write() and back at once).
    if (bytes * MAX_PINNED_PER_BYTE < this.#size && !this.#queuesEmpty()) {
      counts.unpooled++;
      return Buffer.allocUnsafe(bytes);
    }
    const array = this.#free.pop();
    if (array !== undefined) {
      counts.reused++;
      return array;
    }
    counts.fresh++;
    return Buffer.allocUnsafeSlow(this.#size);
  }

  /** `array` (from take) has been handed to the connection: reusable once its queues are seen empty. */
  sent(array: Buffer): void {
    if (this.#socket === undefined || array.byteLength !== this.#size || array.byteOffset !== 0) return;
    if (this.#inFlight.length >= MAX_IN_FLIGHT) this.#inFlight.shift();
    this.#inFlight.push(array);
    this.#reclaim();
  }

  /** The connection is closing or closed: what it has in flight is never reused. */
  forget(): void {
    this.#inFlight = [];
  }

  /** Whether neither the connection's write buffer nor a live socket holds anything: every array sent before has left both. */
  #queuesEmpty(): boolean {
    const socket = this.#socket;
    return socket !== undefined && !socket.destroyed && this.#raw.writeBufferLength === 0 && socket.writableLength === 0;
  }

  #reclaim(): void {
    const socket = this.#socket;
    if (this.#inFlight.length === 0 || socket === undefined || socket.destroyed) return;
    if (!this.#queuesEmpty()) {
      counts.held++;
      return;
    }
    for (const array of this.#inFlight) if (this.#free.length < FREE_ARRAYS) this.#free.push(array);
    this.#inFlight = [];
  }
}

