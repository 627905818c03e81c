/**
 * `/dwcp/sync/1.0.0`: carries the geo store's messages (and failure-detector
 * heartbeats) between members. Streams, per-member bounded outboxes and the
 * member check are FrameTransport's (src/net/frame-transport.ts): one
 * long-lived stream per direction per member, only configured and connected
 * members may send, a member that is not connected gets nothing (its
 * messages are dropped; the core's deadlines and anti-entropy rounds cover
 * the loss), and a full outbox drops new frames rather than grow.
 *
 * Each frame is a codec frame (src/codec/frame.ts) around one SyncFrame:
 * LZ4 on datacenter and hybrid links, zstd level 3 on internet links, none
 * below 512 bytes. Compression is asynchronous, so each member has a chain
 * that seals its frames in order before they reach the outbox, and one that
 * opens received frames in order before they reach the core.
 *
 * Invariant: a frame from a member reaches `deliver` only after its codec
 * frame and every field checked out (wire.ts). A codec header that is wrong
 * resets the stream (checked synchronously, before any decompression); a
 * payload that fails later (checksum, schema) is counted in
 * dwcp_frames_rejected_total and dropped.
 */
import { readFrameHeader } from '../codec/frame.ts';
import { CodecError } from '../codec/codecs.ts';
import type { LinkMode } from '../federation/link-mode.ts';
import type { Logger } from '../log.ts';
import type { FrameMetrics } from '../metrics/metrics.ts';
import { FrameTransport, type FramePeerDirectory } from '../net/frame-transport.ts';
import { FrameError } from '../net/framing.ts';
import type { ProtocolHost } from '../net/host.ts';
import type { StateMetrics } from './metrics.ts';
import { SYNC_MAX_FRAME_BYTES, SYNC_PROTOCOL, openSyncFrame, sealSyncFrame, type SyncFrame } from './wire.ts';

export interface SyncTransportOptions {
  host: ProtocolHost;
  peers: FramePeerDirectory;
  isConnected(peerId: string): boolean;
  /** The mode of the link to a member, which picks the codec. */
  linkMode(name: string): LinkMode;
  /** Bytes of sealed frames queued per member before new ones are dropped. */
  maxQueuedBytes: number;
  deliver(from: string, frame: SyncFrame): void;
  /** The frame counters of /dwcp/sync/1.0.0, and the geo store's raw and wire byte counters. */
  metrics: FrameMetrics & { state: Pick<StateMetrics, 'syncRawBytes' | 'syncWireBytes'> };
  log: Logger;
}

const MAX_INBOUND_STREAMS = 8;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class SyncTransport {
  readonly #opts: SyncTransportOptions;
  readonly #frames: FrameTransport<Uint8Array>;
  readonly #sealing = new Map<string, Promise<void>>();
  readonly #opening = new Map<string, Promise<void>>();
  #stopped = false;

  constructor(opts: SyncTransportOptions) {
    this.#opts = opts;
    this.#frames = new FrameTransport<Uint8Array>({
      host: opts.host,
      protocol: SYNC_PROTOCOL,
      label: 'sync',
      maxFrameBytes: SYNC_MAX_FRAME_BYTES,
      maxQueuedBytes: opts.maxQueuedBytes,
      maxInboundStreams: MAX_INBOUND_STREAMS,
      peers: opts.peers,
      isConnected: (peerId) => opts.isConnected(peerId),
      encode: (frames) => [...frames],
      decode: (frame) => {
        try {
          readFrameHeader(frame, SYNC_MAX_FRAME_BYTES);
        } catch (err) {
          if (err instanceof CodecError) throw new FrameError('malformed', `codec frame refused: ${err.message}`);
          throw err;
        }
        // A view of the muxer's buffer: copy, since it is opened later.
        return [frame.slice()];
      },
      deliver: (from, frames) => {
        for (const frame of frames) this.#open(from, frame);
      },
      metrics: opts.metrics,
      log: opts.log,
    });
  }

  /** Frames dropped (member unreachable, outbox full, stream failed). */
  get dropped(): number {
    return this.#frames.dropped;
  }

  start(): Promise<void> {
    return this.#frames.start();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#frames.stop();
  }

  /** Queues `frame` for member `to`, after the frames sent to it before. */
  send(to: string, frame: SyncFrame): void {
    if (this.#stopped) return;
    const { metrics, log, linkMode } = this.#opts;
    const previous = this.#sealing.get(to) ?? Promise.resolve();
    const next = previous.then(async () => {
      try {
        const sealed = await sealSyncFrame(frame, linkMode(to));
        metrics.state.syncRawBytes.inc({ direction: 'sent', kind: frame.kind }, sealed.rawBytes);
        metrics.state.syncWireBytes.inc({ direction: 'sent', kind: frame.kind }, sealed.bytes.byteLength);
        this.#frames.send(to, [sealed.bytes]);
      } catch (err) {
        // Our own core produced something the wire cannot carry: a bug, but not one worth stopping for.
        log.error({ peer: to, kind: frame.kind, err: errorText(err) }, 'sync frame could not be encoded; dropped');
      }
    });
    this.#sealing.set(to, next);
    void next.finally(() => {
      if (this.#sealing.get(to) === next) this.#sealing.delete(to);
    });
  }

  #open(from: string, bytes: Uint8Array): void {
    const { metrics, log, deliver } = this.#opts;
    const previous = this.#opening.get(from) ?? Promise.resolve();
    const next = previous.then(async () => {
      let opened: { frame: SyncFrame; rawBytes: number };
      try {
        opened = await openSyncFrame(bytes);
      } catch (err) {
        const reason = err instanceof FrameError ? err.reason : 'malformed';
        metrics.framesRejected.inc({ protocol: SYNC_PROTOCOL, reason });
        log.warn({ peer: from, err: errorText(err) }, 'sync frame refused');
        return;
      }
      metrics.state.syncWireBytes.inc({ direction: 'received', kind: opened.frame.kind }, bytes.byteLength);
      metrics.state.syncRawBytes.inc({ direction: 'received', kind: opened.frame.kind }, opened.rawBytes);
      if (!this.#stopped) deliver(from, opened.frame);
    });
    this.#opening.set(from, next);
    void next.finally(() => {
      if (this.#opening.get(from) === next) this.#opening.delete(from);
    });
  }
}
