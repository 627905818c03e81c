/**
 * The admin socket's Blob service (blob.proto) over BlobService: Put and Get
 * stream (progress, value bytes), Status and CacheStats are unary.
 *
 * Invariants:
 * - Put reads the file by path with the daemon's privileges. The socket is
 *   mode 0600 and owned by the daemon's user, so only that user (or root)
 *   can ask; the path must be absolute, and the store refuses anything but a
 *   regular file and does not follow a symbolic link (docs/blob.md).
 * - Failures are DwcpErrors and travel as status.ts maps their codes:
 *   INVALID_ARGUMENT for a bad request (the details name the field),
 *   NOT_FOUND for an unknown key or member, UNAVAILABLE and retryable when a
 *   retry may succeed (member not connected, connection lost beyond the
 *   resumes), FAILED_PRECONDITION when the member refused or failed the
 *   transfer; anything else is INTERNAL and logged.
 * - A client that cancels a Put (Ctrl-C) aborts its ingest or transfer; Get
 *   writes no faster than the client reads (the stream's back-pressure).
 */
import { isAbsolute } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { BlobService, SendOutcome } from '../blob/service.ts';
import type { StoredValue } from '../blob/store.ts';
import type { TransferProgress } from '../blob/progress.ts';
import { asyncStreaming, asyncUnary, send } from './call.ts';
import { BLOB_SERVICE } from './schema.ts';
import { loadAdminPackage } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';

const PROGRESS_EVERY_MS = 250;
/** Bytes of value per Get message. */
const GET_PART_BYTES = 1024 * 1024;

export interface BlobAdminOptions {
  service: BlobService;
  log: Logger;
}

export function blobValue(v: StoredValue): Record<string, unknown> {
  return { key: v.key, version: v.version, size: v.size, chunks: v.chunks, stored_at: v.storedAt, source: v.source };
}

function sendResult(s: SendOutcome): Record<string, unknown> {
  return {
    transfer_id: s.transferId,
    member: s.member,
    kind: s.kind,
    needed_bytes: s.neededBytes,
    raw_bytes_sent: s.rawBytesSent,
    wire_bytes_sent: s.wireBytesSent,
    manifest_bytes_sent: s.manifestBytesSent,
    reused_bytes: s.reusedBytes,
    attempts: s.attempts,
    resumed: s.resumed,
    seconds: s.seconds,
    baseline_refuted: s.baselineRefuted,
    codecs: s.codecs,
    phase_seconds: s.phases,
  };
}

export function progressMessage(phase: string, p: TransferProgress): Record<string, unknown> {
  const s = p.snapshot(performance.now());
  return {
    phase,
    bytes_done: s.bytesDone,
    bytes_total: s.bytesTotal,
    wire_bytes: s.wireBytes,
    ...(s.rateBytesPerS === null ? {} : { rate_bytes_per_s: s.rateBytesPerS }),
    ...(s.etaSeconds === null ? {} : { eta_seconds: s.etaSeconds }),
    elapsed_seconds: s.elapsedSeconds,
  };
}

/**
 * Progress messages of a long server-streaming call: `phase` switches to a
 * new phase (reporting the last one's final figures first), the current one
 * is sent every PROGRESS_EVERY_MS until `stop`.
 */
export function progressReporter(call: grpc.ServerWritableStream<unknown, unknown>): { phase(name: string, progress: TransferProgress): void; flush(): void; stop(): void } {
  const live: { phase: string; progress: TransferProgress | null } = { phase: '', progress: null };
  const flush = () => {
    if (live.progress !== null) call.write({ progress: progressMessage(live.phase, live.progress) });
  };
  const tick = setInterval(flush, PROGRESS_EVERY_MS);
  return {
    phase: (name, progress) => {
      flush();
      live.phase = name;
      live.progress = progress;
    },
    flush,
    stop: () => clearInterval(tick),
  };
}

export function blobServiceRegistration(opts: BlobAdminOptions): AdminServiceRegistration {
  const { service, log } = opts;
  type PutRequest = { path: string; key: string; to: string; streams: number };

  const put = async (call: grpc.ServerWritableStream<PutRequest, unknown>): Promise<void> => {
    const r = call.request;
    if (!isAbsolute(r.path)) throw new DwcpError('invalid', `path: ${JSON.stringify(r.path)} is not an absolute path`);
    if (r.key === '') throw new DwcpError('invalid', 'key: required');
    const cancelled = new AbortController();
    call.on('cancelled', () => cancelled.abort(new DwcpError('cancelled', 'the client cancelled the put')));
    const progress = progressReporter(call);
    try {
      const out = await service.put(r.path, r.key, {
        ...(r.to === '' ? {} : { to: r.to }),
        ...(r.streams === 0 ? {} : { streams: r.streams }),
        signal: cancelled.signal,
        onPhase: (phase, p) => progress.phase(phase, p),
      });
      progress.flush();
      await send(call, { result: { stored: blobValue(out.stored), ingest_seconds: out.ingestSeconds, ...(out.sent === null ? {} : { sent: sendResult(out.sent) }) } });
      call.end();
    } finally {
      progress.stop();
    }
  };

  const get = async (call: grpc.ServerWritableStream<{ key: string }, unknown>): Promise<void> => {
    if (call.request.key === '') throw new DwcpError('invalid', 'key: required');
    const { value, read } = service.open(call.request.key);
    await send(call, { value: blobValue(value) });
    let parts: Uint8Array[] = [];
    let bytes = 0;
    for await (const chunk of read()) {
      if (call.cancelled) return;
      parts.push(chunk);
      bytes += chunk.byteLength;
      if (bytes >= GET_PART_BYTES) {
        await send(call, { data: Buffer.concat(parts) });
        parts = [];
        bytes = 0;
      }
    }
    if (bytes > 0) await send(call, { data: Buffer.concat(parts) });
    call.end();
  };

  const unary = <Res>(method: string, fn: () => Promise<Res>) => asyncUnary<object, Res>(log, method, fn);

  return {
    name: BLOB_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Put: asyncStreaming<PutRequest>(log, 'Put', put),
      Get: asyncStreaming<{ key: string }>(log, 'Get', get),
      Status: unary('Status', async () => {
        const s = await service.status();
        return {
          transfers: s.transfers.map((t) => ({
            transfer_id: t.transferId,
            direction: t.direction,
            member: t.member,
            key: t.key,
            version: t.version,
            kind: t.kind,
            state: t.state,
            bytes_done: t.bytesDone,
            bytes_total: t.bytesTotal,
            wire_bytes: t.wireBytes,
            ...(t.rateBytesPerS === null ? {} : { rate_bytes_per_s: t.rateBytesPerS }),
            ...(t.etaSeconds === null ? {} : { eta_seconds: t.etaSeconds }),
            elapsed_seconds: t.elapsedSeconds,
            attempt: t.attempt,
            resumed: t.resumed,
            started_at: t.startedAt,
            ...(t.error === null ? {} : { error: t.error }),
          })),
          values: s.values.map(blobValue),
          pack_bytes: s.store.packBytes,
          packs: s.store.packs,
          chunks: s.store.chunks,
        };
      }),
      CacheStats: unary('CacheStats', async () => {
        const c = service.cacheStats();
        return {
          hits: c.hits,
          misses: c.misses,
          evictions: c.evictions,
          expiries: c.expiries,
          refuted: c.refuted,
          bytes_saved: c.bytesSaved,
          entries: c.entries,
          capacity: c.capacity,
          ttl_ms: c.ttlMs,
          persist: c.persist,
          ...(c.hitRatio === null ? {} : { hit_ratio: c.hitRatio }),
        };
      }),
    },
  };
}
