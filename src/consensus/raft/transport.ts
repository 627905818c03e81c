/**
 * RaftTransport: carries Raft messages between members over libp2p on
 * `/dwcp/raft/1.0.0`, each frame a batch of every message one Ready produced
 * for that peer (so a tick's heartbeat and whatever else is due go out as one
 * frame). The stream handling, per-peer bounded outboxes and member checks
 * are FrameTransport's (src/net/frame-transport.ts); this adds the Raft
 * schema.
 *
 * Delivery is best effort, which is all Raft asks: Raft retransmits what
 * matters. Only members of the Raft group may send, and every frame is
 * schema-checked against the authenticated sender (`from` must be that
 * member, `to` this node).
 */
import type { Logger } from '../../log.ts';
import type { FrameMetrics } from '../../metrics/metrics.ts';
import { FrameTransport, type FramePeerDirectory } from '../../net/frame-transport.ts';
import type { ProtocolHost } from '../../net/host.ts';
import type { RaftSender } from './node.ts';
import type { Message, NodeId } from './types.ts';
import { RAFT_MAX_FRAME_BYTES, RAFT_PROTOCOL, decodeBatch, encodeBatches } from './wire.ts';

/** Who is in the Raft group, by member name (the Raft node id) and peer ID. */
export type RaftPeerDirectory = FramePeerDirectory;

export interface RaftTransportOptions {
  host: ProtocolHost;
  self: NodeId;
  peers: RaftPeerDirectory;
  /** Whether a member's connection has passed the hello exchange. */
  isConnected(peerId: string): boolean;
  /** Hands authenticated, validated messages to the node. */
  deliver(messages: Message[]): void;
  metrics: FrameMetrics;
  log: Logger;
  /** Bytes queued per peer before new batches are dropped. */
  maxQueuedBytes?: number;
}

const DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024;
const MAX_INBOUND_STREAMS = 8;

export class RaftTransport implements RaftSender {
  readonly #frames: FrameTransport<Message>;

  constructor(opts: RaftTransportOptions) {
    this.#frames = new FrameTransport<Message>({
      host: opts.host,
      protocol: RAFT_PROTOCOL,
      label: 'raft',
      maxFrameBytes: RAFT_MAX_FRAME_BYTES,
      maxQueuedBytes: opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES,
      maxInboundStreams: MAX_INBOUND_STREAMS,
      peers: opts.peers,
      isConnected: (peerId) => opts.isConnected(peerId),
      encode: (messages) => encodeBatches(messages),
      decode: (frame, from) => decodeBatch(frame, { from, to: opts.self }),
      deliver: (_from, messages) => opts.deliver(messages),
      metrics: opts.metrics,
      log: opts.log,
    });
  }

  /** Batches dropped because a peer was unreachable or its queue full; exposed for status. */
  get dropped(): number {
    return this.#frames.dropped;
  }

  start(): Promise<void> {
    return this.#frames.start();
  }

  stop(): Promise<void> {
    return this.#frames.stop();
  }

  send(to: NodeId, messages: readonly Message[]): void {
    this.#frames.send(to, messages);
  }
}
