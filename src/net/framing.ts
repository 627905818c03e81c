/**
 * The one framing layer under every /dwcp/* libp2p protocol: each message is an
 * unsigned-varint length prefix (at most 5 bytes, so at most 2^32-1) followed by
 * that many payload bytes, decoded by a per-message-type MessageSchema.
 *
 * Invariants:
 * - A declared length above the protocol's maxFrameBytes is rejected as soon as
 *   the prefix is complete, before any of the payload is buffered; the decoder
 *   never holds more than maxFrameBytes + 5 bytes between pushes.
 * - A bad frame (oversized, malformed prefix, truncated at end of stream, schema
 *   violation, read deadline passed) is a FrameError: it is counted through
 *   FrameEvents.onReject, the stream is reset, and the error is thrown to the
 *   reader. It never escapes as an unhandled rejection: errors reach only a
 *   caller that is awaiting read().
 * - read() returns undefined (a clean end) only when the remote closed its
 *   writable end (a yamux FIN) at a frame boundary. A stream the remote reset,
 *   or whose connection went away under it (the remote process died, the TCP
 *   connection broke: libp2p then ends the stream without an error, and on a
 *   reset it emits 'end' before the 'close' that carries the error), is a
 *   StreamLostError, whether or not it was inside a frame: the remote never
 *   said it was done, so a reader must not take silence for completion. It is
 *   not the remote's protocol error, so it is not counted as a reject.
 * - Reading is flow-controlled end to end: while decoded frames wait for a
 *   reader, the stream is paused, so the muxer (yamux) stops granting the
 *   remote send window and the remote's write() waits for drain. A write
 *   queues its frame only once the stream's send buffer has drained, so at
 *   most one frame per stream waits in it.
 * - A paused stream still accepts the send window the remote already holds.
 *   Yamux grows that window up to 16 MiB by default while its read buffer
 *   resets the stream above 4 MiB, so a paused bulk stream would be reset:
 *   the host must create its muxer with yamux({ streamOptions:
 *   MUXER_STREAM_OPTIONS }), whose window fits the buffer.
 */
import { Uint8ArrayList } from 'uint8arraylist';
import type { Stream, StreamCloseEvent, StreamMessageEvent } from '@libp2p/interface';
import { DwcpError } from '../errors.ts';
import type { FrameMetrics, FrameRejectReason } from '../metrics/metrics.ts';
import { FRAME_REJECT_REASONS } from '../metrics/metrics.ts';
import type { MessageSchema } from './schema.ts';
import { varintBytes, writeVarint } from './wire-cursor.ts';

/** Longest length prefix: 5 varint bytes carry 35 bits, of which 32 may be used. */
export const MAX_HEADER_BYTES = 5;
/** Largest length a prefix may declare, whatever the protocol's own limit. */
export const MAX_FRAME_LENGTH = 2 ** 32 - 1;

/**
 * Per-stream muxer settings FramedStream relies on: the largest receive window
 * (what a paused stream can still be sent) fits the read buffer (above which
 * the muxer resets the stream). 4 MiB per stream is ~40 MB/s at 100 ms RTT;
 * bulk transfers stripe over several streams.
 */
export const MUXER_STREAM_OPTIONS = {
  maxStreamWindowSize: 4 * 1024 * 1024,
  maxReadBufferLength: 4 * 1024 * 1024,
} as const;

export class FrameError extends Error {
  readonly reason: FrameRejectReason;
  /** The libp2p protocol the frame arrived on; '' when raised outside a stream (e.g. by a schema alone). */
  readonly protocol: string;
  /** The message without the protocol prefix, kept so that a stream can re-label a schema's error. */
  readonly detail: string;

  constructor(reason: FrameRejectReason, detail: string, protocol = '') {
    super(protocol === '' ? detail : `${protocol}: ${detail}`);
    this.name = 'FrameError';
    this.reason = reason;
    this.protocol = protocol;
    this.detail = detail;
  }

  withProtocol(protocol: string): FrameError {
    return this.protocol === protocol ? this : new FrameError(this.reason, this.detail, protocol);
  }
}

/**
 * The stream ended without the remote closing it: reset by the remote, or its
 * connection lost. Retryable: nothing says the remote refused anything, and a
 * new stream (after a reconnect) may well succeed.
 */
export class StreamLostError extends DwcpError<'unavailable'> {
  /** The libp2p protocol of the stream. */
  readonly protocol: string;
  /** Bytes of an unfinished frame that were received and dropped; 0 if the stream was lost between frames. */
  readonly partialBytes: number;

  constructor(protocol: string, detail: string, partialBytes: number, cause?: unknown) {
    const where = partialBytes === 0 ? 'between frames' : `inside a frame, ${partialBytes} bytes of it received and dropped`;
    super('unavailable', `${protocol}: ${detail} (${where})`, { cause });
    this.name = 'StreamLostError';
    this.protocol = protocol;
    this.partialBytes = partialBytes;
  }
}

export interface FrameLimits {
  protocol: string;
  maxFrameBytes: number;
}

function checkLimits({ protocol, maxFrameBytes }: FrameLimits): void {
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < 0 || maxFrameBytes > MAX_FRAME_LENGTH) {
    throw new RangeError(`${protocol}: maxFrameBytes must be an integer from 0 to ${MAX_FRAME_LENGTH}, got ${maxFrameBytes}`);
  }
}

function oversized(length: number, { protocol, maxFrameBytes }: FrameLimits): FrameError {
  return new FrameError('oversized', `frame of ${length} bytes exceeds the ${maxFrameBytes}-byte limit`, protocol);
}

/** The varint length prefix of a `length`-byte payload; throws `oversized` rather than send what the peer must reject. */
export function frameHeader(length: number, maxFrameBytes: number, protocol = ''): Uint8Array {
  const limits = { protocol, maxFrameBytes };
  checkLimits(limits);
  if (length > maxFrameBytes) throw oversized(length, limits);
  const header = new Uint8Array(varintBytes(length));
  writeVarint(header, 0, length);
  return header;
}

/** Prefixes `payload` with its varint length, as one array. */
export function encodeFrame(payload: Uint8Array, maxFrameBytes: number, protocol = ''): Uint8Array {
  const header = frameHeader(payload.byteLength, maxFrameBytes, protocol);
  const frame = new Uint8Array(header.byteLength + payload.byteLength);
  frame.set(header);
  frame.set(payload, header.byteLength);
  return frame;
}

/**
 * Reads the length prefix at the start of `buf`: undefined while incomplete.
 * Arithmetic is done in doubles because a 32-bit length overflows JS bit operators.
 */
function readHeader(buf: Uint8ArrayList, limits: FrameLimits): { headerBytes: number; length: number } | undefined {
  let length = 0;
  for (let i = 0; i < MAX_HEADER_BYTES; i++) {
    if (i >= buf.byteLength) return undefined;
    const byte = buf.get(i);
    length += (byte & 0x7f) * 2 ** (7 * i);
    if (byte < 0x80) {
      if (length > MAX_FRAME_LENGTH) {
        throw new FrameError('malformed', `length prefix declares ${length} bytes, above the ${MAX_FRAME_LENGTH}-byte maximum of a 5-byte varint`, limits.protocol);
      }
      if (length > limits.maxFrameBytes) throw oversized(length, limits);
      return { headerBytes: i + 1, length };
    }
  }
  throw new FrameError('malformed', `length prefix is longer than the ${MAX_HEADER_BYTES}-byte maximum`, limits.protocol);
}

/** Pure (no I/O) incremental decoder; once it has thrown, it keeps throwing the same error. */
export class FrameDecoder {
  readonly #limits: FrameLimits;
  readonly #buffer = new Uint8ArrayList();
  #failure: FrameError | undefined;

  constructor(limits: FrameLimits) {
    checkLimits(limits);
    this.#limits = { ...limits };
  }

  /** Bytes of an incomplete frame held between pushes; at most maxFrameBytes + 5. */
  get bufferedBytes(): number {
    return this.#buffer.byteLength;
  }

  /** Returns every frame `chunk` completes, in order, each as one array; they may share memory with the chunks. */
  push(chunk: Uint8Array | Uint8ArrayList): Uint8Array[] {
    return this.pushLists(chunk).map((frame) => frame.subarray());
  }

  /**
   * Returns every frame `chunk` completes, in order, each as the parts it
   * arrived in: views of the chunks, nothing copied. A frame that spans
   * several chunks (a 64 KiB or larger frame nearly always does) stays a list
   * until whoever reads it decides whether it needs one array.
   */
  pushLists(chunk: Uint8Array | Uint8ArrayList): Uint8ArrayList[] {
    if (this.#failure !== undefined) throw this.#failure;
    this.#buffer.append(chunk);
    const frames: Uint8ArrayList[] = [];
    try {
      for (;;) {
        const header = readHeader(this.#buffer, this.#limits);
        if (header === undefined) break;
        const end = header.headerBytes + header.length;
        if (this.#buffer.byteLength < end) break;
        frames.push(this.#buffer.sublist(header.headerBytes, end));
        this.#buffer.consume(end);
      }
    } catch (err) {
      throw err instanceof FrameError ? this.#fail(err) : err;
    }
    return frames;
  }

  /** The input has ended: throws `truncated` if part of a frame is still buffered. */
  end(): void {
    if (this.#failure !== undefined) throw this.#failure;
    const have = this.#buffer.byteLength;
    if (have === 0) return;
    const header = readHeader(this.#buffer, this.#limits);
    const detail =
      header === undefined
        ? `stream ended inside a length prefix (${have} bytes of it received)`
        : `stream ended inside a frame: ${have - header.headerBytes} of its ${header.length} payload bytes received`;
    throw this.#fail(new FrameError('truncated', detail, this.#limits.protocol));
  }

  #fail(err: FrameError): FrameError {
    this.#failure = err;
    this.#buffer.consume(this.#buffer.byteLength);
    return err;
  }
}

export interface FrameEvents {
  /** Raw bytes received on the stream, prefixes included. */
  onBytesIn?(n: number): void;
  /** Raw bytes handed to the stream, prefixes included. */
  onBytesOut?(n: number): void;
  /** An inbound frame was rejected and its stream reset. */
  onReject?(reason: FrameRejectReason): void;
}

/** FrameEvents that feed the daemon's per-protocol byte and reject counters. */
export function frameEventsFor(metrics: FrameMetrics, protocol: string): FrameEvents {
  // Export zeroes for every reason so rate() works before the first reject.
  for (const reason of FRAME_REJECT_REASONS) metrics.framesRejected.inc({ protocol, reason }, 0);
  return {
    onBytesIn: (n) => metrics.protocolBytesReceived.inc({ protocol }, n),
    onBytesOut: (n) => metrics.protocolBytesSent.inc({ protocol }, n),
    onReject: (reason) => metrics.framesRejected.inc({ protocol, reason }),
  };
}

export interface FramedStreamOptions<In, Out> extends FrameLimits {
  inbound: MessageSchema<In>;
  outbound: MessageSchema<Out>;
  events?: FrameEvents;
}

export interface FrameIoOptions {
  /** Aborting a read with a TimeoutError (AbortSignal.timeout) rejects it as `timeout` and resets the stream. */
  signal?: AbortSignal;
}

function isTimeout(reason: unknown): boolean {
  return reason instanceof Error && reason.name === 'TimeoutError';
}

/**
 * Typed messages over one libp2p stream. One read may be pending at a time;
 * writes may overlap.
 */
export class FramedStream<In, Out> implements AsyncIterable<In> {
  readonly stream: Stream;
  readonly protocol: string;
  readonly #maxFrameBytes: number;
  readonly #inbound: MessageSchema<In>;
  readonly #outbound: MessageSchema<Out>;
  readonly #events: FrameEvents;
  readonly #decoder: FrameDecoder;
  /** Decoded frames no one has read yet, as the parts they arrived in; non-empty only while the stream is paused (plus one chunk's worth). */
  readonly #frames: Uint8ArrayList[] = [];
  #ended = false;
  /** The remote closed its writable end (FIN): the one way input ends cleanly. */
  #remoteClosed = false;
  #failure: Error | undefined;
  #wake: (() => void) | undefined;
  #resuming = false;
  #writes: Promise<void> = Promise.resolve();
  /** Writes in the #writes chain not yet sent or failed; while any is, a new write must queue behind it. */
  #queuedWrites = 0;

  constructor(stream: Stream, opts: FramedStreamOptions<In, Out>) {
    this.stream = stream;
    this.protocol = opts.protocol;
    this.#maxFrameBytes = opts.maxFrameBytes;
    this.#inbound = opts.inbound;
    this.#outbound = opts.outbound;
    this.#events = opts.events ?? {};
    this.#decoder = new FrameDecoder(opts);
    if (stream.status === 'aborted' || stream.status === 'reset') {
      this.#failure = new Error(`${this.protocol}: stream was already ${stream.status}`);
    }
    this.#ended = stream.readableEnded;
    // A stream handed over already half-closed by the remote is taken at its word (streams are wrapped as they open).
    this.#remoteClosed = stream.remoteWriteStatus === 'closed';
    stream.addEventListener('message', this.#onMessage);
    stream.addEventListener('remoteCloseWrite', this.#onRemoteCloseWrite);
    stream.addEventListener('end', this.#onEnd);
    stream.addEventListener('close', this.#onClose);
  }

  /**
   * The next message, or undefined once the remote has closed its end at a
   * frame boundary; a StreamLostError if the stream was reset or its
   * connection lost instead.
   */
  async read(opts: FrameIoOptions = {}): Promise<In | undefined> {
    const frame = await this.#nextFrame(opts.signal);
    if (frame === undefined) return undefined;
    try {
      // A schema that takes the parts gets them (a bulk bytes field then needs no copy into one array); any other gets one array.
      return this.#inbound.decodeList === undefined ? this.#inbound.decode(frame.subarray()) : this.#inbound.decodeList(frame);
    } catch (err) {
      const rejected =
        err instanceof FrameError
          ? err.withProtocol(this.protocol)
          : new FrameError('schema', `${this.#inbound.name}: ${err instanceof Error ? err.message : String(err)}`, this.protocol);
      throw this.#reject(rejected);
    }
  }

  /**
   * Queues `msg` once the stream's send buffer has drained, so at most one
   * frame waits in it. Writes go out in call order, overlapping or not; a
   * rejected write (signal aborted, stream closed) was not queued.
   *
   * The frame is sent from the arrays the outbound schema's encode() (or
   * encodeParts()) returned, not from a copy (a copy per frame cost more than
   * framing itself), so they must not change once written: schemas encode
   * into fresh arrays, and a part that is the caller's own array (a bytes
   * field) is the caller's to leave alone.
   */
  async write(msg: Out, opts: FrameIoOptions = {}): Promise<void> {
    let frame: Uint8ArrayList;
    try {
      const payload = this.#outbound.encodeParts?.(msg) ?? [this.#outbound.encode(msg)];
      const length = payload.reduce((sum, part) => sum + part.byteLength, 0);
      frame = new Uint8ArrayList(frameHeader(length, this.#maxFrameBytes, this.protocol), ...payload);
    } catch (err) {
      throw err instanceof FrameError ? err.withProtocol(this.protocol) : err;
    }
    if (this.#queuedWrites === 0 && !this.stream.writableNeedsDrain) {
      // Nothing queued before it and room in the send buffer: sent now, as the chain would send it, without
      // the chain's microtask hops (a quarter of a small message's round trip). A closed stream throws here.
      this.#send(frame);
      return;
    }
    this.#queuedWrites++;
    const written = this.#writes.then(async () => {
      try {
        await this.#drained(opts.signal);
        this.#send(frame);
      } finally {
        this.#queuedWrites--;
      }
    });
    // The chain only orders writes; each caller sees its own failure through `written`.
    this.#writes = written.catch(() => {});
    await written;
  }

  #send(frame: Uint8ArrayList): void {
    this.stream.send(frame);
    this.#events.onBytesOut?.(frame.byteLength);
  }

  /** Closes the writable end once queued frames are sent; the remote's remaining frames can still be read. */
  async close(opts: FrameIoOptions = {}): Promise<void> {
    // Writes not awaited by their callers are still in the chain (one may wait for a drain): they go first, or the
    // stream would close under them and they would fail with "cannot write" (their bytes never sent).
    await this.#writes;
    await this.stream.close(opts);
  }

  /** Resets the stream; a pending or later read throws `err`. */
  reset(err: Error): void {
    this.#failWith(err);
    this.stream.abort(err);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<In, void, undefined> {
    for (;;) {
      const msg = await this.read();
      if (msg === undefined) return;
      yield msg;
    }
  }

  async #nextFrame(signal: AbortSignal | undefined): Promise<Uint8ArrayList | undefined> {
    for (;;) {
      if (signal?.aborted === true) throw this.#abortedRead(signal);
      if (this.#failure !== undefined) throw this.#failure;
      const frame = this.#frames.shift();
      if (frame !== undefined) {
        if (this.#frames.length === 0) this.#resume();
        return frame;
      }
      if (this.#ended) {
        if (!this.#remoteClosed) {
          // Input ended and the remote never closed its end: the connection went away under the stream.
          this.#failWith(new StreamLostError(this.protocol, 'the connection closed before the remote ended the stream', this.#decoder.bufferedBytes));
          continue;
        }
        try {
          this.#decoder.end();
        } catch (err) {
          throw err instanceof FrameError ? this.#reject(err) : err;
        }
        return undefined;
      }
      // Resuming may deliver buffered data synchronously, so look again before waiting.
      if (this.#resume()) continue;
      await this.#waitForData(signal);
    }
  }

  /**
   * Waits until the stream's send buffer may take more. Not stream.onDrain():
   * in @libp2p/utils 7.4.1 its promise is created once and never renewed, so
   * after the first drain it resolves at once and writes would pile up in the
   * stream's buffer without bound.
   */
  async #drained(signal: AbortSignal | undefined): Promise<void> {
    const stream = this.stream;
    while (stream.writableNeedsDrain) {
      signal?.throwIfAborted();
      if (stream.writeStatus === 'closed') throw new Error(`${this.protocol}: cannot write, the stream is ${stream.status}`);
      await new Promise<void>((resolve, reject) => {
        const settle = (err?: unknown): void => {
          stream.removeEventListener('drain', onDrain);
          stream.removeEventListener('close', onClose);
          signal?.removeEventListener('abort', onAbort);
          if (err === undefined) resolve();
          else reject(err);
        };
        const onDrain = (): void => settle();
        const onClose = (evt: StreamCloseEvent): void => settle(evt.error ?? new Error(`${this.protocol}: stream closed while a write waited for it to drain`));
        const onAbort = (): void => settle(signal?.reason);
        stream.addEventListener('drain', onDrain);
        stream.addEventListener('close', onClose);
        signal?.addEventListener('abort', onAbort);
      });
    }
  }

  /** Resolves on new data, end of input, failure or abort of `signal`; the caller's loop sorts out which. */
  #waitForData(signal: AbortSignal | undefined): Promise<void> {
    if (this.#wake !== undefined) {
      return Promise.reject(new Error(`${this.protocol}: read() called while another read() is pending`));
    }
    return new Promise((resolve) => {
      const wake = (): void => {
        this.#wake = undefined;
        signal?.removeEventListener('abort', wake);
        resolve();
      };
      this.#wake = wake;
      signal?.addEventListener('abort', wake, { once: true });
    });
  }

  /**
   * A timed-out read is a rejected frame (the peer is too slow or silent); any
   * other abort is the caller's own cancellation and leaves the stream as it is.
   */
  #abortedRead(signal: AbortSignal): unknown {
    if (!isTimeout(signal.reason)) return signal.reason;
    return this.#reject(new FrameError('timeout', 'no complete frame arrived before the read deadline', this.protocol));
  }

  #reject(err: FrameError): FrameError {
    if (this.#failure === undefined) {
      this.#failWith(err);
      this.#events.onReject?.(err.reason);
      this.stream.abort(err);
    }
    return err;
  }

  #failWith(err: Error): void {
    if (this.#failure !== undefined) return;
    this.#failure = err;
    this.#frames.length = 0;
    this.#wake?.();
  }

  /** Returns true if the stream was paused, i.e. resuming may have delivered data. */
  #resume(): boolean {
    if (this.stream.readStatus !== 'paused') return false;
    // resume() delivers buffered data and only then tells the muxer to grant
    // window again, which would undo a pause made during that delivery: so
    // pause again only once resume() has returned.
    this.#resuming = true;
    try {
      this.stream.resume();
    } finally {
      this.#resuming = false;
    }
    this.#pauseIfBacklogged();
    return true;
  }

  #pauseIfBacklogged(): void {
    if (this.#frames.length > 0 && this.stream.readStatus === 'readable') this.stream.pause();
  }

  readonly #onMessage = (evt: StreamMessageEvent): void => {
    this.#events.onBytesIn?.(evt.data.byteLength);
    if (this.#failure !== undefined) return;
    let frames: Uint8ArrayList[];
    try {
      frames = this.#decoder.pushLists(evt.data);
    } catch (err) {
      // Only a FrameError is expected; anything else is a bug, and still must not escape into the muxer.
      if (err instanceof FrameError) this.#reject(err);
      else this.reset(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    for (const frame of frames) this.#frames.push(frame);
    if (this.#frames.length > 0) {
      if (!this.#resuming) this.#pauseIfBacklogged();
      this.#wake?.();
    }
  };

  readonly #onRemoteCloseWrite = (): void => {
    this.#remoteClosed = true;
  };

  readonly #onEnd = (): void => {
    this.#ended = true;
    this.#wake?.();
  };

  readonly #onClose = (evt: StreamCloseEvent): void => {
    if (evt.error !== undefined) {
      // Our own abort keeps its reason; the remote's reset is named for what it is, with the protocol.
      this.#failWith(evt.local ? evt.error : new StreamLostError(this.protocol, 'the remote reset the stream', this.#decoder.bufferedBytes, evt.error));
    } else if (this.stream.readBufferLength === 0) {
      // A clean close with nothing left to deliver is the end of input even if 'end' was not seen.
      this.#onEnd();
    }
  };
}
