/**
 * The framing layer: the pure decoder at every split point and at its limits,
 * the protobuf schemas and their field errors, and FramedStream over a real
 * pair of libp2p nodes (TCP + the daemon's Noise channel + Yamux on 127.0.0.1):
 * round trips, bad frames resetting only their own stream and being counted,
 * back-pressure in both directions, and a stream the remote reset or whose
 * connection died under it reported as lost, never as a clean end.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { yamux } from '@chainsafe/libp2p-yamux';
import type { Multiaddr } from '@multiformats/multiaddr';
import type { Stream, StreamCloseEvent } from '@libp2p/interface';
import { Uint8ArrayList } from 'uint8arraylist';
import { createMetrics, type FrameRejectReason } from '../../src/metrics/metrics.ts';
import {
  FrameDecoder,
  FrameError,
  FramedStream,
  MAX_FRAME_LENGTH,
  MUXER_STREAM_OPTIONS,
  StreamLostError,
  encodeFrame,
  frameEventsFor,
  type FrameEvents,
} from '../../src/net/framing.ts';
import { BytesSchema, loadProto, type MessageSchema } from '../../src/net/schema.ts';
import { noiseChannel } from '../../src/net/noise-channel.ts';
import {
  HELLO_MAX_FRAME_BYTES,
  HelloFrameSchema,
  HelloResultSchema,
  HelloSchema,
  type Hello,
  type HelloFrame,
} from '../../src/net/hello-schema.ts';
import { frameErrorOf } from '../support/frame-error.ts';
import { cutMidFrame, cutNow, type CutKind } from '../support/stream-cut.ts';

const P = '/dwcp-test/frames/1.0.0';

function bytes(n: number, fill: number): Uint8Array {
  return new Uint8Array(n).fill(fill);
}

/** Cheaper than toEqual on thousands of Uint8Arrays. */
function sameFrames(actual: Uint8Array[], expected: Uint8Array[]): boolean {
  return actual.length === expected.length && actual.every((f, i) => Buffer.from(f).equals(expected[i] as Uint8Array));
}

function concat(parts: Uint8Array[]): Uint8Array {
  return new Uint8ArrayList(...parts).subarray();
}


describe('FrameDecoder', () => {
  const payloads = [0, 1, 127, 128, 300, 2000].map((n, i) => bytes(n, i + 1));
  const wire = concat(payloads.map((p) => encodeFrame(p, 4096)));

  it('encodes lengths as unsigned varints', () => {
    expect([...encodeFrame(new Uint8Array(0), 10)]).toEqual([0]);
    expect([...encodeFrame(bytes(300, 7), 300).subarray(0, 2)]).toEqual([0xac, 0x02]);
    expect(encodeFrame(bytes(300, 7), 300).byteLength).toBe(302);
  });

  it('decodes the same frames however the input is split or coalesced', () => {
    const whole = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
    expect(whole.push(wire)).toEqual(payloads);
    for (let cut = 0; cut <= wire.byteLength; cut++) {
      const d = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
      const frames = [...d.push(wire.subarray(0, cut)), ...d.push(new Uint8ArrayList(wire.subarray(cut)))];
      if (!sameFrames(frames, payloads)) expect(frames, `split at byte ${cut}`).toEqual(payloads);
      expect(d.bufferedBytes).toBe(0);
      d.end();
    }
    const byByte = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
    const frames: Uint8Array[] = [];
    for (const b of wire) {
      frames.push(...byByte.push(Uint8Array.of(b)));
      expect(byByte.bufferedBytes).toBeLessThanOrEqual(4096 + 5);
    }
    expect(frames).toEqual(payloads);
  });

  it('hands a frame spanning several chunks on as views of them (pushLists), the same bytes push() copies into one array', () => {
    const big = bytes(50_000, 3);
    const input = encodeFrame(big, 65_536);
    const chunks = [input.slice(0, 2), input.slice(2, 20_000), input.slice(20_000, 40_001), input.slice(40_001)];
    const d = new FrameDecoder({ protocol: P, maxFrameBytes: 65_536 });
    const frames = chunks.flatMap((c) => d.pushLists(c));
    expect(frames).toHaveLength(1);
    const parts = [...(frames[0] as Uint8ArrayList)];
    // Nothing copied: each part lies in the chunk it arrived in.
    expect(parts.map((p) => p.buffer)).toEqual(chunks.slice(1).map((c) => c.buffer));
    expect(sameFrames([(frames[0] as Uint8ArrayList).subarray()], [big])).toBe(true);
    const whole = new FrameDecoder({ protocol: P, maxFrameBytes: 65_536 });
    expect(sameFrames(chunks.flatMap((c) => whole.push(c)), [big])).toBe(true);
  });

  it('rejects a declared length above the limit from the header alone', () => {
    const header = encodeFrame(bytes(70_000, 0), MAX_FRAME_LENGTH).subarray(0, 3);
    const d = new FrameDecoder({ protocol: '/dwcp/hello/1.0.0', maxFrameBytes: 65_536 });
    expect(d.push(header.subarray(0, 2))).toEqual([]);
    const err = frameErrorOf(() => d.push(header.subarray(2)), 'oversized');
    expect(err.message).toBe('/dwcp/hello/1.0.0: frame of 70000 bytes exceeds the 65536-byte limit');
    expect(err.protocol).toBe('/dwcp/hello/1.0.0');
    expect(d.bufferedBytes).toBe(0);
    // The decoder stays failed rather than resynchronising on payload bytes.
    expect(() => d.push(bytes(10, 0))).toThrow(err);
  });

  it('accepts a frame exactly at the limit, and lengths up to 2^32-1 in a 5-byte prefix', () => {
    const d = new FrameDecoder({ protocol: P, maxFrameBytes: 1000 });
    expect(d.push(encodeFrame(bytes(1000, 9), 1000))).toEqual([bytes(1000, 9)]);
    const big = new FrameDecoder({ protocol: P, maxFrameBytes: MAX_FRAME_LENGTH });
    expect(big.push(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x0f))).toEqual([]);
    expect(big.bufferedBytes).toBe(5);
  });

  it('rejects a prefix longer than 5 bytes or above 2^32-1 as malformed', () => {
    const long = new FrameDecoder({ protocol: P, maxFrameBytes: MAX_FRAME_LENGTH });
    expect(long.push(Uint8Array.of(0x80, 0x80, 0x80, 0x80))).toEqual([]);
    expect(frameErrorOf(() => long.push(Uint8Array.of(0x80, 0x01)), 'malformed').message).toBe(
      `${P}: length prefix is longer than the 5-byte maximum`,
    );
    const wide = new FrameDecoder({ protocol: P, maxFrameBytes: MAX_FRAME_LENGTH });
    expect(frameErrorOf(() => wide.push(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0x1f)), 'malformed').message).toMatch(
      /declares 8589934591 bytes, above the 4294967295-byte maximum/,
    );
  });

  it('reports a partial frame at the end of input as truncated', () => {
    const frame = encodeFrame(bytes(300, 1), 4096);
    const inPayload = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
    inPayload.push(frame.subarray(0, 100));
    expect(frameErrorOf(() => inPayload.end(), 'truncated').message).toBe(`${P}: stream ended inside a frame: 98 of its 300 payload bytes received`);
    const inHeader = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
    inHeader.push(frame.subarray(0, 1));
    expect(frameErrorOf(() => inHeader.end(), 'truncated').message).toMatch(/inside a length prefix/);
    const clean = new FrameDecoder({ protocol: P, maxFrameBytes: 4096 });
    clean.push(frame);
    expect(() => clean.end()).not.toThrow();
  });

  it('refuses to encode an oversized frame and rejects a bad limit', () => {
    expect(frameErrorOf(() => encodeFrame(bytes(11, 0), 10, P), 'oversized').message).toBe(`${P}: frame of 11 bytes exceeds the 10-byte limit`);
    expect(() => new FrameDecoder({ protocol: P, maxFrameBytes: -1 })).toThrow(RangeError);
    expect(() => encodeFrame(bytes(1, 0), 2 ** 32)).toThrow(RangeError);
  });
});

// Encodes arbitrary objects with the same .proto, bypassing the schemas' validation.
const helloProto = loadProto(new URL('../../src/net/proto/hello.proto', import.meta.url));
const rawHello = (fields: Record<string, unknown>): Uint8Array => {
  const type = helloProto.lookupType('dwcp.net.v1.Hello');
  return type.encode(type.fromObject(fields)).finish();
};

const hello: Hello = {
  version: 1,
  federation: 'acme',
  name: 'dc1',
  region: 'eu-west',
  provider: 'onprem',
  trust: 'trusted',
  peerId: '12D3KooWExample',
  listenAddrs: ['/ip4/10.0.0.1/tcp/4777', '/ip6/::1/tcp/4777'],
};

describe('hello schemas', () => {
  it('round-trips Hello, HelloResult and HelloFrame', () => {
    expect(HelloSchema.decode(HelloSchema.encode(hello))).toEqual(hello);
    expect(HelloSchema.name).toBe('dwcp.net.v1.Hello');
    expect(HelloResultSchema.decode(HelloResultSchema.encode({ accepted: false, reason: 'not a member' }))).toEqual({ accepted: false, reason: 'not a member' });
    expect(HelloResultSchema.decode(HelloResultSchema.encode({ accepted: true, reason: '' }))).toEqual({ accepted: true, reason: '' });
    const frames: HelloFrame[] = [
      { kind: 'hello', hello: { ...hello, listenAddrs: [] } },
      { kind: 'result', result: { accepted: true, reason: '' } },
    ];
    for (const f of frames) expect(HelloFrameSchema.decode(HelloFrameSchema.encode(f))).toEqual(f);
  });

  it.each([
    ['a missing federation', { ...hello, federation: undefined }, 'dwcp.net.v1.Hello: field federation is required'],
    ['a missing version', { ...hello, version: 0 }, 'dwcp.net.v1.Hello: field version is 0, outside 1..4294967295'],
    ['an unknown trust level', { ...hello, trust: 'superuser' }, 'dwcp.net.v1.Hello: field trust is "superuser", not one of trusted, untrusted'],
    ['an unknown provider', { ...hello, provider: '' }, 'dwcp.net.v1.Hello: field provider is required (one of onprem, private, aws, gcp, azure, oracle)'],
    ['an oversized string', { ...hello, name: 'x'.repeat(257) }, 'dwcp.net.v1.Hello: field name is 257 characters long, above the 256-character limit'],
    ['an oversized list item', { ...hello, listenAddrs: ['/a', 'y'.repeat(300)] }, 'dwcp.net.v1.Hello: field listenAddrs[1] is 300 characters long, above the 256-character limit'],
    ['too many addresses', { ...hello, listenAddrs: Array.from({ length: 17 }, (_, i) => `/a/${i}`) }, 'dwcp.net.v1.Hello: field listenAddrs has 17 entries, above the 16-entry limit'],
  ])('rejects %s, naming the field', (_, fields, message) => {
    const err = frameErrorOf(() => HelloSchema.decode(rawHello(fields)), 'schema');
    expect(err.message).toBe(message);
    // The sending side refuses to produce it too.
    expect(frameErrorOf(() => HelloSchema.encode(fields as Hello), 'schema').message).toBe(message);
  });

  it('rejects bytes that are not protobuf, or not UTF-8 in a string field', () => {
    expect(frameErrorOf(() => HelloSchema.decode(Uint8Array.of(0xff, 0xff, 0xff)), 'schema').message).toMatch(
      /^dwcp\.net\.v1\.Hello: not a valid protobuf encoding/,
    );
    const badUtf8 = concat([rawHello({ ...hello, name: '' }), Uint8Array.of(0x1a, 0x02, 0xff, 0xfe)]);
    expect(frameErrorOf(() => HelloSchema.decode(badUtf8), 'schema').message).toMatch(/not a valid protobuf encoding/);
  });

  it('names the oneof and the nested field of a HelloFrame', () => {
    expect(frameErrorOf(() => HelloFrameSchema.decode(new Uint8Array(0)), 'schema').message).toBe(
      'dwcp.net.v1.HelloFrame: field kind is required (one of hello, result)',
    );
    const nested = concat([Uint8Array.of(0x0a), encodeFrame(rawHello({ ...hello, region: '' }), 1024)]);
    expect(frameErrorOf(() => HelloFrameSchema.decode(nested), 'schema').message).toBe('dwcp.net.v1.HelloFrame: field hello.region is required');
  });

  it('fits the largest valid hello in HELLO_MAX_FRAME_BYTES', () => {
    const s = '€'.repeat(256);
    const largest: HelloFrame = {
      kind: 'hello',
      hello: { ...hello, version: 2 ** 32 - 1, federation: s, name: s, region: s, peerId: s, listenAddrs: Array.from({ length: 16 }, () => s) },
    };
    const payload = HelloFrameSchema.encode(largest);
    expect(payload.byteLength).toBeGreaterThan(15 * 1024);
    expect(() => encodeFrame(payload, HELLO_MAX_FRAME_BYTES)).not.toThrow();
  });
});

// ---- FramedStream over two real libp2p nodes ----

/** Hands values to whoever awaits next(), in order, whether they arrive before or after. */
function queue<T>(): { push(t: T): void; next(): Promise<T> } {
  const items: T[] = [];
  const waiters: ((t: T) => void)[] = [];
  return {
    push(t) {
      const waiter = waiters.shift();
      if (waiter) waiter(t);
      else items.push(t);
    },
    next() {
      return items.length > 0 ? Promise.resolve(items.shift() as T) : new Promise((resolve) => waiters.push(resolve));
    },
  };
}

function recordingEvents(): FrameEvents & { rejects: FrameRejectReason[]; bytesIn: number; bytesOut: number } {
  const rec = {
    rejects: [] as FrameRejectReason[],
    bytesIn: 0,
    bytesOut: 0,
    onBytesIn: (n: number) => void (rec.bytesIn += n),
    onBytesOut: (n: number) => void (rec.bytesOut += n),
    onReject: (reason: FrameRejectReason) => void rec.rejects.push(reason),
  };
  return rec;
}

/** Forwards every event to each of `all`. */
function tee(...all: FrameEvents[]): FrameEvents {
  return {
    onBytesIn: (n) => all.forEach((e) => e.onBytesIn?.(n)),
    onBytesOut: (n) => all.forEach((e) => e.onBytesOut?.(n)),
    onReject: (reason) => all.forEach((e) => e.onReject?.(reason)),
  };
}

function closed(stream: Stream): Promise<StreamCloseEvent> {
  return new Promise((resolve) => stream.addEventListener('close', resolve, { once: true }));
}

describe('FramedStream over libp2p', () => {
  let server: Libp2p;
  let client: Libp2p;
  let serverAddr: Multiaddr;

  const startNode = () =>
    createLibp2p({
      addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
      transports: [tcp()],
      connectionEncrypters: [noiseChannel()],
      streamMuxers: [yamux({ streamOptions: MUXER_STREAM_OPTIONS })],
    });

  beforeAll(async () => {
    [server, client] = await Promise.all([startNode(), startNode()]);
    const addr = server.getMultiaddrs()[0];
    if (addr === undefined) throw new Error('server has no listen address');
    serverAddr = addr;
  });

  afterAll(async () => {
    await Promise.all([client?.stop(), server?.stop()]);
  });

  interface Served<In, Out> {
    /** Per inbound stream: undefined when the body finished, else what it threw. */
    outcomes: { next(): Promise<unknown> };
    events: ReturnType<typeof recordingEvents>;
    open(clientEvents?: FrameEvents): Promise<{ raw: Stream; framed: FramedStream<Out, In>; closed: Promise<StreamCloseEvent> }>;
  }

  /** Registers `body` for `protocol` on the server and returns a way to open client streams to it. */
  async function serve<In, Out>(
    protocol: string,
    schemas: { maxFrameBytes: number; inbound: MessageSchema<In>; outbound: MessageSchema<Out> },
    body: (framed: FramedStream<In, Out>) => Promise<void>,
    opts: { onStream?: (raw: Stream) => void; events?: FrameEvents } = {},
  ): Promise<Served<In, Out>> {
    const outcomes = queue<unknown>();
    const events = recordingEvents();
    await server.handle(protocol, (raw) => {
      opts.onStream?.(raw);
      const framed = new FramedStream(raw, { protocol, ...schemas, events: tee(events, opts.events ?? {}) });
      body(framed).then(
        () => outcomes.push(undefined),
        (err: unknown) => outcomes.push(err),
      );
    });
    return {
      outcomes,
      events,
      async open(clientEvents) {
        const raw = await client.dialProtocol(serverAddr, protocol);
        const framed = new FramedStream(raw, {
          protocol,
          maxFrameBytes: schemas.maxFrameBytes,
          inbound: schemas.outbound,
          outbound: schemas.inbound,
          events: clientEvents,
        });
        return { raw, framed, closed: closed(raw) };
      },
    };
  }

  const helloSchemas = { maxFrameBytes: HELLO_MAX_FRAME_BYTES, inbound: HelloSchema, outbound: HelloSchema };
  const echo = async (framed: FramedStream<Hello, Hello>) => {
    for await (const msg of framed) await framed.write(msg);
    await framed.close();
  };

  it('round-trips messages, whole, coalesced into one chunk and split into 1-byte chunks', async () => {
    const svc = await serve('/dwcp-test/echo/1.0.0', helloSchemas, echo);
    const clientEvents = recordingEvents();
    const { raw, framed } = await svc.open(clientEvents);
    const msgs = [0, 1, 2, 3].map((i) => ({ ...hello, name: `dc${i}`, listenAddrs: hello.listenAddrs.slice(0, i % 3) }));

    await framed.write(msgs[0] as Hello);
    expect(await framed.read()).toEqual(msgs[0]);

    const two = concat([1, 2].map((i) => encodeFrame(HelloSchema.encode(msgs[i] as Hello), HELLO_MAX_FRAME_BYTES)));
    raw.send(two);
    for (const b of encodeFrame(HelloSchema.encode(msgs[3] as Hello), HELLO_MAX_FRAME_BYTES)) raw.send(Uint8Array.of(b));
    expect([await framed.read(), await framed.read(), await framed.read()]).toEqual(msgs.slice(1));

    await framed.close();
    expect(await framed.read()).toBeUndefined();
    expect(await svc.outcomes.next()).toBeUndefined();
    expect(svc.events.rejects).toEqual([]);
    // Byte counters see prefixes too, and both ends agree.
    const sentByClient = clientEvents.bytesOut + two.byteLength + encodeFrame(HelloSchema.encode(msgs[3] as Hello), HELLO_MAX_FRAME_BYTES).byteLength;
    expect(svc.events.bytesIn).toBe(sentByClient);
    expect(svc.events.bytesOut).toBe(sentByClient);
  });

  it('leaves the stream usable after a read is cancelled, and refuses overlapping reads', async () => {
    const svc = await serve('/dwcp-test/cancel/1.0.0', helloSchemas, echo);
    const clientEvents = recordingEvents();
    const { framed } = await svc.open(clientEvents);
    const cancel = new AbortController();
    const cancelled = framed.read({ signal: cancel.signal }).catch((err: unknown) => err);
    await expect(framed.read()).rejects.toThrow('/dwcp-test/cancel/1.0.0: read() called while another read() is pending');
    cancel.abort(new Error('caller gave up'));
    expect(await cancelled).toEqual(new Error('caller gave up'));

    await framed.write(hello);
    const echoed: Hello[] = [];
    await framed.close();
    for await (const msg of framed) echoed.push(msg);
    expect(echoed).toEqual([hello]);
    expect(await svc.outcomes.next()).toBeUndefined();
    expect(clientEvents.rejects).toEqual([]);
  });

  it.each<[FrameRejectReason, (raw: Stream) => Promise<void> | void]>([
    ['oversized', (raw) => void raw.send(encodeFrame(bytes(70_000, 0), MAX_FRAME_LENGTH).subarray(0, 3))],
    ['malformed', (raw) => void raw.send(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x01))],
    ['schema', (raw) => void raw.send(encodeFrame(Uint8Array.of(0xff, 0xff, 0xff), HELLO_MAX_FRAME_BYTES))],
    [
      'truncated',
      async (raw) => {
        raw.send(encodeFrame(HelloSchema.encode(hello), HELLO_MAX_FRAME_BYTES).subarray(0, 20));
        await raw.close();
      },
    ],
    ['timeout', () => {}],
  ])('resets a stream that sends a %s frame, counts it, and keeps serving', async (reason, misbehave) => {
    const protocol = `/dwcp-test/strict-${reason}/1.0.0`;
    const metrics = createMetrics({ defaultMetrics: false });
    const svc = await serve(
      protocol,
      helloSchemas,
      async (framed) => {
        const first = await framed.read({ signal: AbortSignal.timeout(reason === 'timeout' ? 200 : 5_000) });
        if (first === undefined) return;
        await framed.write(first);
        await framed.close();
      },
      { events: frameEventsFor(metrics, protocol) },
    );

    const clientEvents = recordingEvents();
    const bad = await svc.open(clientEvents);
    // Settled into a value at once, so a rejection is never unhandled while the test waits.
    const pendingRead = bad.framed.read().then(
      (msg) => msg,
      (err: unknown) => err,
    );
    await misbehave(bad.raw);

    const err = await svc.outcomes.next();
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).reason).toBe(reason);
    expect((err as FrameError).message.startsWith(`${protocol}: `)).toBe(true);
    expect(svc.events.rejects).toEqual([reason]);
    const rejected = (await metrics.framesRejected.get()).values.filter((v) => v.labels.protocol === protocol && v.value > 0);
    expect(rejected.map((v) => [v.labels.reason, v.value])).toEqual([[reason, 1]]);

    // The misbehaving end sees a reset, which is not a frame reject of its own.
    expect((await bad.closed).error).toBeDefined();
    expect(await pendingRead).toBeInstanceOf(Error);
    expect(await pendingRead).not.toBeInstanceOf(FrameError);
    expect(clientEvents.rejects).toEqual([]);

    // The node is still up and a new stream on the same protocol works.
    expect(server.status).toBe('started');
    const good = await svc.open();
    await good.framed.write(hello);
    expect(await good.framed.read()).toEqual(hello);
    expect(await good.framed.read()).toBeUndefined();
    expect(await svc.outcomes.next()).toBeUndefined();
    expect(svc.events.rejects).toEqual([reason]);
  });

  it('applies back-pressure both ways: many large frames arrive intact with bounded buffers', async () => {
    const frameBytes = 256 * 1024;
    const count = 32;
    let serverRaw: Stream | undefined;
    let serverPauses = 0;
    const received: number[] = [];
    const svc = await serve(
      '/dwcp-test/bulk/1.0.0',
      { maxFrameBytes: frameBytes, inbound: BytesSchema, outbound: BytesSchema },
      async (framed) => {
        for await (const frame of framed) {
          expect(frame.byteLength).toBe(frameBytes);
          expect(frame.every((b) => b === received.length % 256)).toBe(true);
          received.push(frame.byteLength);
          // A slow consumer: let the sender run ahead if nothing holds it back.
          await new Promise((resolve) => setTimeout(resolve, 2));
        }
        await framed.close();
      },
      {
        onStream: (raw) => {
          serverRaw = raw;
          const pause = raw.pause.bind(raw);
          raw.pause = () => {
            serverPauses++;
            pause();
          };
        },
      },
    );
    const { raw, framed } = await svc.open();
    let drains = 0;
    raw.addEventListener('drain', () => drains++);
    let maxQueued = 0;
    const written = () => void (maxQueued = Math.max(maxQueued, raw.writeBufferLength));
    for (let i = 0; i < count / 2; i++) {
      await framed.write(bytes(frameBytes, i % 256));
      written();
    }
    // Overlapping writes still go out in call order (the server checks each frame's fill byte).
    await Promise.all(Array.from({ length: count / 2 }, (_, i) => framed.write(bytes(frameBytes, (count / 2 + i) % 256)).then(written)));
    await framed.close();
    expect(await framed.read()).toBeUndefined();
    expect(await svc.outcomes.next()).toBeUndefined();

    expect(received).toHaveLength(count);
    // The sender waited for drain instead of queueing all 8 MiB in the stream's buffer...
    expect(drains).toBeGreaterThan(0);
    expect(maxQueued).toBeLessThanOrEqual(frameBytes + 5);
    // ...and the slow receiver paused its stream rather than decoding ahead without bound.
    expect(serverPauses).toBeGreaterThan(0);
    expect(serverRaw?.status).not.toBe('reset');
  });
  // Review (issue 19): the write fast path and the receive path's parts.

  it('a write on the fast path never overtakes a queued one, a failed queued write leaves later ones on the fast path, and a closed stream refuses a write', async () => {
    const big = 1024 * 1024;
    const got: number[] = [];
    const svc = await serve('/dwcp-test/write-order/1.0.0', { maxFrameBytes: big, inbound: BytesSchema, outbound: BytesSchema }, async (framed) => {
      for await (const frame of framed) got.push(frame[0] as number);
      await framed.close();
    });
    const clientEvents = recordingEvents();
    const { raw, framed } = await svc.open(clientEvents);
    const tagged = (tag: number, n: number) => bytes(n, tag);
    // 1: a frame larger than yamux's initial 256 KiB window, sent at once, and the stream now needs a drain.
    const first = framed.write(tagged(1, big));
    expect(raw.writableNeedsDrain).toBe(true);
    // 2: queued behind the drain, then aborted: it must fail, not be sent, and not leave the count of queued writes behind.
    const abort = new AbortController();
    const second = framed.write(tagged(2, 10), { signal: abort.signal });
    abort.abort(new Error('caller gave up'));
    // 3..40: small writes issued while 2 waits; none may take the fast path ahead of it or of each other.
    const rest = Array.from({ length: 38 }, (_, i) => framed.write(tagged(3 + i, 1 + i)));
    // 50: written the moment the stream drains, before the queued writes' continuations run: the send buffer has
    // room then, but 3..40 are still queued, so it must queue behind them rather than be sent at once.
    const late = new Promise<void>((resolve, reject) => raw.addEventListener('drain', () => void framed.write(tagged(50, 3)).then(resolve, reject), { once: true }));
    await first;
    await expect(second).rejects.toThrow('caller gave up');
    await Promise.all([...rest, late]);
    // Once everything queued is sent and the send buffer drained, a write goes out at once (the fast path), i.e. within write() itself.
    if (raw.writableNeedsDrain) await new Promise((resolve) => raw.addEventListener('drain', resolve, { once: true }));
    const before = clientEvents.bytesOut;
    const last = framed.write(tagged(99, 5));
    expect(clientEvents.bytesOut).toBe(before + 6);
    await last;
    await framed.close();
    expect(await svc.outcomes.next()).toBeUndefined();
    expect(got).toEqual([1, ...Array.from({ length: 38 }, (_, i) => 3 + i), 50, 99]);
    // A write on a closed stream is refused to its caller (fast path or not), never dropped silently.
    await expect(framed.write(tagged(7, 5))).rejects.toThrow(/closed|closing/);
    const { raw: raw2, framed: framed2 } = await svc.open();
    framed2.reset(new Error('gone'));
    expect(raw2.writeStatus).toBe('closed');
    await expect(framed2.write(tagged(8, 5))).rejects.toThrow();
  });

  it('a frame handed on as parts keeps its bytes while held: no buffer below (TCP reads, Noise decrypting in place, yamux) is reused', async () => {
    // The schema hands the frame on as the very list FramedStream got (views of the decrypted Noise messages).
    const ListSchema: MessageSchema<Uint8ArrayList> = {
      name: 'list',
      encode: (msg) => msg.subarray(),
      decode: (b) => new Uint8ArrayList(b),
      decodeList: (frame) => frame,
    };
    const sizes = Array.from({ length: 600 }, (_, i) => [1, 17, 700, 1150, 1300, 4000, 65_000, 70_000, 200_000][i % 9] as number);
    const fill = (i: number, n: number) => Uint8Array.from({ length: n }, (_, j) => (i * 31 + j * 7) & 0xff);
    const held: Uint8ArrayList[] = [];
    let bad = -1;
    const svc = await serve('/dwcp-test/held-parts/1.0.0', { maxFrameBytes: 256 * 1024, inbound: ListSchema, outbound: ListSchema }, async (framed) => {
      // Hold every frame's parts until the last has arrived (a slow reader at first: frames also wait paused in FramedStream).
      for await (const frame of framed) {
        if (held.length < 50) await new Promise((resolve) => setImmediate(resolve));
        held.push(frame);
      }
      for (let i = 0; i < held.length && bad < 0; i++) {
        if (!Buffer.from((held[i] as Uint8ArrayList).subarray()).equals(Buffer.from(fill(i, sizes[i] as number)))) bad = i;
      }
      await framed.close();
    });
    const { framed } = await svc.open();
    for (let i = 0; i < sizes.length; i++) void framed.write(new Uint8ArrayList(fill(i, sizes[i] as number)));
    await framed.close();
    expect(await svc.outcomes.next()).toBeUndefined();
    expect(held).toHaveLength(sizes.length);
    // Frames did arrive as several parts (the case this is about), and none changed while held.
    expect(held.some((f) => [...f].length > 1)).toBe(true);
    expect(bad).toBe(-1);
  });

  it.each<[CutKind, 'inside a frame' | 'between frames']>([
    ['reset', 'inside a frame'],
    ['reset', 'between frames'],
    ['crash', 'inside a frame'],
    ['crash', 'between frames'],
  ])('reports a stream whose remote went away (%s, %s) as lost, not as a clean end, and counts no reject', async (how, where) => {
    const protocol = `/dwcp-test/lost-${how}-${where.replace(' ', '-')}/1.0.0`;
    const received = queue<Uint8Array>();
    const got: Uint8Array[] = [];
    const svc = await serve(protocol, { maxFrameBytes: 64 * 1024, inbound: BytesSchema, outbound: BytesSchema }, async (framed) => {
      for (;;) {
        const frame = await framed.read();
        if (frame === undefined) return;
        got.push(frame);
        received.push(frame);
      }
    });
    const { raw, framed } = await svc.open();
    const connection = client.getConnections().find((c) => c.streams.includes(raw));
    if (connection === undefined) throw new Error('no connection carries the test stream');

    // A whole frame first, read by the server before the cut: it must survive the cut.
    await framed.write(bytes(1000, 1));
    expect((await received.next()).byteLength).toBe(1000);
    if (where === 'inside a frame') {
      const cut = cutMidFrame(raw, connection, how);
      await framed.write(bytes(40_000, 2)).catch(() => {});
      expect((await cut).sentBytes).toBeGreaterThan(0);
    } else {
      await cutNow(raw, connection, how);
    }

    const err = await svc.outcomes.next();
    expect(err, 'the server read a clean end').toBeInstanceOf(StreamLostError);
    const lost = err as StreamLostError;
    expect(lost.retryable).toBe(true);
    expect(lost.message.startsWith(`${protocol}: ${how === 'reset' ? 'the remote reset the stream' : 'the connection closed before the remote ended the stream'}`)).toBe(true);
    if (where === 'inside a frame') {
      // Some of the second frame had arrived when the stream went: named, and dropped, not delivered.
      expect(lost.partialBytes).toBeGreaterThan(0);
      expect(lost.message).toContain(`inside a frame, ${lost.partialBytes} bytes of it received and dropped`);
    } else {
      expect(lost.message).toContain('(between frames)');
    }
    expect(got.map((f) => f.byteLength)).toEqual([1000]);
    // Not the remote's protocol error: nothing counted as a rejected frame.
    expect(svc.events.rejects).toEqual([]);
  });
});
