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
 * - A flush goes to the socket as few writes as it can: pieces under
 *   COALESCE_BELOW_BYTES (length prefixes, tags, small messages) are copied
 *   together, large ciphertexts are written where they lie. A 1-byte ping is
 *   one write, not four.
 * - The length prefix is read without throwing (the library's decoder throws
 *   a RangeError, stack trace and all, whenever a chunk ends on a message
 *   boundary) and ciphertext is decrypted from the chunks it arrived in.
 *
 * Invariants:
 * - Bytes leave in the order they were sent. Nothing is held past the end of
 *   the current turn (setImmediate), and a batch reaching MAX_PLAINTEXT_BYTES
 *   is sealed at once, so a batch is bounded in both time and size. Sent
 *   arrays are referenced, not copied, until sealed: senders must not reuse
 *   them within the turn (FramedStream copies every frame, so its users
 *   never can).
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

/** Largest Noise message, ciphertext and tag (the 2-byte length's range). */
export const MAX_NOISE_MESSAGE_BYTES = 65_535;
export const TAG_BYTES = 16;
/** Largest plaintext one Noise message carries. */
export const MAX_PLAINTEXT_BYTES = MAX_NOISE_MESSAGE_BYTES - TAG_BYTES;
/** Output pieces below this size are copied together into one socket write. */
export const COALESCE_BELOW_BYTES = 4096;
const LENGTH_BYTES = 2;

/** Both directions of a channel's cipher states, as the Noise handshake returns them. */
export interface NoiseCipher {
  encrypt(plaintext: Uint8Array | Uint8ArrayList): Uint8Array | Uint8ArrayList;
  decrypt(ciphertext: Uint8Array | Uint8ArrayList): Uint8Array | Uint8ArrayList;
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

/**
 * Collects output arrays for the socket: large ones as they are, runs of
 * small ones copied into a single array, so small pieces cost no write each.
 */
class WriteGather {
  readonly out: Uint8Array[] = [];
  #small: Uint8Array[] = [];
  #smallBytes = 0;

  add(piece: Uint8Array | Uint8ArrayList): void {
    if (!(piece instanceof Uint8Array)) {
      for (const part of piece) this.add(part);
      return;
    }
    if (piece.byteLength >= COALESCE_BELOW_BYTES) {
      this.#endRun();
      this.out.push(piece);
    } else {
      this.#small.push(piece);
      this.#smallBytes += piece.byteLength;
    }
  }

  finish(): Uint8Array[] {
    this.#endRun();
    return this.out;
  }

  #endRun(): void {
    if (this.#small.length === 1 && this.#small[0] !== undefined) this.out.push(this.#small[0]);
    else if (this.#small.length > 1) this.out.push(Buffer.concat(this.#small, this.#smallBytes));
    this.#small = [];
    this.#smallBytes = 0;
  }
}

function lengthPrefix(length: number): Uint8Array {
  return Uint8Array.of(length >>> 8, length & 0xff);
}

export class NoiseTransportStream extends AbstractMessageStream {
  readonly #raw: MessageStream;
  readonly #cipher: NoiseCipher;
  readonly #decoder = new NoiseMessageDecoder();
  readonly #batch = new Uint8ArrayList();
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

  /** Seals the batch into Noise messages and hands them to the raw connection as one send; false when it asks for a drain. */
  #flush(): boolean {
    if (this.#scheduled !== undefined) {
      clearImmediate(this.#scheduled);
      this.#scheduled = undefined;
    }
    const total = this.#batch.byteLength;
    if (total === 0) return !this.#raw.writableNeedsDrain;
    const gather = new WriteGather();
    for (let start = 0; start < total; start += MAX_PLAINTEXT_BYTES) {
      const sealed = this.#cipher.encrypt(this.#batch.sublist(start, Math.min(start + MAX_PLAINTEXT_BYTES, total)));
      gather.add(lengthPrefix(sealed.byteLength));
      gather.add(sealed);
    }
    this.#batch.consume(total);
    return this.#raw.send(new Uint8ArrayList(...gather.finish()));
  }

  #drop(): void {
    if (this.#scheduled !== undefined) clearImmediate(this.#scheduled);
    this.#scheduled = undefined;
    this.#batch.consume(this.#batch.byteLength);
  }

  readonly #onMessage = (evt: StreamMessageEvent): void => {
    const plaintext = new Uint8ArrayList();
    try {
      for (const message of this.#decoder.push(evt.data)) plaintext.append(this.#cipher.decrypt(message));
    } catch (err) {
      // Nothing of a chunk that failed is delivered: the connection is done.
      this.abort(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (plaintext.byteLength > 0) this.onData(plaintext);
  };
}
