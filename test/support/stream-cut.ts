/**
 * Ending a real libp2p stream early, from the sending side, the two ways a
 * member's stream really ends without being closed:
 *
 * - `reset`: the sender's code aborts the stream (a yamux RST reaches the
 *   other end, which sees the stream reset);
 * - `crash`: the sender's connection goes away without a word, as when its
 *   process dies (the kernel closes the socket with a FIN, and libp2p ends
 *   every stream on the connection without an error). Done here by ending
 *   the TCP socket under the connection, after what was written is flushed.
 *
 * `cutMidFrame` lets the next send() on the stream through only up to half
 * of its bytes and then cuts, so the other end is left inside a frame (every
 * protocol hands FramedStream's send() whole frames); `cutNow` cuts between
 * frames. Both resolve once the local end of the stream has closed.
 */
import type { Socket } from 'node:net';
import type { Connection, Stream } from '@libp2p/interface';

export type CutKind = 'reset' | 'crash';

export interface MidFrameCut {
  /** Bytes of the interrupted frame that were sent. */
  sentBytes: number;
  /** The whole frame's length, prefix included. */
  frameBytes: number;
}

/** The TCP socket under a connection made by @libp2p/tcp (an implementation detail: fails loudly if it moves). */
function socketOf(connection: Connection): Socket {
  const socket = (connection as unknown as { maConn?: { socket?: Socket } }).maConn?.socket;
  if (socket === undefined || typeof socket.end !== 'function') {
    throw new Error('stream-cut: the connection has no TCP socket at .maConn.socket (did the libp2p TCP transport change?)');
  }
  return socket;
}

function closed(stream: Stream): Promise<void> {
  if (stream.status !== 'open') return Promise.resolve();
  return new Promise((resolve) => stream.addEventListener('close', () => resolve(), { once: true }));
}

function cut(stream: Stream, connection: Connection, how: CutKind): void {
  if (how === 'reset') stream.abort(new Error('stream-cut: reset by the test'));
  else socketOf(connection).end();
}

/** Cuts `stream` between frames. */
export async function cutNow(stream: Stream, connection: Connection, how: CutKind): Promise<void> {
  const done = closed(stream);
  cut(stream, connection, how);
  await done;
}

/**
 * Arms `stream` so that its next send() of two or more bytes sends the first
 * half and then cuts the stream; resolves when that has happened and the
 * local end has closed.
 */
export function cutMidFrame(stream: Stream, connection: Connection, how: CutKind): Promise<MidFrameCut> {
  const send = stream.send.bind(stream);
  return new Promise((resolve, reject) => {
    stream.send = (data) => {
      const bytes = data instanceof Uint8Array ? data : data.subarray();
      if (bytes.byteLength < 2) return send(data);
      stream.send = send;
      const half = bytes.subarray(0, Math.floor(bytes.byteLength / 2));
      const more = send(half);
      const done = closed(stream);
      try {
        cut(stream, connection, how);
      } catch (err) {
        reject(err as Error);
        return more;
      }
      void done.then(() => resolve({ sentBytes: half.byteLength, frameBytes: bytes.byteLength }));
      return more;
    };
  });
}

/** The open streams of `protocol` on `connection` in one direction (the connection's own list, newest last). */
export function streamsOf(connection: Connection, protocol: string, direction: 'inbound' | 'outbound'): Stream[] {
  return connection.streams.filter((s) => s.protocol === protocol && s.direction === direction && s.status === 'open');
}
