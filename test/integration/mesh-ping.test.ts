/**
 * Pings and the member connection, over two real MemberMeshes
 * (test/support/mesh-pair.ts):
 *
 * - A ping that is not answered must not cost the connection while the
 *   member is otherwise alive. libp2p's own connection monitor pinged every
 *   10 s on /ipfs/ping/1.0.0, which allows one outbound stream per
 *   connection: whenever the mesh's own ping was in flight the monitor's
 *   stream was refused ("Too many outbound protocol streams"), and a monitor
 *   ping slower than its (at least 5 s) timeout failed; either way the
 *   monitor aborted the whole connection, cutting every protocol on it. The
 *   test provokes both at once: b never answers a ping (the mesh's pings stay
 *   in flight, as a bulk transfer or a starved CPU makes them), while a bulk
 *   stream and a starved event loop keep the connection busy, for longer
 *   than one monitor period plus its shortest timeout. The connection must
 *   survive and the bulk stream deliver every frame.
 * - A member that answers no ping for `network.deadAfterMs` is hung up on and
 *   redialled: the one job of the monitor the mesh keeps, with a threshold
 *   that tolerates load.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Connection, Stream } from '@libp2p/interface';
import { FramedStream } from '../../src/net/framing.ts';
import { BytesSchema } from '../../src/net/schema.ts';
import { meshPair, waitFor, type MeshPair } from '../support/mesh-pair.ts';

const PING_PROTOCOL = '/ipfs/ping/1.0.0';
/** libp2p 3's connection monitor: a ping every 10 s (DEFAULT_PING_INTERVAL_MS), failed after at least 5 s (AdaptiveTimeout's DEFAULT_MIN_TIMEOUT). */
const MONITOR_PERIOD_MS = 10_000;
const MONITOR_MIN_TIMEOUT_MS = 5_000;
const BULK_PROTOCOL = '/dwcp-test/bulk/1.0.0';
const FRAME_BYTES = 64 * 1024;

let pair: MeshPair | undefined;
afterEach(async () => {
  await pair?.close();
  pair = undefined;
});

/** Makes `node`'s ping responder swallow pings (answering none) while `stalled()` says so, echoing them otherwise. */
async function stallablePings(pair: MeshPair, stalled: () => boolean): Promise<{ held: Stream[] }> {
  const host = pair.b.mesh.host;
  const held: Stream[] = [];
  await host.unhandle(PING_PROTOCOL);
  await host.handle(
    PING_PROTOCOL,
    (stream) => {
      if (stalled()) {
        // Read and keep the stream, as a responder too busy to answer would.
        held.push(stream);
        return;
      }
      stream.addEventListener('message', (evt) => stream.send(evt.data));
      stream.addEventListener('remoteCloseWrite', () => void stream.close().catch(() => {}));
    },
    { maxInboundStreams: 64 },
  );
  return { held };
}

function connectionTo(pair: MeshPair): Connection {
  const [connection] = pair.a.mesh.host.getConnections(pair.b.mesh.host.peerId);
  if (connection === undefined) throw new Error('a has no connection to b');
  return connection;
}

describe('pings and the member connection', () => {
  it('keeps the connection and its streams through pings that go unanswered under load', { timeout: 90_000 }, async () => {
    // The mesh pings every 200 ms and waits up to 10 s for an answer: with none coming, one of its pings is in flight
    // all the time (and deadAfterMs is far off).
    pair = await meshPair({ network: { pingIntervalMs: 200, deadAfterMs: 600_000 } });
    const { a, b } = pair;
    const { held } = await stallablePings(pair, () => true);
    const closed: string[] = [];
    for (const n of [a, b]) n.mesh.host.addEventListener('connection:close', (evt) => closed.push(`${n.name}: ${evt.detail.id}`));
    const connection = connectionTo(pair);

    // Bulk traffic a → b on its own stream, counted and checked frame by frame at b.
    let received = 0;
    let readFailure: unknown;
    const readDone = Promise.withResolvers<void>();
    await b.mesh.host.handle(BULK_PROTOCOL, (stream) => {
      const framed = new FramedStream(stream, { protocol: BULK_PROTOCOL, maxFrameBytes: FRAME_BYTES, inbound: BytesSchema, outbound: BytesSchema });
      void (async () => {
        try {
          for await (const frame of framed) {
            if (frame.byteLength !== FRAME_BYTES || frame[0] !== received % 251) throw new Error(`frame ${received} is wrong`);
            received++;
          }
        } catch (err) {
          readFailure = err;
        }
        readDone.resolve();
      })();
    });
    const raw = await connection.newStream(BULK_PROTOCOL);
    const bulk = new FramedStream(raw, { protocol: BULK_PROTOCOL, maxFrameBytes: FRAME_BYTES, inbound: BytesSchema, outbound: BytesSchema });

    // The fault lasts one monitor period plus its shortest timeout, and a margin: long enough for a monitor, were
    // there one, to have pinged, collided or timed out, and aborted.
    const faultEnds = Date.now() + MONITOR_PERIOD_MS + MONITOR_MIN_TIMEOUT_MS + 2_000;
    // CPU starvation: the event loop is held for 300 ms in every 500 (every pong, ack and timer waits behind it).
    const starve = setInterval(() => {
      const until = Date.now() + 300;
      while (Date.now() < until) {
        // busy: this is the fault
      }
    }, 500);
    let sent = 0;
    let writeFailure: unknown;
    try {
      while (Date.now() < faultEnds) {
        const frame = new Uint8Array(FRAME_BYTES).fill(sent % 251);
        await bulk.write(frame);
        sent++;
      }
      await bulk.close();
    } catch (err) {
      writeFailure = err;
    } finally {
      clearInterval(starve);
    }
    await readDone.promise;

    expect({ writeFailure, readFailure, closed }).toEqual({ writeFailure: undefined, readFailure: undefined, closed: [] });
    expect(received).toBe(sent);
    expect(sent).toBeGreaterThan(0);
    expect(held.length, 'the mesh pinged (and went unanswered) throughout').toBeGreaterThanOrEqual(2);
    expect(connection.status).toBe('open');
    expect(connectionTo(pair).id).toBe(connection.id);
    expect(a.mesh.isConnected(b.peerId) && b.mesh.isConnected(a.peerId)).toBe(true);
  });

  it('hangs up on a member that answers no ping for deadAfterMs, and reconnects once it answers again', async () => {
    pair = await meshPair({ network: { pingIntervalMs: 100, deadAfterMs: 2_000 } });
    const { a, b } = pair;
    let stalled = true;
    await stallablePings(pair, () => stalled);
    const first = connectionTo(pair);
    const hungUp = Promise.withResolvers<void>();
    first.addEventListener('close', () => hungUp.resolve());
    const started = Date.now();
    await hungUp.promise;
    // Not before a whole deadAfterMs without an answer.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
    stalled = false;
    await waitFor('a and b to reconnect', () => a.mesh.isConnected(b.peerId) && b.mesh.isConnected(a.peerId) && connectionTo(pair as MeshPair).id !== first.id);
  });
});
