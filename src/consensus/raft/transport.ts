/**
 * RaftTransport: carries Raft messages between members over libp2p on
 * `/dwcp/raft/1.0.0`, one long-lived outbound stream per peer, each frame a
 * batch of every message one Ready produced for that peer (so a tick's
 * heartbeat and whatever else is due go out as one frame).
 *
 * Delivery is best effort, which is all Raft asks: a peer that is not
 * connected gets nothing (its messages are dropped, not queued, because
 * stale heartbeats and appends are useless once the core has moved on), and
 * each peer's queue is bounded in bytes; beyond it new batches are dropped and
 * counted. Raft retransmits what matters.
 *
 * Only members of the Raft group may send: an inbound stream from any other
 * peer is reset and logged with its peer ID; every frame is schema-checked
 * against the authenticated sender (`from` must be that member, `to` this
 * node), and a bad frame resets the stream and is counted.
 */
import type { Libp2p } from 'libp2p';
import type { Connection, PeerId, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Logger } from '../../log.ts';
import type { DwcpMetrics } from '../../metrics/metrics.ts';
import { FrameError, FramedStream, frameEventsFor, type FrameEvents } from '../../net/framing.ts';
import { BytesSchema } from '../../net/schema.ts';
import type { RaftSender } from './node.ts';
import type { Message, NodeId } from './types.ts';
import { RAFT_MAX_FRAME_BYTES, RAFT_PROTOCOL, decodeBatch, encodeBatches } from './wire.ts';

/** Who is in the Raft group, by member name (the Raft node id) and peer ID. */
export interface RaftPeerDirectory {
  peerIdOf(name: NodeId): string | undefined;
  nameOf(peerId: string): NodeId | undefined;
}

export interface RaftTransportOptions {
  host: Libp2p;
  self: NodeId;
  peers: RaftPeerDirectory;
  /** Whether a member's connection has passed the hello exchange. */
  isConnected(peerId: string): boolean;
  /** Hands authenticated, validated messages to the node. */
  deliver(messages: Message[]): void;
  metrics: DwcpMetrics;
  log: Logger;
  /** Bytes queued per peer before new batches are dropped. */
  maxQueuedBytes?: number;
}

const DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024;
const MAX_INBOUND_STREAMS = 8;

type RaftStream = FramedStream<Uint8Array, Uint8Array>;

interface Outbox {
  readonly peerId: PeerId;
  /** peerId as text, for the per-send connectivity check. */
  readonly peerIdText: string;
  readonly name: NodeId;
  frames: Uint8Array[];
  bytes: number;
  stream: RaftStream | null;
  flushing: boolean;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class RaftTransport implements RaftSender {
  readonly #opts: RaftTransportOptions;
  readonly #events: FrameEvents;
  readonly #outboxes = new Map<NodeId, Outbox>();
  readonly #inbound = new Set<RaftStream>();
  readonly #maxQueuedBytes: number;
  #stopped = false;
  /** Batches dropped because a peer was unreachable or its queue full; exposed for status. */
  dropped = 0;

  constructor(opts: RaftTransportOptions) {
    this.#opts = opts;
    this.#events = frameEventsFor(opts.metrics, RAFT_PROTOCOL);
    this.#maxQueuedBytes = opts.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
  }

  async start(): Promise<void> {
    await this.#opts.host.handle(RAFT_PROTOCOL, (stream, connection) => this.#onInbound(stream, connection), {
      maxInboundStreams: MAX_INBOUND_STREAMS,
    });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#opts.host.unhandle(RAFT_PROTOCOL).catch(() => {});
    for (const box of this.#outboxes.values()) {
      box.frames = [];
      box.bytes = 0;
      box.stream?.stream.abort(new Error('raft transport stopping'));
      box.stream = null;
    }
    for (const s of this.#inbound) s.stream.abort(new Error('raft transport stopping'));
    this.#inbound.clear();
  }

  send(to: NodeId, messages: readonly Message[]): void {
    if (this.#stopped || messages.length === 0) return;
    const box = this.#outbox(to);
    if (box === null || !this.#opts.isConnected(box.peerIdText)) {
      this.dropped++;
      return;
    }
    let frames: Uint8Array[];
    try {
      frames = encodeBatches(messages);
    } catch (err) {
      // Our own core produced something the wire cannot carry: a bug, but not one worth stopping for.
      this.#opts.log.error({ peer: to, err: errorText(err) }, 'raft batch could not be encoded; dropped');
      this.dropped++;
      return;
    }
    const size = frames.reduce((n, f) => n + f.byteLength, 0);
    if (box.bytes + size > this.#maxQueuedBytes) {
      this.dropped++;
      this.#opts.log.debug({ peer: to, queuedBytes: box.bytes, limit: this.#maxQueuedBytes }, 'raft queue full; batch dropped');
      return;
    }
    box.frames.push(...frames);
    box.bytes += size;
    if (!box.flushing) void this.#flush(box);
  }

  #outbox(name: NodeId): Outbox | null {
    let box = this.#outboxes.get(name);
    if (box !== undefined) return box;
    const peerId = this.#opts.peers.peerIdOf(name);
    if (peerId === undefined) return null;
    box = { peerId: peerIdFromString(peerId), peerIdText: peerId, name, frames: [], bytes: 0, stream: null, flushing: false };
    this.#outboxes.set(name, box);
    return box;
  }

  async #flush(box: Outbox): Promise<void> {
    box.flushing = true;
    try {
      while (box.frames.length > 0 && !this.#stopped) {
        box.stream ??= await this.#open(box);
        const frame = box.frames.shift();
        if (frame === undefined) break;
        box.bytes -= frame.byteLength;
        await box.stream.write(frame);
      }
    } catch (err) {
      this.#opts.log.debug({ peer: box.name, err: errorText(err), droppedFrames: box.frames.length }, 'raft stream failed; queue dropped');
      this.dropped += box.frames.length;
      box.frames = [];
      box.bytes = 0;
      box.stream?.stream.abort(err instanceof Error ? err : new Error(String(err)));
      box.stream = null;
    } finally {
      box.flushing = false;
    }
  }

  async #open(box: Outbox): Promise<RaftStream> {
    const stream = await this.#opts.host.dialProtocol(box.peerId, RAFT_PROTOCOL, { signal: AbortSignal.timeout(5000) });
    const framed = this.#framed(stream);
    // The remote never writes on our outbound stream; watching it only tells us when it goes away.
    stream.addEventListener('close', () => {
      if (box.stream === framed) box.stream = null;
    });
    return framed;
  }

  #framed(stream: Stream): RaftStream {
    return new FramedStream(stream, {
      protocol: RAFT_PROTOCOL,
      maxFrameBytes: RAFT_MAX_FRAME_BYTES,
      inbound: BytesSchema,
      outbound: BytesSchema,
      events: this.#events,
    });
  }

  #onInbound(stream: Stream, connection: Connection): void {
    const peerId = connection.remotePeer.toString();
    const name = this.#opts.peers.nameOf(peerId);
    if (name === undefined || !this.#opts.isConnected(peerId)) {
      this.#opts.log.warn({ peerId }, 'raft stream from a peer outside the raft group refused');
      stream.abort(new Error('not a member of the raft group'));
      return;
    }
    const framed = this.#framed(stream);
    this.#inbound.add(framed);
    void this.#read(framed, name).finally(() => this.#inbound.delete(framed));
  }

  async #read(framed: RaftStream, from: NodeId): Promise<void> {
    const { self, deliver, log } = this.#opts;
    try {
      for await (const frame of framed) {
        let messages: Message[];
        try {
          messages = decodeBatch(frame, { from, to: self });
        } catch (err) {
          if (!(err instanceof FrameError)) throw err;
          this.#events.onReject?.(err.reason);
          framed.reset(err.withProtocol(RAFT_PROTOCOL));
          log.warn({ peer: from, err: err.message }, 'raft frame refused; stream reset');
          return;
        }
        deliver(messages);
      }
    } catch (err) {
      // Rejections by the framing layer are already counted and the stream reset.
      if (!this.#stopped) log.debug({ peer: from, err: errorText(err) }, 'raft inbound stream ended');
    }
  }
}
