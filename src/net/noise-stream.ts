/**
 * The transport phase of a Noise channel: the encrypted byte stream between
 * two members, once the handshake (src/net/noise-channel.ts) has produced its
 * cipher states. On the wire each Noise message is a 2-byte big-endian length
 * and that many bytes of ChaCha20-Poly1305 ciphertext and tag, as libp2p's
 * Noise spec and `@chainsafe/libp2p-noise` have it; message boundaries carry
 * no meaning, the plaintext is one byte stream to the muxer above.
 *
 * What it does differently from the library's own stream, and why:
 * - Everything sent within one event-loop turn is sealed together, up to a
 *   full Noise message: yamux hands over each frame as its own send (a data
 *   frame, and a window update for every data frame it receives), and sealing
 *   each alone cost one AEAD operation and two to four socket writes apiece.
 * - A flush is one array and one socket write per 256 KiB of wire: the
 *   batch's plaintext is copied once into an array laid out as the wire has
 *   it (length prefix, plaintext, room for the tag, next message) and sealed
 *   there in place (noise-crypto.ts's sealInPlace). Before, each message cost
 *   a ciphertext array, a tag array and a copy to gather the small pieces.
 * - Those arrays are reused once the socket has written them
 *   (wire-arrays.ts), so a bulk sender allocates no buffer per flush: a
 *   fresh array per flush, held while the socket's queue backed up, was what
 *   put a sending daemon into 10-25 mark-compacts per 512 MiB.
 * - Received messages are opened in place: a message that lies within one
 *   chunk from the socket is decrypted where it lies and its plaintext handed
 *   up as a view of that chunk, so only a message cut across two chunks costs
 *   a copy (its own contiguous array, then opened in place too). Buffer volume,
 *   not the cipher, is what made this path expensive: V8 runs a full
 *   collection per ~64 MB of arrays allocated.
 * - The length prefix is read without throwing (the library's decoder throws
 *   a RangeError, stack trace and all, whenever a chunk ends on a message
 *   boundary).
 *
 * Invariants:
 * - Bytes leave in the order they were sent. Nothing is held past the end of
 *   the current turn (setImmediate), and a batch reaching MAX_PLAINTEXT_BYTES
 *   is sealed at once, so a batch is bounded in both time and size. Sent
 *   arrays are referenced, not copied, until sealed: senders must not reuse
 *   them within the turn (FramedStream sends fresh encodings; see its write()).
 * - Received chunks are this stream's to overwrite (opening in place): the
 *   raw connection hands each socket read over once and keeps no reference.
 * - Back-pressure is the raw connection's: a send reports "wait for drain"
 *   whenever the raw connection did.
 * - A message that fails to authenticate, or a length below the tag's 16
 *   bytes, aborts the connection: no plaintext from it is delivered.
 * - Nonces and keys stay in the handshake's cipher states (the library's
 *   code, which refuses to wrap the nonce); this module only frames.
 */
import type { AbortOptions, MessageStream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';
import { AbstractMessageStream, type SendResult } from '@libp2p/utils';
import { Uint8ArrayList } from 'uint8arraylist';
import { sealInPlace, TAG_BYTES } from './noise-crypto.ts';
import { WireArrays } from './wire-arrays.ts';

/** Largest Noise message, ciphertext and tag (the 2-byte length's range). */
export const MAX_NOISE_MESSAGE_BYTES = 65_535;
const LENGTH_BYTES = 2;
/** Largest plaintext one Noise message carries. */
export const MAX_PLAINTEXT_BYTES = MAX_NOISE_MESSAGE_BYTES - TAG_BYTES;
/**
 * Plaintext of each Noise message this stream seals: 16 KiB on the wire, so
 * that most messages lie within one 64 KiB socket read and are opened where
 * they lie. Full 64 KiB messages straddled two reads nearly every time and
 * each cost a contiguous copy; a message costs only ~0.6 µs of fixed AEAD
 * work. Peers may still send up to MAX_NOISE_MESSAGE_BYTES.
 */
const SEAL_PLAINTEXT_BYTES = 16_384 - LENGTH_BYTES - TAG_BYTES;

/** Both directions of a channel's cipher states, as the Noise handshake returns them. */
export interface NoiseCipher {
  encrypt(plaintext: Uint8Array | Uint8ArrayList): Uint8Array | Uint8ArrayList;
  /** Opens into `dst` when given (which may be the ciphertext itself: in place). */
  decrypt(ciphertext: Uint8Array | Uint8ArrayList, dst?: Uint8Array): Uint8Array | Uint8ArrayList;
}

export class NoiseMessageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NoiseMessageError';
  }
}

/** Pure incremental splitter of length-prefixed Noise messages; never holds more than one message and a prefix. */
export class NoiseMessageDecoder {
  readonly #buffer = new Uint8ArrayList();

  /** The complete messages `chunk` finishes, in order; they may share memory with the chunks. */
  push(chunk: Uint8Array | Uint8ArrayList): Uint8ArrayList[] {
    this.#buffer.append(chunk);
    const messages: Uint8ArrayList[] = [];
    while (this.#buffer.byteLength >= LENGTH_BYTES) {
      const length = (this.#buffer.get(0) << 8) | this.#buffer.get(1);
      if (length < TAG_BYTES) throw new NoiseMessageError(`Noise message of ${length} bytes is shorter than its ${TAG_BYTES}-byte tag`);
      const end = LENGTH_BYTES + length;
      if (this.#buffer.byteLength < end) break;
      messages.push(this.#buffer.sublist(LENGTH_BYTES, end));
      this.#buffer.consume(end);
    }
    return messages;
  }
}

/** Wire bytes of a `total`-byte plaintext sealed into Noise messages of SEAL_PLAINTEXT_BYTES: prefixes and tags included. */
function wireSize(total: number): number {
  const messages = Math.ceil(total / SEAL_PLAINTEXT_BYTES);
  return total + messages * (LENGTH_BYTES + TAG_BYTES);
}

/**
 * Plaintext sealed into one wire array and sent as one socket write: 16
 * whole Noise messages, so the array is exactly WIRE_ARRAY_BYTES (256 KiB).
 * A larger flush (yamux hands over a data frame as large as the send window,
 * up to 4 MiB, as one send) goes as several arrays, so every flush fits
 * arrays that are reused once written (wire-arrays.ts). A batch is still
 * flushed once it holds MAX_PLAINTEXT_BYTES, so a batch of small sends plus
 * the one that crossed that line fits one array: letting batches grow to a
 * whole array cost 1 KiB messages ~8 % more CPU per MiB (bench/RESULTS.md,
 * transport), and 4-message arrays cut a 64 KiB batch into two writes.
 */
const ARRAY_MESSAGES = 16;
const ARRAY_PLAINTEXT_BYTES = ARRAY_MESSAGES * SEAL_PLAINTEXT_BYTES;
const WIRE_ARRAY_BYTES = wireSize(ARRAY_PLAINTEXT_BYTES);

export class NoiseTransportStream extends AbstractMessageStream {
  readonly #raw: MessageStream;
  readonly #cipher: NoiseCipher;
  readonly #decoder = new NoiseMessageDecoder();
  readonly #batch = new Uint8ArrayList();
  /** Where flushes are sealed: arrays the socket has written are reused (wire-arrays.ts). */
  readonly #arrays: WireArrays;
  #scheduled: NodeJS.Immediate | undefined;
  /** Set once the raw connection is closing: from then on every send is sealed and sent at once. */
  #direct = false;

  constructor(raw: MessageStream, cipher: NoiseCipher) {
    super({
      log: raw.log,
      inactivityTimeout: raw.inactivityTimeout,
      maxReadBufferLength: raw.maxReadBufferLength,
      direction: raw.direction,
    });
    this.#raw = raw;
    this.#cipher = cipher;
    this.#arrays = new WireArrays(raw, WIRE_ARRAY_BYTES);
    raw.addEventListener('message', this.#onMessage);
    raw.addEventListener('drain', () => this.safeDispatchEvent('drain'));
    raw.addEventListener('remoteCloseWrite', () => this.onRemoteCloseWrite());
    raw.addEventListener('close', (evt: StreamCloseEvent) => {
      this.#drop();
      if (evt.error === undefined) this.onTransportClosed();
      else if (evt.local === true) this.abort(evt.error);
      else this.onRemoteReset();
    });
  }

  /** Seals what is batched now and every later send at once; for the raw connection's graceful close. */
  flushAndStopBatching(): void {
    this.#direct = true;
    this.#flush();
  }

  sendData(data: Uint8ArrayList): SendResult {
    this.#batch.append(data);
    const sentBytes = data.byteLength;
    if (this.#direct || this.#batch.byteLength >= MAX_PLAINTEXT_BYTES) return { sentBytes, canSendMore: this.#flush() };
    this.#scheduled ??= setImmediate(this.#onTurnEnd);
    return { sentBytes, canSendMore: true };
  }

  sendReset(err: Error): void {
    this.#drop();
    this.#raw.abort(err);
  }

  sendPause(): void {
    this.#raw.pause();
  }

  sendResume(): void {
    this.#raw.resume();
  }

  async close(options?: AbortOptions): Promise<void> {
    this.flushAndStopBatching();
    await this.#raw.close(options);
  }

  readonly #onTurnEnd = (): void => {
    this.#scheduled = undefined;
    try {
      // Remembered so that the muxer's next send learns the raw connection is full and waits for its drain.
      if (!this.#flush()) this.writableNeedsDrain = true;
    } catch (err) {
      this.abort(err instanceof Error ? err : new Error(String(err)));
    }
  };

  /**
   * Seals the batch into Noise messages and hands them to the raw connection,
   * one send per ARRAY_PLAINTEXT_BYTES (one wire array); false when it asks
   * for a drain.
   */
  #flush(): boolean {
    if (this.#scheduled !== undefined) {
      clearImmediate(this.#scheduled);
      this.#scheduled = undefined;
    }
    let canSendMore = !this.#raw.writableNeedsDrain;
    // Every array of the batch is sent, drain or not: the batch must leave in this call (a send past a "wait for
    // drain" is queued by the raw connection, as one large send was before).
    while (this.#batch.byteLength > 0) canSendMore = this.#sendArray(Math.min(this.#batch.byteLength, ARRAY_PLAINTEXT_BYTES));
    return canSendMore;
  }

  /** Seals the batch's next `total` bytes into one wire array and sends it. */
  #sendArray(total: number): boolean {
    const wire = wireSize(total);
    const array = this.#arrays.take(wire);
    const out = array.byteLength === wire ? array : array.subarray(0, wire);
    const parts = this.#batch[Symbol.iterator]();
    let part: Uint8Array | undefined;
    let partAt = 0;
    let at = 0;
    for (let start = 0; start < total; start += SEAL_PLAINTEXT_BYTES) {
      const length = Math.min(SEAL_PLAINTEXT_BYTES, total - start);
      out[at] = (length + TAG_BYTES) >>> 8;
      out[at + 1] = (length + TAG_BYTES) & 0xff;
      const body = at + LENGTH_BYTES;
      // Copy the next `length` bytes of the batch behind the prefix, then seal them where they are.
      for (let filled = 0; filled < length; ) {
        if (part === undefined || partAt === part.byteLength) {
          part = parts.next().value;
          partAt = 0;
          if (part === undefined) throw new Error('Noise stream: the batch is shorter than its byteLength');
          continue;
        }
        const take = Math.min(part.byteLength - partAt, length - filled);
        out.set(part.subarray(partAt, partAt + take), body + filled);
        partAt += take;
        filled += take;
      }
      sealInPlace(out.subarray(body, body + length), (plaintext) => this.#cipher.encrypt(plaintext));
      at = body + length + TAG_BYTES;
    }
    this.#batch.consume(total);
    const canSendMore = this.#raw.send(out);
    this.#arrays.sent(array);
    return canSendMore;
  }

  #drop(): void {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    this.#batch.consume(this.#batch.byteLength);
    this.#arrays.forget();
  }

  readonly #onMessage = (evt: StreamMessageEvent): void => {
    const plaintext = new Uint8ArrayList();
    try {
      for (const message of this.#decoder.push(evt.data)) {
        // subarray(): the chunk itself when the message lies in one (no copy), else a contiguous copy.
        const sealed = message.subarray();
        plaintext.append(this.#cipher.decrypt(sealed, sealed));
      }
    } catch (err) {
      // Nothing of a chunk that failed is delivered: the connection is done.
      this.abort(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (plaintext.byteLength > 0) this.onData(plaintext);
  };
}
