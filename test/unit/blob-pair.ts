/**
 * Two BlobServices in this process, each on its own real MemberMesh
 * (test/support/mesh-pair.ts: libp2p TCP + Noise + Yamux on 127.0.0.1, member
 * gater, hello), so blob tests run the real protocol over a real connection
 * without starting daemons. The link mode each side sees is a variable the
 * test sets, so every mode can be exercised on loopback.
 */
import type { Trust } from '../../src/config/schema.ts';
import type { LinkMode } from '../../src/federation/link-mode.ts';
import type { MemberDirectory } from '../../src/federation/members.ts';
import { createLogger } from '../../src/log.ts';
import { frameEventsFor } from '../../src/net/framing.ts';
import { BlobSchema, type BlobSettings } from '../../src/blob/config.ts';
import type { BlobMetrics } from '../../src/blob/metrics.ts';
import { BlobService } from '../../src/blob/service.ts';
import { BLOB_PROTOCOL } from '../../src/blob/wire.ts';
import { meshPair, type MeshNode } from '../support/mesh-pair.ts';

export { waitFor } from '../support/mesh-pair.ts';

export interface BlobNode extends MeshNode {
  service: BlobService;
  blobMetrics: BlobMetrics;
  /** What this node's service takes the link to the other node to be. */
  mode: LinkMode;
}

export interface BlobPair {
  a: BlobNode;
  b: BlobNode;
  root: string;
  /** Stops b's service and opens a fresh one on the same data dir and mesh (a daemon restart, minus the mesh). */
  restartService(node: BlobNode, settings?: Partial<BlobSettings>): Promise<void>;
  close(): Promise<void>;
}

export interface PairOptions {
  settings?: Record<string, unknown>;
  trustB?: Trust;
  resumeIdleMs?: number;
  /** The wall clock both services' baseline caches read; the test may move it. */
  clock?: { ms: number };
}

const log = createLogger('silent');

export async function blobPair(opts: PairOptions = {}): Promise<BlobPair> {
  const meshes = await meshPair({ ...(opts.trustB ? { trustB: opts.trustB } : {}), log });
  const settings = BlobSchema.parse(opts.settings ?? {});
  const nodes: BlobNode[] = [];

  const openService = async (node: BlobNode, s: BlobSettings, members: MemberDirectory): Promise<BlobService> =>
    BlobService.open({
      settings: s,
      dataDir: node.dataDir,
      host: node.mesh.host,
      members,
      isConnected: (peerId) => node.mesh.isConnected(peerId),
      link: () => ({ mode: node.mode, rttMs: 1 }),
      metrics: node.blobMetrics,
      frameEvents: frameEventsFor(node.metrics, BLOB_PROTOCOL),
      log,
      noSync: true,
      ...(opts.clock ? { now: () => (opts.clock as { ms: number }).ms } : {}),
      ...(opts.resumeIdleMs !== undefined ? { resumeIdleMs: opts.resumeIdleMs } : {}),
    });

  const close = async (): Promise<void> => {
    for (const n of nodes) await n.service.stop().catch(() => {});
    await meshes.close();
  };
  try {
    for (const m of [meshes.a, meshes.b]) {
      // One object: the service's link() reads node.mode, which the test sets.
      const node = Object.assign(m, { blobMetrics: m.metrics.blob, mode: 'datacenter' as LinkMode }) as BlobNode;
      node.service = await openService(node, settings, node.members);
      await node.service.start();
      nodes.push(node);
    }
    const [a, b] = nodes as [BlobNode, BlobNode];
    return {
      a,
      b,
      root: meshes.root,
      async restartService(node, more = {}) {
        await node.service.stop();
        node.service = await openService(node, BlobSchema.parse({ ...(opts.settings ?? {}), ...more }), node.members);
        await node.service.start();
      },
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
