/**
 * FrameTransport: best-effort delivery of batches of protocol items (Raft
 * messages, PBFT frames) between members over one libp2p protocol. Each peer
 * has an outbox drained onto one long-lived outbound stream; each batch
 * handed to send() becomes one or more frames, encoded by the protocol.
 * The protocols on top tolerate loss and retransmit what matters, so:
 *
 * - A peer that is unknown or not connected gets nothing: its batch is
 *   dropped, not queued (stale consensus traffic is useless once the core has
 *   moved on). Each outbox is bounded in bytes; beyond it new batches are
 *   dropped. Every drop (and every frame lost with a failed stream) counts in
 *   `dropped`.
 * - The peer directory is read live: a send looks the member up again, so a
 *   member whose peer ID changed gets a new outbox and stream, and a removed
 *   member gets nothing.
 * - Only members may send: an inbound stream from a peer the directory does
 *   not name (or that has not passed hello) is reset on open and logged with
 *   its peer ID. Every frame is decoded against the authenticated sender's
 *   member name; a FrameError resets the stream, is counted in
 *   dwcp_frames_rejected_total{protocol} and is logged with that name.
 */
import type { Connection, PeerId, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Logger } from '../log.ts';
import type { FrameMetrics } from '../metrics/metrics.ts';
import { FrameError, FramedStream, frameEventsFor, type FrameEvents } from './framing.ts';
import type { ProtocolHost } from './host.ts';
import { BytesSchema } from './schema.ts';

/** Who may take part, by member name and peer ID; consulted on every send and every inbound stream. */
export interface FramePeerDirectory {
  peerIdOf(name: string): string | undefined;
  nameOf(peerId: string): string | undefined;
}

export interface FrameTransportOptions<M> {
  host: ProtocolHost;
  protocol: string;
  /** Short protocol name that starts log messages ("raft frame refused; ..."). */
  label: string;
  maxFrameBytes: number;
  /** Bytes queued per peer before new batches are dropped. */
  maxQueuedBytes: number;
  /** Per connection; the transport itself opens one stream per peer. */
  maxInboundStreams: number;
  peers: FramePeerDirectory;
  /** Whether a member's connection has passed the hello exchange. */
  isConnected(peerId: string): boolean;
  /** One batch as frames of at most maxFrameBytes; a throw is logged and the batch dropped. */
  encode(batch: readonly M[]): Uint8Array[];
  /** One received frame from member `from`; throws FrameError on anything that member must not send. */
  decode(frame: Uint8Array, from: string): M[];
  /** Hands authenticated, validated items to the protocol. */
  deliver(from: string, items: M[]): void;
  metrics: FrameMetrics;
  log: Logger;
}

type RawFramedStream = FramedStream<Uint8Array, Uint8Array>;

interface Outbox {
  readonly peerId: PeerId;
  /** peerId as text, compared against the directory on every send. */
  readonly peerIdText: string;
  readonly name: string;
  frames: Uint8Array[];
  bytes: number;
  stream: RawFramedStream | null;
  flushing: boolean;
}

const DIAL_TIMEOUT_MS = 5000;

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class FrameTransport<M> {
  readonly #opts: FrameTransportOptions<M>;
  readonly #events: FrameEvents;
  readonly #outboxes = new Map<string, Outbox>();
  readonly #inbound = new Set<RawFramedStream>();
  #stopped = false;
  /** Batches dropped because a peer was unknown, unreachable or its queue full, plus frames lost with a failed stream. */
  dropped = 0;

  constructor(opts: FrameTransportOptions<M>) {
    this.#opts = opts;
    this.#events = frameEventsFor(opts.metrics, opts.protocol);
  }

  async start(): Promise<void> {
    const { host, protocol, maxInboundStreams } = this.#opts;
    await host.handle(protocol, (stream, connection) => this.#onInbound(stream, connection), { maxInboundStreams });
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    const { host, protocol, label } = this.#opts;
    await host.unhandle(protocol).catch(() => {});
    for (const box of this.#outboxes.values()) this.#discard(box, new Error(`${label} transport stopping`));
    this.#outboxes.clear();
    for (const s of this.#inbound) s.stream.abort(new Error(`${label} transport stopping`));
    this.#inbound.clear();
  }

  send(to: string, items: readonly M[]): void {
    if (this.#stopped || items.length === 0) return;
    const { isConnected, encode, maxQueuedBytes, log, label } = this.#opts;
    const box = this.#outbox(to);
    if (box === null || !isConnected(box.peerIdText)) {
      this.dropped++;
      return;
    }
    let frames: Uint8Array[];
    try {
      frames = encode(items);
    } catch (err) {
      // Our own core produced something the wire cannot carry: a bug, but not one worth stopping for.
      log.error({ peer: to, err: errorText(err) }, `${label} batch could not be encoded; dropped`);
      this.dropped++;
      return;
    }
    const size = frames.reduce((n, f) => n + f.byteLength, 0);
    if (box.bytes + size > maxQueuedBytes) {
      this.dropped++;
      log.debug({ peer: to, queuedBytes: box.bytes, limit: maxQueuedBytes }, `${label} queue full; batch dropped`);
      return;
    }
    box.frames.push(...frames);
    box.bytes += size;
    if (!box.flushing) void this.#flush(box);
  }

  /** The member's outbox, replaced if its peer ID changed; null if the directory no longer names it. */
  #outbox(name: string): Outbox | null {
    const peerId = this.#opts.peers.peerIdOf(name);
    let box = this.#outboxes.get(name);
    if (box !== undefined && box.peerIdText === peerId) return box;
    if (box !== undefined) {
      this.#discard(box, new Error(`${this.#opts.label}: member ${name} changed peer ID`));
      this.#outboxes.delete(name);
    }
    if (peerId === undefined) return null;
    box = { peerId: peerIdFromString(peerId), peerIdText: peerId, name, frames: [], bytes: 0, stream: null, flushing: false };
    this.#outboxes.set(name, box);
    return box;
  }

  /** Empties the outbox and aborts its stream; a flush still running finds nothing left to send. */
  #discard(box: Outbox, err: Error): void {
    box.frames = [];
    box.bytes = 0;
    box.stream?.stream.abort(err);
    box.stream = null;
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
      this.#opts.log.debug({ peer: box.name, err: errorText(err), droppedFrames: box.frames.length }, `${this.#opts.label} stream failed; queue dropped`);
      this.dropped += box.frames.length;
      this.#discard(box, err instanceof Error ? err : new Error(String(err)));
    } finally {
      box.flushing = false;
    }
  }

  async #open(box: Outbox): Promise<RawFramedStream> {
    const stream = await this.#opts.host.dialProtocol(box.peerId, this.#opts.protocol, { signal: AbortSignal.timeout(DIAL_TIMEOUT_MS) });
    if (this.#stopped || this.#outboxes.get(box.name) !== box) {
      // Stopped or discarded while dialling: nobody would ever close this stream.
      const err = new Error(`${this.#opts.label}: outbox to ${box.name} discarded while its stream opened`);
      stream.abort(err);
      throw err;
    }
    const framed = this.#framed(stream);
    // The remote never writes on our outbound stream; watching it only tells us when it goes away.
    stream.addEventListener('close', () => {
      if (box.stream === framed) box.stream = null;
    });
    return framed;
  }

  #framed(stream: Stream): RawFramedStream {
    const { protocol, maxFrameBytes } = this.#opts;
    return new FramedStream(stream, { protocol, maxFrameBytes, inbound: BytesSchema, outbound: BytesSchema, events: this.#events });
  }

  #onInbound(stream: Stream, connection: Connection): void {
    const { peers, isConnected, log, label } = this.#opts;
    const peerId = connection.remotePeer.toString();
    const name = peers.nameOf(peerId);
    if (this.#stopped || name === undefined || !isConnected(peerId)) {
      log.warn({ peerId }, `${label} stream from a peer outside the ${label} group refused`);
      stream.abort(new Error(`not a member of the ${label} group`));
      return;
    }
    const framed = this.#framed(stream);
    this.#inbound.add(framed);
    void this.#read(framed, name).finally(() => this.#inbound.delete(framed));
  }

  async #read(framed: RawFramedStream, from: string): Promise<void> {
    const { protocol, label, decode, deliver, log } = this.#opts;
    try {
      for await (const frame of framed) {
        let items: M[];
        try {
          items = decode(frame, from);
        } catch (err) {
          if (!(err instanceof FrameError)) throw err;
          this.#events.onReject?.(err.reason);
          framed.reset(err.withProtocol(protocol));
          log.warn({ peer: from, err: err.message }, `${label} frame refused; stream reset`);
          return;
        }
        deliver(from, items);
      }
    } catch (err) {
      // Rejections by the framing layer are already counted and the stream reset.
      if (!this.#stopped) log.debug({ peer: from, err: errorText(err) }, `${label} inbound stream ended`);
    }
  }
}
