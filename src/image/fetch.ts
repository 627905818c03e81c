/**
 * /dwcp/image/1.0.0 (proto/image.proto), both ends: `ImageFetch.fetch` asks a
 * member that holds an image part to send it here; the holder's side checks
 * the request and pushes the part's blob with the blob service's own
 * transfer (delta against what this region is known to hold, resumable,
 * every chunk verified on arrival), then answers. The blob protocol only
 * pushes; this is the pull that lets a node that needs an image get it
 * without an operator running `blob put --to` on the holder.
 *
 * Invariants:
 * - Only image parts cross this way (keys `image/<name>/<role>/<sha256>`), only to a
 *   configured, connected member, and only the version the asker names: a
 *   holder whose copy is another version answers not_found rather than send
 *   what the asker's record does not describe.
 * - The answer comes after the asker's store committed the blob (the push
 *   ends with the receiver's Committed), so a successful fetch means the
 *   bytes are in the asker's store, checked against their chunk hashes.
 * - The stream is never silent for more than PROGRESS_EVERY_MS while a push
 *   runs (yamux resets streams idle for 120 s); the asker treats
 *   IDLE_TIMEOUT_MS without a message as a broken stream.
 * - A broken stream does not lose the push: a push runs on the holder apart
 *   from the stream that asked for it (one per asker and key), the blob
 *   transfer resumes over the next connection by itself, and the asker asks
 *   again (ASK_ATTEMPTS, with back-off) and attaches to the running push. A
 *   connection that drops under load (missed pings on a busy host) costs a
 *   re-ask, not the transfer.
 * - At most MAX_SENDS pushes run per holder at once; more are answered busy
 *   (retryable), so a node booting many VMs cannot starve the holder. A push
 *   whose asker gave up runs to its end (bounded by the blob transfer's own
 *   deadlines and resumes).
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Connection, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import type { MemberConfig } from '../config/schema.ts';
import type { MemberDirectory } from '../federation/members.ts';
import type { Logger } from '../log.ts';
import type { BlobService } from '../blob/service.ts';
import { DwcpError, isDwcpErrorCode } from '../errors.ts';
import { FrameError, FramedStream, type FrameEvents } from '../net/framing.ts';
import type { ProtocolHost } from '../net/host.ts';
import { FieldError, loadProto, protoSchema, requireEnum, requireMessage, requireString, requireUint64, type MessageSchema } from '../net/schema.ts';
import { isImageBlobKey } from './record.ts';

export const IMAGE_FETCH_PROTOCOL = '/dwcp/image/1.0.0';
const MAX_FRAME_BYTES = 8 * 1024;
const MAX_TEXT = 1024;
const HEX64 = /^[0-9a-f]{64}$/;
/** How often a holder reports while its push runs. */
const PROGRESS_EVERY_MS = 5_000;
/** An asker waits this long for the next message; several progress periods, for a loaded holder. */
const IDLE_TIMEOUT_MS = 60_000;
const OPEN_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 10_000;
/** Pushes one holder runs at once. */
export const MAX_SENDS = 4;
/** Asks of one holder for one part when the fetch stream breaks, and the back-off between them (a reconnect takes about a second). */
const ASK_ATTEMPTS = 6;
const ASK_BACKOFF_MS = 250;
const ASK_BACKOFF_MAX_MS = 4_000;
/** Fetch streams one connection may have open to us. */
const MAX_INBOUND_STREAMS = 32;

export type FetchMessage =
  | { kind: 'request'; request: { key: string; version: string } }
  | { kind: 'progress'; progress: { bytesDone: number; bytesTotal: number } }
  | { kind: 'result'; result: { code: string; message: string; kind: string; wireBytes: number } };

const proto = loadProto(new URL('./proto/image.proto', import.meta.url));

function safeUint64(o: Record<string, unknown>, field: string): number {
  const value = requireUint64(o, field);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new FieldError(field, `is ${value}, above 2^53`);
  return Number(value);
}

function validate(o: Record<string, unknown>): FetchMessage {
  const kind = requireEnum(o, 'kind', ['request', 'progress', 'result']);
  switch (kind) {
    case 'request':
      return {
        kind,
        request: requireMessage(o, kind, (m) => {
          const key = requireString(m, 'key', { max: MAX_TEXT });
          if (!isImageBlobKey(key)) throw new FieldError('key', `must be image/<name>/<disk|kernel|initrd>/<sha256>, got ${JSON.stringify(key)}`);
          const version = requireString(m, 'version', { max: 64 });
          if (!HEX64.test(version)) throw new FieldError('version', 'must be 64 hex digits (a blob version)');
          return { key, version };
        }),
      };
    case 'progress':
      return { kind, progress: requireMessage(o, kind, (m) => ({ bytesDone: safeUint64(m, 'bytesDone'), bytesTotal: safeUint64(m, 'bytesTotal') })) };
    case 'result':
      return {
        kind,
        result: requireMessage(o, kind, (m) => {
          const code = requireString(m, 'code', { max: 32, optional: true });
          if (code !== '' && !isDwcpErrorCode(code)) throw new FieldError('code', `is ${JSON.stringify(code)}, not an error code`);
          return { code, message: requireString(m, 'message', { max: MAX_TEXT, optional: true }), kind: requireString(m, 'kind', { max: 16, optional: true }), wireBytes: safeUint64(m, 'wireBytes') };
        }),
      };
  }
}

export const FetchMessageSchema: MessageSchema<FetchMessage> = protoSchema(proto.lookupType('dwcp.image.v1.ImageFetchMessage'), validate, { strictFields: true });

/** What one fetch moved: the push's kind and its bytes on the wire. */
export interface FetchOutcome {
  kind: string;
  wireBytes: number;
}

export interface ImageFetchOptions {
  host: ProtocolHost;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  blob: Pick<BlobService, 'send' | 'store'>;
  log: Logger;
  events?: FrameEvents;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function clip(text: string): string {
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 1)}…` : text;
}

/** A fetch stream that broke (the connection dropped, the holder went quiet): asking again may find the push still running. */
class BrokenOff extends DwcpError<'unavailable' | 'timeout'> {}

interface Push {
  done: Promise<FetchOutcome>;
  progress: { bytesDone: number; bytesTotal: number } | null;
}

export class ImageFetch {
  readonly #opts: ImageFetchOptions;
  readonly #stopping = new AbortController();
  /** Pushes running on this holder, by asker and key: an asker that asks again attaches to its push. */
  readonly #pushes = new Map<string, Push>();

  constructor(opts: ImageFetchOptions) {
    this.#opts = opts;
  }

  async start(): Promise<void> {
    await this.#opts.host.handle(IMAGE_FETCH_PROTOCOL, (stream, connection) => void this.#serve(stream, connection), { maxInboundStreams: MAX_INBOUND_STREAMS });
  }

  async stop(): Promise<void> {
    this.#stopping.abort(new DwcpError('stopped', 'the daemon is stopping'));
    await this.#opts.host.unhandle(IMAGE_FETCH_PROTOCOL).catch(() => {});
  }

  #channel(stream: Stream): FramedStream<FetchMessage, FetchMessage> {
    return new FramedStream(stream, { protocol: IMAGE_FETCH_PROTOCOL, maxFrameBytes: MAX_FRAME_BYTES, inbound: FetchMessageSchema, outbound: FetchMessageSchema, ...(this.#opts.events ? { events: this.#opts.events } : {}) });
  }

  /**
   * Asks `holder` to send blob `key` at `version` here; resolves once this
   * node's store has committed it. A fetch stream that breaks (a dropped
   * connection, a holder gone quiet) is asked again, up to ASK_ATTEMPTS times
   * with back-off, unless `arrived()` says the blob is here meanwhile: the
   * holder's push resumes over the new connection on its own, and the new
   * ask attaches to it. Failures are DwcpErrors whose message starts with the
   * holder's name: its own answer (not_found, busy, …), or unavailable /
   * timeout once the asks ran out.
   */
  async fetch(
    holder: MemberConfig,
    key: string,
    version: string,
    opts: { signal?: AbortSignal; onProgress?: (bytesDone: number, bytesTotal: number) => void; arrived?: () => boolean } = {},
  ): Promise<FetchOutcome> {
    const signal = opts.signal === undefined ? this.#stopping.signal : AbortSignal.any([opts.signal, this.#stopping.signal]);
    for (let attempt = 1, backoffMs = ASK_BACKOFF_MS; ; attempt++, backoffMs = Math.min(2 * backoffMs, ASK_BACKOFF_MAX_MS)) {
      try {
        return await this.#ask(holder, key, version, signal, opts.onProgress);
      } catch (err) {
        if (!(err instanceof BrokenOff) || attempt >= ASK_ATTEMPTS) throw err;
        this.#opts.log.info({ holder: holder.name, blobKey: key, attempt, err: err.message }, 'image fetch broken off; asking the holder again');
        await delay(backoffMs, undefined, { signal });
        if (opts.arrived?.() === true) return { kind: 'resumed', wireBytes: 0 };
      }
    }
  }

  async #ask(holder: MemberConfig, key: string, version: string, signal: AbortSignal, onProgress: ((bytesDone: number, bytesTotal: number) => void) | undefined): Promise<FetchOutcome> {
    if (!this.#opts.isConnected(holder.peerId)) throw new BrokenOff('unavailable', `${holder.name}: not connected`);
    let stream: Stream;
    try {
      stream = await this.#opts.host.dialProtocol(peerIdFromString(holder.peerId), IMAGE_FETCH_PROTOCOL, { signal: AbortSignal.any([signal, AbortSignal.timeout(OPEN_TIMEOUT_MS)]) });
    } catch (err) {
      signal.throwIfAborted();
      throw new BrokenOff('unavailable', `${holder.name}: cannot open ${IMAGE_FETCH_PROTOCOL}: ${errorText(err)}`);
    }
    const ch = this.#channel(stream);
    try {
      try {
        await ch.write({ kind: 'request', request: { key, version } }, { signal });
      } catch (err) {
        signal.throwIfAborted();
        throw new BrokenOff('unavailable', `${holder.name}: could not ask for ${key}: ${errorText(err)}`);
      }
      for (;;) {
        let msg: FetchMessage | undefined;
        try {
          msg = await ch.read({ signal: AbortSignal.any([signal, AbortSignal.timeout(IDLE_TIMEOUT_MS)]) });
        } catch (err) {
          signal.throwIfAborted();
          if (err instanceof FrameError && err.reason === 'timeout') throw new BrokenOff('timeout', `${holder.name}: sent nothing about ${key} for ${IDLE_TIMEOUT_MS / 1000} s`);
          throw new BrokenOff('unavailable', `${holder.name}: broke off the fetch of ${key}: ${errorText(err)}`);
        }
        if (msg === undefined) throw new BrokenOff('unavailable', `${holder.name}: closed the fetch of ${key} without an answer`);
        if (msg.kind === 'progress') {
          onProgress?.(msg.progress.bytesDone, msg.progress.bytesTotal);
          continue;
        }
        if (msg.kind !== 'result') throw new DwcpError('unavailable', `${holder.name}: answered the fetch of ${key} with a ${msg.kind}`);
        const { code, message, kind, wireBytes } = msg.result;
        if (code !== '' && isDwcpErrorCode(code)) throw new DwcpError(code, `${holder.name}: ${message}`);
        return { kind, wireBytes };
      }
    } finally {
      await ch.close().catch(() => ch.reset(new Error('fetch over')));
    }
  }

  async #serve(stream: Stream, connection: Connection): Promise<void> {
    const { log, members, isConnected } = this.#opts;
    const peerId = connection.remotePeer.toString();
    const member = members.get(peerId);
    if (member === undefined || !isConnected(peerId)) {
      log.warn({ peerId, member: member?.name }, 'image fetch from a peer that is not a connected member refused');
      stream.abort(new Error('not a connected member'));
      return;
    }
    const ch = this.#channel(stream);
    let request: { key: string; version: string };
    try {
      const first = await ch.read({ signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      if (first?.kind !== 'request') throw new FrameError('schema', `expected a request, got ${first === undefined ? 'the end of the stream' : first.kind}`);
      request = first.request;
    } catch (err) {
      log.warn({ member: member.name, err: errorText(err) }, 'image fetch request refused');
      ch.reset(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const answer = async (code: string, message: string, kind = '', wireBytes = 0) => {
      await ch.write({ kind: 'result', result: { code, message: clip(message), kind, wireBytes } });
      await ch.close();
    };
    let tick: NodeJS.Timeout | undefined;
    try {
      const held = this.#opts.blob.store.current(request.key);
      if (held === undefined || held.version !== request.version) {
        const what = held === undefined ? 'no copy' : `version ${held.version.slice(0, 16)}, not ${request.version.slice(0, 16)}`;
        await answer('not_found', `holds ${what} of ${request.key}`);
        return;
      }
      const push = this.#pushFor(member, request.key);
      if (push === null) {
        await answer('busy', `already sending ${MAX_SENDS} image parts; ask again or ask another holder`);
        return;
      }
      tick = setInterval(() => {
        const p = push.progress ?? { bytesDone: 0, bytesTotal: 0 };
        void ch.write({ kind: 'progress', progress: { bytesDone: p.bytesDone, bytesTotal: p.bytesTotal } }).catch(() => {});
      }, PROGRESS_EVERY_MS);
      const outcome = await push.done;
      await answer('', '', outcome.kind, outcome.wireBytes);
    } catch (err) {
      const code = err instanceof DwcpError ? err.code : 'internal';
      log.warn({ member: member.name, blobKey: request.key, err: errorText(err) }, 'image part not sent');
      await answer(code, errorText(err)).catch(() => ch.reset(new Error('answer not delivered')));
    } finally {
      clearInterval(tick);
    }
  }

  /**
   * The push of `key` to `member`: the one running, or a new one (null when
   * MAX_SENDS run already). It is not tied to the asker's stream: the blob
   * transfer resumes over a new connection by itself, and a dropped ask comes
   * back and attaches to it.
   */
  #pushFor(member: MemberConfig, key: string): Push | null {
    const id = `${member.name}\n${key}`;
    const running = this.#pushes.get(id);
    if (running !== undefined) return running;
    if (this.#pushes.size >= MAX_SENDS) return null;
    const push: Push = { done: Promise.resolve({ kind: '', wireBytes: 0 }), progress: null };
    push.done = (async () => {
      try {
        const sent = await this.#opts.blob.send(key, member.name, {
          signal: this.#stopping.signal,
          onStart: (p) => {
            push.progress = p;
          },
        });
        this.#opts.log.info({ member: member.name, blobKey: key, kind: sent.kind, size: sent.size, wireBytes: sent.wireBytesSent, seconds: sent.seconds, resumed: sent.resumed }, 'image part sent on request');
        return { kind: sent.kind, wireBytes: sent.wireBytesSent };
      } finally {
        this.#pushes.delete(id);
      }
    })();
    // Nobody may be waiting when it fails (the asker gave up): the failure is logged by whoever attaches, not thrown at nobody.
    push.done.catch(() => {});
    this.#pushes.set(id, push);
    return push;
  }
}
