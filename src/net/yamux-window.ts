/**
 * The daemon's yamux: @chainsafe/libp2p-yamux with window updates sent at
 * half a window, as go-yamux and the spec's reference implementation send
 * them, instead of after every data frame.
 *
 * The library (8.0.x) answers every data frame it receives with a window
 * update; its options have no threshold. On a stream of small messages (a
 * Raft append and its ack, a forwarded write and its answer) every message
 * then costs a second one back: another Noise message, socket write and
 * wake-up of the other process, though the sender holds a window of 256 KiB
 * or more. On a 3-member Raft cluster at one client they were a third of
 * every member's socket writes per put (bench/RESULTS.md, raft section).
 *
 * Here a stream grants window back once the capacity the sender still holds
 * fell to half the window or less, when a SYN/ACK flag must go out, or when
 * the window grows. The guarantee stays: a reading receiver has granted more
 * window before the sender's runs out, since the update leaves when half of
 * it is spent; a stream paused by its reader grants nothing, as before. A
 * stock peer sees what a go-yamux peer sends, so the wire is unchanged in
 * both directions. Window growth is the library's rule (double, up to
 * maxStreamWindowSize, when the reading since the last update took at most
 * four RTTs), judged when an update is due, so small messages do not grow it.
 *
 * Only streams of muxers made by `halfWindowYamux` behave so (they carry a
 * mark the shared method checks); a stock `yamux()` in the same process, as
 * the interop tests run, keeps the library's behaviour. The method reads the
 * library's private fields (StreamInternals below): the version is pinned in
 * package.json and test/unit/yamux-window.test.ts fails if they change.
 */
import { yamux, type YamuxMuxerInit } from '@chainsafe/libp2p-yamux';
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import type { StreamMuxerFactory } from '@libp2p/interface';

/** Marks a stream of a half-window muxer. */
const HALF_WINDOW = Symbol('dwcp.yamuxHalfWindow');

/** The library's private fields and methods the update reads and writes. */
interface StreamInternals {
  [HALF_WINDOW]?: true;
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
  maxStreamWindowSize: number;
  epochStart: number;
  streamId: number;
  getRTT(): number;
  getSendFlags(): number;
  sendFrame(header: { type: number; flag: number; streamID: number; length: number }): boolean;
}

/** Yamux frame type of a window update (spec: 0x1). */
const WINDOW_UPDATE = 1;

type SendWindowUpdate = (this: StreamInternals) => void;
const proto = YamuxStream.prototype as unknown as { sendWindowUpdate: SendWindowUpdate };
const libraryUpdate = proto.sendWindowUpdate;

function halfWindowUpdate(this: StreamInternals): void {
  if (this[HALF_WINDOW] !== true) return libraryUpdate.call(this);
  if (this.state === StreamState.Paused) {
    // As the library: the epoch restarts when reading resumes.
    this.epochStart = Date.now();
    return;
  }
  const flags = this.getSendFlags();
  // Until half the window is spent (and no flag must go out) the sender still holds plenty.
  if (flags === 0 && this.recvWindow - this.recvWindowCapacity < this.recvWindow / 2) return;
  const now = Date.now();
  const rtt = this.getRTT();
  // The library's growth rule, at the moments an update goes out: half a window read within four RTTs.
  if (flags === 0 && rtt > -1 && now - this.epochStart <= rtt * 4) this.recvWindow = Math.min(this.recvWindow * 2, this.maxStreamWindowSize);
  const delta = this.recvWindow - this.recvWindowCapacity;
  this.recvWindowCapacity = this.recvWindow;
  this.epochStart = now;
  this.sendFrame({ type: WINDOW_UPDATE, flag: flags, streamID: this.streamId, length: delta });
}

proto.sendWindowUpdate = halfWindowUpdate;

interface MuxerInternals {
  _newStream(...args: unknown[]): StreamInternals;
}

/** yamux(init) whose streams send window updates at half a window (see the module comment). */
export function halfWindowYamux(init: YamuxMuxerInit = {}): () => StreamMuxerFactory {
  const stock = yamux(init);
  return () => {
    const factory = stock();
    const create = factory.createStreamMuxer.bind(factory);
    factory.createStreamMuxer = (maConn) => {
      const muxer = create(maConn);
      const internals = muxer as unknown as MuxerInternals;
      const newStream = internals._newStream.bind(muxer);
      internals._newStream = (...args) => {
        const stream = newStream(...args);
        stream[HALF_WINDOW] = true;
        return stream;
      };
      return muxer;
    };
    return factory;
  };
}
