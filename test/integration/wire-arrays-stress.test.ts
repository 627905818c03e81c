/**
 * Tries to break wire-arrays.ts's reuse rule (issue 19): an array is reused
 * once the connection's write buffer and its socket's `writableLength` were
 * seen empty after it was sent. If any layer still held a view of a reused
 * array, the peer would get other bytes than were sealed, its AEAD check would
 * fail and the connection abort; plain sockets would deliver wrong bytes. So
 * every test here checks every byte by hash.
 *
 * - Node alone: a sender scribbles over each 256 KiB array the moment the rule
 *   says it is free, through write() and cork()/uncork() (writev), to a
 *   reader that stalls at random: the reader's hash must still match.
 * - The whole stack, in one process so that every connection end shares the
 *   free list: one host dials three, in both directions at once, many streams
 *   per connection, one link through a relay that stalls its reads (the
 *   sender's socket backs up), one through a relay that cuts both sockets
 *   mid-transfer (its arrays in flight must never be reused by the others).
 */
import crypto from 'node:crypto';
import net from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Libp2p } from 'libp2p';
import { multiaddr } from '@multiformats/multiaddr';
import type { Connection, MessageStream, Stream } from '@libp2p/interface';
import { defaultLogger } from '@libp2p/logger';
import { FramedStream } from '../../src/net/framing.ts';
import { BytesSchema } from '../../src/net/schema.ts';
import { meshLikeHost } from '../support/mesh-host.ts';
import { tcpRelay, type TcpRelay } from '../support/tcp-relay.ts';
import { wireArrayCounts } from '../../src/net/wire-arrays.ts';
import { NoiseTransportStream } from '../../src/net/noise-stream.ts';
import { TAG_BYTES } from '../../src/net/noise-crypto.ts';

const LOOPBACK = '127.0.0.1';
const ARRAY = 256 * 1024;

/** A relay that forwards both ways; `stall` pauses reads from either side at random, `cut()` destroys every socket. */
function relay(target: number, stall: boolean): Promise<TcpRelay> {
  const pipe = (from: net.Socket, to: net.Socket): void => {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', () => from.resume());
      } else if (stall && Math.random() < 0.2) {
        from.pause();
        setTimeout(() => from.resume(), 1 + Math.floor(Math.random() * 15));
      }
    });
  };
  return tcpRelay({ host: LOOPBACK, port: target }, (inbound, outbound) => {
    pipe(inbound, outbound);
    pipe(outbound, inbound);
  });
}

describe("Node's socket: writableLength 0 after a write means the socket no longer needs the array", () => {
  it.each([['write()'], ['cork()/uncork() (writev)']])('through %s, arrays scribbled as soon as they count as free arrive intact', async (how) => {
    const server = net.createServer();
    server.listen(0, LOOPBACK);
    await once(server, 'listening');
    const accepted = once(server, 'connection');
    const sender = net.connect({ host: LOOPBACK, port: (server.address() as AddressInfo).port });
    await once(sender, 'connect');
    const [reader] = (await accepted) as [net.Socket];
    const got = crypto.createHash('sha256');
    let gotBytes = 0;
    reader.on('data', (chunk: Buffer) => {
      got.update(chunk);
      gotBytes += chunk.byteLength;
      if (Math.random() < 0.1) {
        reader.pause();
        setTimeout(() => reader.resume(), Math.floor(Math.random() * 10));
      }
    });
    const want = crypto.createHash('sha256');
    const free: Buffer[] = [];
    let inFlight: Buffer[] = [];
    let sent = 0;
    let reused = 0;
    let held = 0;
    const reclaim = (): void => {
      if (sender.writableLength !== 0) {
        held++;
        return;
      }
      for (const a of inFlight) {
        a.fill(0xa5); // scribble: any view the socket still had would now send 0xa5s
        free.push(a);
      }
      inFlight = [];
    };
    try {
      for (let i = 0; i < 400; i++) {
        reclaim();
        const batch = how === 'write()' ? 1 : 3;
        if (batch > 1) sender.cork();
        let full = false;
        for (let k = 0; k < batch; k++) {
          const popped = free.pop();
          if (popped !== undefined) reused++;
          const array = popped ?? Buffer.allocUnsafeSlow(ARRAY);
          crypto.randomFillSync(array);
          const out = array.subarray(0, ARRAY - Math.floor(Math.random() * 1000));
          want.update(out);
          sent += out.byteLength;
          full = !sender.write(out) || full;
          inFlight.push(array);
        }
        if (batch > 1) sender.uncork();
        reclaim();
        if (full && Math.random() < 0.5) await once(sender, 'drain');
        else if (Math.random() < 0.3) await new Promise((resolve) => setImmediate(resolve));
      }
      sender.end();
      await once(reader, 'end');
      expect(gotBytes).toBe(sent);
      expect(got.digest('hex')).toBe(want.digest('hex'));
      expect(held).toBeGreaterThan(0);
      expect(reused).toBeGreaterThan(0);
    } finally {
      sender.destroy();
      reader.destroy();
      server.close();
    }
  }, 60_000);
});

const SINK = '/dwcp-test/wire-arrays-sink/1.0.0';
const MAX_FRAME = 1024 * 1024;

function framed(stream: Stream): FramedStream<Uint8Array, Uint8Array> {
  return new FramedStream(stream, { protocol: SINK, maxFrameBytes: MAX_FRAME, inbound: BytesSchema, outbound: BytesSchema });
}

const host = meshLikeHost;

/** Every host sinks SINK streams: the first message names the stream, the hash of all is kept under that name. */
async function serveSink(h: Libp2p, received: Map<string, string>): Promise<void> {
  await h.handle(SINK, (stream) => {
    const f = framed(stream);
    void (async () => {
      const digest = crypto.createHash('sha256');
      let name: string | undefined;
      for await (const msg of f) {
        if (name === undefined) name = Buffer.from(msg).toString();
        else digest.update(msg);
      }
      if (name !== undefined) received.set(name, digest.digest('hex'));
    })().catch(() => {});
  });
}

/** Sends `total` bytes of random messages (1 B to 1 MiB) on a new stream named `name`; the hash sent. */
async function sendStream(connection: Connection, name: string, total: number): Promise<string> {
  const f = framed(await connection.newStream(SINK));
  await f.write(Buffer.from(name));
  const digest = crypto.createHash('sha256');
  for (let sent = 0; sent < total; ) {
    const size = Math.min(total - sent, Math.random() < 0.5 ? 1 + Math.floor(Math.random() * 2048) : 1 + Math.floor(Math.random() * MAX_FRAME));
    const msg = crypto.randomBytes(size);
    digest.update(msg);
    sent += size;
    // Half the small ones are not awaited: several land in one turn, so batches mix small and large sends.
    if (size < 2048 && Math.random() < 0.5) void f.write(msg).catch(() => {});
    else await f.write(msg);
  }
  await f.close();
  return digest.digest('hex');
}

describe('the Noise stream under concurrent bulk, stalls and cut connections', () => {
  it('delivers every byte of every surviving stream, both ways, while arrays are reused across connections', async () => {
    const hosts = await Promise.all([host(), host(), host(), host(), host()]);
    const [a, direct, slow, doomed, dropped] = hosts as [Libp2p, Libp2p, Libp2p, Libp2p, Libp2p];
    const received = new Map<string, string>();
    for (const h of hosts) await serveSink(h, received);
    const portOf = (h: Libp2p): number => Number(/\/tcp\/(\d+)/.exec(h.getMultiaddrs()[0]?.toString() ?? '')?.[1]);
    const slowRelay = await relay(portOf(slow), true);
    const cutRelay = await relay(portOf(doomed), false);
    const aborted: string[] = [];
    const relays = [slowRelay, cutRelay];
    try {
      const before = wireArrayCounts();
      const toDirect = await a.dial(direct.getMultiaddrs()[0] as never);
      const toSlow = await a.dial(multiaddr(`/ip4/${LOOPBACK}/tcp/${slowRelay.port}/p2p/${slow.peerId.toString()}`));
      const toDoomed = await a.dial(multiaddr(`/ip4/${LOOPBACK}/tcp/${cutRelay.port}/p2p/${doomed.peerId.toString()}`));
      // Aborted locally (a TCP reset) mid-transfer, through a stalling relay so that its queues hold sealed arrays then.
      const dropRelay = await relay(portOf(dropped), true);
      relays.push(dropRelay);
      const toDropped = await a.dial(multiaddr(`/ip4/${LOOPBACK}/tcp/${dropRelay.port}/p2p/${dropped.peerId.toString()}`));
      await expect.poll(() => direct.getConnections(a.peerId).length + slow.getConnections(a.peerId).length).toBe(2);
      const fromDirect = direct.getConnections(a.peerId)[0] as Connection;
      const fromSlow = slow.getConnections(a.peerId)[0] as Connection;
      for (const c of [toDirect, toSlow, fromDirect, fromSlow]) {
        c.addEventListener('close', (evt) => {
          if ((evt as { error?: Error }).error !== undefined) aborted.push(`${c.remoteAddr.toString()}: ${String((evt as { error?: Error }).error)}`);
        });
      }
      const STREAMS = 5;
      const BYTES = 6 * 1024 * 1024;
      const jobs: Promise<[string, string]>[] = [];
      const pairs: [string, Connection][] = [
        ['a>direct', toDirect],
        ['direct>a', fromDirect],
        ['a>slow', toSlow],
        ['slow>a', fromSlow],
      ];
      for (const [label, c] of pairs) {
        for (let s = 0; s < STREAMS; s++) {
          const name = `${label}#${s}`;
          jobs.push(sendStream(c, name, BYTES).then((hex) => [name, hex]));
        }
      }
      // The doomed connection: bulk that is cut mid-transfer, its arrays possibly still queued.
      const doomedJobs = [0, 1, 2].flatMap((s) => [
        sendStream(toDoomed, `a>doomed#${s}`, 64 * 1024 * 1024).catch(() => undefined),
        sendStream(toDropped, `a>dropped#${s}`, 64 * 1024 * 1024).catch(() => undefined),
      ]);
      // Streams reset mid-transfer on the surviving connections: yamux drops them, the connection goes on.
      const resets = [toDirect, toSlow, fromDirect].map(async (c, s) => {
        const stream = await c.newStream(SINK);
        const f = framed(stream);
        await f.write(Buffer.from(`reset#${s}`));
        for (let i = 0; i < 6; i++) await f.write(crypto.randomBytes(700_000));
        stream.abort(new Error('reset mid-transfer on purpose'));
      });
      setTimeout(() => cutRelay.cut(), 300);
      setTimeout(() => toDropped.abort(new Error('aborted mid-transfer on purpose')), 400);
      const sent = await Promise.all(jobs);
      await Promise.all(resets);
      const doomedSent = await Promise.all(doomedJobs);
      await expect.poll(() => sent.every(([name]) => received.has(name)), { timeout: 60_000 }).toBe(true);
      for (const [name, hex] of sent) expect(received.get(name), name).toBe(hex);
      expect(aborted).toEqual([]);
      // The cut came mid-transfer: no doomed stream got through whole.
      expect(doomedSent.filter((hex) => hex !== undefined)).toEqual([]);
      const after = wireArrayCounts();
      expect(after.reused - before.reused).toBeGreaterThan(0);
      expect(after.held - before.held).toBeGreaterThan(0);
    } finally {
      for (const r of relays) await r.close();
      await Promise.all(hosts.map((h) => h.stop()));
    }
  }, 180_000);
});

describe('memory a backed-up socket pins through wire arrays', () => {
  it('a small flush to a socket still writing earlier bytes does not pin a whole 256 KiB array', async () => {
    // libp2p's own TCP connection, not exported by the package: imported by path.
    const { toMultiaddrConnection } = (await import('../../node_modules/@libp2p/tcp/dist/src/socket-to-conn.js' as string)) as {
      toMultiaddrConnection(init: { socket: net.Socket; remoteAddr: unknown; direction: 'outbound'; log: unknown }): MessageStream;
    };
    const server = net.createServer();
    server.listen(0, LOOPBACK);
    await once(server, 'listening');
    const port = (server.address() as AddressInfo).port;
    const accepted = once(server, 'connection');
    const sender = net.connect({ host: LOOPBACK, port });
    await once(sender, 'connect');
    const [reader] = (await accepted) as [net.Socket];
    reader.pause(); // a peer that stopped reading (stalled, or behind a partition): the kernel's buffers fill
    const raw = toMultiaddrConnection({ socket: sender, remoteAddr: multiaddr(`/ip4/${LOOPBACK}/tcp/${port}`), direction: 'outbound', log: defaultLogger().forComponent('test:wire-arrays') });
    // Sealing is not what is measured: a cipher that seals in place with a blank tag.
    const stream = new NoiseTransportStream(raw, {
      encrypt: (p) => new Uint8Array((p as Uint8Array).buffer, (p as Uint8Array).byteOffset, p.byteLength + TAG_BYTES),
      decrypt: () => {
        throw new Error('nothing is received here');
      },
    });
    try {
      // Fill the kernel with 1 KiB writes straight to the socket, until one is left queued in the socket.
      for (let i = 0; i < 100_000 && sender.writableLength === 0; i++) sender.write(Buffer.alloc(1024));
      expect(sender.writableLength).toBeGreaterThan(0);
      // 100 small flushes (a heartbeat, a window update, a KV op: one per turn), each 50 bytes of plaintext.
      for (let i = 0; i < 100; i++) {
        expect(stream.send(Buffer.alloc(50, i))).toBe(true);
        await new Promise((resolve) => setImmediate(resolve));
      }
      expect(sender.writableLength).toBeLessThan(sender.writableHighWaterMark); // still taking writes, no drain asked
      const pinned = new Set<ArrayBufferLike>();
      // Writable's queue (a documented-as-internal getter): entries of { chunk } that hold views of the sealed arrays.
      const queued = (sender as unknown as { writableBuffer: { chunk: Uint8Array }[] }).writableBuffer;
      expect(queued.length).toBeGreaterThan(50);
      for (const { chunk } of queued) pinned.add(chunk.buffer);
      const bytes = [...pinned].reduce((sum, b) => sum + b.byteLength, 0);
      // The queue holds ~7 KB of wire; 1 MiB leaves room for Node's 8 KiB allocation slabs, not for 100 x 256 KiB.
      expect(bytes).toBeLessThan(1024 * 1024);
    } finally {
      stream.abort(new Error('test over'));
      sender.destroy();
      reader.destroy();
      server.close();
    }
  });
});
