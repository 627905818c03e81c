/**
 * RaftGroup: this node's seat in the Raft group of the federation's trusted
 * members, assembled from the pieces: durable storage under
 * `<data-dir>/raft`, the RaftNode driver, and the libp2p transport.
 *
 * Who is in the group: Raft node ids are member names. A node founding a
 * group (the default) starts with every trusted member of its config as a
 * voter, so all founders must list the same trusted members; a node started
 * with `raft.join` waits, empty, until a current member adds it
 * (`dwcpctl raft add-member`). After the first start the membership lives in
 * the Raft log, not the config file: the member list decides who may connect,
 * the log decides who votes.
 *
 * Only trusted nodes take part; an untrusted node has no RaftGroup.
 */
import { join } from 'node:path';
import type { DwcpConfig } from '../../config/schema.ts';
import type { MemberDirectory } from '../../federation/members.ts';
import type { Logger } from '../../log.ts';
import type { FrameMetrics, RaftMetrics } from '../../metrics/metrics.ts';
import type { ProtocolHost } from '../../net/host.ts';
import { bootstrapState, joiningState } from './bootstrap.ts';
import type { RaftStateMachine } from './node.ts';
import { RaftNode } from './node.ts';
import { RaftStorage } from './storage.ts';
import { RaftTransport, type RaftPeerDirectory } from './transport.ts';
import type { PersistedState, RaftConfig } from './types.ts';
import { resolveRaftConfig } from './types.ts';
import { checkRaftConfigForWire } from './wire.ts';

/** What the group reads of the config: who this node is, the trusted members that found a group, where its log lives, the raft: section. */
export type RaftGroupConfig = Pick<DwcpConfig, 'node' | 'members' | 'dataDir' | 'raft'>;

export interface RaftGroupOptions<R> {
  config: RaftGroupConfig;
  host: ProtocolHost;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  machine: RaftStateMachine<R>;
  /** Core settings the state machine needs (e.g. maxProposalBytes for its largest command). */
  core?: Partial<RaftConfig>;
  /** The raft section, and the frame counters of /dwcp/raft/1.0.0. */
  metrics: FrameMetrics & { raft: RaftMetrics };
  log: Logger;
  random?: () => number;
  onFatal?: (err: Error) => void;
}

/** Trusted members by name and peer ID, read live so a reloaded member list applies at once. */
function trustedPeers(members: MemberDirectory): RaftPeerDirectory {
  return {
    peerIdOf(name) {
      return members.list().find((m) => m.name === name && m.trust === 'trusted')?.peerId;
    },
    nameOf(peerId) {
      const m = members.get(peerId);
      return m?.trust === 'trusted' ? m.name : undefined;
    },
  };
}

export class RaftGroup<R> {
  readonly node: RaftNode<R>;
  readonly #storage: RaftStorage;
  readonly #transport: RaftTransport;

  private constructor(node: RaftNode<R>, storage: RaftStorage, transport: RaftTransport) {
    this.node = node;
    this.#storage = storage;
    this.#transport = transport;
  }

  /** Opens storage and builds the node; null when this node is untrusted and so not in the group. */
  static async open<R>(opts: RaftGroupOptions<R>): Promise<RaftGroup<R> | null> {
    const { config, metrics, log } = opts;
    if (config.node.trust !== 'trusted') return null;
    const core = resolveRaftConfig({ ...opts.core, electionTicks: config.raft.electionTicks, heartbeatTicks: config.raft.heartbeatTicks });
    // A setting the wire cannot carry would stall replication on encode errors later: refuse it now.
    checkRaftConfigForWire(core);
    const storage = await RaftStorage.open(join(config.dataDir, 'raft'), {
      onWrite: (t) => {
        metrics.raft.appendDuration.observe(t.appendSeconds);
        metrics.raft.fsyncDuration.observe(t.syncSeconds);
      },
    });
    try {
      let persisted = storage.load();
      if (persisted === null) {
        persisted = RaftGroup.#initialState(config, log);
        // The core takes its initial state as already durable: make it so before it starts.
        await storage.persist({ hardState: persisted.hardState, snapshot: null, entries: persisted.entries, mustSync: true });
      }
      const self = config.node.name;
      let deliver: (messages: Parameters<RaftNode<R>['receive']>[0]) => void = () => {};
      const transport = new RaftTransport({
        host: opts.host,
        self,
        peers: trustedPeers(opts.members),
        isConnected: opts.isConnected,
        deliver: (messages) => deliver(messages),
        metrics,
        log,
      });
      const { raft } = config;
      const node = new RaftNode<R>({
        id: self,
        persisted,
        store: storage,
        sender: transport,
        machine: opts.machine,
        random: opts.random ?? Math.random,
        config: core,
        tickMs: raft.tickMs,
        snapshotEntries: raft.snapshotEntries,
        metrics: metrics.raft,
        log,
        onFatal: opts.onFatal,
      });
      deliver = (messages) => node.receive(messages);
      return new RaftGroup(node, storage, transport);
    } catch (err) {
      await storage.close();
      throw err;
    }
  }

  static #initialState(config: RaftGroupConfig, log: Logger): PersistedState {
    if (config.raft.join) {
      log.info('raft: starting empty, waiting to be added to an existing group (raft.join)');
      return joiningState();
    }
    const voters = [config.node.name, ...config.members.filter((m) => m.trust === 'trusted').map((m) => m.name)];
    log.info({ voters: [...voters].sort() }, 'raft: founding a new group with every trusted member as a voter');
    return bootstrapState(voters);
  }

  async start(): Promise<void> {
    await this.#transport.start();
    this.node.start();
  }

  /** A leader hands over first (bounded by transferMs), then the node, transport and storage close in that order. */
  async stop(transferMs: number): Promise<void> {
    await this.node.stop({ transferMs });
    await this.#transport.stop();
    await this.#storage.close();
  }
}
