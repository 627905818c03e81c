/**
 * Two real MemberMeshes in this process (libp2p TCP + Noise + Yamux on
 * 127.0.0.1, member gater, hello), each listing the other as its one member,
 * so a test can run a protocol over a real member connection without
 * starting daemons. b knows a's address and dials it; a waits for b.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigFileSchema, type DwcpConfig, type MemberConfig, type Trust } from '../../src/config/schema.ts';
import { loadOrCreateIdentity } from '../../src/daemon/identity.ts';
import { MemberDirectory } from '../../src/federation/members.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import { MemberMesh, type MeshConfig } from '../../src/net/mesh.ts';

export interface MeshNode {
  name: string;
  region: string;
  peerId: string;
  /** The node's own directory (its key lives there). */
  dataDir: string;
  member: MemberConfig;
  /** This node's member list (the other node); a test may change it. */
  members: MemberDirectory;
  metrics: DwcpMetrics;
  mesh: MemberMesh;
}

export interface MeshPairOptions {
  trustB?: Trust;
  /** `network:` settings for both nodes, over fast reconnects and a ping a minute. */
  network?: Partial<DwcpConfig['network']>;
  log?: Logger;
}

export interface MeshPair {
  a: MeshNode;
  b: MeshNode;
  root: string;
  /** Stops both meshes and removes the directory. */
  close(): Promise<void>;
}

function meshConfig(name: string, trust: Trust, network: Partial<DwcpConfig['network']>): MeshConfig {
  const file = ConfigFileSchema.parse({
    federation: 'mesh-test',
    node: { name, region: `r-${name}`, provider: 'onprem', trust },
    network: { reconnectInitialMs: 50, reconnectMaxMs: 500, pingIntervalMs: 60_000, ...network },
  });
  return { federation: file.federation, node: { ...file.node, trust }, listen: ['/ip4/127.0.0.1/tcp/0'], network: file.network };
}

/** Polls `check` every 10 ms (for state no event announces), failing after `ms`. */
export async function waitFor(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Starts a and b, resolving once each counts the other as connected. */
export async function meshPair(opts: MeshPairOptions = {}): Promise<MeshPair> {
  const root = await mkdtemp(join(tmpdir(), 'dwcp-mesh-'));
  const log = opts.log ?? createLogger('silent');
  const network = opts.network ?? {};
  const nodes: MeshNode[] = [];
  const stopAll = async (): Promise<void> => {
    for (const n of nodes) await n.mesh.stop().catch(() => {});
    await rm(root, { recursive: true, force: true });
  };
  try {
    const idA = await loadOrCreateIdentity(join(root, 'a'));
    const idB = await loadOrCreateIdentity(join(root, 'b'));
    const memberA: MemberConfig = { name: 'a', peerId: idA.peerId.toString(), region: 'r-a', provider: 'onprem', trust: 'trusted', addrs: [] };
    const memberB: MemberConfig = { name: 'b', peerId: idB.peerId.toString(), region: 'r-b', provider: 'onprem', trust: opts.trustB ?? 'trusted', addrs: [] };
    const start = async (id: typeof idA, self: MemberConfig, other: MemberConfig): Promise<MeshNode> => {
      const members = new MemberDirectory([other]);
      const metrics = createMetrics({ defaultMetrics: false });
      const mesh = await MemberMesh.create({ config: meshConfig(self.name, self.trust ?? 'trusted', network), identity: id, members, metrics, log });
      await mesh.start();
      const node = { name: self.name, region: self.region, peerId: self.peerId, dataDir: join(root, self.name), member: self, members, metrics, mesh };
      nodes.push(node);
      return node;
    };
    const a = await start(idA, memberA, memberB);
    const b = await start(idB, memberB, { ...memberA, addrs: a.mesh.listenAddrs() });
    await waitFor('the two meshes to connect', () => a.mesh.isConnected(b.peerId) && b.mesh.isConnected(a.peerId));
    return { a, b, root, close: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
