/**
 * PbftTransport: carries PBFT frames between members over libp2p on
 * `/dwcp/pbft/3.0.0` (wire.ts), over FrameTransport's per-peer bounded
 * outboxes and long-lived streams (src/net/frame-transport.ts).
 *
 * Delivery is best effort: the core retransmits, fetches and asks for state
 * when it stalls. Any configured member may send, trusted or not (PBFT exists
 * for the untrusted ones); each frame's top-level senders must be the member
 * the connection authenticated, and a refused frame resets the stream and is
 * counted. Signatures are the core's to check.
 */
import type { Logger } from '../../log.ts';
import type { FrameMetrics } from '../../metrics/metrics.ts';
import { FrameTransport, type FramePeerDirectory } from '../../net/frame-transport.ts';
import type { ProtocolHost } from '../../net/host.ts';
import type { ReplicaId } from './types.ts';
import { PBFT_MAX_FRAME_BYTES, PBFT_PROTOCOL, decodePbftFrame, encodePbftFrames, type PbftFrame } from './wire.ts';

export interface PbftTransportOptions {
  host: ProtocolHost;
  /** Every member of the PBFT group, trusted or not, by replica id (member name) and peer ID. */
  peers: FramePeerDirectory;
  /** Whether a member's connection has passed the hello exchange. */
  isConnected(peerId: string): boolean;
  /** Hands an authenticated, shape-checked frame to the driver. */
  deliver(from: ReplicaId, frame: PbftFrame): void;
  metrics: FrameMetrics;
  log: Logger;
  /** Bytes queued per peer before new batches are dropped; at least one largest frame. */
  maxQueuedBytes?: number;
}

/** One largest frame (a state transfer) and as much ordinary traffic as Raft's default queue. */
const DEFAULT_MAX_QUEUED_BYTES = PBFT_MAX_FRAME_BYTES + 64 * 1024 * 1024;
/**
 * We open one stream per peer; a second covers a new stream opened before the
 * remote saw the old one's reset. Few, because each may buffer a frame of up
 * to PBFT_MAX_FRAME_BYTES and any member, untrusted ones included, may send.
 */
const MAX_INBOUND_STREAMS = 2;

export class PbftTransport {
  readonly #frames: FrameTransport<PbftFrame>;

  constructor(opts: PbftTransportOptions) {
    this.#frames = new FrameTransport<PbftFrame>({
      host: opts.host,
      protocol: PBFT_PROTOCOL,
      label: 'pbft',
      maxFrameBytes: PBFT_MAX_FRAME_BYTES,
      maxQueuedBytes: opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES,
      maxInboundStreams: MAX_INBOUND_STREAMS,
      peers: opts.peers,
      isConnected: (peerId) => opts.isConnected(peerId),
      encode: (frames) => encodePbftFrames(merged(frames)),
      decode: (bytes, from) => [decodePbftFrame(bytes, { from })],
      deliver: (from, frames) => {
        for (const frame of frames) opts.deliver(from, frame);
      },
      metrics: opts.metrics,
      log: opts.log,
    });
  }

  /** Batches dropped because a peer was unknown, unreachable or its queue full, plus frames lost with a failed stream. */
  get dropped(): number {
    return this.#frames.dropped;
  }

  start(): Promise<void> {
    return this.#frames.start();
  }

  stop(): Promise<void> {
    return this.#frames.stop();
  }

  /** Sends what `frames` hold to member `to`, in as few wire frames as the limits allow. */
  send(to: ReplicaId, frames: readonly PbftFrame[]): void {
    this.#frames.send(to, frames);
  }
}

function merged(frames: readonly PbftFrame[]): PbftFrame {
  if (frames.length === 1 && frames[0] !== undefined) return frames[0];
  return { messages: frames.flatMap((f) => f.messages), replies: frames.flatMap((f) => f.replies) };
}
