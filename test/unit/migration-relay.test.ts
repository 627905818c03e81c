/**
 * The live channels' relay (src/migration/relay.ts) and its frame codec
 * (live-codec.ts) over a real member connection (two MemberMeshes, Noise
 * and yamux on loopback): a Unix socket's bytes reach the Unix socket at the
 * other end whole and in order, both ways, whatever each end's codec, with
 * compressible and incompressible runs mixed (the skip rule and the frames
 * compressed in parallel must not reorder anything). The skip rule is the
 * blob transfer's (CompressionSkip, test/unit/blob-parts.test.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import type { LiveCodec } from '../../src/migration/live-codec.ts';
import { MigrateService } from '../../src/migration/migrate-service.ts';
import { pipe } from '../../src/migration/relay.ts';
import { meshPair, type MeshPair } from '../support/mesh-pair.ts';

const MiB = 1024 * 1024;

/** 12 MiB in runs of 1 MiB: zeros, random, text-like, so some frames compress and some do not. */
function mixedStream(): Buffer {
  const runs: Buffer[] = [];
  for (let i = 0; i < 12; i++) runs.push(i % 3 === 0 ? Buffer.alloc(MiB) : i % 3 === 1 ? randomBytes(MiB) : Buffer.from('dwcp live migration '.repeat(MiB / 20 + 1)).subarray(0, MiB));
  return Buffer.concat(runs);
}

/** Both ends of one Unix socket connection at `path`: the relay's (accepted) and QEMU's. */
async function socketPair(path: string): Promise<[Socket, Socket]> {
  const accepted = Promise.withResolvers<Socket>();
  const server = await listen(path, (s) => accepted.resolve(s));
  const client = createConnection(path);
  const here = await accepted.promise;
  server.close();
  return [here, client];
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function listen(path: string, onSocket: (s: Socket) => void): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer({ allowHalfOpen: true }, onSocket);
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

/** Everything a socket sends until its end of file. */
function drain(s: Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (b: Buffer) => parts.push(b));
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

/**
 * Everything a socket sends until its end of file, read slowly (a QEMU busy applying pages): each read waits a
 * few milliseconds before the next, so the relay's writes queue in the sending socket (the received frames' parts,
 * corked, held there) while further frames arrive and are decrypted.
 */
function slowDrain(s: Socket): Promise<Buffer> {
  const parts: Buffer[] = [];
  s.on('data', (b: Buffer) => {
    parts.push(b);
    s.pause();
    setTimeout(() => s.resume(), 3);
  });
  return new Promise((resolve, reject) => {
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

describe('the live relay', () => {
  let pair: MeshPair;
  const sinks: Socket[] = [];
  let sinkServer: Server;
  /** Bytes the target's end received on its streams (frames, compressed or not). */
  let wireIn = 0;
  /** What the target's service asked its provider for, in order. */
  const endpoints: unknown[][] = [];
  const targetLog: Record<string, unknown>[] = [];

  beforeAll(async () => {
    pair = await meshPair();
    const sinkPath = join(pair.root, 'sink.sock');
    sinkServer = await listen(sinkPath, (s) => sinks.push(s));
    // The target's end: sends uncompressed (each frame says how it is, so the ends may differ).
    await new MigrateService({
      host: pair.b.mesh.host,
      members: pair.b.members,
      isConnected: (peerId) => pair.b.mesh.isConnected(peerId),
      region: 'b',
      migration: () => ({ id: 'm1', source: { region: 'a' }, target: { region: 'b', provider: 'qemu' }, phase: 'transfer' }) as never,
      qemu: () =>
        ({
          incomingEndpoint: async (...args: unknown[]) => {
            endpoints.push(args);
            return sinkPath;
          },
        }) as never,
      store: {} as never,
      log: createLogger('debug', { write: (line: string) => void targetLog.push(JSON.parse(line) as Record<string, unknown>) }),
      events: { onBytesIn: (n) => (wireIn += n) },
      codec: 'none',
    }).start();
  }, 60_000);

  /** The source's end: opens channels only (the target's service answers them). */
  const sourceService = (codec: LiveCodec): MigrateService =>
    new MigrateService({
      host: pair.a.mesh.host,
      members: pair.a.members,
      isConnected: (peerId) => pair.a.mesh.isConnected(peerId),
      region: 'a',
      migration: () => undefined,
      qemu: () => undefined,
      store: {} as never,
      log: createLogger('silent'),
      codec,
    });

  afterAll(async () => {
    sinkServer?.close();
    await pair?.close();
  });

  for (const [codec, slow] of [['lz4', false], ['none', false], ['none', true]] as const) {
    it(`carries 12 MiB of mixed bytes one way and 3 MiB back, whole and in order (source ${codec}, target none${slow ? ', a slow reader at the target: parts wait in its socket' : ''})`, async () => {
      const source = sourceService(codec);
      const sent = mixedStream();
      const back = randomBytes(3 * MiB);
      const srcPath = join(pair.root, `src-${codec}.sock`);
      const relayed = Promise.withResolvers<{ sent: number; received: number }>();
      const server = await listen(srcPath, (socket) => {
        server.close();
        source
          .open('b', 'm1', 'state')
          .then((ch) => pipe(ch, socket, undefined, codec))
          .then(relayed.resolve, relayed.reject);
      });
      const before = sinks.length;
      wireIn = 0;
      const qemu = createConnection(srcPath);
      const fromTarget = drain(qemu);
      qemu.end(sent);
      await expect.poll(() => sinks.length, { timeout: 30_000 }).toBe(before + 1);
      const sink = sinks[before] as Socket;
      // The bytes back go while the bytes there still flow; the sink ends only after its end of file (the relay's target
      // end connects without allowHalfOpen, as a QEMU never half-closes first).
      const atTarget = slow ? slowDrain(sink) : drain(sink);
      sink.write(back);
      const got = await atTarget;
      sink.end();
      expect(got.byteLength).toBe(sent.byteLength);
      expect(sha(got)).toBe(sha(sent));
      expect(sha(await fromTarget)).toBe(sha(back));
      expect(await relayed.promise).toEqual({ sent: sent.byteLength, received: back.byteLength });
      // LZ4: most of the zero and text runs went compressed (the frames just after a random run are skipped untried), the random ones as they are.
      if (codec === 'lz4') expect(wireIn).toBeGreaterThan(4 * MiB);
      if (codec === 'lz4') expect(wireIn).toBeLessThan(0.8 * sent.byteLength);
      else expect(wireIn).toBeGreaterThan(sent.byteLength);
    }, 60_000);
  }

  it('multifd: the target connects the main state stream to its QEMU before any other, with the multifd settings, whatever order the streams open in', async () => {
    const source = sourceService('lz4');
    const multifd = { channels: 2, compression: 'zstd' } as const;
    const before = sinks.length;
    endpoints.length = 0;
    // The multifd streams open first; the main one only once both wait for it at the target.
    const later = [2, 1].map((stream) => source.open('b', 'm-mfd', 'state', { stream, multifd }));
    const waiting = (): number => targetLog.filter((l) => l.migration === 'm-mfd' && String(l.msg).startsWith('multifd state stream waits')).length;
    await expect.poll(waiting, { timeout: 30_000 }).toBe(2);
    expect(sinks.length).toBe(before);
    const main = await source.open('b', 'm-mfd', 'state', { stream: 0, multifd });
    const channels = [main, ...(await Promise.all(later)).reverse()];
    const piped = await Promise.all(
      channels.map(async (ch, stream) => {
        const [here, there] = await socketPair(join(pair.root, `mfd-${stream}.sock`));
        const done = pipe(ch, here, undefined, 'none');
        there.end(`stream ${stream}`);
        there.resume();
        return { done };
      }),
    );
    await expect.poll(() => sinks.length, { timeout: 30_000 }).toBe(before + 3);
    // A sink ends only after its end of file (the target's end connects without allowHalfOpen, as QEMU never half-closes first).
    const got = await Promise.all(
      sinks.slice(before).map(async (sink) => {
        const bytes = await drain(sink);
        sink.end();
        return bytes.toString();
      }),
    );
    // QEMU takes the first connection as the main channel: it must carry stream 0.
    expect(got[0]).toBe('stream 0');
    expect(got.slice(1).sort()).toEqual(['stream 1', 'stream 2']);
    await Promise.all(piped.map((p) => p.done));
    expect(endpoints[0]).toEqual(['m-mfd', 'state', multifd]);
  }, 60_000);
});
