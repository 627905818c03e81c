/**
 * The relay at each end of a live migration's channel (migrate-service.ts):
 * a local Unix socket's bytes (QEMU's migration stream, the disk mirror's
 * NBD connection) carried both ways over a /dwcp/migrate/2.0.0 stream as
 * Data frames.
 *
 * Its cost per byte is the migration's speed (the relay is CPU-bound in
 * Noise and yamux long before a link is full), so:
 * - the socket's reads are cut into frames of up to MIGRATE_CHUNK_BYTES
 *   and sent from the arrays they arrived in (migrate-wire.ts writes them
 *   as parts: no copy on the way out);
 * - a received frame's chunk is written to the socket as the parts it
 *   arrived in (views of the decrypted Noise messages), corked into one
 *   writev: no copy on the way in either (a 256 KiB frame spans ~16 Noise
 *   messages, and making it one array cost a fresh 256 KiB per frame);
 * - with LZ4 (live-codec.ts), up to MAX_FRAMES_IN_FLIGHT frames are being
 *   compressed (on libuv's threads) or written at once, in order, so the
 *   compression of one frame overlaps the writing of the previous ones
 *   instead of adding a thread hop per frame to the stream's latency.
 *
 * Invariants:
 * - Flow-controlled end to end: a socket's reads pause while more than
 *   PIPE_BUFFER_BYTES wait for the stream (plus at most
 *   MAX_FRAMES_IN_FLIGHT frames being compressed or written), and the
 *   stream's frames are read only as fast as the socket takes them
 *   (FramedStream pauses the muxer), so neither daemon buffers a whole
 *   migration.
 * - Bytes leave in the order they arrived, each frame whole.
 * - End of file travels as the stream's half-close and back; a broken
 *   stream or socket destroys the other side at once, so a QEMU never
 *   waits on a peer that is gone (its migration fails, and says so).
 */
import type { Socket } from 'node:net';
import type { Uint8ArrayList } from 'uint8arraylist';
import { DwcpError } from '../errors.ts';
import { LivePacker, type LiveCodec } from './live-codec.ts';
import { MIGRATE_CHUNK_BYTES, type MigrateChannelStream } from './migrate-wire.ts';

/** A socket's reads pause while this much waits for its stream. */
const PIPE_BUFFER_BYTES = 512 * 1024;
/** Frames being compressed or written at once (LZ4 only: uncompressed frames are written one after the other). */
const MAX_FRAMES_IN_FLIGHT = 4;

/**
 * Writes `bytes` to `socket`, a list's parts corked into one writev; false
 * when the socket asks for a drain (as write() reports it). The socket holds
 * the parts until written: they are views nothing else writes to.
 */
function writeParts(socket: Socket, bytes: Uint8Array | Uint8ArrayList): boolean {
  if (bytes instanceof Uint8Array) return socket.write(bytes);
  socket.cork();
  let more = true;
  try {
    for (const part of bytes) more = socket.write(part);
  } finally {
    socket.uncork();
  }
  return more;
}

/** Bytes a pipe moved each way (as the sockets saw them, before compression). */
export interface PipeCounts {
  sent: number;
  received: number;
}

/**
 * Carries a Unix socket's bytes over a migrate channel, both ways, until
 * both ends closed; rejects (destroying both) when either breaks. `counts`
 * is kept current as bytes move.
 */
export function pipe(ch: MigrateChannelStream, socket: Socket, counts: PipeCounts = { sent: 0, received: 0 }, codec: LiveCodec = 'none'): Promise<PipeCounts> {
  const packer = new LivePacker(codec);
  // Uncompressed frames need no overlap: one in flight, the socket paused behind it.
  const window = codec === 'none' ? 1 : MAX_FRAMES_IN_FLIGHT;
  const fail = (err: unknown): never => {
    const e = err instanceof Error ? err : new Error(String(err));
    socket.destroy(e);
    ch.reset(e);
    throw e;
  };
  // Socket → stream: cut into frames, reads paused while the stream is behind.
  const outbound = (async () => {
    const queue: Buffer[] = [];
    let queued = 0;
    let ended = false;
    let failed: Error | null = null;
    let wake: (() => void) | null = null;
    const notify = (): void => {
      wake?.();
      wake = null;
    };
    socket.on('data', (b: Buffer) => {
      queue.push(b);
      queued += b.byteLength;
      if (queued > PIPE_BUFFER_BYTES) socket.pause();
      notify();
    });
    socket.once('end', () => {
      ended = true;
      notify();
    });
    socket.once('close', () => {
      if (!ended) failed ??= new Error('the socket closed without an end of file');
      notify();
    });
    socket.once('error', (err) => {
      failed = err;
      notify();
    });
    // Each frame's write follows the previous one's: frames leave in order whenever their compression ends.
    let written: Promise<void> = Promise.resolve();
    const inFlight: Promise<void>[] = [];
    for (;;) {
      if (queue.length === 0) {
        if (failed !== null) throw failed;
        if (ended) break;
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const parts: Buffer[] = [];
      let size = 0;
      while (queue.length > 0 && size < MIGRATE_CHUNK_BYTES) {
        const head = queue[0] as Buffer;
        const take = Math.min(head.byteLength, MIGRATE_CHUNK_BYTES - size);
        parts.push(head.subarray(0, take));
        size += take;
        if (take === head.byteLength) queue.shift();
        else queue[0] = head.subarray(take);
      }
      queued -= size;
      const packed = packer.pack(parts, size);
      written = Promise.all([written, packed]).then(async ([, data]) => {
        await ch.write({ kind: 'data', data });
        counts.sent += size;
      });
      // Each is awaited below or at the end; a failure must not go unhandled meanwhile.
      written.catch(() => undefined);
      inFlight.push(written);
      if (inFlight.length >= window) await inFlight.shift();
      if (queued <= PIPE_BUFFER_BYTES && socket.isPaused()) socket.resume();
    }
    await written;
    await ch.close();
  })();
  // Stream → socket: a frame is read only once the socket took the last one.
  const inbound = (async () => {
    for (;;) {
      const msg = await ch.read();
      if (msg === undefined) break;
      if (msg.kind !== 'data') throw new DwcpError('invalid', `a ${msg.kind} inside the data of a migrate channel`);
      const bytes = await packer.unpack(msg.data.chunk, msg.data.rawLength);
      counts.received += bytes.byteLength;
      if (!writeParts(socket, bytes)) {
        await new Promise<void>((resolve, reject) => {
          const onDrain = (): void => {
            socket.off('close', onClose);
            resolve();
          };
          const onClose = (): void => {
            socket.off('drain', onDrain);
            reject(new Error('the socket closed while data waited for it'));
          };
          socket.once('drain', onDrain);
          socket.once('close', onClose);
        });
      }
    }
    socket.end();
  })();
  return Promise.all([outbound, inbound]).then(
    () => {
      socket.destroy();
      return counts;
    },
    (err: unknown) => fail(err),
  );
}
