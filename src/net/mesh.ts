/**
 * The member mesh: this node's libp2p host (TCP + Noise + Yamux + identify +
 * ping), kept connected to every configured member.
 *
 * A member counts as connected when at least one open connection to it has
 * passed the hello exchange; connections that fail hello are closed. Every
 * member with addresses is dialled until connected, then redialled after a
 * disconnect with capped exponential back-off; members without addresses are
 * waited for. Both ends may dial at once: the duplicate connection is harmless,
 * each is verified on its own and the member stays connected while any is.
 * Peers outside the member list never get past the Noise handshake (gater).
 *
 * Other protocols reach libp2p through `host`, which the daemon hands them as
 * the few operations they use (src/net/host.ts), and should only open streams
 * to members `isConnected` reports.
 *
 * Liveness is the mesh's own: it pings every connected member each
 * `pingIntervalMs` (for RTT), and a member that has answered none of them for
 * `deadAfterMs` has its connections aborted and is redialled. libp2p's
 * connection monitor is off: it pinged on the same /ipfs/ping/1.0.0, which
 * allows one outbound stream per connection, so whenever the mesh's ping was
 * in flight its own was refused, and it aborted the whole connection (every
 * protocol on it) on that or on one ping slower than its timeout (adaptive,
 * at least 5 s: a bulk transfer or a starved CPU is enough). Allowing two
 * ping streams would have removed only the collision; one slow pong would
 * still have cost every stream on the connection.
 */
import { createLibp2p, type Libp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { identify, type Identify } from '@libp2p/identify';
import { ping, type Ping } from '@libp2p/ping';
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import { peerIdFromString } from '@libp2p/peer-id';
import type { Connection, PeerId, Stream } from '@libp2p/interface';
import type { DwcpConfig, MemberConfig } from '../config/schema.ts';
import type { Identity } from '../daemon/identity.ts';
import type { MemberChanges, MemberDirectory } from '../federation/members.ts';
import type { MemberStatus } from '../federation/status.ts';
import { linkMode } from '../federation/link-mode.ts';
import type { Logger } from '../log.ts';
import type { MeshMetrics } from '../metrics/metrics.ts';
import { backoffDelay } from './backoff.ts';
import { RttEstimator } from './rtt.ts';
import { MUXER_STREAM_OPTIONS, frameEventsFor } from './framing.ts';
import { noiseChannel } from './noise-channel.ts';
import { halfWindowYamux } from './yamux-window.ts';
import { memberGater } from './gater.ts';
import { HELLO_PROTOCOL, exchangeHello, type HelloContext, type HelloOutcome } from './hello.ts';

export type MeshServices = { identify: Identify; ping: Ping };

/** Longest wait for one pong. */
const PING_TIMEOUT_MS = 10_000;

/** What the mesh reads of the config: where to listen, the network timings, and who this node says it is in hello. */
export type MeshConfig = Pick<DwcpConfig, 'federation' | 'node' | 'listen' | 'network'>;

export interface MeshOptions {
  config: MeshConfig;
  /** The node key, which is the host's libp2p identity. */
  identity: Pick<Identity, 'privateKey'>;
  members: MemberDirectory;
  metrics: MeshMetrics;
  log: Logger;
  /** Jitter source for back-off; injectable for tests. */
  random?: () => number;
}

interface MemberLink {
  member: MemberConfig;
  id: PeerId;
  /** Open connections that passed hello, by connection id. */
  verified: Set<string>;
  rtt: RttEstimator;
  lastSeen: Date | null;
  lastError: string | null;
  failures: number;
  redial: NodeJS.Timeout | undefined;
  dialing: boolean;
  pinging: boolean;
  /** performance.now() of the last answered ping, or of the connection if none was answered since. */
  lastAnswer: number;
}

export class MemberMesh {
  readonly host: Libp2p<MeshServices>;
  readonly #opts: MeshOptions;
  readonly #links = new Map<string, MemberLink>();
  /** Hello outcome per connection id, created by whichever of dial or handler sees it first. */
  readonly #hellos = new Map<string, PromiseWithResolvers<HelloOutcome>>();
  /**
   * This node's own refusal of a connection, noted the moment hello judges it
   * and before the verdict is sent: the refused peer may close the connection
   * as soon as it reads the verdict, and the close must then report the real
   * reason, not "closed during hello". Noting it must not close anything: the
   * peer has yet to read the verdict that tells it why.
   */
  readonly #refusals = new Map<string, HelloOutcome>();
  readonly #log: Logger;
  #pingTimer: NodeJS.Timeout | undefined;
  #stopping = false;

  private constructor(host: Libp2p<MeshServices>, opts: MeshOptions) {
    this.host = host;
    this.#opts = opts;
    this.#log = opts.log;
  }

  static async create(opts: MeshOptions): Promise<MemberMesh> {
    const { config, identity, members, metrics, log } = opts;
    const host = await createLibp2p<MeshServices>({
      start: false,
      privateKey: identity.privateKey,
      addresses: { listen: config.listen },
      transports: [tcp()],
      connectionEncrypters: [noiseChannel()],
      streamMuxers: [halfWindowYamux({ streamOptions: MUXER_STREAM_OPTIONS })],
      connectionGater: memberGater(members, metrics, log),
      // The mesh's own pings judge liveness (see the module comment for why not libp2p's monitor).
      connectionMonitor: { enabled: false },
      connectionManager: {
        maxConnections: 64 + members.size * 4,
        dialTimeout: config.network.dialTimeoutMs,
        inboundConnectionThreshold: config.network.inboundConnectionsPerHostPerSecond,
        // The mesh owns reconnection (with its own back-off and metrics).
        reconnectRetries: 0,
      },
      services: { identify: identify(), ping: ping({ timeout: PING_TIMEOUT_MS }) },
    });
    return new MemberMesh(host, opts);
  }

  get #helloContext(): HelloContext {
    const { config, members, metrics } = this.#opts;
    return {
      config,
      peerId: this.host.peerId.toString(),
      listenAddrs: () => this.listenAddrs(),
      members,
      events: frameEventsFor(metrics, HELLO_PROTOCOL),
    };
  }

  async start(): Promise<void> {
    const { members, metrics } = this.#opts;
    await this.host.handle(HELLO_PROTOCOL, (stream, connection) => this.#onHelloStream(stream, connection), {
      maxInboundStreams: 4,
    });
    this.host.addEventListener('connection:open', (evt) => this.#onConnectionOpen(evt.detail));
    this.host.addEventListener('connection:close', (evt) => this.#onConnectionClose(evt.detail));
    await this.host.start();
    metrics.membersConfigured.set(members.size);
    for (const member of members.list()) this.#addLink(member);
    this.#pingTimer = setInterval(() => this.#pingAll(), this.#opts.config.network.pingIntervalMs);
    this.#pingTimer.unref();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearInterval(this.#pingTimer);
    for (const link of this.#links.values()) clearTimeout(link.redial);
    await this.host.stop();
  }

  listenAddrs(): string[] {
    return this.host.getMultiaddrs().map((ma) => ma.toString());
  }

  isConnected(peerId: string): boolean {
    return (this.#links.get(peerId)?.verified.size ?? 0) > 0;
  }

  status(): MemberStatus[] {
    const { node, network } = this.#opts.config;
    return [...this.#links.values()].map((l) => ({
      ...l.member,
      connected: l.verified.size > 0,
      rttMs: l.rtt.smoothed,
      linkMode: linkMode(node.trust, l.member.trust, l.rtt.floor, network),
      lastSeen: l.verified.size > 0 ? new Date().toISOString() : (l.lastSeen?.toISOString() ?? null),
      lastError: l.lastError,
    }));
  }

  /** Follows a reloaded member list: dial the new, hang up on the removed, redial the changed. */
  async applyMemberChanges(changes: MemberChanges): Promise<void> {
    for (const m of changes.removed) {
      const link = this.#links.get(m.peerId);
      if (link) clearTimeout(link.redial);
      this.#links.delete(m.peerId);
      this.#log.info({ member: m.name, peerId: m.peerId }, 'member removed; closing its connections');
      await this.host.hangUp(peerIdFromString(m.peerId)).catch(() => {});
    }
    for (const m of changes.changed) {
      const link = this.#links.get(m.peerId);
      if (!link) continue;
      link.member = m;
      // Name, region or trust may differ now: make the peer pass hello again.
      link.verified.clear();
      await this.host.hangUp(link.id).catch(() => {});
      this.#scheduleDial(link, 0);
    }
    for (const m of changes.added) this.#addLink(m);
    this.#opts.metrics.membersConfigured.set(this.#opts.members.size);
    this.#updateConnectedGauge();
  }

  #addLink(member: MemberConfig): void {
    const link: MemberLink = {
      member,
      id: peerIdFromString(member.peerId),
      verified: new Set(),
      rtt: new RttEstimator(),
      lastSeen: null,
      lastError: null,
      failures: 0,
      redial: undefined,
      dialing: false,
      pinging: false,
      lastAnswer: performance.now(),
    };
    this.#links.set(member.peerId, link);
    this.#scheduleDial(link, 0);
  }

  #scheduleDial(link: MemberLink, delayMs: number): void {
    clearTimeout(link.redial);
    if (this.#stopping || link.member.addrs.length === 0) return;
    link.redial = setTimeout(() => void this.#dial(link), delayMs);
    link.redial.unref();
  }

  async #dial(link: MemberLink): Promise<void> {
    if (this.#stopping || link.dialing || link.verified.size > 0 || this.#links.get(link.member.peerId) !== link) return;
    const { metrics, config } = this.#opts;
    const peer = link.member.name;
    link.dialing = true;
    try {
      const addrs: Multiaddr[] = link.member.addrs.map((a) => withPeerId(a, link.member.peerId));
      const connection = await this.host.dial(addrs, { signal: AbortSignal.timeout(config.network.dialTimeoutMs) });
      const outcome = await this.#helloFor(connection).promise;
      if (!outcome.accepted) throw new Error(outcome.message);
      link.failures = 0;
      metrics.dialAttempts.inc({ peer, result: 'ok' });
    } catch (err) {
      link.lastError = (err as Error).message;
      const delay = backoffDelay(link.failures++, backoffPolicy(config), this.#opts.random ?? Math.random);
      metrics.dialAttempts.inc({ peer, result: 'error' });
      this.#log.info({ member: peer, peerId: link.member.peerId, err: link.lastError, retryInMs: delay }, 'member dial failed');
      link.dialing = false;
      this.#scheduleDial(link, delay);
      return;
    }
    link.dialing = false;
  }

  #helloFor(connection: Connection): PromiseWithResolvers<HelloOutcome> {
    let hello = this.#hellos.get(connection.id);
    if (!hello) {
      hello = Promise.withResolvers<HelloOutcome>();
      this.#hellos.set(connection.id, hello);
      void hello.promise.then((outcome) => this.#onHelloDone(connection, outcome));
    }
    return hello;
  }

  #onConnectionOpen(connection: Connection): void {
    const hello = this.#helloFor(connection);
    const timeoutMs = this.#opts.config.network.helloTimeoutMs;
    if (connection.direction === 'outbound') {
      const signal = AbortSignal.timeout(timeoutMs);
      connection
        .newStream(HELLO_PROTOCOL, { signal })
        .then((stream) => exchangeHello(stream, connection, this.#helloContext, signal, this.#noteRefusal(connection)))
        .catch((err: Error): HelloOutcome => ({ accepted: false, reason: 'hello_failed', message: `cannot open hello stream: ${err.message}`, by: 'local' }))
        .then((outcome) => hello.resolve(outcome));
    } else {
      // The dialer must start hello within the timeout or lose the connection.
      const timer = setTimeout(
        () => hello.resolve({ accepted: false, reason: 'hello_failed', message: `no hello from ${connection.remotePeer} within ${timeoutMs} ms`, by: 'local' }),
        timeoutMs,
      );
      timer.unref();
      void hello.promise.finally(() => clearTimeout(timer));
    }
  }

  #onHelloStream(stream: Stream, connection: Connection): void {
    const hello = this.#helloFor(connection);
    const signal = AbortSignal.timeout(this.#opts.config.network.helloTimeoutMs);
    void exchangeHello(stream, connection, this.#helloContext, signal, this.#noteRefusal(connection)).then((outcome) => hello.resolve(outcome));
  }

  #noteRefusal(connection: Connection): (outcome: HelloOutcome) => void {
    return (outcome) => this.#refusals.set(connection.id, outcome);
  }

  #onHelloDone(connection: Connection, outcome: HelloOutcome): void {
    const peerId = connection.remotePeer.toString();
    const link = this.#links.get(peerId);
    if (!outcome.accepted || !link) {
      const message = outcome.accepted ? `peer ${peerId} is no longer a member` : outcome.message;
      const reason = outcome.accepted ? 'not_member' : outcome.reason;
      this.#opts.metrics.connectionsRefused.inc({ reason });
      if (link) link.lastError = message;
      this.#log.warn({ peerId, member: link?.member.name, reason, by: outcome.accepted ? 'local' : outcome.by, err: message }, 'member connection refused by hello');
      void connection.close().catch(() => {});
      return;
    }
    if (connection.status !== 'open') return;
    const wasConnected = link.verified.size > 0;
    link.verified.add(connection.id);
    link.lastSeen = new Date();
    link.lastError = null;
    link.failures = 0;
    clearTimeout(link.redial);
    if (!wasConnected) {
      link.lastAnswer = performance.now();
      this.#log.info({ member: link.member.name, peerId, direction: connection.direction, remoteAddr: connection.remoteAddr.toString() }, 'member connected');
      this.#updateConnectedGauge();
      void this.#ping(link);
    }
  }

  #onConnectionClose(connection: Connection): void {
    const refusal = this.#refusals.get(connection.id);
    this.#hellos.get(connection.id)?.resolve(refusal ?? { accepted: false, reason: 'hello_failed', message: 'connection closed during hello', by: 'local' });
    this.#hellos.delete(connection.id);
    this.#refusals.delete(connection.id);
    const link = this.#links.get(connection.remotePeer.toString());
    if (!link || !link.verified.delete(connection.id) || link.verified.size > 0) return;
    link.lastSeen = new Date();
    this.#updateConnectedGauge();
    if (this.#stopping) return;
    this.#log.warn({ member: link.member.name, peerId: link.member.peerId }, 'member disconnected');
    this.#scheduleDial(link, backoffDelay(link.failures++, backoffPolicy(this.#opts.config), this.#opts.random ?? Math.random));
  }

  #updateConnectedGauge(): void {
    let n = 0;
    for (const l of this.#links.values()) if (l.verified.size > 0) n++;
    this.#opts.metrics.membersConnected.set(n);
  }

  #pingAll(): void {
    for (const link of this.#links.values()) if (link.verified.size > 0) void this.#ping(link);
  }

  async #ping(link: MemberLink): Promise<void> {
    if (link.pinging) return;
    link.pinging = true;
    try {
      // Not cut at the next tick: a late pong is still an answer (and a true RTT sample), and ticks that come while
      // this ping waits are skipped. Only deadAfterMs without any answer costs the connection.
      const signal = AbortSignal.timeout(Math.min(PING_TIMEOUT_MS, this.#opts.config.network.deadAfterMs));
      const rtt = await this.host.services.ping.ping(link.id, { signal });
      link.lastAnswer = performance.now();
      if (link.rtt.samples === 0) this.#log.debug({ member: link.member.name, rttMs: rtt }, 'member rtt');
      link.rtt.observe(rtt);
      this.#opts.metrics.peerRtt.observe({ peer: link.member.name }, rtt / 1000);
    } catch (err) {
      this.#log.debug({ member: link.member.name, err: (err as Error).message }, 'ping failed');
      // A peer that refused the protocol still answered (protocol negotiation is a round trip): alive, as libp2p's monitor also held.
      if ((err as Error).name === 'UnsupportedProtocolError') link.lastAnswer = performance.now();
      else this.#hangUpIfSilent(link);
    } finally {
      link.pinging = false;
    }
  }

  /** Aborts the member's connections once it has answered no ping for deadAfterMs; the close redials it. */
  #hangUpIfSilent(link: MemberLink): void {
    const silentMs = Math.round(performance.now() - link.lastAnswer);
    const { deadAfterMs } = this.#opts.config.network;
    if (this.#stopping || link.verified.size === 0 || silentMs < deadAfterMs) return;
    const err = new Error(`member ${link.member.name} answered no ping for ${silentMs} ms (network.deadAfterMs ${deadAfterMs})`);
    this.#log.warn({ member: link.member.name, peerId: link.member.peerId, silentMs, deadAfterMs }, 'member answers no pings; hanging up to redial');
    link.lastError = err.message;
    for (const connection of this.host.getConnections(link.id)) connection.abort(err);
  }
}

function backoffPolicy(config: MeshConfig): { initialMs: number; maxMs: number } {
  return { initialMs: config.network.reconnectInitialMs, maxMs: config.network.reconnectMaxMs };
}

function withPeerId(addr: string, peerId: string): Multiaddr {
  const ma = multiaddr(addr);
  return ma.getComponents().some((c) => c.name === 'p2p') ? ma : ma.encapsulate(`/p2p/${peerId}`);
}
