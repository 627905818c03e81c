/**
 * The daemon's Noise channel (src/net/noise-channel.ts, noise-stream.ts,
 * noise-crypto.ts): its AEAD against node:crypto and the library's own (in
 * place too), its
 * message splitter at every cut, and real libp2p hosts on 127.0.0.1 talking
 * through it: with each other, with the stock `@chainsafe/libp2p-noise` in
 * both directions (a federation mid-upgrade), through a man in the middle who
 * flips one ciphertext bit (the connection is dropped, nothing forged is
 * read), closing a connection right after a write (the batch goes first), and
 * bulk streams whose socket backs up, so that sealed arrays are reused only
 * once written (wire-arrays.ts: its rule alone, then the bytes end to end).
 */
import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto';
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { multiaddr } from '@multiformats/multiaddr';
import type { Connection, Stream } from '@libp2p/interface';
import { Uint8ArrayList } from 'uint8arraylist';
import { FramedStream, MUXER_STREAM_OPTIONS } from '../../src/net/framing.ts';
import { BytesSchema } from '../../src/net/schema.ts';
import { noiseChannel } from '../../src/net/noise-channel.ts';
import { noiseCrypto, sealInPlace, TAG_BYTES } from '../../src/net/noise-crypto.ts';
import { MAX_PLAINTEXT_BYTES, NoiseMessageDecoder, NoiseMessageError } from '../../src/net/noise-stream.ts';
import { tcpRelay } from '../support/tcp-relay.ts';
import { WireArrays, wireArrayCounts } from '../../src/net/wire-arrays.ts';
import type { MessageStream } from '@libp2p/interface';

const LOOPBACK = '127.0.0.1';

function bytesOf(list: Uint8Array | { subarray(): Uint8Array }): Buffer {
  return Buffer.from(list instanceof Uint8Array ? list : list.subarray());
}

/** The library's byte type: its Uint8ArrayList is v2 of the package, ours v3; each recognises the other's lists at run time. */
type Bytes = Parameters<typeof noiseCrypto.chaCha20Poly1305Encrypt>[0];

/** A plaintext of `n` bytes, whole or as a list of parts of about `part` bytes. */
function plaintext(n: number, part?: number): Bytes {
  const all = crypto.randomBytes(n);
  if (part === undefined) return all;
  const list = new Uint8ArrayList();
  for (let at = 0; at < n; at += part) list.append(all.subarray(at, Math.min(n, at + part)));
  return list as unknown as Bytes;
}

describe('noiseCrypto: ChaCha20-Poly1305 as Noise uses it', () => {
  const key = crypto.randomBytes(32);
  const nonce = Buffer.from('000000000700000000000000', 'hex');
  const ad = crypto.randomBytes(32);
  const cases: [string, Bytes][] = [
    ['empty', plaintext(0)],
    ['one byte', plaintext(1)],
    ['a small message', plaintext(383)],
    ['a full Noise message', plaintext(MAX_PLAINTEXT_BYTES)],
    ['many small parts', plaintext(20_000, 37)],
    ['a few large parts', plaintext(MAX_PLAINTEXT_BYTES, 20_000)],
  ];

  it.each(cases)('%s: the same bytes as node:crypto and the library default, and each opens the other', (_name, pt) => {
    const ours = bytesOf(noiseCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key));
    const stock = bytesOf(defaultCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key));
    const cipher = crypto.createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: 16 });
    cipher.setAAD(ad, { plaintextLength: pt.byteLength });
    const reference = Buffer.concat([cipher.update(bytesOf(pt)), cipher.final(), cipher.getAuthTag()]);
    expect(ours.equals(reference)).toBe(true);
    expect(stock.equals(reference)).toBe(true);
    expect(bytesOf(noiseCrypto.chaCha20Poly1305Decrypt(stock, nonce, ad, key)).equals(bytesOf(pt))).toBe(true);
    expect(bytesOf(defaultCrypto.chaCha20Poly1305Decrypt(Buffer.from(ours), nonce, ad, key)).equals(bytesOf(pt))).toBe(true);
    // Ciphertext split across parts (as it arrives from the socket) opens the same.
    const split = new Uint8ArrayList(ours.subarray(0, 5), ours.subarray(5, ours.byteLength - 7), ours.subarray(ours.byteLength - 7)) as unknown as Bytes;
    expect(bytesOf(noiseCrypto.chaCha20Poly1305Decrypt(split, nonce, ad, key)).equals(bytesOf(pt))).toBe(true);
  });

  it.each([
    ['a ciphertext bit', (c: Buffer) => void (c[0] = (c[0] ?? 0) ^ 1)],
    ['a tag bit', (c: Buffer) => void (c[c.byteLength - 1] = (c[c.byteLength - 1] ?? 0) ^ 0x80)],
  ])('refuses a message with %s flipped, small and large', (_what, flip) => {
    for (const n of [10, 5000]) {
      const sealed = bytesOf(noiseCrypto.chaCha20Poly1305Encrypt(plaintext(n), nonce, ad, key));
      flip(sealed);
      expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key)).toThrow();
    }
  });

  it('refuses a message under the wrong nonce, associated data or key', () => {
    for (const n of [10, 5000]) {
      const pt = plaintext(n);
      const sealed = bytesOf(noiseCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key));
      const otherNonce = Buffer.from(nonce);
      otherNonce[4] = 8;
      expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, otherNonce, ad, key)).toThrow();
      expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, crypto.randomBytes(32), key)).toThrow();
      expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, crypto.randomBytes(32))).toThrow();
      expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed.subarray(0, 10), nonce, ad, key)).toThrow();
    }
  });

  it('seals in place and opens in place, the same bytes as a fresh array', () => {
    for (const n of [0, 1, 5000, MAX_PLAINTEXT_BYTES]) {
      const pt = bytesOf(plaintext(n));
      const expected = bytesOf(noiseCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key));
      // Laid out as on the wire: a prefix before, the tag's room after, more bytes behind.
      const wire = Buffer.alloc(2 + n + TAG_BYTES + 3, 0xee);
      pt.copy(wire, 2);
      const sealed = sealInPlace(wire.subarray(2, 2 + n), (p) => noiseCrypto.chaCha20Poly1305Encrypt(p, nonce, ad, key) as Uint8Array);
      expect(sealed.buffer).toBe(wire.buffer);
      expect(Buffer.from(sealed).equals(expected)).toBe(true);
      expect(wire.subarray(2 + n + TAG_BYTES).equals(Buffer.alloc(3, 0xee))).toBe(true);
      const opened = noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key, sealed);
      expect(opened.byteLength).toBe(n);
      expect(bytesOf(opened).equals(pt)).toBe(true);
      expect((opened as Uint8Array).buffer).toBe(wire.buffer);
    }
  });

  it('refuses to seal in place without room for the tag, and encrypts into fresh arrays otherwise', () => {
    const tight = Buffer.alloc(100).subarray(90);
    expect(() => sealInPlace(tight, (p) => noiseCrypto.chaCha20Poly1305Encrypt(p, nonce, ad, key) as Uint8Array)).toThrow(RangeError);
    const pt = Buffer.from(bytesOf(plaintext(100)));
    const copy = Buffer.from(pt);
    noiseCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key);
    expect(pt.equals(copy)).toBe(true);
  });

  it('opens nothing in place from a tampered message', () => {
    const pt = bytesOf(plaintext(5000));
    const sealed = Buffer.from(bytesOf(noiseCrypto.chaCha20Poly1305Encrypt(pt, nonce, ad, key)));
    sealed[100] = (sealed[100] ?? 0) ^ 1;
    expect(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce, ad, key, sealed)).toThrow();
    expect(sealed.subarray(0, 5000).equals(pt)).toBe(false);
  });
});

describe('NoiseMessageDecoder', () => {
  const messages = [16, 17, 300, 65_535].map((n) => crypto.randomBytes(n));
  const wire = Buffer.concat(messages.flatMap((m) => [Buffer.from([m.byteLength >> 8, m.byteLength & 0xff]), m]));

  it('splits the same messages however the bytes are cut', () => {
    for (const cut of [0, 1, 2, 3, 18, 19, 20, 500, wire.byteLength - 1, wire.byteLength]) {
      const d = new NoiseMessageDecoder();
      const got = [...d.push(wire.subarray(0, cut)), ...d.push(new Uint8ArrayList(wire.subarray(cut)))].map(bytesOf);
      expect(got.map((m) => m.toString('hex'))).toEqual(messages.map((m) => m.toString('hex')));
    }
  });

  it('refuses a length that cannot hold a tag', () => {
    expect(() => new NoiseMessageDecoder().push(Uint8Array.of(0, 15))).toThrow(NoiseMessageError);
  });
});

type Encrypter = 'channel' | 'stock';

function host(encrypter: Encrypter): Promise<Libp2p> {
  return generateKeyPair('Ed25519').then((privateKey) =>
    createLibp2p({
      privateKey,
      addresses: { listen: [`/ip4/${LOOPBACK}/tcp/0`] },
      transports: [tcp()],
      connectionEncrypters: encrypter === 'channel' ? [noiseChannel()] : [noise()],
      streamMuxers: [yamux({ streamOptions: MUXER_STREAM_OPTIONS })],
    }),
  );
}

const ECHO = '/dwcp-test/noise-echo/1.0.0';
const MAX_FRAME = 1024 * 1024;

function framed(stream: Stream): FramedStream<Uint8Array, Uint8Array> {
  return new FramedStream(stream, { protocol: ECHO, maxFrameBytes: MAX_FRAME, inbound: BytesSchema, outbound: BytesSchema });
}

async function serveEcho(server: Libp2p): Promise<void> {
  await server.handle(ECHO, (stream) => {
    const f = framed(stream);
    void (async () => {
      for await (const msg of f) await f.write(msg);
      await f.close();
    })().catch(() => {});
  });
}

/** Writes every message without waiting in between (one turn's worth where they are small), then reads the echoes. */
async function echoes(connection: Connection, messages: Uint8Array[]): Promise<void> {
  const f = framed(await connection.newStream(ECHO));
  const writes = messages.map((m) => f.write(m));
  const back: Uint8Array[] = [];
  for (let i = 0; i < messages.length; i++) {
    const msg = await f.read();
    if (msg === undefined) throw new Error(`echo stream ended after ${i} of ${messages.length} messages`);
    back.push(msg);
  }
  await Promise.all(writes);
  await f.close();
  expect(await f.read()).toBeUndefined();
  expect(back.length).toBe(messages.length);
  for (const [i, m] of messages.entries()) expect(Buffer.from(back[i] as Uint8Array).equals(m)).toBe(true);
}

const mixed = (): Uint8Array[] => [0, 1, 100, 1000, 65_519, 65_520, 200_000, 1_000_000, ...Array.from({ length: 200 }, (_, i) => i % 50)].map((n) => crypto.randomBytes(n));

describe('the Noise channel between libp2p hosts', () => {
  const hosts: Libp2p[] = [];
  const start = async (encrypter: Encrypter): Promise<Libp2p> => {
    const h = await host(encrypter);
    hosts.push(h);
    await serveEcho(h);
    return h;
  };
  const dial = (from: Libp2p, to: Libp2p): Promise<Connection> => from.dial(to.getMultiaddrs()[0] as never);

  afterAll(async () => {
    await Promise.all(hosts.map((h) => h.stop()));
  });

  it.each<[Encrypter, Encrypter]>([
    ['channel', 'channel'],
    ['channel', 'stock'],
    ['stock', 'channel'],
  ])('%s dialling %s: messages of every size, many in one turn, arrive whole and in order both ways', async (a, b) => {
    const [dialler, listener] = await Promise.all([start(a), start(b)]);
    const connection = await dial(dialler, listener);
    expect(connection.encryption).toBe('/noise');
    await echoes(connection, mixed());
    // And the other way round on the same connection, as the listener's own streams.
    const back = listener.getConnections(dialler.peerId)[0];
    if (back === undefined) throw new Error('the listener has no connection back');
    await echoes(back, mixed());
  });

  it('sends what was written before a graceful close of the connection', async () => {
    const [a, b] = await Promise.all([start('channel'), start('channel')]);
    const received = Promise.withResolvers<Uint8Array[]>();
    await b.handle('/dwcp-test/last-words/1.0.0', (stream) => {
      const f = framed(stream);
      void (async () => {
        const got: Uint8Array[] = [];
        for await (const msg of f) got.push(msg);
        received.resolve(got);
      })().catch(received.reject);
    });
    const connection = await dial(a, b);
    const f = framed(await connection.newStream('/dwcp-test/last-words/1.0.0'));
    const words = [crypto.randomBytes(10), crypto.randomBytes(3000)];
    for (const w of words) await f.write(w);
    await f.close();
    // Same turn: the frames and the stream's FIN are still batched when the connection closes.
    await connection.close();
    const got = await received.promise;
    expect(got.map((m) => Buffer.from(m).toString('hex'))).toEqual(words.map((w) => w.toString('hex')));
  });
});

describe('WireArrays: a sealed array is reused only once both write queues were seen empty', () => {
  /** The two queues the rule reads, as a connection and its socket expose them; each test its own array size (the free lists are per size). */
  const connection = (): { raw: MessageStream; socket: { writableLength: number; destroyed: boolean }; raw2: { writeBufferLength: number } } => {
    const socket = { writableLength: 0, destroyed: false };
    const raw2 = { writeBufferLength: 0, socket };
    return { raw: raw2 as unknown as MessageStream, socket, raw2 };
  };

  it('reuses an array the socket wrote at once, and not one it still holds', () => {
    const c = connection();
    const arrays = new WireArrays(c.raw, 1001);
    const first = arrays.take(1001);
    arrays.sent(first); // nothing queued: written within write()
    expect(arrays.take(500)).toBe(first);
    c.socket.writableLength = 1001; // this write went to libuv's queue
    arrays.sent(first);
    const second = arrays.take(1001);
    expect(second).not.toBe(first);
    arrays.sent(second);
    c.socket.writableLength = 0;
    c.raw2.writeBufferLength = 7; // and the connection's own buffer holds the next
    expect([first, second]).not.toContain(arrays.take(1001));
    c.raw2.writeBufferLength = 0;
    const free = [arrays.take(1001), arrays.take(1001)];
    expect(free).toContain(first);
    expect(free).toContain(second);
  });

  it('gives a small flush into a busy queue an array of its own size, and one into idle queues a pooled array', () => {
    const c = connection();
    const arrays = new WireArrays(c.raw, 4000);
    c.socket.writableLength = 10; // the socket still writes an earlier flush
    const small = arrays.take(999);
    expect(small.byteLength).toBe(999); // a pooled array here would stay pinned, 4x its bytes or more, until written
    expect(arrays.take(1000).byteLength).toBe(4000); // a quarter of an array and up: pooled
    c.socket.writableLength = 0;
    c.raw2.writeBufferLength = 1; // the connection's own buffer counts as busy too
    expect(arrays.take(999).byteLength).toBe(999);
    c.raw2.writeBufferLength = 0;
    expect(arrays.take(999).byteLength).toBe(4000);
  });

  it('never reuses what a closed connection had in flight, nor arrays for a connection without a visible socket', () => {
    const c = connection();
    const arrays = new WireArrays(c.raw, 1002);
    const held = arrays.take(1002);
    c.socket.writableLength = 1002;
    arrays.sent(held);
    arrays.forget();
    c.socket.writableLength = 0;
    expect(arrays.take(1002)).not.toBe(held);
    const destroyed = connection();
    const onDestroyed = new WireArrays(destroyed.raw, 1003);
    const last = onDestroyed.take(1003);
    destroyed.socket.destroyed = true;
    onDestroyed.sent(last);
    expect(onDestroyed.take(1003)).not.toBe(last);
    const memory = new WireArrays({ writeBufferLength: 0 } as unknown as MessageStream, 1004);
    const a = memory.take(1004);
    memory.sent(a);
    expect(memory.take(1004)).not.toBe(a);
    expect(arrays.take(5000).byteLength).toBe(5000); // larger than the pooled size: a one-off array
  });
});

describe('bulk over the Noise channel with a backed-up socket', () => {
  it('delivers every byte intact while sealed arrays are held by the socket and reused once written', async () => {
    const [a, b] = await Promise.all([host('channel'), host('channel')]);
    try {
      const SINK = '/dwcp-test/noise-sink/1.0.0';
      const received = new Map<number, string>();
      await b.handle(SINK, (stream) => {
        const f = framed(stream);
        void (async () => {
          const digest = crypto.createHash('sha256');
          let index = -1;
          for await (const msg of f) {
            if (index < 0) index = msg[0] ?? 0;
            digest.update(msg);
          }
          received.set(index, digest.digest('hex'));
        })().catch(() => {});
      });
      const connection = await a.dial(b.getMultiaddrs()[0] as never);
      const before = wireArrayCounts();
      // Four streams of 12 MiB each in 1 MiB messages, all at once: past the kernel's socket buffers, so writes queue.
      const pool = crypto.randomBytes(4 * 1024 * 1024);
      const sent = await Promise.all(
        [0, 1, 2, 3].map(async (s) => {
          const f = framed(await connection.newStream(SINK));
          const digest = crypto.createHash('sha256');
          for (let i = 0; i < 12; i++) {
            const msg = Buffer.from(pool.subarray((i * 331_337 + s * 1_000_003) % (3 * 1024 * 1024)).subarray(0, 1024 * 1024));
            if (i === 0) msg[0] = s;
            digest.update(msg);
            await f.write(msg);
          }
          await f.close();
          return digest.digest('hex');
        }),
      );
      await expect.poll(() => received.size, { timeout: 30_000 }).toBe(4);
      for (const [s, hex] of sent.entries()) expect(received.get(s)).toBe(hex);
      const after = wireArrayCounts();
      expect(after.reused - before.reused).toBeGreaterThan(0);
      expect(after.held - before.held).toBeGreaterThan(0);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});

/**
 * A TCP relay between a dialler and a listener that, once armed, flips one bit
 * in the next chunk it forwards from the dialler: by then the handshake is
 * over, so the bit lands in a transport-phase Noise message.
 */
async function bitFlipper(target: { host: string; port: number }): Promise<{ port: number; arm(): void; close(): Promise<void> }> {
  let armed = false;
  const relay = await tcpRelay(target, (inbound, outbound) => {
    inbound.on('data', (chunk: Buffer) => {
      if (armed && chunk.byteLength > 20) {
        armed = false;
        const flipped = Buffer.from(chunk);
        flipped[flipped.byteLength - 5] = (flipped[flipped.byteLength - 5] ?? 0) ^ 0x10;
        outbound.write(flipped);
      } else {
        outbound.write(chunk);
      }
    });
    outbound.on('data', (chunk: Buffer) => inbound.write(chunk));
  });
  return { port: relay.port, arm: () => void (armed = true), close: () => relay.close() };
}

describe('a tampered Noise channel', () => {
  let a: Libp2p;
  let b: Libp2p;
  beforeAll(async () => {
    [a, b] = await Promise.all([host('channel'), host('channel')]);
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  it.each<[Encrypter]>([['channel'], ['stock']])('is dropped by a %s receiver at the first forged message, and nothing after it is read', async (receiver) => {
    const target = receiver === 'channel' ? b : await host('stock');
    try {
      const seen: Uint8Array[] = [];
      const ended = Promise.withResolvers<unknown>();
      await target.handle('/dwcp-test/tamper/1.0.0', (stream) => {
        const f = framed(stream);
        void (async () => {
          for await (const msg of f) seen.push(msg);
        })().then(() => ended.resolve(undefined), ended.resolve);
      });
      const addr = target.getMultiaddrs()[0];
      if (addr === undefined) throw new Error('no listen address');
      const relay = await bitFlipper({ host: LOOPBACK, port: Number(/\/tcp\/(\d+)/.exec(addr.toString())?.[1]) });
      try {
        const connection = await a.dial(multiaddr(`/ip4/${LOOPBACK}/tcp/${relay.port}/p2p/${target.peerId.toString()}`));
        const f = framed(await connection.newStream('/dwcp-test/tamper/1.0.0'));
        const clean = crypto.randomBytes(100);
        await f.write(clean);
        // The clean message must be through before the relay is armed, so the flip hits the next one.
        await expect.poll(() => seen.length, { timeout: 20_000 }).toBe(1);
        relay.arm();
        await f.write(crypto.randomBytes(5000)).catch(() => {});
        // The receiver's stream ends with the connection (libp2p reports a transport that was aborted to its
        // streams as closed, so how it ends is FramedStream's business); what matters here is that it ends and
        // that nothing after the forged message was read.
        await ended.promise;
        expect(seen.length).toBe(1);
        expect(Buffer.from(seen[0] as Uint8Array).equals(clean)).toBe(true);
        await expect.poll(() => target.getConnections(a.peerId).length, { timeout: 20_000 }).toBe(0);
      } finally {
        await relay.close();
      }
    } finally {
      if (target !== b) await target.stop();
    }
  });
});
