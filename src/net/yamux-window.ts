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
 * Only streams of muxers made by `halfWindowYamux` behave so (each is given
 * the method as its own as the muxer creates it; the library's prototype is
 * left alone); a stock `yamux()` in the same process, as the interop tests
 * run, keeps the library's behaviour. The wrapper reads
 * three of the library's private fields (StreamInternals below) and leaves
 * the update itself to the library: the version is pinned in package.json
 * and test/unit/yamux-window.test.ts fails if they change.
 */
import { yamux, type YamuxMuxerInit } from '@chainsafe/libp2p-yamux';
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import type { StreamMuxerFactory } from '@libp2p/interface';

type SendWindowUpdate = (this: StreamInternals) => void;

/** The library's private fields the update reads, and the method it calls on a stream (always as the stream's own). */
interface StreamInternals {
  state: StreamState;
  recvWindow: number;
  recvWindowCapacity: number;
  sendWindowUpdate: SendWindowUpdate;
}

const libraryUpdate = (YamuxStream.prototype as unknown as StreamInternals).sendWindowUpdate;

/**
 * The library's update, held back while less than half the window is
 * spent. Held back only where the library would send no flag (its
 * getSendFlags sends SYN from Init, ACK from SYNReceived, and changes the
 * state as it does, so it is not called here) and is not paused (the
 * library restarts the epoch then). Once half is spent the library's own
 * "no update needed" test cannot hold, so it sends, growing the window by
 * its rule.
 */
function halfWindowUpdate(this: StreamInternals): void {
  const s = this.state;
  const quiet = s !== StreamState.Paused && s !== StreamState.Init && s !== StreamState.SYNReceived;
  if (quiet && this.recvWindow - this.recvWindowCapacity < this.recvWindow / 2) return;
  libraryUpdate.call(this);
}

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
        // Before the library's first update (the SYN goes in a microtask after the stream is made).
        stream.sendWindowUpdate = halfWindowUpdate;
        return stream;
      };
      return muxer;
    };
    return factory;
  };
}
