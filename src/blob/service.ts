/**
 * BlobService: large values on one daemon. It owns the store under
 * <dataDir>/blobs, the regional baseline cache, the per-link bandwidth and
 * RTT estimates and the per-codec measurements, serves /dwcp/blob/1.0.0 for
 * members sending to us, and sends stored values to members on request
 * (`dwcpctl blob put … --to`), reporting progress to the admin API.
 *
 * Invariants:
 * - The cache is keyed by the remote member's region and names, per key, the
 *   version both sides are known to hold: set when a transfer commits, in
 *   both directions (the receiver knows the sender holds what it sent). A
 *   hit sends a delta against that version; a miss, an expired or evicted
 *   entry, or a manifest the store no longer keeps sends everything; a hit
 *   the receiver refutes is forgotten and the value is sent in full at once.
 * - The store keeps the manifest of every version the cache names (GC asks
 *   the cache), so a hit can always be planned; only manifests, not chunks.
 * - Transfers report progress through TransferProgress objects the admin
 *   API polls; finished transfers stay visible in `status()` (the last
 *   RECENT_KEPT of them) with their outcome.
 * - With `baselineCache.persist`, the cache is written atomically (temp file,
 *   fsync, rename) at most every PERSIST_EVERY_MS while it changes and at
 *   stop, and read back at start; a damaged file is logged and ignored.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { DwcpConfig, MemberConfig } from '../config/schema.ts';
import type { MemberDirectory } from '../federation/members.ts';
import type { Logger } from '../log.ts';
import { CodecMeasurements, DEFAULT_CODEC_CHOICE, LinkEstimate, type CodecChoiceOptions } from '../codec/choice.ts';
import { frameEventsFor, MUXER_STREAM_OPTIONS, type FrameEvents } from '../net/framing.ts';
import type { MemberMesh } from '../net/mesh.ts';
import type { FrameMetrics } from '../metrics/metrics.ts';
import type { ProtocolHost } from '../net/host.ts';
import { BaselineCache, type BaselineCacheEntry, type BaselineCacheStats } from './baseline-cache.ts';
import { chunkingForAverage } from './chunker.ts';
import type { Manifest } from './manifest.ts';
import type { BlobSettings } from './config.ts';
import type { BlobMetrics, TransferDirection, TransferKind } from './metrics.ts';
import { TransferProgress, type ProgressSnapshot } from './progress.ts';
import { BlobStore, type StoredValue } from './store.ts';
import { BaselineRefusedError, BLOB_MAX_INBOUND_STREAMS, BlobReceiver, pushValue, type InboundStatus, type LinkInfo, type PushResult } from './transfer.ts';
import { DwcpError, type DwcpErrorCode } from '../errors.ts';
import { BLOB_PROTOCOL } from './wire.ts';

const RECENT_KEPT = 32;
/** What one stream can have in flight per round trip: the muxer's stream window (MUXER_STREAM_OPTIONS). */
const STREAM_WINDOW_BYTES = MUXER_STREAM_OPTIONS.maxStreamWindowSize;
const PERSIST_EVERY_MS = 30_000;
const GC_DELAY_MS = 2_000;
const CACHE_FILE = 'baseline-cache.json';

/** What the cache remembers: the version a region holds for a key. */
export interface BaselineRef {
  version: string;
}

export type BlobServiceErrorCode = Extract<DwcpErrorCode, 'not_found' | 'invalid' | 'unavailable'>;

/** A refusal of the blob service itself; store and transfer failures pass through as they are. */
export class BlobServiceError extends DwcpError<BlobServiceErrorCode> {}

export interface TransferStatus extends ProgressSnapshot {
  transferId: string;
  direction: TransferDirection;
  member: string;
  key: string;
  version: string;
  kind: TransferKind;
  state: 'running' | 'done' | 'failed';
  attempt: number;
  resumed: number;
  startedAt: string;
  error: string | null;
}

export interface SendOutcome extends PushResult {
  member: string;
  key: string;
  version: string;
  size: number;
  /** The cache named a baseline the receiver turned out not to hold (the value then went in full). */
  baselineRefuted: boolean;
}

export interface PutOutcome {
  stored: StoredValue;
  ingestSeconds: number;
  sent: SendOutcome | null;
}

export type PutPhase = 'ingest' | 'transfer';

export interface BlobServiceOptions {
  settings: BlobSettings;
  dataDir: string;
  /** Answers /dwcp/blob/1.0.0 and dials it to send. */
  host: ProtocolHost;
  members: MemberDirectory;
  isConnected(peerId: string): boolean;
  /** The link's mode and smoothed RTT (the mesh's view); called per batch. */
  link(peerId: string): LinkInfo;
  metrics: BlobMetrics;
  log: Logger;
  frameEvents?: FrameEvents;
  /** Skip fsync (tests). */
  noSync?: boolean;
  /** Wall-clock milliseconds for the cache (its entries outlive restarts); Date.now unless told. */
  now?: () => number;
  resumeIdleMs?: number;
}

interface Running {
  status: Omit<TransferStatus, keyof ProgressSnapshot>;
  progress: TransferProgress;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export class BlobService {
  readonly store: BlobStore;
  readonly cache: BaselineCache<BaselineRef>;
  readonly #opts: BlobServiceOptions;
  readonly #receiver: BlobReceiver;
  readonly #codecs = new CodecMeasurements();
  readonly #estimates = new Map<string, LinkEstimate>();
  readonly #outbound = new Map<string, Running>();
  readonly #recent: TransferStatus[] = [];
  readonly #codecChoice: CodecChoiceOptions;
  readonly #now: () => number;
  readonly #stopping = new AbortController();
  #cacheDirty = false;
  #persistTimer: NodeJS.Timeout | undefined;
  #gcTimer: NodeJS.Timeout | undefined;
  #gcRunning: Promise<void> = Promise.resolve();
  #started = false;

  private constructor(opts: BlobServiceOptions, store: BlobStore, cache: BaselineCache<BaselineRef>) {
    this.#opts = opts;
    this.store = store;
    this.cache = cache;
    this.#now = opts.now ?? Date.now;
    this.#codecChoice = { ...DEFAULT_CODEC_CHOICE, internetZstdLevel: opts.settings.internetZstdLevel };
    this.#receiver = new BlobReceiver({
      store,
      members: opts.members,
      isConnected: opts.isConnected,
      link: opts.link,
      metrics: opts.metrics,
      log: opts.log,
      ...(opts.frameEvents ? { events: opts.frameEvents } : {}),
      ...(opts.resumeIdleMs !== undefined ? { resumeIdleMs: opts.resumeIdleMs } : {}),
      onEnd: (status, outcome) => {
        this.#remember(this.#inboundView(status, outcome.ok ? 'done' : 'failed', outcome.ok ? null : outcome.error));
        if (!outcome.ok) return;
        // We hold what the sender holds: the next send to its region can be a delta against it.
        this.cache.set(outcome.value.member.region, status.key, { version: status.version }, this.#now());
        this.cache.recordSaved(outcome.value.reusedBytes);
        this.#cacheChanged();
        this.#scheduleGc();
      },
    });
  }

  static async open(opts: BlobServiceOptions): Promise<BlobService> {
    const { settings } = opts;
    const dir = join(opts.dataDir, 'blobs');
    const cache = new BaselineCache<BaselineRef>({ capacity: settings.baselineCache.capacity, ttlMs: settings.baselineCache.ttlMs });
    const store = await BlobStore.open({
      dir,
      chunking: chunkingForAverage(settings.chunkAvgBytes),
      maxValueBytes: settings.maxValueBytes,
      ...(opts.noSync === true ? { noSync: true } : {}),
      retainedVersions: () => [...cache.values()].map((v) => v.version),
      log: opts.log,
    });
    const service = new BlobService(opts, store, cache);
    if (settings.baselineCache.persist) await service.#loadCache();
    return service;
  }

  /** The daemon's service: settings from `config.blob`, links as the mesh sees them. */
  static forDaemon(d: {
    config: Pick<DwcpConfig, 'blob' | 'dataDir'>;
    mesh: Pick<MemberMesh, 'host' | 'isConnected' | 'status'>;
    members: MemberDirectory;
    /** The blob section, and the frame counters of /dwcp/blob/1.0.0. */
    metrics: FrameMetrics & { blob: BlobMetrics };
    log: Logger;
  }): Promise<BlobService> {
    return BlobService.open({
      settings: d.config.blob,
      dataDir: d.config.dataDir,
      host: d.mesh.host,
      members: d.members,
      isConnected: (peerId) => d.mesh.isConnected(peerId),
      link: (peerId) => {
        const s = d.mesh.status().find((m) => m.peerId === peerId);
        // A member the mesh does not know is treated as the most careful mode.
        return s === undefined ? { mode: 'internet', rttMs: null } : { mode: s.linkMode, rttMs: s.rttMs };
      },
      metrics: d.metrics.blob,
      frameEvents: frameEventsFor(d.metrics, BLOB_PROTOCOL),
      log: d.log,
    });
  }

  async start(): Promise<void> {
    await this.#opts.host.handle(BLOB_PROTOCOL, this.#receiver.handle, { maxInboundStreams: BLOB_MAX_INBOUND_STREAMS, maxOutboundStreams: BLOB_MAX_INBOUND_STREAMS });
    this.#started = true;
    this.#persistTimer = setInterval(() => void this.#tick(), PERSIST_EVERY_MS);
    this.#persistTimer.unref();
    this.#scheduleGc();
  }

  async stop(): Promise<void> {
    this.#stopping.abort(new BlobServiceError('unavailable', 'the daemon is stopping'));
    clearInterval(this.#persistTimer);
    clearTimeout(this.#gcTimer);
    if (this.#started) await this.#opts.host.unhandle(BLOB_PROTOCOL).catch(() => {});
    this.#receiver.stop();
    await this.#gcRunning;
    if (this.#opts.settings.baselineCache.persist) await this.#saveCache().catch((err: unknown) => this.#opts.log.warn({ err: errorText(err) }, 'baseline cache not saved'));
    await this.store.close();
  }

  // ------------------------------------------------------------------ operations

  /** Stores a file under `key` (or the key `key()` names once the file is read) and, with `to`, sends it to that member. */
  async put(
    path: string,
    key: string | (() => string),
    opts: { to?: string; streams?: number; baselineKey?: string; signal?: AbortSignal; onPhase?: (phase: PutPhase, progress: TransferProgress) => void; onRead?: (bytes: Uint8Array) => void } = {},
  ): Promise<PutOutcome> {
    const member = opts.to === undefined ? undefined : this.#member(opts.to);
    const signal = opts.signal === undefined ? this.#stopping.signal : AbortSignal.any([opts.signal, this.#stopping.signal]);
    const progress = new TransferProgress(0, performance.now());
    opts.onPhase?.('ingest', progress);
    const t0 = performance.now();
    const stored = await this.store.ingestFile(key, path, {
      signal,
      ...(opts.onRead ? { onRead: opts.onRead } : {}),
      onProgress: (p) => {
        progress.retarget(p.bytesTotal);
        progress.add(p.bytesDone - progress.bytesDone, 0, performance.now());
      },
    });
    const ingestSeconds = (performance.now() - t0) / 1000;
    this.#opts.log.info({ blobKey: stored.key, version: stored.version, size: stored.size, chunks: stored.chunks, seconds: ingestSeconds }, 'blob stored');
    this.#scheduleGc();
    const sent =
      member === undefined
        ? null
        : await this.send(stored.key, member.name, { ...(opts.streams !== undefined ? { streams: opts.streams } : {}), ...(opts.baselineKey !== undefined ? { baselineKey: opts.baselineKey } : {}), signal, onStart: (p) => opts.onPhase?.('transfer', p) });
    return { stored, ingestSeconds, sent };
  }

  /** Drops `key` from the store (true if it held a value); its chunks go at the next GC unless another key names them. */
  async remove(key: string): Promise<boolean> {
    const removed = await this.store.remove(key);
    if (removed) {
      this.#opts.log.info({ blobKey: key }, 'blob removed');
      this.#scheduleGc();
    }
    return removed;
  }

  /**
   * Sends `key`'s current version to the member named `to`, as a delta when the cache knows what it holds.
   * `baselineKey`: look the baseline up under that key instead (a series of values under their own keys,
   * each a delta against the one before it: DR backups); the receiver takes a version it holds under any key of the same folder.
   */
  async send(key: string, to: string, opts: { streams?: number; baselineKey?: string; onStart?: (progress: TransferProgress) => void; onAck?: () => void; signal?: AbortSignal } = {}): Promise<SendOutcome> {
    const member = this.#member(to);
    const manifest = this.store.currentManifest(key);
    if (manifest === undefined) throw new BlobServiceError('not_found', `no value stored under key ${JSON.stringify(key)}`);
    if (!this.#opts.isConnected(member.peerId)) throw new BlobServiceError('unavailable', `member ${member.name} is not connected`);
    const streams = opts.streams ?? this.streamsFor(member.peerId);
    if (!Number.isInteger(streams) || streams < 1 || streams > 16) throw new BlobServiceError('invalid', `streams: ${streams} is not a whole number from 1 to 16`);
    const baselineKey = opts.baselineKey ?? key;
    const hit = this.cache.get(member.region, baselineKey, this.#now());
    let baseline: Manifest | undefined = hit === undefined ? undefined : this.store.manifest(hit.version, key);
    if (hit !== undefined && (baseline === undefined || !this.store.chunksAlike(baseline))) {
      this.cache.refute(member.region, baselineKey);
      baseline = undefined;
    }
    this.#cacheChanged();
    let refuted = false;
    let result: PushResult;
    try {
      result = await this.#push(member, manifest, baseline, streams, opts);
    } catch (err) {
      if (!(err instanceof BaselineRefusedError)) throw err;
      this.#opts.log.info({ member: member.name, blobKey: key, baseline: baseline?.hash, err: err.message }, 'receiver does not hold the cached baseline; sending the whole value');
      this.cache.refute(member.region, baselineKey);
      this.#cacheChanged();
      refuted = true;
      result = await this.#push(member, manifest, undefined, streams, opts);
    }
    this.cache.set(member.region, key, { version: manifest.hash }, this.#now());
    this.cache.recordSaved(result.reusedBytes);
    this.#cacheChanged();
    this.#opts.log.info(
      { member: member.name, blobKey: key, version: manifest.hash, kind: result.kind, size: manifest.size, rawBytesSent: result.rawBytesSent, wireBytesSent: result.wireBytesSent, seconds: result.seconds, resumed: result.resumed },
      'blob sent',
    );
    return { ...result, member: member.name, key, version: manifest.hash, size: manifest.size, baselineRefuted: refuted };
  }

  async #push(member: MemberConfig, manifest: Manifest, baseline: Manifest | undefined, streams: number, opts: { onStart?: (p: TransferProgress) => void; onAck?: () => void; signal?: AbortSignal }): Promise<PushResult> {
    const { metrics, settings } = this.#opts;
    const progress = new TransferProgress(0, performance.now());
    const transferId = randomBytes(16).toString('hex');
    const kind: TransferKind = baseline === undefined ? 'full' : 'delta';
    const running: Running = {
      status: { transferId, direction: 'sent', member: member.name, key: manifest.key, version: manifest.hash, kind, state: 'running', attempt: 1, resumed: 0, startedAt: new Date().toISOString(), error: null },
      progress,
    };
    this.#outbound.set(transferId, running);
    metrics.activeTransfers.inc({ direction: 'sent' });
    opts.onStart?.(progress);
    const estimate = this.linkEstimate(member.peerId);
    const signal = opts.signal === undefined ? this.#stopping.signal : AbortSignal.any([opts.signal, this.#stopping.signal]);
    try {
      const result = await pushValue({
        host: this.#opts.host,
        store: this.store,
        member,
        manifest,
        baseline,
        settings: { streams, batchBytes: settings.batchBytes, maxResumes: settings.maxResumes, codecChoice: this.#codecChoice },
        link: () => this.#opts.link(member.peerId),
        estimate,
        codecs: this.#codecs,
        metrics,
        progress,
        log: this.#opts.log,
        signal,
        transferId,
        onAttempt: (attempt, resumed) => {
          running.status.attempt = attempt;
          running.status.resumed = resumed;
        },
        ...(opts.onAck ? { onAck: opts.onAck } : {}),
        ...(this.#opts.frameEvents ? { events: this.#opts.frameEvents } : {}),
      });
      running.status.attempt = result.attempts;
      running.status.resumed = result.resumed;
      metrics.transfers.inc({ direction: 'sent', kind, result: 'ok' });
      metrics.transferSeconds.observe({ direction: 'sent', kind }, result.seconds);
      if (result.rawBytesSent > 0 && result.seconds > 0) metrics.transferThroughput.observe({ direction: 'sent' }, result.rawBytesSent / result.seconds);
      this.#finish(running, 'done', null);
      return result;
    } catch (err) {
      metrics.transfers.inc({ direction: 'sent', kind, result: 'failed' });
      this.#finish(running, 'failed', errorText(err));
      throw err;
    } finally {
      this.#outbound.delete(transferId);
      metrics.activeTransfers.dec({ direction: 'sent' });
    }
  }

  /**
   * Streams for the next transfer to a member: enough that their windows
   * (STREAM_WINDOW_BYTES each) cover the link's bandwidth × RTT, with half
   * again as headroom so a window-bound link measures faster next time and
   * earns another stream; 2 before anything is measured; at most
   * blob.maxStreams. A loopback or LAN link needs one.
   */
  streamsFor(peerId: string): number {
    const estimate = this.linkEstimate(peerId);
    const rttMs = this.#opts.link(peerId).rttMs ?? estimate.rttMs;
    const max = this.#opts.settings.maxStreams;
    if (rttMs === null || estimate.bandwidth === null) return Math.min(2, max);
    const bdp = (estimate.bandwidth * rttMs) / 1000;
    return Math.max(1, Math.min(max, Math.ceil((1.5 * bdp) / STREAM_WINDOW_BYTES)));
  }

  /** The bandwidth and RTT estimate of the link to a member, fed by our transfers to it; hybrid links choose codecs by it. */
  linkEstimate(peerId: string): LinkEstimate {
    let estimate = this.#estimates.get(peerId);
    if (estimate === undefined) {
      estimate = new LinkEstimate();
      this.#estimates.set(peerId, estimate);
    }
    return estimate;
  }

  /** The value `key` holds and a reader of its bytes (each chunk checked against its hash). */
  open(key: string): { value: StoredValue; manifest: Manifest; read: () => AsyncGenerator<Uint8Array> } {
    const value = this.store.current(key);
    const manifest = value === undefined ? undefined : this.store.manifest(value.version, key);
    if (value === undefined || manifest === undefined) throw new BlobServiceError('not_found', `no value stored under key ${JSON.stringify(key)}`);
    return { value, manifest, read: () => this.store.readValue(manifest) };
  }

  /** Transfers running now and the last few finished, newest first; plus what the store holds. */
  async status(): Promise<{ transfers: TransferStatus[]; values: StoredValue[]; store: Awaited<ReturnType<BlobStore['usage']>> }> {
    const now = performance.now();
    const running: TransferStatus[] = [
      ...[...this.#outbound.values()].map((r) => ({ ...r.status, ...r.progress.snapshot(now) })),
      ...this.#receiver.active().map((s) => this.#inboundView(s, 'running', null)),
    ];
    return { transfers: [...running, ...this.#recent], values: this.store.list(), store: await this.store.usage() };
  }

  cacheStats(): BaselineCacheStats & { capacity: number; ttlMs: number; persist: boolean; hitRatio: number | null } {
    const stats = this.cache.stats();
    const lookups = stats.hits + stats.misses;
    return { ...stats, capacity: this.cache.capacity, ttlMs: this.cache.ttlMs, persist: this.#opts.settings.baselineCache.persist, hitRatio: lookups === 0 ? null : stats.hits / lookups };
  }

  /** Runs garbage collection now (tests, and after values were replaced). */
  async gc(): Promise<void> {
    const run = this.#gcRunning.then(async () => {
      try {
        await this.store.gc();
      } catch (err) {
        this.#opts.log.warn({ err: errorText(err) }, 'blob store garbage collection failed');
      }
    });
    this.#gcRunning = run;
    await run;
  }

  // ------------------------------------------------------------------ internals

  #member(name: string): MemberConfig {
    const member = this.#opts.members.list().find((m) => m.name === name);
    if (member === undefined) throw new BlobServiceError('not_found', `no member named ${JSON.stringify(name)} in the member list`);
    return member;
  }

  #inboundView(s: InboundStatus, state: TransferStatus['state'], error: string | null): TransferStatus {
    return {
      transferId: s.transferId,
      direction: 'received',
      member: s.member,
      key: s.key,
      version: s.version,
      kind: s.kind,
      state,
      attempt: s.attempt,
      resumed: s.resumed,
      startedAt: s.startedAt.toISOString(),
      error,
      ...s.progress.snapshot(performance.now()),
    };
  }

  #finish(r: Running, state: 'done' | 'failed', error: string | null): void {
    this.#remember({ ...r.status, state, error, ...r.progress.snapshot(performance.now()) });
  }

  #remember(s: TransferStatus): void {
    this.#recent.unshift(s);
    if (this.#recent.length > RECENT_KEPT) this.#recent.length = RECENT_KEPT;
  }

  #cacheChanged(): void {
    this.#cacheDirty = true;
    this.#opts.metrics.syncCache(this.cache.stats());
  }

  async #tick(): Promise<void> {
    if (this.cache.prune(this.#now()) > 0) this.#cacheChanged();
    if (this.#cacheDirty && this.#opts.settings.baselineCache.persist) {
      await this.#saveCache().catch((err: unknown) => this.#opts.log.warn({ err: errorText(err) }, 'baseline cache not saved'));
    }
  }

  /** GC is background work: it waits until no transfer is running, so it never takes CPU from one. */
  #scheduleGc(): void {
    if (this.#stopping.signal.aborted) return;
    clearTimeout(this.#gcTimer);
    this.#gcTimer = setTimeout(() => {
      if (this.#outbound.size > 0 || this.#receiver.active().length > 0) this.#scheduleGc();
      else void this.gc();
    }, GC_DELAY_MS);
    this.#gcTimer.unref();
  }

  get #cachePath(): string {
    return join(this.store.dir, CACHE_FILE);
  }

  async #saveCache(): Promise<void> {
    this.#cacheDirty = false;
    const entries = this.cache.snapshot(this.#now());
    const tmp = `${this.#cachePath}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ format: 1, entries }));
      if (this.#opts.noSync !== true) await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.#cachePath);
  }

  async #loadCache(): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.#cachePath, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.#opts.log.warn({ err: errorText(err) }, 'baseline cache file unreadable; starting empty');
      return;
    }
    try {
      const parsed = JSON.parse(text) as { format?: unknown; entries?: unknown };
      if (parsed.format !== 1 || !Array.isArray(parsed.entries)) throw new Error('not a format-1 baseline cache file');
      const entries = (parsed.entries as unknown[]).filter(isCacheEntry);
      const kept = this.cache.restore(entries, this.#now());
      this.#opts.log.info({ kept, stored: parsed.entries.length }, 'baseline cache restored');
    } catch (err) {
      this.#opts.log.warn({ err: errorText(err), path: this.#cachePath }, 'baseline cache file damaged; starting empty');
      await rm(this.#cachePath, { force: true });
    }
    this.#opts.metrics.syncCache(this.cache.stats());
  }
}

function isCacheEntry(e: unknown): e is BaselineCacheEntry<BaselineRef> {
  if (typeof e !== 'object' || e === null) return false;
  const r = e as Record<string, unknown>;
  const value = r.value as Record<string, unknown> | null;
  return (
    typeof r.region === 'string' &&
    typeof r.key === 'string' &&
    typeof r.storedAtMs === 'number' &&
    typeof value === 'object' &&
    value !== null &&
    typeof value.version === 'string' &&
    /^[0-9a-f]{64}$/.test(value.version)
  );
}
