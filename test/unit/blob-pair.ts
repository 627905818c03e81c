/**
 * Two BlobServices in this process, each on its own real MemberMesh (libp2p
 * TCP + Noise + Yamux on 127.0.0.1, member gater, hello), so blob tests run
 * the real protocol over a real connection without starting daemons. The
 * link mode each side sees is a variable the test sets, so every mode can be
 * exercised on loopback.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigFileSchema, type MemberConfig, type Trust } from '../../src/config/schema.ts';
import { loadOrCreateIdentity } from '../../src/daemon/identity.ts';
import { MemberDirectory } from '../../src/federation/members.ts';
import type { LinkMode } from '../../src/federation/link-mode.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import { MemberMesh, type MeshConfig } from '../../src/net/mesh.ts';
import { frameEventsFor } from '../../src/net/framing.ts';
import { BlobSchema, type BlobSettings } from '../../src/blob/config.ts';
import type { BlobMetrics } from '../../src/blob/metrics.ts';
import { BlobService } from '../../src/blob/service.ts';
import { BLOB_PROTOCOL } from '../../src/blob/wire.ts';

export interface BlobNode {
  name: string;
  region: string;
  peerId: string;
  dataDir: string;
  mesh: MemberMesh;
  service: BlobService;
  metrics: DwcpMetrics;
  blobMetrics: BlobMetrics;
  /** What this node's service takes the link to the other node to be. */
  mode: LinkMode;
  member: MemberConfig;
  /** This node's member list (the other node); a test may change it to see streams refused. */
  members: MemberDirectory;
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

function meshConfig(name: string, trust: Trust): MeshConfig {
  const file = ConfigFileSchema.parse({
    federation: 'blob-test',
    node: { name, region: `r-${name}`, provider: 'onprem', trust },
    network: { reconnectInitialMs: 50, reconnectMaxMs: 500, pingIntervalMs: 60_000 },
  });
  return {
    federation: file.federation,
    node: { ...file.node, trust },
    listen: ['/ip4/127.0.0.1/tcp/0'],
    network: file.network,
  };
}

export async function waitFor(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export async function blobPair(opts: PairOptions = {}): Promise<BlobPair> {
  const root = await mkdtemp(join(tmpdir(), 'dwcp-blob-'));
  const idA = await loadOrCreateIdentity(join(root, 'a'));
  const idB = await loadOrCreateIdentity(join(root, 'b'));
  const trustB = opts.trustB ?? 'trusted';
  const memberA: MemberConfig = { name: 'a', peerId: idA.peerId.toString(), region: 'r-a', provider: 'onprem', trust: 'trusted', addrs: [] };
  const memberB: MemberConfig = { name: 'b', peerId: idB.peerId.toString(), region: 'r-b', provider: 'onprem', trust: trustB, addrs: [] };
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

  const start = async (name: string, id: typeof idA, self: MemberConfig, other: MemberConfig): Promise<BlobNode> => {
    const dataDir = join(root, name);
    const members = new MemberDirectory([other]);
    const metrics = createMetrics({ defaultMetrics: false });
    const mesh = await MemberMesh.create({ config: meshConfig(name, self.trust), identity: id, members, metrics, log });
    await mesh.start();
    // One object: the service's link() reads node.mode, which the test sets.
    const node = { name, region: self.region, peerId: self.peerId, dataDir, mesh, metrics, blobMetrics: metrics.blob, mode: 'datacenter' as LinkMode, member: self, members } as BlobNode;
    node.service = await openService(node, settings, members);
    await node.service.start();
    nodes.push(node);
    return node;
  };

  try {
    const a = await start('a', idA, memberA, memberB);
    const b = await start('b', idB, memberB, { ...memberA, addrs: a.mesh.listenAddrs() });
    await waitFor('the two meshes to connect', () => a.mesh.isConnected(b.peerId) && b.mesh.isConnected(a.peerId));
    return {
      a,
      b,
      root,
      async restartService(node, more = {}) {
        await node.service.stop();
        node.service = await openService(node, BlobSchema.parse({ ...(opts.settings ?? {}), ...more }), node.members);
        await node.service.start();
      },
      async close() {
        for (const n of nodes) await n.service.stop().catch(() => {});
        for (const n of nodes) await n.mesh.stop().catch(() => {});
        await rm(root, { recursive: true, force: true });
      },
    };
  } catch (err) {
    for (const n of nodes) await n.mesh.stop().catch(() => {});
    await rm(root, { recursive: true, force: true });
    throw err;
  }
}
