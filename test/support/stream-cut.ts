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
 * frames. Both resolve once the local end of the stream has closed; the
 * half frame is on the connection before the cut.
 */
import type { Socket } from 'node:net';
import type { Connection, MessageStream, Stream } from '@libp2p/interface';

export type CutKind = 'reset' | 'crash';

export interface MidFrameCut {
  /** Bytes of the interrupted frame that were sent. */
  sentBytes: number;
  /** The whole frame's length, prefix included. */
  frameBytes: number;
}

/**
 * What lies under a connection made by @libp2p/tcp + Noise + Yamux, top down:
 * the encrypted message stream the muxer writes to, the TCP connection, and
 * its socket. Implementation details of libp2p 3: fails loudly if they move.
 */
function layersOf(connection: Connection): { buffers: MessageStream[]; socket: Socket } {
  const c = connection as unknown as { muxer?: { maConn?: MessageStream }; maConn?: MessageStream & { socket?: Socket } };
  const [encrypted, tcp, socket] = [c.muxer?.maConn, c.maConn, c.maConn?.socket];
  if (encrypted === undefined || tcp === undefined || socket === undefined || typeof socket.end !== 'function') {
    throw new Error('stream-cut: no .muxer.maConn, .maConn or .maConn.socket under the connection (did libp2p change?)');
  }
  return { buffers: [encrypted, tcp], socket };
}

function closed(stream: Stream): Promise<void> {
  if (stream.status !== 'open') return Promise.resolve();
  return new Promise((resolve) => stream.addEventListener('close', () => resolve(), { once: true }));
}

/** Resolves once `ms` has handed everything written to it to the layer below, or is gone. */
function flushed(ms: MessageStream): Promise<void> {
  if (ms.writeBufferLength === 0 || ms.status !== 'open') return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      ms.removeEventListener('idle', done);
      ms.removeEventListener('close', done);
      resolve();
    };
    ms.addEventListener('idle', done);
    ms.addEventListener('close', done);
  });
}

/**
 * Cuts once what `stream` was given is on the wire: bytes still waiting in a
 * buffer (for send window, or for the socket to drain) would be dropped by
 * either cut, and the other end left between frames after all.
 */
async function cut(stream: Stream, connection: Connection, how: CutKind): Promise<void> {
  await flushed(stream);
  if (how === 'reset') {
    stream.abort(new Error('stream-cut: reset by the test'));
    return;
  }
  const { buffers, socket } = layersOf(connection);
  // The daemon's Noise channel (src/net/noise-stream.ts) gathers one event-loop turn's sends and seals them at the
  // turn's end (a setImmediate queued before this one): after it, they are in the TCP layer's buffer or on the wire.
  await new Promise<void>((resolve) => setImmediate(resolve));
  for (const b of buffers) await flushed(b);
  // end() writes what the socket itself still holds, then the FIN.
  socket.end();
}

/** Cuts `stream` between frames. */
export async function cutNow(stream: Stream, connection: Connection, how: CutKind): Promise<void> {
  await cut(stream, connection, how);
  await closed(stream);
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
      void cut(stream, connection, how)
        .then(() => closed(stream))
        .then(() => resolve({ sentBytes: half.byteLength, frameBytes: bytes.byteLength }), reject);
      // The writer waits for drain as usual; it learns of the cut from the stream.
      return more;
    };
  });
}

/** The open streams of `protocol` on `connection` in one direction (the connection's own list, newest last). */
export function streamsOf(connection: Connection, protocol: string, direction: 'inbound' | 'outbound'): Stream[] {
  return connection.streams.filter((s) => s.protocol === protocol && s.direction === direction && s.status === 'open');
}
