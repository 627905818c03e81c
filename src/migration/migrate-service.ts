/**
 * /dwcp/migrate/2.0.0 (proto/migrate.proto), both ends: a migration's bytes
 * between the source region's daemon and the target region's, over the
 * members' Noise connection. The source opens one stream per channel:
 *
 * - `state`: QEMU's migration stream. The source QEMU writes it to a Unix
 *   socket the source daemon listens on (qemu-transfer.ts); this carries
 *   it to the target daemon, which connects to the socket its destination
 *   QEMU listens on (`migrate-incoming unix:…`) and feeds it. With QEMU's
 *   multifd the stream is 1 + N connections, each a `state` stream of its
 *   own, numbered: the target connects stream 0 (QEMU's main channel)
 *   first, since its QEMU takes the first connection as the main one, and
 *   the others once it has (or refuses them when it never does).
 * - `disk`: the NBD connection of the source's disk mirror, the same way
 *   (the destination exports its disk over NBD, both directions carry).
 * - `disk-image`: cold and warm. The disk's blob is already in the target's
 *   store (the blob protocol sent it, as a delta against what the region
 *   holds); the target writes it as the incoming guest's disk and answers.
 *
 * Invariants:
 * - The target accepts a stream only from a configured, connected member,
 *   for a migration its replica of the log shows under way from that
 *   member's region into this one (prepare or transfer), into a qemu
 *   provider here; anything else is refused with the reason, and no socket
 *   is touched.
 * - Both ends carry a channel's bytes with relay.ts (`pipe`: flow-controlled
 *   end to end; end of file and breaks travel both ways), its messages as
 *   migrate-wire.ts reads and writes them.
 */
import { createConnection, type Socket } from 'node:net';
import { open } from 'node:fs/promises';
import type { Connection, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { MemberDirectory } from '../federation/members.ts';
import type { Logger } from '../log.ts';
import type { BlobStore } from '../blob/store.ts';
import type { Multifd } from '../cloud/qemu/migration-qmp.ts';
import type { QemuMigrationGuests } from '../cloud/qemu/qemu-provider.ts';
import { DwcpError, isDwcpErrorCode } from '../errors.ts';
import type { FleetMigration } from '../fleet/migrations.ts';
import { FramedStream, type FrameEvents } from '../net/framing.ts';
import type { ProtocolHost } from '../net/host.ts';
import { liveCodecFor, type LiveCodec } from './live-codec.ts';
import { pipe } from './relay.ts';
import { MIGRATE_MAX_FRAME_BYTES, MIGRATE_MAX_TEXT, MigrateInboundSchema, MigrateOutboundSchema, type MigrateChannel, type MigrateChannelStream, type MigrateMessage, type MigrateOpen } from './migrate-wire.ts';

export const MIGRATE_PROTOCOL = '/dwcp/migrate/2.0.0';
const OPEN_TIMEOUT_MS = 10_000;
/** How long the target may take to answer an Open: a disk-image answer comes after the disk is written. */
const ANSWER_TIMEOUT_MS = 600_000;
/** Per connection: a few concurrent migrations, each a disk stream and up to 1 + MAX_MULTIFD_CHANNELS state streams. */
const MAX_INBOUND_STREAMS = 64;

export interface MigrateServiceOptions {
  readonly host: ProtocolHost;
  readonly members: Pick<MemberDirectory, 'get' | 'list'>;
  isConnected(peerId: string): boolean;
  /** This daemon's region (its node name). */
  readonly region: string;
  /** The migration as this node's replica of the fleet log has it. */
  migration(id: string): FleetMigration | undefined;
  /** This node's qemu provider of that configured name, if it is one. */
  qemu(provider: string): QemuMigrationGuests | undefined;
  readonly store: Pick<BlobStore, 'current' | 'currentManifest' | 'readValue'>;
  readonly log: Logger;
  readonly events?: FrameEvents;
  /** How the state and disk channels' Data frames are compressed by this end (each frame says how it was, so the ends may differ). */
  readonly codec?: LiveCodec;
}

export class MigrateService {
  readonly #o: MigrateServiceOptions;
  readonly #stopping = new AbortController();
  /** Per migration receiving multifd: the destination's state socket once its main stream connected. */
  readonly #mainChannels = new Map<string, PromiseWithResolvers<string>>();

  constructor(options: MigrateServiceOptions) {
    this.#o = options;
  }

  async start(): Promise<void> {
    await this.#o.host.handle(MIGRATE_PROTOCOL, (stream, connection) => void this.#serve(stream, connection), { maxInboundStreams: MAX_INBOUND_STREAMS });
  }

  async stop(): Promise<void> {
    this.#stopping.abort(new DwcpError('stopped', 'the daemon is stopping'));
    await this.#o.host.unhandle(MIGRATE_PROTOCOL).catch(() => {});
  }

  #channel(stream: Stream): MigrateChannelStream {
    return new FramedStream(stream, { protocol: MIGRATE_PROTOCOL, maxFrameBytes: MIGRATE_MAX_FRAME_BYTES, inbound: MigrateInboundSchema, outbound: MigrateOutboundSchema, ...(this.#o.events ? { events: this.#o.events } : {}) });
  }

  /**
   * Opens `channel` of `migration` at the target region's daemon and waits
   * for its answer: the open channel (state, disk: pipe it), or, for
   * disk-image, once the disk is written. Throws a DwcpError naming the
   * target: its refusal, or why it could not be reached.
   */
  async open(target: string, migration: string, channel: MigrateChannel, opts: { key?: string; version?: string; stream?: number; multifd?: Multifd | null; signal?: AbortSignal } = {}): Promise<MigrateChannelStream> {
    const member = this.#o.members.list().find((m) => m.name === target);
    if (member === undefined) throw new DwcpError('not_found', `${target}: not a member of this federation`);
    if (!this.#o.isConnected(member.peerId)) throw new DwcpError('unavailable', `${target}: not connected`);
    const signal = AbortSignal.any([this.#stopping.signal, ...(opts.signal === undefined ? [] : [opts.signal])]);
    let stream: Stream;
    try {
      stream = await this.#o.host.dialProtocol(peerIdFromString(member.peerId), MIGRATE_PROTOCOL, { signal: AbortSignal.any([signal, AbortSignal.timeout(OPEN_TIMEOUT_MS)]) });
    } catch (err) {
      signal.throwIfAborted();
      throw new DwcpError('unavailable', `${target}: cannot open ${MIGRATE_PROTOCOL}: ${errorText(err)}`);
    }
    const ch = this.#channel(stream);
    try {
      await ch.write({ kind: 'open', open: { migration, channel, key: opts.key ?? '', version: opts.version ?? '', stream: opts.stream ?? 0, multifd: opts.multifd ?? null } }, { signal });
      const answer = await ch.read({ signal: AbortSignal.any([signal, AbortSignal.timeout(channel === 'disk-image' ? ANSWER_TIMEOUT_MS : OPEN_TIMEOUT_MS)]) });
      if (answer?.kind === 'refuse') throw new DwcpError(isDwcpErrorCode(answer.refuse.code) ? answer.refuse.code : 'internal', `${target}: ${answer.refuse.message}`);
      if (answer?.kind !== 'accept') throw new DwcpError('unavailable', `${target}: answered the ${channel} channel of ${migration} with ${answer === undefined ? 'the end of the stream' : `a ${answer.kind}`}`);
      return ch;
    } catch (err) {
      ch.reset(err instanceof Error ? err : new Error(String(err)));
      if (err instanceof DwcpError) throw err;
      signal.throwIfAborted();
      throw new DwcpError('unavailable', `${target}: the ${channel} channel of ${migration} broke: ${errorText(err)}`);
    }
  }

  async #serve(stream: Stream, connection: Connection): Promise<void> {
    const { log, members, isConnected } = this.#o;
    const peerId = connection.remotePeer.toString();
    const member = members.get(peerId);
    if (member === undefined || !isConnected(peerId)) {
      log.warn({ peerId, member: member?.name }, 'migration stream from a peer that is not a connected member refused');
      stream.abort(new Error('not a connected member'));
      return;
    }
    const ch = this.#channel(stream);
    let open: MigrateOpen;
    try {
      const first = await ch.read({ signal: AbortSignal.timeout(OPEN_TIMEOUT_MS) });
      if (first?.kind !== 'open') throw new DwcpError('invalid', `expected an open, got ${first === undefined ? 'the end of the stream' : first.kind}`);
      open = first.open;
    } catch (err) {
      log.warn({ member: member.name, err: errorText(err) }, 'migration stream refused');
      ch.reset(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const refuse = async (code: string, message: string): Promise<void> => {
      log.warn({ member: member.name, migration: open.migration, channel: open.channel, code, err: message }, 'migration channel refused');
      await ch.write({ kind: 'refuse', refuse: { code, message: clip(message) } }).catch(() => undefined);
      await ch.close().catch(() => ch.reset(new Error('refused')));
    };
    try {
      const guests = this.#check(member.name, open.migration);
      if (open.channel === 'disk-image') {
        await this.#writeDisk(guests, open.migration, open.key, open.version);
        log.info({ member: member.name, migration: open.migration, blobKey: open.key, version: open.version }, 'migration disk received');
        await ch.write({ kind: 'accept', accept: {} });
        await ch.close();
        return;
      }
      const socket = await this.#connectIncoming(guests, open);
      try {
        await ch.write({ kind: 'accept', accept: {} });
      } catch (err) {
        // The source gave up first (its answer timeout): leave QEMU no stray connection.
        socket.destroy();
        throw err;
      }
      const at = { member: member.name, migration: open.migration, channel: open.channel, ...(open.multifd === null ? {} : { stream: open.stream }) };
      log.info(at, 'migration channel open');
      const counts = await pipe(ch, socket, undefined, liveCodecFor(open, this.#o.codec));
      log.info({ ...at, bytesIn: counts.received, bytesOut: counts.sent }, 'migration channel closed');
    } catch (err) {
      if (ch.stream.status !== 'open') {
        log.warn({ member: member.name, migration: open.migration, channel: open.channel, err: errorText(err) }, 'migration channel broke');
        return;
      }
      await refuse(err instanceof DwcpError ? err.code : 'internal', errorText(err));
    }
  }

  /**
   * Connects to the destination QEMU's socket for `open`. A multifd state
   * stream other than the main one waits until the main one connected
   * (QEMU takes the first connection as the main channel), at most
   * OPEN_TIMEOUT_MS.
   */
  async #connectIncoming(guests: QemuMigrationGuests, open: MigrateOpen): Promise<Socket> {
    const channel = open.channel === 'disk' ? 'disk' : 'state';
    if (open.multifd === null) return connectUnix(await guests.incomingEndpoint(open.migration, channel));
    const key = open.migration;
    const main = this.#mainChannels.get(key) ?? Promise.withResolvers<string>();
    if (!this.#mainChannels.has(key)) {
      main.promise.catch(() => undefined);
      this.#mainChannels.set(key, main);
    }
    // Only this entry: a newer one (a retried stream 0) is not this one's to drop.
    const forget = (): void => {
      if (this.#mainChannels.get(key) === main) this.#mainChannels.delete(key);
    };
    if (open.stream === 0) {
      try {
        const path = await guests.incomingEndpoint(open.migration, 'state', open.multifd);
        const socket = await connectUnix(path);
        main.resolve(path);
        // Later streams of this migration connect behind it while it lasts.
        socket.once('close', forget);
        return socket;
      } catch (err) {
        main.reject(err);
        forget();
        throw err;
      }
    }
    this.#o.log.debug({ migration: key, stream: open.stream }, 'multifd state stream waits for its main stream to connect');
    const timer = setTimeout(() => main.reject(new DwcpError('unavailable', `the main state stream of migration ${key} did not connect within ${OPEN_TIMEOUT_MS} ms, so its multifd streams cannot`)), OPEN_TIMEOUT_MS);
    try {
      return await connectUnix(await main.promise);
    } catch (err) {
      forget();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The incoming guests of a migration from `from` into this region, or the DwcpError saying why not. */
  #check(from: string, id: string): QemuMigrationGuests {
    const m = this.#o.migration(id);
    if (m === undefined) throw new DwcpError('not_found', `no migration ${id} in this node's log`);
    if (m.target.region !== this.#o.region || m.source.region !== from) throw new DwcpError('invalid', `migration ${id} goes from ${m.source.region} to ${m.target.region}, not from ${from} to ${this.#o.region}`);
    if (m.phase !== 'prepare' && m.phase !== 'transfer') throw new DwcpError('invalid', `migration ${id} is in ${m.phase}, not transferring`);
    const guests = this.#o.qemu(m.target.provider);
    if (guests === undefined) throw new DwcpError('invalid', `provider ${m.target.provider} here is not a qemu provider`);
    return guests;
  }

  async #writeDisk(guests: QemuMigrationGuests, migration: string, key: string, version: string): Promise<void> {
    const held = this.#o.store.current(key);
    const manifest = this.#o.store.currentManifest(key);
    if (held === undefined || manifest === undefined || held.version !== version) throw new DwcpError('not_found', `this node holds ${held === undefined ? 'no copy' : `version ${held.version.slice(0, 16)}`} of ${key}, not ${version.slice(0, 16)}`);
    await guests.receiveDisk(migration, async (path) => {
      const fh = await open(path, 'w', 0o600);
      try {
        for await (const bytes of this.#o.store.readValue(manifest)) await fh.write(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
  }
}

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', (err) => reject(new DwcpError('unavailable', `cannot connect to ${path}: ${err.message}`)));
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function clip(text: string): string {
  return text.length > MIGRATE_MAX_TEXT ? `${text.slice(0, MIGRATE_MAX_TEXT - 1)}…` : text;
}
