/**
 * PbftNode: the driver that runs one PbftCore against real time, durable
 * storage, the libp2p transport and a deterministic state machine.
 *
 * Storage writes are pipelined (types.ts PbftReady): a Ready is executed and
 * advanced at once, its write queued behind the earlier ones, and its
 * messages and replies leave once that write is durable (writes land in
 * order, so every earlier one is too). The next Ready is taken while writes
 * sync, and writes queued during one fsync share the next (PbftStorage's
 * group commit): a replica no longer waits one fsync per Ready, which held
 * each member at ~25 Readys/s with 30 ms fsyncs under load. At most
 * MAX_WRITES_IN_FLIGHT Readys wait for the disk; beyond that the loop waits.
 *
 * Outbound: a Ready's messages and the replies for clients on other members
 * are grouped into one frame per peer. Replies for this member's own client
 * lanes go straight to `onReply`.
 *
 * A storage or state-machine failure, or a broken core invariant, is fatal:
 * the node stops (so it never sends a vote it could not persist) and reports
 * through onFatal; the daemon exits and restarts from disk.
 *
 * Test-only Byzantine behaviour (`byzantine: 'equivocate'`): as primary, the
 * node sends half of its peers a different, validly signed pre-prepare (the
 * null batch) for each sequence number. It exists so real-process tests can
 * show honest members agree through an equivocating one; the daemon enables
 * it only from the DWCP_TEST_BYZANTINE environment variable and says so
 * loudly in its log.
 */
import type { Logger } from '../../log.ts';
import type { PbftMetrics } from '../../metrics/metrics.ts';
import type { PbftStatus } from './core.ts';
import { PbftCore } from './core.ts';
import type { Verify } from './certificates.ts';
import { NULL_BATCH_DIGEST, seal } from './encoding.ts';
import type {
  ClientRequest,
  DropKind,
  ExecutionResult,
  PbftConfig,
  PbftMessage,
  PbftPersistedState,
  PbftReady,
  PersistDelta,
  PrePrepare,
  ReplicaId,
  Reply,
  RequestMessage,
  RequestResult,
} from './types.ts';
import { BYZANTINE_DROPS, PbftInvariantError } from './types.ts';
import { signerMember } from './keys.ts';
import { ReadyLoop } from '../../driver/ready-loop.ts';

/** The replicated state machine; must be deterministic, its snapshot canonical. */
export interface PbftStateMachine {
  /** Executes one committed request and returns the reply bytes. */
  execute(request: ClientRequest): Uint8Array;
  snapshot(): Uint8Array;
  restore(snapshot: Uint8Array): void;
}

/** The durable half of the driver (PbftStorage). */
export interface PbftStore {
  persist(delta: PersistDelta): Promise<void>;
}

/** What one peer gets from one Ready. */
export interface PbftOutboundFrame {
  messages: PbftMessage[];
  replies: Reply[];
}

/** Best-effort delivery; PBFT retransmits what matters. Must not throw. */
export interface PbftSender {
  send(to: ReplicaId, frame: PbftOutboundFrame): void;
}

export const BYZANTINE_TEST_BEHAVIOURS = ['equivocate'] as const;
export type ByzantineTestBehaviour = (typeof BYZANTINE_TEST_BEHAVIOURS)[number];

export interface PbftNodeOptions {
  readonly id: ReplicaId;
  readonly members: readonly ReplicaId[];
  readonly f?: number;
  readonly sign: (bytes: Uint8Array) => Uint8Array;
  readonly verify: Verify;
  readonly config: Partial<PbftConfig>;
  readonly persisted: PbftPersistedState | null;
  readonly initialSnapshot: Uint8Array;
  readonly store: PbftStore;
  readonly sender: PbftSender;
  readonly machine: PbftStateMachine;
  readonly tickMs: number;
  readonly metrics?: PbftMetrics;
  readonly log: Logger;
  readonly onFatal?: (err: Error) => void;
  readonly byzantine?: ByzantineTestBehaviour;
}

function isEmpty(delta: PersistDelta): boolean {
  return delta.view === null && delta.stableCheckpoint === null && delta.slots.length === 0;
}

/** Readys whose messages wait for the disk; bounds what a slow disk makes us hold. */
const MAX_WRITES_IN_FLIGHT = 64;

export class PbftNode {
  readonly id: ReplicaId;
  readonly f: number;
  readonly members: readonly ReplicaId[];
  /** Replies for this member's client lanes; set by the client that owns them. */
  onReply: (reply: Reply) => void = () => {};
  readonly #opts: PbftNodeOptions;
  readonly #core: PbftCore;
  readonly #log: Logger;
  readonly #metrics: PbftMetrics | undefined;
  #ticker: NodeJS.Timeout | undefined;
  #stopped = false;
  #failure: Error | null = null;
  #reportedDrops = new Map<DropKind, number>();
  #viewChangesReported = 0;
  /** The install of our own checkpoint on restart, which is not a state transfer. */
  #restartInstall: number | null;
  /** Settles once the last queued Ready's write is durable and its messages sent. */
  #written: Promise<void> = Promise.resolve();
  #writesInFlight = 0;

  constructor(opts: PbftNodeOptions) {
    this.#opts = opts;
    this.id = opts.id;
    this.members = opts.members;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#core = new PbftCore({
      id: opts.id,
      members: opts.members,
      ...(opts.f === undefined ? {} : { f: opts.f }),
      sign: opts.sign,
      verify: opts.verify,
      config: opts.config,
      ...(opts.persisted === null ? {} : { storage: opts.persisted }),
      initialSnapshot: opts.initialSnapshot,
    });
    this.f = this.#core.f;
    // With a stable checkpoint the core's first Ready installs it; without one the machine starts at genesis.
    const checkpoint = opts.persisted?.stableCheckpoint ?? null;
    if (checkpoint === null) opts.machine.restore(opts.initialSnapshot);
    this.#restartInstall = checkpoint?.seq ?? null;
    if (opts.byzantine !== undefined) {
      this.#log.warn({ behaviour: opts.byzantine }, 'PBFT TEST MODE: this replica misbehaves on purpose (DWCP_TEST_BYZANTINE); never use in production');
    }
    this.#updateGauges();
  }

  start(): void {
    if (this.#ticker !== undefined || this.#stopped) return;
    this.#ticker = setInterval(() => {
      if (this.#failure !== null) return;
      this.#guard(() => this.#core.tick());
      // Drops of input that produced no Ready show up here, within a tick.
      this.#updateGauges();
      this.#schedule();
    }, this.#opts.tickMs);
    this.#schedule();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#ticker);
    await this.#loop.idle();
    await this.#written;
  }

  get failure(): Error | null {
    return this.#failure;
  }

  /**
   * Messages and replies from member `from`, the one the channel
   * authenticated: the core and the client take a vote, a relayed request or
   * a reply on that word alone (types.ts), so a reply naming another sender
   * is dropped here (the wire refuses such frames already).
   */
  receive(from: ReplicaId, messages: readonly PbftMessage[], replies: readonly Reply[]): void {
    if (this.#stopped) return;
    for (const m of messages) this.#guard(() => this.#core.step(m, from));
    for (const r of replies) if (r.from === from && signerMember(r.client) === this.id) this.onReply(r);
    this.#schedule();
  }

  /** A client request from this member's own client (see PbftClient). */
  request(request: ClientRequest): RequestResult {
    if (this.#stopped || this.#failure !== null) return { kind: 'dropped', reason: 'buffer_full' };
    const result = this.#guard(() => this.#core.request(request)) ?? { kind: 'dropped', reason: 'buffer_full' };
    this.#schedule();
    return result;
  }

  /** Re-sends a client request to every other replica (the client's retransmission). */
  relay(request: ClientRequest): void {
    if (this.#stopped) return;
    const message: RequestMessage = { type: 'request', from: this.id, request };
    for (const peer of this.members) if (peer !== this.id) this.#opts.sender.send(peer, { messages: [message], replies: [] });
  }

  /** Settles once every write queued so far is durable (and its Ready's messages sent); never rejects. */
  durable(): Promise<void> {
    return this.#written;
  }

  status(): PbftStatus {
    return this.#core.status();
  }

  /** The primary of this replica's current view. */
  get primary(): ReplicaId {
    return this.#core.primary;
  }

  drops(): ReadonlyMap<DropKind, number> {
    return this.#core.drops();
  }

  // ---------------------------------------------------------------- the loop

  /** Runs a core input; a thrown invariant is fatal (the core's state can no longer be trusted). */
  #guard<T>(fn: () => T): T | undefined {
    try {
      return fn();
    } catch (err) {
      this.#fail(err);
      return undefined;
    }
  }

  readonly #loop = new ReadyLoop<PbftReady>({
    next: () => this.#core.ready(),
    handle: (ready) => this.#handle(ready),
    pending: () => this.#core.hasReady(),
    halted: () => this.#stopped || this.#failure !== null,
    failed: () => this.#failure !== null,
    fail: (err) => this.#fail(err),
  });

  #schedule(): void {
    this.#loop.schedule();
  }

  async #handle(ready: PbftReady): Promise<void> {
    // Execution touches only what a crash loses anyway (the machine, the core's memory): it need not wait for the disk.
    const results = this.#execute(ready);
    this.#core.advance(ready, results);
    this.#updateGauges();
    // A relayed client request promises nothing about this replica's disk (types.ts): it leaves now, so the
    // client batch that waited for the writes in flight (PbftClient) does not wait for the next ones too.
    const relays: PbftReady['messages'][number][] = [];
    const rest: PbftReady['messages'][number][] = [];
    for (const out of ready.messages) (out.message.type === 'request' ? relays : rest).push(out);
    if (relays.length > 0) this.#send({ messages: relays, replies: [] });
    const held = { messages: rest, replies: ready.replies };
    // What others see waits for this write and every earlier one (they land in order).
    const started = performance.now();
    const write = isEmpty(ready.persist) ? null : this.#opts.store.persist(ready.persist);
    // Awaited below, after the earlier writes; a failure is seen there, not as an unhandled rejection meanwhile.
    write?.catch(() => undefined);
    const previous = this.#written;
    this.#writesInFlight++;
    this.#written = (async () => {
      try {
        await previous;
        if (write !== null) {
          await write;
          this.#metrics?.persistDuration.observe((performance.now() - started) / 1000);
        }
        if (this.#failure === null) this.#send(held);
      } catch (err) {
        this.#fail(err);
      } finally {
        this.#writesInFlight--;
      }
    })();
    if (this.#writesInFlight >= MAX_WRITES_IN_FLIGHT) await this.#written;
  }

  #send(ready: Pick<PbftReady, 'messages' | 'replies'>): void {
    const frames = new Map<ReplicaId, { messages: PbftMessage[]; replies: Reply[] }>();
    const frameFor = (peer: ReplicaId) => {
      let frame = frames.get(peer);
      if (frame === undefined) frames.set(peer, (frame = { messages: [], replies: [] }));
      return frame;
    };
    for (const out of ready.messages) {
      if (out.to !== null) {
        frameFor(out.to).messages.push(out.message);
        continue;
      }
      const peers = this.members.filter((p) => p !== this.id);
      const twin = this.#opts.byzantine === 'equivocate' ? this.#equivocation(out.message) : null;
      peers.forEach((peer, i) => frameFor(peer).messages.push(twin !== null && i % 2 === 1 ? twin : out.message));
    }
    for (const reply of ready.replies) {
      const member = signerMember(reply.client);
      if (member === this.id) this.onReply(reply);
      else if (this.members.includes(member)) frameFor(member).replies.push(reply);
    }
    for (const [peer, frame] of frames) this.#opts.sender.send(peer, frame);
  }

  /** Test-only: a second, conflicting pre-prepare for the same view and sequence number. */
  #equivocation(m: PbftMessage): PrePrepare | null {
    if (m.type !== 'pre_prepare' || m.batch.length === 0) return null;
    this.#log.info({ view: m.view, seq: m.seq }, 'pbft test mode: sending conflicting pre-prepares');
    return seal<PrePrepare>({ type: 'pre_prepare', from: this.id, view: m.view, seq: m.seq, digest: NULL_BATCH_DIGEST, batch: [] }, this.#opts.sign);
  }

  #execute(ready: PbftReady): ExecutionResult[] {
    const { machine } = this.#opts;
    if (ready.install !== null) {
      machine.restore(ready.install.snapshot);
      const transfer = ready.install.seq !== this.#restartInstall;
      this.#restartInstall = null;
      if (transfer) this.#metrics?.stateTransfers.inc();
      this.#log.info(
        { seq: ready.install.seq, bytes: ready.install.snapshot.byteLength },
        transfer ? 'pbft state transfer: checkpoint state from peers installed' : 'pbft own stable checkpoint restored',
      );
    }
    return ready.execute.map((batch) => ({
      seq: batch.seq,
      results: batch.requests.map((r) => machine.execute(r)),
      snapshot: batch.checkpoint ? machine.snapshot() : null,
    }));
  }

  /**
   * Brings the drop counters to the core's own (the core counts some
   * evidence, such as an equivocation proved by a fetched certificate, while
   * using the message, so step()'s answer alone would miss it).
   */
  #reportDrops(): void {
    for (const [kind, count] of this.#core.drops()) {
      const before = this.#reportedDrops.get(kind) ?? 0;
      if (count <= before) continue;
      this.#reportedDrops.set(kind, count);
      this.#metrics?.rejected.inc({ kind }, count - before);
      if (!BYZANTINE_DROPS.has(kind)) continue;
      this.#metrics?.byzantine.inc({ kind }, count - before);
      // The first few, then every thousandth: a flooding peer must not flood the log.
      if (before < 5 || Math.floor(count / 1000) > Math.floor(before / 1000)) {
        this.#log.warn({ kind, total: count }, 'pbft: input only a faulty member produces was seen and dropped');
      }
    }
  }

  #updateGauges(): void {
    this.#reportDrops();
    const m = this.#metrics;
    if (m === undefined) return;
    const s = this.#core.status();
    m.view.set(s.view);
    m.isPrimary.set(s.primary === this.id && s.active ? 1 : 0);
    m.executedSeq.set(s.lastExecuted);
    m.stableCheckpoint.set(s.stableCheckpoint);
    if (s.viewChangesStarted > this.#viewChangesReported) {
      m.viewChanges.inc(s.viewChangesStarted - this.#viewChangesReported);
      this.#log.info({ view: s.view, primary: s.primary }, 'pbft view change');
      this.#viewChangesReported = s.viewChangesStarted;
    }
  }

  #fail(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.#failure !== null) return;
    this.#failure = error;
    this.#stopped = true;
    clearInterval(this.#ticker);
    const kind = error instanceof PbftInvariantError ? 'invariant broken' : 'storage or state machine failure';
    this.#log.error({ err: error.message, stack: error.stack }, `pbft replica stopped: ${kind}`);
    this.#opts.onFatal?.(error);
  }
}
