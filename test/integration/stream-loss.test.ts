/**
 * A member's stream lost inside a frame, against a real dwcpd process, on
 * every /dwcp protocol a member opens to a daemon: hello, raft, kv, sync
 * (geo anti-entropy) and blob. The member is this test, holding m's real key
 * and completing a real hello; it sends half a frame and then either resets
 * the stream or ends its TCP connection as a crashed process would
 * (test/support/stream-cut.ts).
 *
 * For each, the daemon must report the stream as lost (its log line for that
 * protocol names the loss "inside a frame"), must not take it for the
 * member's protocol error (dwcp_frames_rejected_total stays 0: before
 * FramedStream knew a lost stream from a closed one, the crash counted as a
 * `truncated` frame), and must take the member back once it reconnects.
 *
 * KV forwarding is also checked for what it acknowledged: a write forwarded
 * and answered before a cut is there after it; the write cut inside its
 * frame was never applied; retried with the same client id and sequence it
 * is applied once, and a second retry (its answer lost) gets the same answer,
 * not a second application. Raft and PBFT between daemons under crashes are
 * covered with linearizability checks in raft-faults and pbft-federation;
 * PBFT needs untrusted members, so its transport's handling of a lost stream
 * is in pbft-transport.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { Connection } from '@libp2p/interface';
import { connectAdmin, type AdminClient } from '../../src/admin/client.ts';
import { BLOB_PROTOCOL } from '../../src/blob/wire.ts';
import { RAFT_PROTOCOL } from '../../src/consensus/raft/wire.ts';
import { loadIdentity } from '../../src/daemon/identity.ts';
import { MemberDirectory } from '../../src/federation/members.ts';
import { KV_FORWARD_MAX_FRAME_BYTES, KV_FORWARD_PROTOCOL, KvForwardRequestsSchema, KvForwardResponsesSchema, encodeKvCommand, type KvForwardResponse } from '../../src/kv/command.ts';
import { FramedStream, MUXER_STREAM_OPTIONS, encodeFrame } from '../../src/net/framing.ts';
import { HELLO_MAX_FRAME_BYTES, HelloFrameSchema } from '../../src/net/hello-schema.ts';
import { HELLO_PROTOCOL, exchangeHello, localHello, type HelloContext } from '../../src/net/hello.ts';
import { SYNC_PROTOCOL } from '../../src/state/wire.ts';
import { cutMidFrame, type CutKind } from '../support/stream-cut.ts';
import { baseConfig, metricValue, prepareNode, startDaemon, tempRoot, writeConfig, type DaemonProcess, type LogLine, type NodeFiles } from './harness.ts';

const WAIT_MS = 15_000;

let root: { path: string; remove: () => Promise<void> };
let solo: NodeFiles;
let m: NodeFiles;
let daemon: DaemonProcess;
let admin: AdminClient;
let peer: Libp2p;
let target: Multiaddr;
let hello: HelloContext;

/** A log line of the daemon from index `after` on, failing with its last lines if it does not come. */
async function logged(match: (l: LogLine) => boolean, what: string, after: number): Promise<LogLine> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${daemon.node.name} did not log ${what} within ${WAIT_MS} ms\n${daemon.describe()}`)), WAIT_MS);
  });
  try {
    return await Promise.race([daemon.waitForLog(match, what, after), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** m's open connection to the daemon, after a real hello (a new one if the last was cut). */
async function connected(): Promise<Connection> {
  const open = peer.getConnections().find((c) => c.status === 'open');
  if (open !== undefined) return open;
  const marks = daemon.lines.length;
  const connection = await peer.dial(target);
  expect(await exchangeHello(await connection.newStream(HELLO_PROTOCOL), connection, hello, AbortSignal.timeout(WAIT_MS))).toEqual({ accepted: true });
  await logged((l) => l.msg === 'member connected' && l.member === 'm', 'm connected', marks);
  return connection;
}

async function rejectedFrames(protocol: string): Promise<number> {
  const text = await daemon.scrape();
  const reasons = ['oversized', 'truncated', 'malformed', 'schema', 'timeout'];
  return reasons.reduce((sum, reason) => sum + (metricValue(text, 'dwcp_frames_rejected_total', { protocol, reason }) ?? 0), 0);
}

beforeAll(async () => {
  root = await tempRoot('stream-loss');
  [solo, m] = await Promise.all([prepareNode(root.path, 'solo'), prepareNode(root.path, 'm')]);
  // solo founds its Raft group alone (so it leads), then admits m as a member by a reload: m may connect and forward.
  daemon = await startDaemon(solo, baseConfig(solo, { raft: { tickMs: 50 } }));
  const serving = await daemon.serving();
  target = multiaddr(serving.listen[0]!);
  await logged((l) => l.msg === 'raft leader elected' && l.leader === 'solo', 'solo leading', 0);
  const marks = daemon.lines.length;
  await writeConfig(solo, baseConfig(solo, { raft: { tickMs: 50 }, members: [{ name: 'm', peerId: m.peerId, region: 'r-m', provider: 'onprem', trust: 'trusted' }] }));
  daemon.child.kill('SIGHUP');
  await logged((l) => l.msg === 'configuration reloaded', 'the reload', marks);
  admin = connectAdmin(solo.socket, { timeoutMs: WAIT_MS });

  const key = (await loadIdentity(`${m.dir}/node.key`)).privateKey;
  peer = await createLibp2p({ privateKey: key, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux({ streamOptions: MUXER_STREAM_OPTIONS })] });
  hello = {
    config: { federation: 'test-fed', node: { name: 'm', region: 'r-m', provider: 'onprem', trust: 'trusted' } },
    peerId: peer.peerId.toString(),
    listenAddrs: () => [],
    members: new MemberDirectory([{ name: 'solo', peerId: solo.peerId, region: 'r-solo', provider: 'onprem', trust: 'trusted', addrs: [] }]),
  };
}, 60_000);

afterAll(async () => {
  admin?.close();
  await peer?.stop();
  await daemon?.stop('SIGKILL');
  await root?.remove();
});

/** What the daemon logs when m's stream on the protocol is lost, and the frame m half sends. */
const PROTOCOLS: { protocol: string; log: string; frame: () => Uint8Array }[] = [
  { protocol: RAFT_PROTOCOL, log: 'raft inbound stream ended', frame: () => encodeFrame(new Uint8Array(600).fill(7), 1 << 20) },
  { protocol: SYNC_PROTOCOL, log: 'sync inbound stream ended', frame: () => encodeFrame(new Uint8Array(600).fill(7), 1 << 20) },
  { protocol: KV_FORWARD_PROTOCOL, log: 'kv forward stream lost', frame: () => encodeFrame(new Uint8Array(600).fill(7), 1 << 20) },
  { protocol: BLOB_PROTOCOL, log: 'blob stream lost before its first message', frame: () => encodeFrame(new Uint8Array(600).fill(7), 1 << 20) },
];

describe('a member stream lost inside a frame', () => {
  it.each<CutKind>(['reset', 'crash'])('hello (%s): the connection is refused with the loss named, no frame is rejected, and m connects again', async (how) => {
    const marks = daemon.lines.length;
    // A connection of its own: hello runs once per connection, and a refused hello costs the connection.
    const connection = await peer.dial(target, { force: true });
    const stream = await connection.newStream(HELLO_PROTOCOL);
    const cut = cutMidFrame(stream, connection, how);
    stream.send(encodeFrame(HelloFrameSchema.encode({ kind: 'hello', hello: localHello(hello) }), HELLO_MAX_FRAME_BYTES));
    expect((await cut).sentBytes).toBeGreaterThan(0);
    const refused = await logged((l) => l.msg === 'member connection refused by hello' && l.peerId === m.peerId, 'the refused hello', marks);
    expect(refused.reason).toBe('hello_failed');
    // A crash may close the connection before the hello reader sees its stream end; either names the loss.
    const expected = how === 'reset' ? [/the remote reset the stream \(inside a frame/] : [/the connection closed before the remote ended the stream \(inside a frame/, /connection closed during hello/];
    expect(expected.some((e) => e.test(String(refused.err))), String(refused.err)).toBe(true);
    await connection.close().catch(() => {});
    expect(await rejectedFrames(HELLO_PROTOCOL)).toBe(0);
    await connected();
  });

  for (const { protocol, log, frame } of PROTOCOLS) {
    it.each<CutKind>(['reset', 'crash'])(`${protocol} (%s): the daemon logs the stream lost, rejects no frame, and takes m back`, async (how) => {
      const connection = await connected();
      const marks = daemon.lines.length;
      const stream = await connection.newStream(protocol);
      const cut = cutMidFrame(stream, connection, how);
      stream.send(frame());
      expect((await cut).sentBytes).toBeGreaterThan(0);
      const line = await logged((l) => l.msg === log, `"${log}"`, marks);
      expect(String(line.err)).toMatch(how === 'reset' ? /the remote reset the stream \(inside a frame, \d+ bytes/ : /the connection closed before the remote ended the stream \(inside a frame, \d+ bytes/);
      expect(await rejectedFrames(protocol)).toBe(0);
      // The daemon takes m back: the same connection after a reset, a new one (with a new hello) after a crash.
      const again = await connected();
      expect(how === 'reset' ? again.id === connection.id : again.id !== connection.id).toBe(true);
      expect(daemon.child.exitCode).toBeNull();
    });
  }

  it.each<CutKind>(['reset', 'crash'])('kv forward (%s): what was answered before the cut stays, the cut write was not applied, and its retries apply it once', async (how) => {
    const client = `stream-loss-${how}`;
    const forward = async (connection: Connection, seq: number, key: string): Promise<KvForwardResponse> => {
      const framed = new FramedStream(await connection.newStream(KV_FORWARD_PROTOCOL), {
        protocol: KV_FORWARD_PROTOCOL,
        maxFrameBytes: KV_FORWARD_MAX_FRAME_BYTES,
        inbound: KvForwardResponsesSchema,
        outbound: KvForwardRequestsSchema,
      });
      await framed.write([{ id: seq, timeoutMs: 5_000, command: encodeKvCommand({ clientId: client, seq, op: 'cas', key, expectedRevision: 0, value: new TextEncoder().encode(key) }) }]);
      const answers = await framed.read({ signal: AbortSignal.timeout(WAIT_MS) });
      await framed.close();
      if (answers === undefined) throw new Error('the leader closed the forward stream without an answer');
      expect(answers).toHaveLength(1);
      return answers[0]!;
    };
    const value = async (key: string): Promise<string | null> => {
      const got = await admin.kv.get({ key, consistency: 'strong', scope: 'datacenter', prefix: false, limit: 0, timeout_ms: 5_000 });
      const item = got.items[0];
      return item === undefined ? null : Buffer.from(item.value).toString();
    };
    const before = await forward(await connected(), 1, `${client}/answered`);
    expect(before).toMatchObject({ kind: 'result', result: { ok: true, op: 'cas' } });

    // Seq 2, cut inside its frame: the leader never has the whole request.
    const connection = await connected();
    const stream = await connection.newStream(KV_FORWARD_PROTOCOL);
    const cut = cutMidFrame(stream, connection, how);
    const command = encodeKvCommand({ clientId: client, seq: 2, op: 'cas', key: `${client}/cut`, expectedRevision: 0, value: new TextEncoder().encode(`${client}/cut`) });
    stream.send(encodeFrame(KvForwardRequestsSchema.encode([{ id: 2, timeoutMs: 5_000, command }]), KV_FORWARD_MAX_FRAME_BYTES));
    await cut;

    expect(await value(`${client}/answered`)).toBe(`${client}/answered`);
    expect(await value(`${client}/cut`)).toBeNull();
    // Retried (same client id and seq) it applies; retried again, the session answers with the same result.
    const retried = await forward(await connected(), 2, `${client}/cut`);
    expect(retried).toMatchObject({ kind: 'result', result: { ok: true, op: 'cas' } });
    const again = await forward(await connected(), 2, `${client}/cut`);
    expect(again.kind === 'result' && again.result).toEqual(retried.kind === 'result' && retried.result);
    expect(await value(`${client}/cut`)).toBe(`${client}/cut`);
    expect(await rejectedFrames(KV_FORWARD_PROTOCOL)).toBe(0);
  });
});
