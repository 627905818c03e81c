/**
 * Hostile input against a real daemon process: a configured member (holding
 * its real key, so it passes the gater) opens hello streams and sends garbage,
 * an oversized frame and a truncated frame. Each bad stream is reset and
 * counted by reason; the daemon keeps serving and the member can still
 * complete a proper hello afterwards.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { multiaddr } from '@multiformats/multiaddr';
import type { Stream } from '@libp2p/interface';
import { loadIdentity } from '../../src/daemon/identity.ts';
import { HELLO_PROTOCOL } from '../../src/net/hello.ts';
import { baseConfig, DaemonProcess, metricValue, prepareNode, runCtl, startDaemon, tempRoot } from './harness.ts';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((f) => f()));
});

/** What the daemon's log must say for each attack: the limit and the actual value, named. */
const EXPECTED_ERROR: Record<string, string> = {
  malformed: 'length prefix is longer than the 5-byte maximum',
  oversized: 'frame of 1048576 bytes exceeds the 16384-byte limit',
  truncated: 'stream ended inside a frame',
  schema: 'dwcp.net.v1.HelloFrame: not a valid protobuf encoding',
};

/** Resolves when the remote side resets or closes the stream. */
async function drained(stream: Stream): Promise<void> {
  try {
    for await (const _chunk of stream) {
      // The daemon answers a hello with its own first; whatever it sends is irrelevant here.
    }
  } catch {
    // A reset is the expected outcome.
  }
}

describe('hostile member input', () => {
  it('resets and counts malformed, oversized and truncated hello frames, and keeps serving', async () => {
    const dir = await tempRoot('hostile');
    cleanups.push(dir.remove);
    const [a, b] = await Promise.all(['a', 'b'].map((n) => prepareNode(dir.path, n)));
    const daemon: DaemonProcess = await startDaemon(
      a!,
      baseConfig(a!, { members: [{ name: 'b', peerId: b!.peerId, region: 'r-b', provider: 'onprem' }], network: { helloTimeoutMs: 20_000 } }),
    );
    cleanups.push(() => daemon.stop('SIGKILL'));
    const target = multiaddr((await daemon.serving()).listen[0]!);

    const key = (await loadIdentity(`${b!.dir}/node.key`)).privateKey;
    const attacker: Libp2p = await createLibp2p({ privateKey: key, transports: [tcp()], connectionEncrypters: [noise()], streamMuxers: [yamux()] });
    cleanups.push(async () => attacker.stop());

    const attacks: [reason: string, bytes: Uint8Array, end: boolean][] = [
      // A varint with more than 5 bytes of length prefix.
      ['malformed', Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), false],
      // A declared length far above the hello limit (16 KiB): 1 MiB.
      ['oversized', Uint8Array.from([0x80, 0x80, 0x40]), false],
      // Half a frame, then end of stream.
      ['truncated', Uint8Array.from([0x10, 0x01, 0x02]), true],
      // A well-framed payload that is not a HelloFrame protobuf.
      ['schema', Uint8Array.from([0x03, 0xff, 0xff, 0xff]), false],
    ];
    for (const [reason, bytes, end] of attacks) {
      // A failed hello costs the whole connection, so each attack dials afresh.
      const before = daemon.lines.length;
      const connection = await attacker.dial(target);
      const stream = await connection.newStream(HELLO_PROTOCOL);
      stream.send(bytes);
      if (end) await stream.close();
      await drained(stream);
      const refusal = await daemon.waitForLog((l) => l.msg === 'member connection refused by hello', `${reason} refusal`, before);
      expect(refusal).toMatchObject({ reason: 'hello_failed', member: 'b' });
      expect(String(refusal.err)).toContain(EXPECTED_ERROR[reason]);
      const text = await daemon.scrape();
      expect(metricValue(text, 'dwcp_frames_rejected_total', { protocol: HELLO_PROTOCOL, reason }), reason).toBeGreaterThanOrEqual(1);
    }

    // The daemon is alive and answering.
    expect(daemon.child.exitCode).toBeNull();
    const ctl = await runCtl(['--socket', a!.socket, 'status', '--json']);
    expect(ctl.code, ctl.stderr).toBe(0);
  });
});
