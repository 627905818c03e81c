/**
 * /dwcp/image/1.0.0 between two real meshes in this process (blob-pair.ts:
 * libp2p TCP + Noise + Yamux on loopback, the member gater, hello), each with
 * its blob service: an asker gets an image part pushed by the holder with the
 * blob transfer; a holder refuses a version it does not hold; and a
 * connection cut in the middle of the push costs a re-ask, not the transfer:
 * the push resumes over the new connection, the asker's second ask attaches
 * to it, and the holder ran one push.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { BlobService } from '../../src/blob/service.ts';
import { DwcpError } from '../../src/errors.ts';
import { ImageFetch } from '../../src/image/fetch.ts';
import { imageBlobKey } from '../../src/image/record.ts';
import { createLogger } from '../../src/log.ts';
import { blobPair, type BlobNode, type BlobPair } from './blob-pair.ts';

const log = createLogger('silent');
const MIB = 1024 * 1024;
const SHA = 'e'.repeat(64);

let pair: BlobPair | undefined;
const fetches: ImageFetch[] = [];

afterEach(async () => {
  for (const f of fetches.splice(0)) await f.stop();
  await pair?.close();
  pair = undefined;
});

async function fetchOn(node: BlobNode, blob: Pick<BlobService, 'send' | 'store'> = node.service, logged: string[] | null = null): Promise<ImageFetch> {
  const logger = logged === null ? log : createLogger('info', { write: (line: string) => void logged.push(String((JSON.parse(line) as { msg?: string }).msg)) });
  const f = new ImageFetch({ host: node.mesh.host, members: node.members, isConnected: (peerId) => node.mesh.isConnected(peerId), blob, log: logger });
  await f.start();
  fetches.push(f);
  return f;
}

describe('ImageFetch', () => {
  it("pulls a part the holder pushes; a version the holder does not hold is refused with the holder's reason", async () => {
    pair = await blobPair();
    const key = imageBlobKey('deb', 'disk', SHA);
    const stored = await pair.a.service.store.ingestBytes(key, randomBytes(2 * MIB));
    await fetchOn(pair.a);
    const asker = await fetchOn(pair.b);
    const out = await asker.fetch(pair.a.member, key, stored.version);
    expect(out.kind).toBe('full');
    expect(pair.b.service.store.current(key)?.version).toBe(stored.version);
    const wrong = asker.fetch(pair.a.member, key, 'f'.repeat(64));
    await expect(wrong).rejects.toThrow(new DwcpError('not_found', `a: holds version ${stored.version.slice(0, 16)}, not ${'f'.repeat(16)} of ${key}`));
  });

  it('a connection cut in the middle of the push costs a re-ask: the push resumes and the holder runs it once', async () => {
    pair = await blobPair({ settings: { batchBytes: 64 * 1024, maxStreams: 1 } });
    const p = pair;
    const key = imageBlobKey('deb', 'disk', SHA);
    const stored = await p.a.service.store.ingestBytes(key, randomBytes(8 * MIB));
    let pushes = 0;
    let acks = 0;
    // The holder's blob service, with a hook that cuts the connection after 20 acknowledged batches of the first push.
    const holderBlob: Pick<BlobService, 'send' | 'store'> = {
      store: p.a.service.store,
      send: (k, to, opts = {}) => {
        pushes++;
        return p.a.service.send(k, to, {
          ...opts,
          streams: 1,
          onAck: () => {
            if (++acks === 20) for (const c of p.a.mesh.host.getConnections()) c.abort(new Error('test cuts the connection'));
          },
        });
      },
    };
    await fetchOn(p.a, holderBlob);
    const said: string[] = [];
    const asker = await fetchOn(p.b, p.b.service, said);
    const out = await asker.fetch(p.a.member, key, stored.version, { arrived: () => p.b.service.store.current(key)?.version === stored.version });
    expect(acks).toBeGreaterThan(20);
    expect(pushes).toBe(1);
    expect(said).toContain('image fetch broken off; asking the holder again');
    expect(['full', 'resumed']).toContain(out.kind);
    expect(p.b.service.store.current(key)?.version).toBe(stored.version);
    const resumed = (await p.a.blobMetrics.resumed.get()).values.find((v) => v.labels.direction === 'sent')?.value;
    expect(resumed).toBeGreaterThanOrEqual(1);
  });
});
