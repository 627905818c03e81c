/**
 * /dwcp/blob/1.0.0, both ends: `pushValue` sends one stored value to a
 * member, `BlobReceiver` takes values members send. The exchange
 * (proto/blob.proto): on a control stream the sender offers the value's
 * chunk list, encoded against the baseline the sender believes the receiver
 * holds; the receiver answers which chunks it needs; the sender stripes
 * those, several chunks per compressed frame ("batch"), over parallel data
 * streams; each batch is acknowledged once written; Finish → Committed.
 *
 * Invariants:
 * - Nothing a member sends is applied before the whole value checks out:
 *   chunks are verified against their hashes as they arrive and stay pending
 *   in the store; the key changes only at commit, after the chunk list was
 *   found to hash to the offered version. A refused frame, chunk, chunk list
 *   or exchange aborts the transfer (counted by reason) and drops its staging.
 * - Correctness never depends on the baseline: a receiver that does not hold
 *   the offered baseline (or holds it chunked otherwise) answers
 *   baseline_missing and the sender starts over with a full transfer.
 * - A dropped connection is resumed: the sender offers the same transfer id
 *   again (a new attempt) and the receiver, which keeps the staging of an
 *   interrupted transfer for `resumeIdleMs`, leaves out every chunk it
 *   already acknowledged. Only unacknowledged batches are sent again.
 * - Back-pressure end to end: a data stream has at most BLOB_SEND_WINDOW
 *   batches unacknowledged, each FramedStream write waits for the stream to
 *   drain, and a receiver has at most WRITES_IN_FLIGHT batches verified but
 *   not yet written and acknowledged before it reads the next, so memory on
 *   both ends is bounded by streams × window × batch size.
 * - Only a configured, connected member may open a blob stream, checked on
 *   every inbound stream (the gater already refuses strangers' connections).
 * - The codec of each batch follows the link's mode at the moment it is
 *   sent (chooseCodec); compression that would not shrink a batch is undone
 *   (sent as `none`), so a frame never grows the data by more than its header.
 */
import { randomBytes } from 'node:crypto';
import type { Connection, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { MemberConfig } from '../config/schema.ts';
import type { MemberDirectory } from '../federation/members.ts';
import type { LinkMode } from '../federation/link-mode.ts';
import type { Logger } from '../log.ts';
import { chooseCodec, type CodecChoiceOptions, type CodecMeasurements, type LinkEstimate } from '../codec/choice.ts';
import { CodecError, codecById, codecFor, codecLabel, expectRawLength, type Codec, type CodecSpec } from '../codec/codecs.ts';
import type { Uint8ArrayList } from 'uint8arraylist';
import { decompressFrame, FRAME_HEADER_BYTES, frameHeader, readFrameHeader } from '../codec/frame.ts';
import { FrameError, FramedStream, type FrameEvents } from '../net/framing.ts';
import type { StreamDialer } from '../net/host.ts';
import { sameChunking, type ChunkRef, type Manifest } from './manifest.ts';
import { BlobStoreError, checkBlobKey, type BlobStore, type StagedValue } from './store.ts';
import { DwcpError } from '../errors.ts';
import type { BlobMetrics, BlobRejectReason, TransferKind } from './metrics.ts';
import { TransferProgress } from './progress.ts';
import { ChunkVerifier, type BatchFrame } from './chunk-verifier.ts';
import { deadline } from '../deadline.ts';
import {
  BLOB_MANIFEST_PART_BYTES,
  BLOB_MAX_BATCH_RAW_BYTES,
  BLOB_MAX_FRAME_BYTES,
  BLOB_PROTOCOL,
  BlobMessageInSchema,
  BlobMessageOutSchema,
  bitmapBytes,
  decodeManifest,
  encodeManifest,
  ManifestDecodeError,
  setBit,
  hasBit,
  setBits,
  type Accept,
  type BlobMessageIn,
  type BlobMessageOut,
  type BlobRejectCode,
  type Offer,
} from './wire.ts';

/**
 * Unacknowledged batches per data stream: enough that the receiver always has
 * the next batch to verify while earlier ones are being written to its pack
 * (with 3, both daemons sat idle a third of a loopback transfer).
 */
export const BLOB_SEND_WINDOW = 6;
/**
 * Batches a receiver's data stream verifies and writes before acknowledging
 * the oldest: above the sender's window, so an honest sender never waits on
 * it, while a sender that ignores the window cannot make it buffer more.
 */
const WRITES_IN_FLIGHT = BLOB_SEND_WINDOW + 2;
/** Deadlines for a peer that stops answering mid-exchange (the connection itself may look fine). */
const ANSWER_TIMEOUT_MS = 60_000;
/** Batches in flight and none acknowledged for this long: the attempt is stuck; end it and resume. */
const STALL_TIMEOUT_MS = 20_000;
/** A commit fsyncs the value's packs; on a slow disk a large value takes a while. */
const COMMIT_TIMEOUT_MS = 10 * 60_000;
const FIRST_MESSAGE_TIMEOUT_MS = 10_000;
/** Well inside yamux's 120 s stream inactivity limit (docs/wire.md). */
const KEEPALIVE_MS = 30_000;
const RESUME_BACKOFF_MS = 200;
const RESUME_BACKOFF_MAX_MS = 5_000;
/** Streams one connection may open to us for blobs: a few transfers' worth. */
export const BLOB_MAX_INBOUND_STREAMS = 128;

export type BlobChannel = FramedStream<BlobMessageIn, BlobMessageOut>;

export function blobChannel(stream: Stream, events: FrameEvents | undefined): BlobChannel {
  return new FramedStream(stream, { protocol: BLOB_PROTOCOL, maxFrameBytes: BLOB_MAX_FRAME_BYTES, inbound: BlobMessageInSchema, outbound: BlobMessageOutSchema, ...(events ? { events } : {}) });
}

export interface LinkInfo {
  mode: LinkMode;
  rttMs: number | null;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * A transfer failed in a way a new attempt would not fix (or the receiver said
 * so). `reason` is the transfer's own word (a receiver's reject code, or
 * protocol, unreachable); the DwcpError code says only whether to retry.
 */
export class BlobTransferError extends DwcpError<'unavailable' | 'rejected'> {
  readonly reason: string;
  constructor(reason: string, message: string, retryable = false) {
    super(retryable ? 'unavailable' : 'rejected', message);
    this.reason = reason;
  }
}

/** The receiver does not hold the baseline the sender's cache named: start over without one. */
export class BaselineRefusedError extends BlobTransferError {
  constructor(message: string) {
    super('baseline_missing', message);
  }
}

/** What the receiver broke; the sender reports it and gives up. */
class ProtocolError extends Error {}

async function readExpecting<K extends BlobMessageIn['kind']>(ch: BlobChannel, kinds: readonly K[], what: string, timeoutMs: number, signal?: AbortSignal): Promise<Extract<BlobMessageIn, { kind: K }>> {
  const limit = deadline(timeoutMs, signal);
  let msg: BlobMessageIn | undefined;
  try {
    msg = await ch.read({ signal: limit.signal });
  } finally {
    limit.done();
  }
  if (msg === undefined) throw new Error(`${what}: the stream ended`);
  if (!(kinds as readonly string[]).includes(msg.kind)) throw new ProtocolError(`${what}: got ${msg.kind}, expected ${kinds.join(' or ')}`);
  return msg as Extract<BlobMessageIn, { kind: K }>;
}

/** At most `size` holders at once; `drained` resolves when none is held. */
class Window {
  readonly #size: number;
  #held = 0;
  #waiters: (() => void)[] = [];
  #idle: (() => void)[] = [];
  #failure: Error | null = null;
  constructor(size: number) {
    this.#size = size;
  }
  async acquire(): Promise<void> {
    while (this.#held >= this.#size) {
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    if (this.#failure) throw this.#failure;
    this.#held++;
  }
  release(): void {
    this.#held--;
    this.#waiters.shift()?.();
    if (this.#held === 0) for (const f of this.#idle.splice(0)) f();
  }
  async drained(): Promise<void> {
    while (this.#held > 0) {
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => this.#idle.push(resolve));
    }
    if (this.#failure) throw this.#failure;
  }
  fail(err: Error): void {
    this.#failure ??= err;
    for (const f of this.#waiters.splice(0)) f();
    for (const f of this.#idle.splice(0)) f();
  }
}

// ================================================================== sender

export interface PushSettings {
  streams: number;
  batchBytes: number;
  maxResumes: number;
  codecChoice: CodecChoiceOptions;
}

export interface PushRequest {
  host: StreamDialer;
  store: BlobStore;
  member: MemberConfig;
  manifest: Manifest;
  /** The manifest the receiver is believed to hold for this key; undefined: full transfer. */
  baseline: Manifest | undefined;
  settings: PushSettings;
  /** The link's mode and RTT now (asked before every batch, so a mode change applies mid-transfer). */
  link: () => LinkInfo;
  estimate: LinkEstimate;
  codecs: CodecMeasurements;
  metrics: BlobMetrics;
  progress: TransferProgress;
  events?: FrameEvents;
  log: Logger;
  signal?: AbortSignal;
  /** The id to use (a test may pick one); random otherwise. */
  transferId?: string;
  /** Called after each acknowledged batch (progress reporting; tests cut connections from here). */
  onAck?: () => void;
  /** Called when an attempt's offer was accepted, with the resumes so far. */
  onAttempt?: (attempt: number, resumed: number) => void;
}

export interface PushResult {
  transferId: string;
  kind: TransferKind;
  /** Raw chunk bytes the receiver needed (over all attempts, counting resent batches once). */
  neededBytes: number;
  /** Raw bytes of batches sent, resends included. */
  rawBytesSent: number;
  /** Frame bytes on the wire, resends included. */
  wireBytesSent: number;
  /** Bytes of the encoded chunk list sent (all attempts). */
  manifestBytesSent: number;
  /** Value bytes the receiver took from its baseline. */
  reusedBytes: number;
  attempts: number;
  resumed: number;
  /** Raw bytes sent per codec label. */
  codecs: Record<string, number>;
  seconds: number;
  /** Where the time went, summed over attempts: plan (chunk list), offer (until accepted), data (batches), commit (finish to committed). */
  phases: { plan: number; offer: number; data: number; commit: number };
}

interface PlannedBatch {
  /** Ordinal of the first chunk in the need list. */
  first: number;
  refs: ChunkRef[];
  rawBytes: number;
}

function planBatches(manifest: Manifest, need: readonly number[], batchBytes: number): PlannedBatch[] {
  const batches: PlannedBatch[] = [];
  let current: PlannedBatch | null = null;
  for (const [ordinal, index] of need.entries()) {
    const ref = manifest.chunks[index] as ChunkRef;
    if (current === null || current.rawBytes + ref.length > batchBytes) {
      current = { first: ordinal, refs: [], rawBytes: 0 };
      batches.push(current);
    }
    current.refs.push(ref);
    current.rawBytes += ref.length;
  }
  return batches;
}

const NONE: CodecSpec = { name: 'none' };

/**
 * When to stop trying to compress: after two batches in a row that did not
 * shrink, skip compression for 1, then 2, 4 … up to 16 batches before trying
 * again; any batch that shrinks resets it. Encrypted or already compressed
 * values then cost no codec time, and a random stretch inside a compressible
 * image costs one or two wasted attempts, not the rest of the transfer.
 */
export class CompressionSkip {
  #misses = 0;
  #skip = 0;
  #backoff = 1;
  worthTrying(): boolean {
    if (this.#skip === 0) return true;
    this.#skip--;
    return false;
  }
  record(shrank: boolean): void {
    if (shrank) {
      this.#misses = 0;
      this.#backoff = 1;
    } else if (++this.#misses >= 2) {
      this.#skip = this.#backoff;
      this.#backoff = Math.min(16, this.#backoff * 2);
      this.#misses = 0;
    }
  }
}

/** Sends one value to one member; resumes after dropped connections; throws BaselineRefusedError for the caller to retry in full. */
export async function pushValue(req: PushRequest): Promise<PushResult> {
  const started = performance.now();
  const result: PushResult = {
    transferId: req.transferId ?? randomBytes(16).toString('hex'),
    kind: req.baseline === undefined ? 'full' : 'delta',
    neededBytes: 0,
    rawBytesSent: 0,
    wireBytesSent: 0,
    manifestBytesSent: 0,
    reusedBytes: 0,
    attempts: 0,
    resumed: 0,
    codecs: {},
    seconds: 0,
    phases: { plan: 0, offer: 0, data: 0, commit: 0 },
  };
  const { bytes: encoded, reusedBytes } = encodeManifest(req.manifest, req.baseline);
  result.reusedBytes = reusedBytes;
  result.phases.plan = (performance.now() - started) / 1000;
  const release = req.store.pinManifest(req.manifest);
  try {
    for (let attempt = 1; ; attempt++) {
      result.attempts = attempt;
      try {
        await pushAttempt(req, attempt, encoded, result);
        result.seconds = (performance.now() - started) / 1000;
        return result;
      } catch (err) {
        req.signal?.throwIfAborted();
        if (err instanceof BlobTransferError && !err.retryable) throw err;
        if (err instanceof ProtocolError) throw new BlobTransferError('protocol', `${req.member.name}: ${err.message}`);
        if (err instanceof CodecError || err instanceof BlobStoreError) throw err;
        if (attempt > req.settings.maxResumes) {
          throw new BlobTransferError('unreachable', `${req.member.name}: transfer ${result.transferId} failed after ${attempt} attempts: ${errorText(err)}`, true);
        }
        const delay = Math.min(RESUME_BACKOFF_MAX_MS, RESUME_BACKOFF_MS * 2 ** (attempt - 1));
        req.log.info({ member: req.member.name, transferId: result.transferId, attempt, err: errorText(err), retryInMs: delay }, 'blob transfer interrupted; resuming');
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  } finally {
    release();
  }
}

async function pushAttempt(req: PushRequest, attempt: number, encoded: Uint8Array, result: PushResult): Promise<void> {
  const { manifest, baseline, member, host } = req;
  const peer = peerIdFromString(member.peerId);
  const abort = new AbortController();
  const signal = req.signal === undefined ? abort.signal : AbortSignal.any([abort.signal, req.signal]);
  const open = async (): Promise<BlobChannel> => {
    const limit = deadline(ANSWER_TIMEOUT_MS, signal);
    try {
      return blobChannel(await host.dialProtocol(peer, BLOB_PROTOCOL, { signal: limit.signal }), req.events);
    } finally {
      limit.done();
    }
  };
  const control = await open();
  const channels: BlobChannel[] = [control];
  // Liveness whatever stalls (a lost drain, a silent peer): no acknowledgement for STALL_TIMEOUT_MS ends the attempt, and it resumes.
  let lastProgress = performance.now();
  const watchdog = setInterval(() => {
    if (performance.now() - lastProgress <= STALL_TIMEOUT_MS || abort.signal.aborted) return;
    const stuck = channels.map((ch) => `${ch.stream.id}:${ch.stream.status}/${ch.stream.writeStatus}${ch.stream.writableNeedsDrain ? '/needs-drain' : ''}/${ch.stream.readStatus}`);
    req.log.warn({ member: member.name, transferId: result.transferId, attempt, streams: stuck }, 'blob transfer stalled; ending the attempt to resume it');
    abort.abort(new Error(`no acknowledgement from ${member.name} for ${STALL_TIMEOUT_MS / 1000} s`));
  }, 1000);
  const onAck = req.onAck;
  const progressReq: PushRequest = {
    ...req,
    onAck: () => {
      lastProgress = performance.now();
      onAck?.();
    },
  };
  try {
    const offer: Offer = {
      transferId: result.transferId,
      attempt,
      key: manifest.key,
      version: manifest.hash,
      size: manifest.size,
      chunking: manifest.chunking,
      chunkCount: manifest.chunks.length,
      baselineVersion: baseline?.hash ?? '',
      manifestBytes: encoded.byteLength,
    };
    const since = (t: number): number => (performance.now() - t) / 1000;
    const offered = performance.now();
    await control.write({ kind: 'offer', offer }, { signal });
    for (let at = 0; at < encoded.byteLength; at += BLOB_MANIFEST_PART_BYTES) {
      await control.write({ kind: 'manifestPart', manifestPart: { data: encoded.subarray(at, at + BLOB_MANIFEST_PART_BYTES) } }, { signal });
    }
    result.manifestBytesSent += encoded.byteLength;
    const answer = await readExpecting(control, ['accept', 'reject'], `${member.name}: answer to the offer`, ANSWER_TIMEOUT_MS, signal);
    if (answer.kind === 'reject') throw rejection(member, answer.reject.code, answer.reject.message);
    result.phases.offer += since(offered);
    const dataStarted = performance.now();
    const need = checkedNeed(manifest, answer.accept, member);
    if (answer.accept.resumed) {
      result.resumed++;
      req.metrics.resumed.inc({ direction: 'sent' });
    }
    if (attempt === 1) result.neededBytes = answer.accept.needBytes;
    req.onAttempt?.(attempt, result.resumed);
    req.progress.retarget(req.progress.bytesDone + answer.accept.needBytes);
    const queue = planBatches(manifest, need, req.settings.batchBytes);
    const skip = new CompressionSkip();
    const streams = Math.max(1, Math.min(req.settings.streams, queue.length));
    lastProgress = performance.now();
    const sending = Array.from({ length: queue.length === 0 ? 0 : streams }, async () => {
      const ch = await open();
      channels.push(ch);
      await sendBatches(progressReq, ch, queue, { transferId: result.transferId, attempt }, result, skip, signal);
    });
    const keepAlive = setInterval(() => void control.write({ kind: 'keepAlive', keepAlive: {} }, { signal }).catch(() => {}), KEEPALIVE_MS);
    try {
      // One failed stream fails the attempt at once: the others are aborted rather than left to time out.
      await Promise.all(
        sending.map((p) =>
          p.catch((err: unknown) => {
            abort.abort(err);
            throw err;
          }),
        ),
      );
    } finally {
      clearInterval(keepAlive);
      // From here on the commit has its own deadline.
      clearInterval(watchdog);
    }
    result.phases.data += since(dataStarted);
    const finished = performance.now();
    await control.write({ kind: 'finish', finish: {} }, { signal });
    const done = await readExpecting(control, ['committed', 'failed'], `${member.name}: answer to finish`, COMMIT_TIMEOUT_MS, signal);
    if (done.kind === 'failed') throw new BlobTransferError(done.failed.code, `${member.name} did not commit ${manifest.key}: ${done.failed.message}`, done.failed.code === 'stopping');
    if (done.committed.version !== manifest.hash) throw new ProtocolError(`committed ${done.committed.version}, offered ${manifest.hash}`);
    result.phases.commit += since(finished);
    await control.close().catch(() => {});
  } finally {
    clearInterval(watchdog);
    abort.abort(new Error('transfer attempt over'));
    for (const ch of channels) if (ch.stream.status === 'open') ch.stream.abort(new Error('transfer attempt over'));
  }
}

function rejection(member: MemberConfig, code: BlobRejectCode, message: string): BlobTransferError {
  if (code === 'baseline_missing') return new BaselineRefusedError(`${member.name}: ${message}`);
  return new BlobTransferError(code, `${member.name} refused the transfer (${code}): ${message}`, code === 'busy');
}

/** The receiver's need list, held to the manifest: bits only within it and counts that agree. */
function checkedNeed(manifest: Manifest, accept: Accept, member: MemberConfig): number[] {
  let need: number[];
  try {
    need = setBits(accept.need, manifest.chunks.length);
  } catch (err) {
    throw new ProtocolError(`${member.name}: ${errorText(err)}`);
  }
  const bytes = need.reduce((sum, i) => sum + (manifest.chunks[i] as ChunkRef).length, 0);
  if (need.length !== accept.needChunks || bytes !== accept.needBytes) {
    throw new ProtocolError(`${member.name}: accept says ${accept.needChunks} chunks / ${accept.needBytes} bytes, its bitmap ${need.length} / ${bytes}`);
  }
  return need;
}

/**
 * One data stream: takes batches off the shared queue while it has fewer
 * than BLOB_SEND_WINDOW unacknowledged, then half-closes; the receiver closes its end
 * after its last ack, which ends the ack reader.
 */
async function sendBatches(
  req: PushRequest,
  ch: BlobChannel,
  queue: PlannedBatch[],
  join: { transferId: string; attempt: number },
  result: PushResult,
  skip: CompressionSkip,
  signal: AbortSignal,
): Promise<void> {
  // This stream's writes stop as soon as its acknowledgements fail, not only when the whole attempt does.
  const stop = new AbortController();
  const streamSignal = AbortSignal.any([signal, stop.signal]);
  await ch.write({ kind: 'join', join }, { signal: streamSignal });
  const window = new Window(BLOB_SEND_WINDOW);
  const inFlight = new Map<number, { count: number; raw: number; wire: number; buffer: Uint8Array }>();
  // Read buffers, one per batch in flight, reused once the batch is acknowledged (its bytes have crossed by then,
  // so nothing below still refers to them); the slack covers the pack's record headers between chunks.
  const buffers: Uint8Array[] = [];
  const bufferBytes = req.settings.batchBytes + (req.settings.batchBytes >> 3);
  let lastSample = performance.now();
  let sampleWire = 0;
  const acks = (async () => {
    try {
      for (;;) {
        const limit = deadline(ANSWER_TIMEOUT_MS, signal);
        let msg: BlobMessageIn | undefined;
        try {
          msg = await ch.read({ signal: limit.signal });
        } finally {
          limit.done();
        }
        if (msg === undefined) {
          if (inFlight.size > 0) throw new Error(`${req.member.name} closed a data stream with ${inFlight.size} batches unacknowledged`);
          return;
        }
        if (msg.kind !== 'ack') throw new ProtocolError(`data stream carried ${msg.kind}, expected ack`);
        const sent = inFlight.get(msg.ack.first);
        if (sent === undefined || sent.count !== msg.ack.count) throw new ProtocolError(`acknowledged batch ${msg.ack.first}+${msg.ack.count}, which is not in flight on this stream`);
        inFlight.delete(msg.ack.first);
        buffers.push(sent.buffer);
        const now = performance.now();
        req.progress.add(sent.raw, sent.wire, now);
        sampleWire += sent.wire;
        if (now - lastSample >= 200) {
          req.estimate.observeTransfer(sampleWire, (now - lastSample) / 1000);
          lastSample = now;
          sampleWire = 0;
        }
        window.release();
        req.onAck?.();
      }
    } catch (err) {
      const e = err instanceof Error ? err : new Error(String(err));
      window.fail(e);
      stop.abort(e);
      throw err;
    }
  })();
  acks.catch(() => {});
  for (let batch = queue.shift(); batch !== undefined; batch = queue.shift()) {
    await window.acquire();
    const buffer = buffers.pop() ?? Buffer.allocUnsafe(bufferBytes);
    const { frame, wireBytes, codec } = await compressBatch(req, batch, skip, buffer);
    result.codecs[codec] = (result.codecs[codec] ?? 0) + batch.rawBytes;
    inFlight.set(batch.first, { count: batch.refs.length, raw: batch.rawBytes, wire: wireBytes, buffer });
    await ch.write({ kind: 'batch', batch: { first: batch.first, count: batch.refs.length, frame } }, { signal: streamSignal });
    result.rawBytesSent += batch.rawBytes;
    result.wireBytesSent += wireBytes;
  }
  await window.drained();
  await ch.close({ signal: streamSignal });
  await acks;
}

/**
 * The chunks of a batch moved together at the front of `into`, where the
 * store read them in order, apart by the packs' record headers: one array
 * (one checksum call, one part for the codec and the stream) instead of one
 * per chunk, for a memmove of the batch. Undefined, and nothing moved, when
 * some chunk lies elsewhere (it did not fit in `into`).
 */
function packTogether(parts: readonly Uint8Array[], into: Uint8Array): Uint8Array | undefined {
  if (parts.some((p) => p.buffer !== into.buffer)) return undefined;
  let at = 0;
  for (const p of parts) {
    // Each chunk lies at or after `at` (in order, gaps only between them), so moving it down never overwrites one not yet moved.
    const from = p.byteOffset - into.byteOffset;
    if (from !== at) into.copyWithin(at, from, from + p.byteLength);
    at += p.byteLength;
  }
  return into.subarray(0, at);
}

/**
 * One batch read from the store (into `into`, the caller's reused buffer) and
 * framed with the codec its link calls for now; `codec` is the label actually
 * used. The frame comes as parts, its header then its payload, and an
 * uncompressed payload is the chunks as they lie in the read buffer, moved
 * together: nothing else is copied on the way to the stream.
 */
async function compressBatch(req: PushRequest, batch: PlannedBatch, skip: CompressionSkip, into: Uint8Array): Promise<{ frame: Uint8Array[]; wireBytes: number; codec: string }> {
  const read = await req.store.readChunks(batch.refs, into);
  const together = packTogether(read, into);
  const parts = together === undefined ? read : [together];
  const link = req.link();
  if (link.rttMs !== null) req.estimate.observeRtt(link.rttMs);
  // chooseCodec's own "incompressible" verdict (a ratio EWMA over all traffic) is bypassed with probe: a random
  // stretch would hold it above the threshold long after the data turned compressible; CompressionSkip decides instead.
  const spec = skip.worthTrying()
    ? chooseCodec({ mode: link.mode, payloadBytes: batch.rawBytes, link: { bandwidth: req.estimate.bandwidth }, codecs: req.codecs, options: req.settings.codecChoice, probe: true })
    : NONE;
  let payload: Uint8Array[] = parts;
  let used = spec;
  if (spec.name !== 'none') {
    const raw = parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
    const label = codecLabel(spec);
    const t0 = performance.now();
    const compressed = await codecFor(spec).compress(raw);
    const seconds = (performance.now() - t0) / 1000;
    req.codecs.observe(spec, raw.byteLength, compressed.byteLength, seconds);
    req.metrics.compressSeconds.observe({ codec: label }, seconds);
    req.metrics.compressionRatio.observe({ codec: label }, compressed.byteLength / Math.max(1, raw.byteLength));
    skip.record(compressed.byteLength < raw.byteLength * req.settings.codecChoice.incompressibleRatio);
    if (compressed.byteLength >= raw.byteLength) used = NONE;
    else payload = [compressed];
  }
  const codec = codecFor(used);
  const frame = [frameHeader(codec, batch.rawBytes, payload), ...payload];
  const wireBytes = frame.reduce((sum, part) => sum + part.byteLength, 0);
  const label = codecLabel(used);
  req.metrics.rawBytes.inc({ codec: label, link_mode: link.mode, direction: 'sent' }, batch.rawBytes);
  req.metrics.wireBytes.inc({ codec: label, link_mode: link.mode, direction: 'sent' }, wireBytes);
  return { frame, wireBytes, codec: label };
}

// ================================================================== receiver

export interface ReceivedValue {
  member: MemberConfig;
  manifest: Manifest;
  kind: TransferKind;
  /** Raw bytes that crossed the wire (over all attempts). */
  receivedBytes: number;
  reusedBytes: number;
  resumed: number;
  seconds: number;
}

export interface InboundStatus {
  transferId: string;
  member: string;
  key: string;
  version: string;
  kind: TransferKind;
  progress: TransferProgress;
  attempt: number;
  resumed: number;
  startedAt: Date;
}

export interface BlobReceiverOptions {
  store: BlobStore;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  link(peerId: string): LinkInfo;
  metrics: BlobMetrics;
  log: Logger;
  events?: FrameEvents;
  /** Inbound transfers staged at once (running or waiting to be resumed); more are answered busy. */
  maxInbound?: number;
  /** How long the staging of an interrupted transfer waits for a resume. */
  resumeIdleMs?: number;
  onEnd?(status: InboundStatus, outcome: { ok: true; value: ReceivedValue } | { ok: false; error: string }): void;
}

const DEFAULT_MAX_INBOUND = 8;
const DEFAULT_RESUME_IDLE_MS = 10 * 60_000;

class HostileInput extends Error {
  readonly reason: BlobRejectReason;
  constructor(reason: BlobRejectReason, message: string) {
    super(message);
    this.name = 'HostileInput';
    this.reason = reason;
  }
}

interface Inbound {
  id: string;
  peerId: string;
  member: MemberConfig;
  offer: Offer;
  baseline: Manifest | undefined;
  manifest: Manifest | null;
  /** Bit i set: chunk i is taken from the baseline. */
  fromBaseline: Uint8Array;
  staged: StagedValue;
  /** Bit i set: chunk i was written and acknowledged, in any attempt (sized once the manifest is decoded). */
  received: Uint8Array;
  /** Chunk indices asked for in the current attempt, in order. */
  need: number[];
  attempt: number;
  /** Streams of the current attempt, aborted when it is replaced or the transfer ends. */
  channels: Set<BlobChannel>;
  status: InboundStatus;
  receivedBytes: number;
  reusedBytes: number;
  idle: NodeJS.Timeout | undefined;
  started: number;
  ended: boolean;
}

export class BlobReceiver {
  readonly #opts: BlobReceiverOptions;
  readonly #transfers = new Map<string, Inbound>();
  readonly #verifier = new ChunkVerifier(WRITES_IN_FLIGHT);
  #stopped = false;

  constructor(opts: BlobReceiverOptions) {
    this.#opts = opts;
  }

  /** The libp2p stream handler for BLOB_PROTOCOL. */
  readonly handle = (stream: Stream, connection: Connection): void => {
    void this.#onStream(stream, connection);
  };

  active(): InboundStatus[] {
    return [...this.#transfers.values()].map((t) => t.status);
  }

  stop(): void {
    this.#stopped = true;
    for (const t of [...this.#transfers.values()]) this.#end(t, { ok: false, error: 'the daemon is stopping' }, 'stopping');
    this.#verifier.close();
  }

  async #onStream(stream: Stream, connection: Connection): Promise<void> {
    const { log, members } = this.#opts;
    const peerId = connection.remotePeer.toString();
    const member = members.get(peerId);
    const ch = blobChannel(stream, this.#opts.events);
    // The peer passed the gater when it connected, so it is authenticated: say why rather than reset.
    if (member === undefined || this.#stopped) {
      log.warn({ peerId, member: member?.name }, 'blob stream from a peer that is not a member refused');
      await this.#reject(ch, this.#stopped ? 'busy' : 'invalid', this.#stopped ? 'this member is stopping' : "you are not in this member's member list");
      return;
    }
    if (!this.#opts.isConnected(peerId)) {
      // A member whose new connection has not finished hello yet (e.g. a resume right after a reconnect): retryable.
      await this.#reject(ch, 'busy', 'this connection has not passed the hello exchange yet');
      return;
    }
    let first: BlobMessageIn | undefined;
    const limit = deadline(FIRST_MESSAGE_TIMEOUT_MS);
    try {
      first = await ch.read({ signal: limit.signal });
    } catch (err) {
      // FramedStream counted a bad frame and reset the stream; anything else is the stream lost (reset, or its connection gone).
      if (err instanceof FrameError) log.warn({ member: member.name, err: errorText(err) }, 'blob stream refused');
      else log.info({ member: member.name, err: errorText(err) }, 'blob stream lost before its first message');
      return;
    } finally {
      limit.done();
    }
    if (first?.kind === 'offer') await this.#control(ch, peerId, member, first.offer);
    else if (first?.kind === 'join') await this.#data(ch, peerId, member, first.join);
    else if (first !== undefined) this.#refuseStream(ch, member, new HostileInput('protocol', `a blob stream must start with offer or join, not ${first.kind}`));
  }

  #refuseStream(ch: BlobChannel, member: MemberConfig, err: HostileInput): void {
    this.#opts.metrics.rejected.inc({ reason: err.reason });
    this.#opts.log.warn({ member: member.name, reason: err.reason, err: err.message }, 'blob input refused');
    ch.reset(err);
  }

  async #reject(ch: BlobChannel, code: BlobRejectCode, message: string): Promise<void> {
    await ch.write({ kind: 'reject', reject: { code, message } }).catch(() => {});
    await ch.close().catch(() => {});
  }

  async #control(ch: BlobChannel, peerId: string, member: MemberConfig, offer: Offer): Promise<void> {
    const { store, log } = this.#opts;
    try {
      checkBlobKey(offer.key);
    } catch (err) {
      await this.#reject(ch, 'invalid', errorText(err));
      return;
    }
    if (offer.size > store.maxValueBytes) {
      await this.#reject(ch, 'too_large', `${offer.key}: ${offer.size} bytes, above this member's blob.maxValueBytes (${store.maxValueBytes})`);
      return;
    }
    let t = this.#transfers.get(offer.transferId);
    if (t !== undefined) {
      const same = t.peerId === peerId && t.offer.key === offer.key && t.offer.version === offer.version && t.offer.baselineVersion === offer.baselineVersion;
      if (!same || offer.attempt <= t.attempt) {
        await this.#reject(ch, 'invalid', `transfer ${offer.transferId} is already attempt ${t.attempt} of ${t.offer.key}@${t.offer.version} from ${t.member.name}`);
        return;
      }
      for (const old of t.channels) old.reset(new Error(`superseded by attempt ${offer.attempt}`));
      t.channels.clear();
    } else {
      if (this.#transfers.size >= (this.#opts.maxInbound ?? DEFAULT_MAX_INBOUND)) {
        await this.#reject(ch, 'busy', `${this.#transfers.size} inbound transfers are staged; retry later`);
        return;
      }
      let baseline: Manifest | undefined;
      if (offer.baselineVersion !== '') {
        const held = store.current(offer.key);
        // The key's own version, or one held under another key of its folder (a series of keys, each a delta against the one before: DR backups).
        const folder = offer.key.slice(0, offer.key.lastIndexOf('/') + 1);
        baseline = held?.version === offer.baselineVersion || (folder !== '' && store.holdsVersion(offer.baselineVersion, folder)) ? store.manifest(offer.baselineVersion, offer.key) : undefined;
        if (baseline === undefined || !sameChunking(baseline.chunking, offer.chunking)) {
          await this.#reject(ch, 'baseline_missing', `${offer.key}: this member holds ${held === undefined ? 'no version' : `version ${held.version}`}, not baseline ${offer.baselineVersion}`);
          return;
        }
      }
      t = this.#start(offer, peerId, member, baseline);
    }
    t.attempt = offer.attempt;
    t.status.attempt = offer.attempt;
    t.need = [];
    t.channels.add(ch);
    clearTimeout(t.idle);
    const inbound = t;
    try {
      const bytes = new Uint8Array(offer.manifestBytes);
      for (let got = 0; got < offer.manifestBytes; ) {
        const part = await readExpecting(ch, ['manifestPart'], `${member.name}: chunk list`, ANSWER_TIMEOUT_MS);
        if (got + part.manifestPart.data.byteLength > offer.manifestBytes) throw new HostileInput('manifest', `chunk list parts exceed the declared ${offer.manifestBytes} bytes`);
        bytes.set(part.manifestPart.data, got);
        got += part.manifestPart.data.byteLength;
      }
      if (inbound.manifest === null) {
        try {
          ({ manifest: inbound.manifest, fromBaseline: inbound.fromBaseline } = decodeManifest(offer, bytes, inbound.baseline));
          inbound.received = new Uint8Array(bitmapBytes(inbound.manifest.chunks.length));
        } catch (err) {
          if (err instanceof ManifestDecodeError) throw new HostileInput('manifest', err.message);
          throw err;
        }
      }
      const accept = this.#accept(inbound);
      await ch.write({ kind: 'accept', accept });
      if (accept.resumed) {
        inbound.status.resumed++;
        this.#opts.metrics.resumed.inc({ direction: 'received' });
        log.info({ member: member.name, blobKey: offer.key, transferId: offer.transferId, attempt: offer.attempt, needBytes: accept.needBytes }, 'blob transfer resumed');
      }
      // No deadline: the data streams may take hours on a thin link (the sender keeps this stream alive); a dropped connection ends this read.
      let finish = await ch.read();
      while (finish?.kind === 'keepAlive') finish = await ch.read();
      if (finish === undefined) throw new Error('control stream ended before finish');
      if (finish.kind !== 'finish') throw new HostileInput('protocol', `control stream carried ${finish.kind}, expected finish`);
      const missing = inbound.need.filter((i) => !hasBit(inbound.received, i));
      if (missing.length > 0) throw new HostileInput('protocol', `finish with ${missing.length} needed chunks not received (first: chunk ${missing[0]})`);
      await this.#commit(inbound, ch);
    } catch (err) {
      if (err instanceof HostileInput || err instanceof ProtocolError) {
        this.#fail(inbound, err instanceof HostileInput ? err : new HostileInput('protocol', err.message), ch);
      } else if (err instanceof FrameError && err.reason !== 'timeout') {
        this.#fail(inbound, new HostileInput('protocol', err.message), ch, false);
      } else if (!inbound.ended && inbound.attempt === offer.attempt) {
        // The connection dropped or the sender went quiet: keep the staging for a resume.
        inbound.channels.delete(ch);
        log.info({ member: member.name, blobKey: offer.key, transferId: offer.transferId, err: errorText(err) }, 'blob transfer interrupted; staging kept for a resume');
        this.#armIdle(inbound);
      }
    }
  }

  #start(offer: Offer, peerId: string, member: MemberConfig, baseline: Manifest | undefined): Inbound {
    const staged = this.#opts.store.stage();
    if (baseline !== undefined) staged.rely(baseline);
    const now = performance.now();
    const status: InboundStatus = {
      transferId: offer.transferId,
      member: member.name,
      key: offer.key,
      version: offer.version,
      kind: baseline === undefined ? 'full' : 'delta',
      progress: new TransferProgress(0, now),
      attempt: offer.attempt,
      resumed: 0,
      startedAt: new Date(),
    };
    const t: Inbound = {
      id: offer.transferId,
      peerId,
      member,
      offer,
      baseline,
      manifest: null,
      fromBaseline: new Uint8Array(0),
      staged,
      received: new Uint8Array(0),
      need: [],
      attempt: offer.attempt,
      channels: new Set(),
      status,
      receivedBytes: 0,
      reusedBytes: 0,
      idle: undefined,
      started: now,
      ended: false,
    };
    this.#transfers.set(t.id, t);
    this.#opts.metrics.activeTransfers.inc({ direction: 'received' });
    return t;
  }

  /**
   * What this attempt needs: chunks neither taken from the baseline nor
   * acknowledged before, each distinct hash once. The decoder marked the
   * baseline's chunks, so a delta of a large value looks up only its new ones.
   */
  #accept(t: Inbound): Accept {
    const manifest = t.manifest as Manifest;
    const need = new Uint8Array(bitmapBytes(manifest.chunks.length));
    const seen = new Set<string>();
    t.need = [];
    let needBytes = 0;
    let reused = 0;
    for (const [i, c] of manifest.chunks.entries()) {
      if (hasBit(t.fromBaseline, i)) {
        reused += c.length;
        continue;
      }
      if (seen.has(c.hash)) continue;
      seen.add(c.hash);
      // Received by index: a later chunk with the same hash is then not asked for either (seen above).
      if (hasBit(t.received, i)) continue;
      setBit(need, i);
      t.need.push(i);
      needBytes += c.length;
    }
    t.reusedBytes = reused;
    t.status.progress.retarget(t.status.progress.bytesDone + needBytes);
    return { need, resumed: t.received.some((byte) => byte !== 0), needChunks: t.need.length, needBytes };
  }

  async #data(ch: BlobChannel, peerId: string, member: MemberConfig, join: { transferId: string; attempt: number }): Promise<void> {
    const t = this.#transfers.get(join.transferId);
    if (t === undefined || t.peerId !== peerId || t.attempt !== join.attempt || t.manifest === null) {
      // A stale stream of a superseded attempt is normal after a resume; anything else is not.
      const why = `no transfer ${join.transferId} attempt ${join.attempt} from ${member.name} is waiting for data${t === undefined ? '' : ` (it is at attempt ${t.attempt})`}`;
      this.#opts.log.info({ member: member.name, transferId: join.transferId }, why);
      ch.reset(new Error(why));
      return;
    }
    t.channels.add(ch);
    const manifest = t.manifest;
    const mode = this.#opts.link(peerId).mode;
    // Batches verified and being written, oldest first: each is acknowledged once written, in arrival order.
    const writing: Promise<void>[] = [];
    try {
      for (;;) {
        // Bounded whatever the sender does: past WRITES_IN_FLIGHT, the next read waits for the oldest write.
        if (writing.length >= WRITES_IN_FLIGHT) await writing.shift();
        const msg = await ch.read();
        if (msg === undefined) break;
        if (msg.kind !== 'batch') throw new HostileInput('protocol', `data stream carried ${msg.kind}, only batches belong there`);
        const { first, count, frame } = msg.batch;
        if (first + count > t.need.length) throw new HostileInput('protocol', `batch ${first}+${count} is past the ${t.need.length} chunks asked for`);
        // The indices are kept for the acknowledgement: a resume replaces t.need while this batch is still being written.
        const indices = t.need.slice(first, first + count);
        const refs = indices.map((i) => manifest.chunks[i] as ChunkRef);
        const expected = refs.reduce((sum, r) => sum + r.length, 0);
        if (expected > BLOB_MAX_BATCH_RAW_BYTES) throw new HostileInput('protocol', `batch ${first}+${count} holds ${expected} bytes, above the ${BLOB_MAX_BATCH_RAW_BYTES}-byte batch limit`);
        const unpacked = await this.#unpack(frame, refs, expected, mode);
        // Hashed on the verifier's thread while this one reads the next batch; written only once it checks out.
        const verified = this.#verifier.verify(unpacked.bytes, refs, unpacked.frame);
        // Only the size is kept: the frame's buffer must die young (a reference held until the write is done got it
        // promoted, and each promoted MiB brings the next mark-compact nearer).
        const wireBytes = frame.byteLength;
        const previous = writing.at(-1);
        const acked = (async () => {
          const { chunks, buffer } = await verified;
          try {
            await t.staged.writeTrusted(chunks);
          } finally {
            this.#verifier.release(buffer);
          }
          await previous;
          for (const i of indices) setBit(t.received, i);
          t.receivedBytes += expected;
          t.status.progress.add(expected, wireBytes, performance.now());
          await ch.write({ kind: 'ack', ack: { first, count } });
        })();
        // A bad chunk or a failed write resets the stream, so a read waiting for the next batch throws it too
        // (and the catch below sorts it like any other); it is also awaited in order, below or by the bound above.
        acked.catch((err: unknown) => ch.reset(err instanceof Error ? err : new Error(String(err))));
        writing.push(acked);
      }
      for (const acked of writing.splice(0)) await acked;
      await ch.close().catch(() => {});
    } catch (err) {
      if (err instanceof CodecError) this.#fail(t, new HostileInput(err.reason, err.message), ch);
      else if (err instanceof BlobStoreError && err.reason === 'corrupt') this.#fail(t, new HostileInput('chunk-hash', err.message), ch);
      else if (err instanceof HostileInput) this.#fail(t, err, ch);
      else if (err instanceof FrameError && err.reason !== 'timeout') this.#fail(t, new HostileInput('protocol', err.message), ch, false);
      else {
        this.#opts.log.info({ member: member.name, transferId: t.id, attempt: join.attempt, err: errorText(err) }, 'blob data stream ended early');
        t.channels.delete(ch);
      }
    }
  }

  /**
   * Checks one batch frame and decompresses it: what is left for the chunk
   * verifier, the chunks' bytes in order. A frame whose payload is the chunks
   * as they are (codec none) goes to it whole, checksum unchecked and still
   * in the parts it arrived in: the verifier copies those once into its own
   * buffer and its thread checks the checksum before the chunks' hashes, as
   * decompressing would have, so the event loop neither reads nor
   * reassembles the batch's bytes.
   */
  async #unpack(frame: Uint8ArrayList, refs: readonly ChunkRef[], expected: number, mode: LinkMode): Promise<{ bytes: Uint8Array | Uint8ArrayList; frame?: BatchFrame }> {
    const header = readFrameHeader(frame, BLOB_MAX_BATCH_RAW_BYTES);
    if (header.rawLength !== expected) throw new CodecError('length-mismatch', `batch frame declares ${header.rawLength} raw bytes, its ${refs.length} chunks are ${expected}`);
    const codec = codecById(header.codecId) as Codec;
    const t0 = performance.now();
    let out: { bytes: Uint8Array | Uint8ArrayList; frame?: BatchFrame };
    if (codec.name === 'none') {
      // Only its length, as decompressing checks it (a none payload is not read, nor made one array).
      expectRawLength(codec.name, header.payloadLength, header.rawLength);
      out = { bytes: frame, frame: { chunksAt: FRAME_HEADER_BYTES, checksum: header.checksum } };
    } else {
      out = { bytes: (await decompressFrame(frame.subarray(), BLOB_MAX_BATCH_RAW_BYTES)).raw };
    }
    const label = codecLabel({ name: codec.name, level: header.level === 0 ? undefined : header.level });
    const m = this.#opts.metrics;
    m.decompressSeconds.observe({ codec: label }, (performance.now() - t0) / 1000);
    m.rawBytes.inc({ codec: label, link_mode: mode, direction: 'received' }, expected);
    m.wireBytes.inc({ codec: label, link_mode: mode, direction: 'received' }, frame.byteLength);
    return out;
  }

  async #commit(t: Inbound, ch: BlobChannel): Promise<void> {
    const manifest = t.manifest as Manifest;
    let value: ReceivedValue;
    try {
      await t.staged.commit(t.offer.key, manifest, t.member.name, t.fromBaseline);
      value = {
        member: t.member,
        manifest,
        kind: t.status.kind,
        receivedBytes: t.receivedBytes,
        reusedBytes: t.reusedBytes,
        resumed: t.status.resumed,
        seconds: (performance.now() - t.started) / 1000,
      };
    } catch (err) {
      await ch.write({ kind: 'failed', failed: { code: 'commit', message: errorText(err) } }).catch(() => {});
      this.#end(t, { ok: false, error: `commit failed: ${errorText(err)}` });
      throw err;
    }
    await ch.write({ kind: 'committed', committed: { version: manifest.hash } }).catch(() => {});
    await ch.close().catch(() => {});
    this.#end(t, { ok: true, value });
  }

  /** Refuses hostile input: counted by reason, the transfer's staging dropped, its streams reset. */
  #fail(t: Inbound, err: HostileInput, ch: BlobChannel, count = true): void {
    if (count) this.#opts.metrics.rejected.inc({ reason: err.reason });
    this.#opts.log.warn({ member: t.member.name, blobKey: t.offer.key, transferId: t.id, reason: err.reason, err: err.message }, 'blob input refused; transfer aborted, nothing applied');
    ch.reset(err);
    this.#end(t, { ok: false, error: `${err.reason}: ${err.message}` });
  }

  #end(t: Inbound, outcome: { ok: true; value: ReceivedValue } | { ok: false; error: string }, code = 'aborted'): void {
    if (t.ended) return;
    t.ended = true;
    if (!outcome.ok) this.#opts.log.info({ member: t.member.name, blobKey: t.offer.key, transferId: t.id, attempt: t.attempt, err: outcome.error }, 'blob transfer ended without a commit');
    clearTimeout(t.idle);
    this.#transfers.delete(t.id);
    t.staged.release();
    for (const ch of t.channels) {
      if (!outcome.ok) void ch.write({ kind: 'failed', failed: { code, message: outcome.error } }).catch(() => {});
      if (!outcome.ok && ch.stream.status === 'open') ch.reset(new Error(outcome.error));
    }
    t.channels.clear();
    const m = this.#opts.metrics;
    m.activeTransfers.dec({ direction: 'received' });
    m.transfers.inc({ direction: 'received', kind: t.status.kind, result: outcome.ok ? 'ok' : 'failed' });
    if (outcome.ok) {
      m.transferSeconds.observe({ direction: 'received', kind: t.status.kind }, outcome.value.seconds);
      if (t.receivedBytes > 0 && outcome.value.seconds > 0) m.transferThroughput.observe({ direction: 'received' }, t.receivedBytes / outcome.value.seconds);
    }
    this.#opts.onEnd?.(t.status, outcome);
  }

  #armIdle(t: Inbound): void {
    clearTimeout(t.idle);
    const ms = this.#opts.resumeIdleMs ?? DEFAULT_RESUME_IDLE_MS;
    t.idle = setTimeout(() => this.#end(t, { ok: false, error: `no resume within ${ms} ms` }), ms);
    t.idle.unref();
  }
}
