import crypto from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { yamux } from '@chainsafe/libp2p-yamux';
import { YamuxStream } from '@chainsafe/libp2p-yamux/stream';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { Connection, Stream } from '@libp2p/interface';
import { FramedStream, MUXER_STREAM_OPTIONS } from '../../src/net/framing.ts';
import { BytesSchema } from '../../src/net/schema.ts';
import { noiseChannel } from '../../src/net/noise-channel.ts';
import { halfWindowYamux } from '../../src/net/yamux-window.ts';

type Muxer = 'half' | 'stock';
const ECHO = '/dwcp-test/yamux-window/1.0.0';
const WINDOW_UPDATE = 1;

function framed(stream: Stream): FramedStream<Uint8Array, Uint8Array> {
  return new FramedStream(stream, { protocol: ECHO, maxFrameBytes: 2 * 1024 * 1024, inbound: BytesSchema, outbound: BytesSchema });
}

/** The library's own frame sender on one stream, wrapped to count the window updates it sends. */
function countWindowUpdates(stream: Stream): { count: number } {
  expect(stream).toBeInstanceOf(YamuxStream);
  const internals = stream as unknown as { sendFrame(header: { type: number }, body?: unknown): boolean };
  const counter = { count: 0 };
  const send = internals.sendFrame.bind(stream);
  internals.sendFrame = (header, body) => {
    if (header.type === WINDOW_UPDATE) counter.count++;
    return send(header, body);
  };
  return counter;
}

describe('yamux window updates at half a window', () => {
  const hosts: Libp2p[] = [];
  afterAll(async () => {
    await Promise.all(hosts.map((h) => h.stop()));
  });

  /** A host whose echo handler counts the window updates its side of each stream sends (last stream's counter in `counted`). */
  async function host(muxer: Muxer): Promise<{ node: Libp2p; counted: { count: number }[] }> {
    const streamMuxers = [muxer === 'half' ? halfWindowYamux({ streamOptions: MUXER_STREAM_OPTIONS }) : yamux({ streamOptions: MUXER_STREAM_OPTIONS })];
    const node = await createLibp2p({
      privateKey: await generateKeyPair('Ed25519'),
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noiseChannel()],
      streamMuxers,
    });
    hosts.push(node);
    const counted: { count: number }[] = [];
    await node.handle(ECHO, (stream) => {
      counted.push(countWindowUpdates(stream));
      const f = framed(stream);
      void (async () => {
        for await (const msg of f) await f.write(msg);
        await f.close();
      })().catch(() => {});
    });
    return { node, counted };
  }

  const dial = (from: Libp2p, to: Libp2p): Promise<Connection> => from.dial(to.getMultiaddrs()[0] as never);

  /** Sends each message and awaits its echo before the next (a request and its answer, as Raft's append and ack). */
  async function pingPong(connection: Connection, messages: readonly Uint8Array[]): Promise<void> {
    const f = framed(await connection.newStream(ECHO));
    for (const m of messages) {
      await f.write(m);
      const back = await f.read();
      expect(back === undefined ? undefined : Buffer.from(back).equals(m)).toBe(true);
    }
    await f.close();
  }

  const small = Array.from({ length: 200 }, () => crypto.randomBytes(300));

  it('a receiver of small messages grants window about once per half window, not once per frame', async () => {
    const [stockClient, half, stock] = await Promise.all([host('stock'), host('half'), host('stock')]);
    await pingPong(await dial(stockClient.node, half.node), small);
    await pingPong(await dial(stockClient.node, stock.node), small);
    // 200 × ~300 bytes is far below half of the initial 256 KiB window: only the stream's ACK goes out.
    expect(half.counted.at(-1)?.count).toBeLessThanOrEqual(2);
    // The stock library answers every data frame (the reason for the change; also shows the counter works).
    expect(stock.counted.at(-1)?.count).toBeGreaterThanOrEqual(small.length);
  });

  it.each<[Muxer, Muxer]>([
    ['half', 'half'],
    ['stock', 'half'],
    ['half', 'stock'],
  ])('%s dialling %s: 24 MiB in 1 MiB messages each way arrive whole (the window keeps flowing)', async (a, b) => {
    const [dialler, listener] = await Promise.all([host(a), host(b)]);
    const big = Array.from({ length: 24 }, () => crypto.randomBytes(1024 * 1024));
    const f = framed(await (await dial(dialler.node, listener.node)).newStream(ECHO));
    const writes = (async () => {
      for (const m of big) await f.write(m);
    })();
    for (const m of big) {
      const back = await f.read();
      expect(back === undefined ? undefined : Buffer.from(back).equals(m)).toBe(true);
    }
    await writes;
    await f.close();
    // The half-window side still granted window as it read (else the echo would have stalled above).
    if (b === 'half') expect(listener.counted.at(-1)?.count).toBeGreaterThan(1);
  });
});
