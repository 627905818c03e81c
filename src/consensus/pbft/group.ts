/**
 * PbftGroup: this node's seat in the federation's PBFT group, assembled from
 * the pieces: durable storage under `<data-dir>/pbft`, the PbftNode driver,
 * the libp2p transport, Ed25519 signing with the node key, and the client
 * lanes the daemon sends requests through. The state machine is the caller's
 * (the daemon plugs in the KV replica, KvPbftReplica), as it is for
 * RaftGroup: consensus knows only the PbftStateMachine interface, so it does
 * not depend on what it replicates.
 *
 * Who takes part: when any member (this node included) is untrusted, every
 * member is a replica, trusted or not; replica ids are member names, sorted,
 * so every member derives the same order (which fixes the primary of each
 * view). Unlike the Raft group, PBFT membership comes from the config and
 * does not change at run time: every member must list the same members, and
 * a change takes a coordinated restart (config validation refuses a
 * federation too small for n >= 3f + 1 before anything starts).
 */
import { join } from 'node:path';
import type { Libp2p } from 'libp2p';
import type { DwcpConfig } from '../../config/schema.ts';
import type { MemberDirectory } from '../../federation/members.ts';
import type { Logger } from '../../log.ts';
import type { DwcpMetrics } from '../../metrics/metrics.ts';
import type { Identity } from '../../daemon/identity.ts';
import { PbftClient } from './client.ts';
import { MemberKeys, ed25519Signer } from './keys.ts';
import { PbftNode, type ByzantineTestBehaviour, type PbftStateMachine } from './node.ts';
import { PbftStorage } from './storage.ts';
import { PbftTransport } from './transport.ts';
import { DEFAULT_PBFT_CONFIG, maxFaulty, resolvePbftConfig, type PbftConfig } from './types.ts';
import { PBFT_MAX_FRAME_BYTES, PBFT_MAX_SNAPSHOT_BYTES, checkPbftConfigForWire } from './wire.ts';

export interface PbftGroupOptions<M extends PbftStateMachine> {
  config: DwcpConfig;
  host: Libp2p;
  identity: Identity;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  /** The replicated state machine; every replica must start it from the same state. */
  machine: M;
  /** The snapshot of that starting state (genesis): the machine starts from it when no stable checkpoint is on disk. */
  initialSnapshot: Uint8Array;
  metrics: DwcpMetrics;
  log: Logger;
  onFatal?: (err: Error) => void;
  byzantine?: ByzantineTestBehaviour;
}

/** Calls waiting for a free client lane before new ones are refused. */
const MAX_WAITING_CALLS = 4096;

/** Whether the federation scope needs PBFT: there are members, and some member, or this node, is untrusted. */
export function federationNeedsPbft(config: DwcpConfig): boolean {
  if (config.members.length === 0) return false;
  return config.node.trust === 'untrusted' || config.members.some((m) => m.trust === 'untrusted');
}

/** M defaults to the bare interface for readers that only look at the node and the client (status). */
export class PbftGroup<M extends PbftStateMachine = PbftStateMachine> {
  readonly node: PbftNode;
  readonly client: PbftClient;
  /** The state machine the node executes committed requests on (the one given to open). */
  readonly machine: M;
  readonly #storage: PbftStorage;
  readonly #transport: PbftTransport;

  private constructor(node: PbftNode, client: PbftClient, machine: M, storage: PbftStorage, transport: PbftTransport) {
    this.node = node;
    this.client = client;
    this.machine = machine;
    this.#storage = storage;
    this.#transport = transport;
  }

  /** Null when every member is trusted (the federation scope then runs on Raft). */
  static async open<M extends PbftStateMachine>(opts: PbftGroupOptions<M>): Promise<PbftGroup<M> | null> {
    const { config, metrics, log, members, identity } = opts;
    if (!federationNeedsPbft(config)) return null;
    const self = config.node.name;
    const { pbft } = config;
    const replicas = [self, ...config.members.map((m) => m.name)].sort();
    const f = pbft.f ?? maxFaulty(replicas.length);
    // A new-view carries 2f + 1 view-changes, each with up to logWindow
    // prepared batches: size batches so that the worst case still fits one
    // frame, or a view change under full load could never be delivered.
    const maxBatchBytes = Math.min(DEFAULT_PBFT_CONFIG.maxBatchBytes, Math.floor((PBFT_MAX_FRAME_BYTES * 0.8) / ((2 * f + 1) * pbft.logWindow)));
    const core: Partial<PbftConfig> = {
      checkpointInterval: pbft.checkpointInterval,
      logWindow: pbft.logWindow,
      maxBatchRequests: pbft.maxBatchRequests,
      maxBatchBytes,
      maxRequestBytes: Math.min(DEFAULT_PBFT_CONFIG.maxRequestBytes, maxBatchBytes),
      viewChangeTicks: pbft.viewChangeTicks,
      maxSnapshotBytes: PBFT_MAX_SNAPSHOT_BYTES,
    };
    // A setting the wire cannot carry would stall state transfer later: refuse it now.
    const resolved = resolvePbftConfig(core);
    checkPbftConfigForWire(resolved);
    const peerIdOf = (name: string): string | undefined =>
      name === self ? identity.peerId.toString() : members.list().find((m) => m.name === name)?.peerId;
    const keys = new MemberKeys(peerIdOf, (seconds) => metrics.pbft.verifyDuration.observe(seconds));
    const sign = keys.remembering(self, ed25519Signer(identity.privateKey));
    const storage = await PbftStorage.open(join(config.dataDir, 'pbft'));
    try {
      const persisted = storage.load();
      let node: PbftNode | null = null;
      const transport = new PbftTransport({
        host: opts.host,
        peers: {
          peerIdOf: (name) => (name === self ? undefined : peerIdOf(name)),
          nameOf: (peerId) => members.get(peerId)?.name,
        },
        isConnected: opts.isConnected,
        deliver: (from, frame) => node?.receive(from, frame.messages, frame.replies),
        metrics,
        log,
      });
      node = new PbftNode({
        id: self,
        members: replicas,
        f,
        sign,
        verify: keys.verify,
        config: core,
        persisted,
        initialSnapshot: opts.initialSnapshot,
        store: storage,
        sender: { send: (to, frame) => transport.send(to, [frame]) },
        machine: opts.machine,
        tickMs: pbft.tickMs,
        metrics: metrics.pbft,
        log,
        ...(opts.onFatal === undefined ? {} : { onFatal: opts.onFatal }),
        ...(opts.byzantine === undefined ? {} : { byzantine: opts.byzantine }),
      });
      const client = new PbftClient({
        member: self,
        members: replicas,
        f: node.f,
        lanes: pbft.clientLanes,
        maxWaiting: MAX_WAITING_CALLS,
        retryMs: pbft.requestRetryMs,
        maxRequestBytes: resolved.maxRequestBytes,
        sign,
        replica: node,
        onResult: (result, seconds) => {
          metrics.pbft.requests.inc({ result });
          if (result === 'committed') metrics.pbft.requestDuration.observe(seconds);
        },
      });
      const n = node;
      n.onReply = (reply) => client.onReply(reply);
      log.info({ replicas, f: n.f, view: n.status().view, lastExecuted: n.status().lastExecuted }, 'pbft: replica of the federation scope');
      return new PbftGroup(n, client, opts.machine, storage, transport);
    } catch (err) {
      await storage.close();
      throw err;
    }
  }

  get primary(): string {
    return this.node.primary;
  }

  get replicas(): number {
    return this.node.members.length;
  }

  async start(): Promise<void> {
    await this.#transport.start();
    this.node.start();
  }

  async stop(): Promise<void> {
    this.client.stop();
    await this.node.stop();
    await this.#transport.stop();
    await this.#storage.close();
  }
}
