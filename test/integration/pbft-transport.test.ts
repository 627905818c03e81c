/**
 * PbftTransport over real libp2p hosts (TCP + Noise + Yamux with the daemon's
 * muxer settings) in one process: two members exchange frames both ways,
 * including one frame larger than the muxer window; a peer outside the
 * directory is refused on open; a malformed or spoofed frame from a member
 * resets that stream, is counted in dwcp_frames_rejected_total and logged
 * with the member's name, and the transport keeps working; a member's stream
 * lost inside a frame (reset, or its connection gone as a crashed process's)
 * delivers nothing of that frame, is logged as lost and not counted as a
 * rejected frame, and the next batch goes out on a new stream.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Stream } from '@libp2p/interface';
import { createLogger } from '../../src/log.ts';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import { MUXER_STREAM_OPTIONS, encodeFrame } from '../../src/net/framing.ts';
import { encodeCanonical, seal, sha256, type Canonical } from '../../src/consensus/pbft/encoding.ts';
import type { Prepare, ReplicaId, Reply, StateMessage } from '../../src/consensus/pbft/types.ts';
import { PbftTransport } from '../../src/consensus/pbft/transport.ts';
import { PBFT_MAX_FRAME_BYTES, PBFT_PROTOCOL, type PbftFrame } from '../../src/consensus/pbft/wire.ts';
import { FakeKeys } from '../sim/pbft-harness.ts';
import { cutMidFrame, streamsOf, type CutKind } from '../support/stream-cut.ts';
import { metricValue, type LogLine } from './harness.ts';

const keys = new FakeKeys('pbft-transport');
const sign = (id: string) => (b: Uint8Array) => new Uint8Array(keys.signer(id)(b));
const digest = sha256(new Uint8Array([1]));
const prepare = (from: string, seq: number): Prepare => seal<Prepare>({ type: 'prepare', from, view: 0, seq, digest }, sign(from));
const reply = (from: string, timestamp: number): Reply => ({ type: 'reply', from, view: 0, client: 'client-1', timestamp, result: new Uint8Array([timestamp]) });

const DEADLINE_MS = 15_000;

/** Items as they arrive; next() resolves with the first match, past or future, or rejects after the deadline. */
class Waiters<T> {
  readonly items: T[] = [];
  #waiters: { match: (item: T) => boolean; resolve: (item: T) => void }[] = [];

  push(item: T): void {
    this.items.push(item);
    this.#waiters = this.#waiters.filter((w) => (w.match(item) ? (w.resolve(item), false) : true));
  }

  next(match: (item: T) => boolean, what: string, after = 0): Promise<T> {
    const seen = this.items.slice(after).find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${DEADLINE_MS} ms`)), DEADLINE_MS);
      this.#waiters.push({
        match,
        resolve: (item) => {
          clearTimeout(timer);
          resolve(item);
        },
      });
    });
  }
}

interface Member {
  name: ReplicaId;
  host: Libp2p;
  transport: PbftTransport;
  metrics: DwcpMetrics;
  received: Waiters<{ from: ReplicaId; frame: PbftFrame }>;
  logs: Waiters<LogLine>;
}

const startHost = (): Promise<Libp2p> =>
  createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: MUXER_STREAM_OPTIONS })],
  });

/** Resolves once the stream is no longer open (closed, reset or aborted). */
function closed(stream: Stream): Promise<void> {
  return new Promise((resolve) => {
    if (stream.status !== 'open') resolve();
    else stream.addEventListener('close', () => resolve(), { once: true });
  });
}

describe('PbftTransport over libp2p', () => {
  const directory = new Map<ReplicaId, string>();
  const peers = {
    peerIdOf: (name: string) => directory.get(name),
    nameOf: (peerId: string) => [...directory].find(([, id]) => id === peerId)?.[0],
  };
  let a: Member;
  let b: Member;
  let outsider: Libp2p;

  async function member(name: ReplicaId): Promise<Member> {
    const host = await startHost();
    directory.set(name, host.peerId.toString());
    const metrics = createMetrics({ defaultMetrics: false });
    const logs = new Waiters<LogLine>();
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line) as LogLine);
        done();
      },
    });
    const received = new Waiters<{ from: ReplicaId; frame: PbftFrame }>();
    const transport = new PbftTransport({
      host,
      peers,
      isConnected: (peerId) => host.getConnections(peerIdFromString(peerId)).length > 0,
      deliver: (from, frame) => received.push({ from, frame }),
      metrics,
      log: createLogger('debug', sink),
    });
    await transport.start();
    return { name, host, transport, metrics, received, logs };
  }

  beforeAll(async () => {
    [a, b, outsider] = await Promise.all([member('a'), member('b'), startHost()]);
    await a.host.dial(b.host.getMultiaddrs());
  }, 30_000);

  afterAll(async () => {
    await Promise.all([a?.transport.stop(), b?.transport.stop()]);
    await Promise.all([a?.host.stop(), b?.host.stop(), outsider?.stop()]);
  });

  it('delivers frames both ways with the sender named, and a frame larger than the muxer window', async () => {
    a.transport.send('b', [{ messages: [prepare('a', 1), prepare('a', 2)], replies: [reply('a', 1)] }]);
    const got = await b.received.next((r) => r.from === 'a', 'frame from a');
    expect(got.frame.messages.map((m) => (m as Prepare).seq)).toEqual([1, 2]);
    expect(got.frame.replies.map((r) => r.timestamp)).toEqual([1]);

    const snapshot = Uint8Array.from({ length: 3 * MUXER_STREAM_OPTIONS.maxStreamWindowSize }, (_, i) => (i * 31) % 251);
    const state = seal<StateMessage>(
      { type: 'state', from: 'b', checkpoint: { seq: 64, digest }, proof: [], state: { snapshot, clients: [] }, entries: [] },
      sign('b'),
    );
    b.transport.send('a', [{ messages: [state], replies: [] }]);
    const big = await a.received.next((r) => r.from === 'b', 'state from b');
    const m = big.frame.messages[0];
    expect(m?.type).toBe('state');
    expect(Buffer.from((m as StateMessage).state.snapshot).equals(snapshot)).toBe(true);
    expect(a.transport.dropped + b.transport.dropped).toBe(0);
  });

  it('drops, and counts, what is sent to an unknown member', () => {
    const before = a.transport.dropped;
    a.transport.send('nobody', [{ messages: [prepare('a', 3)], replies: [] }]);
    expect(a.transport.dropped).toBe(before + 1);
  });

  it('refuses a stream from a peer outside the directory, logging its peer ID', async () => {
    const marks = b.logs.items.length;
    const heard = b.received.items.length;
    await outsider.dial(b.host.getMultiaddrs());
    const stream = await outsider.dialProtocol(b.host.peerId, PBFT_PROTOCOL);
    const ended = closed(stream);
    const frame = encodeCanonical({ messages: [prepare('a', 9)], replies: [] } as unknown as Canonical);
    try {
      stream.send(encodeFrame(frame, PBFT_MAX_FRAME_BYTES));
    } catch {
      // The refusal may already have closed the stream: nothing the outsider sends may arrive either way.
    }
    const line = await b.logs.next((l) => l.msg === 'pbft stream from a peer outside the pbft group refused', 'refusal log', marks);
    expect(line.peerId).toBe(outsider.peerId.toString());
    await ended;
    expect(stream.status).not.toBe('open');
    expect(b.received.items.length).toBe(heard);
  });

  it('resets and counts a malformed or spoofed frame from a member, and keeps delivering', async () => {
    const cases: [reason: string, payload: Uint8Array, detail: RegExp][] = [
      ['malformed', Uint8Array.from([7, 0, 0, 0]), /canonical decoding/],
      ['schema', encodeCanonical({ messages: [prepare('b', 1)], replies: [] } as unknown as Canonical), /messages\[0\]\.from is "b", but the authenticated sender is "a"/],
    ];
    for (const [reason, payload, detail] of cases) {
      const marks = b.logs.items.length;
      const stream = await a.host.dialProtocol(b.host.peerId, PBFT_PROTOCOL);
      const ended = closed(stream);
      stream.send(encodeFrame(payload, PBFT_MAX_FRAME_BYTES));
      const line = await b.logs.next((l) => l.msg === 'pbft frame refused; stream reset', `${reason} refusal`, marks);
      expect(line.peer).toBe('a');
      expect(String(line.err)).toMatch(detail);
      await ended;
      const text = await b.metrics.registry.metrics();
      expect(metricValue(text, 'dwcp_frames_rejected_total', { protocol: PBFT_PROTOCOL, reason }), reason).toBe(1);
    }
    const heard = b.received.items.length;
    a.transport.send('b', [{ messages: [prepare('a', 10)], replies: [] }]);
    const got = await b.received.next((r) => r.from === 'a' && (r.frame.messages[0] as Prepare | undefined)?.seq === 10, 'frame after the resets', heard);
    expect(got.frame.messages).toHaveLength(1);
  });
  it.each<CutKind>(['reset', 'crash'])('a stream lost inside a frame (%s) delivers nothing of it, rejects nothing, and the next batch arrives', async (how) => {
    const connection = a.host.getConnections(b.host.peerId).find((c) => streamsOf(c, PBFT_PROTOCOL, 'outbound').length > 0);
    const stream = connection === undefined ? undefined : streamsOf(connection, PBFT_PROTOCOL, 'outbound')[0];
    if (connection === undefined || stream === undefined) throw new Error("no open outbound pbft stream from a to b (the transport's own)");
    const marks = b.logs.items.length;
    const heard = b.received.items.length;
    const cut = cutMidFrame(stream, connection, how);
    a.transport.send('b', [{ messages: [prepare('a', 20)], replies: [] }]);
    expect((await cut).sentBytes).toBeGreaterThan(0);
    const line = await b.logs.next((l) => l.msg === 'pbft inbound stream ended', 'the lost stream logged', marks);
    expect(line.peer).toBe('a');
    expect(String(line.err)).toMatch(how === 'reset' ? /the remote reset the stream \(inside a frame/ : /the connection closed before the remote ended the stream \(inside a frame/);
    const text = await b.metrics.registry.metrics();
    expect(metricValue(text, 'dwcp_frames_rejected_total', { protocol: PBFT_PROTOCOL, reason: 'truncated' })).toBe(0);

    // The transport opens a new stream for the next batch (over a new connection after the crash).
    if (a.host.getConnections(b.host.peerId).length === 0) await a.host.dial(b.host.getMultiaddrs());
    a.transport.send('b', [{ messages: [prepare('a', 21)], replies: [] }]);
    await b.received.next((r) => r.from === 'a' && (r.frame.messages[0] as Prepare | undefined)?.seq === 21, 'the batch after the cut', heard);
    expect(b.received.items.slice(heard).map((r) => (r.frame.messages[0] as Prepare | undefined)?.seq)).toEqual([21]);
  });
});
