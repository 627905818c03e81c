/**
 * Checks received chunks against their SHA-256 names on a worker thread, so
 * a receiving daemon's event loop decrypts, parses and writes the next batch
 * while this one is hashed. On a loopback bulk transfer the receiver was the
 * busier daemon, and SHA-256 of every 4 KiB chunk (node's one-shot hash costs
 * ~3 µs per call on top of the hashing) was an eighth of its event loop.
 *
 * Invariants:
 * - Nothing is declared verified that was not hashed: `verify` resolves only
 *   with chunks whose bytes hash to their names, as views of the bytes the
 *   worker hashed (a copy the caller's later reuse of `bytes` cannot touch);
 *   the first mismatch rejects with BlobStoreError `corrupt`, naming the
 *   chunk (chunkMismatch), as StagedValue.writeVerified does.
 * - Results come back in call order (one worker, FIFO), and a worker that
 *   fails or exits rejects everything pending; later calls hash on the event
 *   loop instead, so a broken worker costs speed, never a transfer.
 * - The copy each batch travels in is taken from, and returned to, a small
 *   pool (`release`), so a steady transfer allocates no buffer per batch:
 *   fresh 1 MiB buffers in flight outlive young-generation collections and
 *   cost a mark-compact every few dozen MiB (see the sender's read buffers).
 * - The worker never keeps the process alive (unref); it ends, and the pool
 *   is dropped, after IDLE_MS with nothing to verify (the next batch starts
 *   a new one) and at `close`: a running worker and its pool hold ~29 MiB of
 *   RSS (measured; ~17 MiB of it any node worker's own), which an idle daemon
 *   should not.
 */
import { Worker } from 'node:worker_threads';
import type { Uint8ArrayList } from 'uint8arraylist';
import { chunkMismatch, type HashedChunk } from './store.ts';
import { checksumMismatch } from '../codec/frame.ts';
import { checkBatch, VERIFIER_WORKER_MARK, type Verdict, type VerifyAnswer, type VerifyRequest } from './chunk-verifier-worker.ts';

/** With nothing to verify for this long, the worker ends and the pool is dropped: an idle daemon holds neither. */
const IDLE_MS = 30_000;

/** A batch that is a whole codec frame (codec none): where its chunks start, and the checksum its header declares. */
export interface BatchFrame {
  chunksAt: number;
  checksum: number;
}

/** Verified chunks, views of `buffer`, which goes back to the pool with `release` once they are written. */
export interface VerifiedBatch {
  chunks: HashedChunk[];
  buffer: ArrayBuffer;
}

export class ChunkVerifier {
  #worker: Worker | undefined;
  #broken = false;
  #next = 0;
  readonly #waiting = new Map<number, { resolve: (a: VerifyAnswer) => void; reject: (err: Error) => void }>();
  readonly #pool: ArrayBuffer[] = [];
  /** Batch copies kept for reuse: a stream's batches in flight. */
  readonly #poolBuffers: number;

  constructor(poolBuffers = 8) {
    this.#poolBuffers = poolBuffers;
  }
  #idle: NodeJS.Timeout | undefined;

  /**
   * The chunks `refs` (consecutive, in order) of `bytes`, once each hashes to
   * its name: views of a copy, which the caller hands back with `release`
   * once it no longer needs them (after their pack write). With `frame`,
   * `bytes` is a whole codec frame whose payload is the chunks (codec none):
   * its checksum is checked first, and a mismatch rejects with the
   * CodecError `bad-checksum` that decompressing it would have raised.
   * `bytes` may be the parts a frame arrived in: they are copied straight
   * into the copy, which is the one copy a received batch costs.
   */
  verify(bytes: Uint8Array | Uint8ArrayList, refs: readonly { hash: string; length: number }[], frame?: BatchFrame): Promise<VerifiedBatch> {
    const total = bytes.byteLength;
    const buffer = this.#take(total);
    const copy = new Uint8Array(buffer, 0, total);
    if (bytes instanceof Uint8Array) copy.set(bytes);
    else {
      let at = 0;
      for (const part of bytes) {
        copy.set(part, at);
        at += part.byteLength;
      }
    }
    // Not an async function itself: nothing that waits holds on to `bytes`, which the caller's frame should die young with.
    return this.#check(buffer, total, refs, frame);
  }

  async #check(buffer: ArrayBuffer, total: number, refs: readonly { hash: string; length: number }[], frame: BatchFrame | undefined): Promise<VerifiedBatch> {
    const lengths = Uint32Array.from(refs, (r) => r.length);
    const hashes = refs.map((r) => r.hash).join('');
    const chunksAt = frame?.chunksAt ?? 0;
    let answer: Verdict & { buffer: ArrayBuffer };
    const worker = this.#ensureWorker();
    if (worker === undefined) answer = { buffer, ...checkBatch(new Uint8Array(buffer, 0, total), chunksAt, lengths, hashes, frame?.checksum) };
    else {
      const id = this.#next++;
      const asked = new Promise<VerifyAnswer>((resolve, reject) => this.#waiting.set(id, { resolve, reject }));
      const req: VerifyRequest = { id, buffer, total, chunksAt, lengths, hashes, ...(frame === undefined ? {} : { checksum: frame.checksum }) };
      worker.postMessage(req, [buffer]);
      answer = await asked;
    }
    if (answer.checksum !== null || answer.bad >= 0) {
      this.release(answer.buffer);
      if (answer.checksum !== null) throw checksumMismatch(answer.checksum, frame?.checksum ?? 0);
      const ref = refs[answer.bad] as { hash: string; length: number };
      throw chunkMismatch(ref.hash, ref.length, answer.actual);
    }
    const chunks: HashedChunk[] = [];
    let at = chunksAt;
    for (const r of refs) {
      chunks.push({ hash: r.hash, bytes: new Uint8Array(answer.buffer, at, r.length) });
      at += r.length;
    }
    return { chunks, buffer: answer.buffer };
  }

  /** Whether a worker thread is checking batches now (false before the first, after IDLE_MS idle, and once it failed). */
  get threaded(): boolean {
    return this.#worker !== undefined;
  }

  /** Hands a copy back for reuse; nothing may refer to its chunks any more. */
  release(buffer: ArrayBuffer): void {
    if (this.#pool.length < this.#poolBuffers) {
      this.#pool.push(buffer);
      return;
    }
    // Full: keep the larger, so a few small last batches cannot crowd out the buffers full batches need.
    let smallest = 0;
    for (let i = 1; i < this.#pool.length; i++) if ((this.#pool[i] as ArrayBuffer).byteLength < (this.#pool[smallest] as ArrayBuffer).byteLength) smallest = i;
    if ((this.#pool[smallest] as ArrayBuffer).byteLength < buffer.byteLength) this.#pool[smallest] = buffer;
  }

  close(): void {
    this.#broken = true;
    this.#stopWorker();
    this.#failAll(new Error('the chunk verifier was closed'));
  }

  #armIdle(): void {
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => {
      if (this.#waiting.size > 0) return;
      this.#stopWorker();
      this.#pool.length = 0;
    }, IDLE_MS);
    this.#idle.unref();
  }

  /** Ends the worker on purpose: its exit is then no failure. */
  #stopWorker(): void {
    clearTimeout(this.#idle);
    const worker = this.#worker;
    this.#worker = undefined;
    worker?.removeAllListeners();
    void worker?.terminate();
  }

  /** A pooled buffer of at least `bytes`, or a new one (the largest batch sets the size, so it is rarely outgrown). */
  #take(bytes: number): ArrayBuffer {
    const i = this.#pool.findIndex((b) => b.byteLength >= bytes);
    if (i >= 0) return this.#pool.splice(i, 1)[0] as ArrayBuffer;
    return new ArrayBuffer(bytes);
  }

  #ensureWorker(): Worker | undefined {
    if (this.#worker !== undefined || this.#broken) return this.#worker;
    try {
      const worker = new Worker(new URL('./chunk-verifier-worker.ts', import.meta.url), { workerData: VERIFIER_WORKER_MARK });
      worker.unref();
      worker.on('message', (a: VerifyAnswer) => {
        const w = this.#waiting.get(a.id);
        this.#waiting.delete(a.id);
        w?.resolve(a);
        if (this.#waiting.size === 0) this.#armIdle();
      });
      worker.on('error', (err) => this.#giveUp(err));
      worker.on('exit', (code) => this.#giveUp(new Error(`the chunk verifier's worker exited (code ${code})`)));
      this.#worker = worker;
    } catch {
      this.#broken = true;
    }
    return this.#worker;
  }

  #giveUp(err: Error): void {
    this.#worker = undefined;
    this.#broken = true;
    this.#failAll(err);
  }

  #failAll(err: Error): void {
    for (const w of this.#waiting.values()) w.reject(err);
    this.#waiting.clear();
  }
}
