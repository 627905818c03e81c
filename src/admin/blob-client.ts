/**
 * The Blob admin service (blob.proto) as the admin client exposes it: the
 * `.blob` sub-client, with the .proto's snake_case types.
 *
 * Invariants (as for the rest of the admin client): every response has
 * every field, proto3 `optional` fields absent on the wire become null,
 * uint64 fields are numbers (sizes and counters stay far below 2^53), and
 * every failure is an AdminClientError with a one-line reason. A streaming
 * call (Put, Get) has no overall deadline, since a large value takes as long
 * as it takes; instead `timeoutMs` bounds the wait between two messages (the
 * daemon sends Put progress about every 250 ms), so a stuck daemon is
 * reported, not waited for.
 */
import { serverStream, type StreamTransport } from './server-stream.ts';
import { type BlobCacheStatsResponse, type BlobProgress, type BlobPutRequest, type BlobPutResult, type BlobSendResult, type BlobStatusResponse, type BlobTransfer, type BlobValue, type ServiceCall } from './schema.ts';

export interface BlobClient {
  /** Stores (and with `to`, sends) a file; `onProgress` sees each progress message. */
  put(request: BlobPutRequest, onProgress?: (p: BlobProgress) => void): Promise<BlobPutResult>;
  /** The value's metadata, then each piece of its bytes in order, to `onData`. */
  get(key: string, onData: (bytes: Uint8Array) => Promise<void> | void, onValue?: (v: BlobValue) => void): Promise<BlobValue>;
  status(): Promise<BlobStatusResponse>;
  cacheStats(): Promise<BlobCacheStatsResponse>;
}

export interface BlobClientTransport extends StreamTransport {
  unary: ServiceCall;
}

export type Num = string | number;
/** As proto-loader decodes it: uint64 as a string, proto3 `optional` fields absent rather than null. */
export type WireOf<T> = { [K in keyof T]: null extends T[K] ? (NonNullable<T[K]> extends number ? Num : NonNullable<T[K]>) | undefined : T[K] extends number ? Num : T[K] };

export function num(v: Num | undefined): number {
  return typeof v === 'number' ? v : Number(v ?? 0);
}

function optionalNum(v: Num | undefined | null): number | null {
  return v === undefined || v === null ? null : num(v);
}

export function blobValueFromWire(v: WireOf<BlobValue>): BlobValue {
  return { key: v.key, version: v.version, size: num(v.size), chunks: num(v.chunks), stored_at: v.stored_at, source: v.source };
}

export function progressFromWire(p: WireOf<BlobProgress>): BlobProgress {
  return {
    phase: p.phase,
    bytes_done: num(p.bytes_done),
    bytes_total: num(p.bytes_total),
    wire_bytes: num(p.wire_bytes),
    rate_bytes_per_s: optionalNum(p.rate_bytes_per_s),
    eta_seconds: optionalNum(p.eta_seconds),
    elapsed_seconds: num(p.elapsed_seconds),
  };
}

function sendFromWire(s: Omit<WireOf<BlobSendResult>, 'codecs' | 'phase_seconds'> & { codecs: Record<string, Num>; phase_seconds: Record<string, Num> }): BlobSendResult {
  return {
    transfer_id: s.transfer_id,
    member: s.member,
    kind: s.kind,
    needed_bytes: num(s.needed_bytes),
    raw_bytes_sent: num(s.raw_bytes_sent),
    wire_bytes_sent: num(s.wire_bytes_sent),
    manifest_bytes_sent: num(s.manifest_bytes_sent),
    reused_bytes: num(s.reused_bytes),
    attempts: num(s.attempts),
    resumed: num(s.resumed),
    seconds: num(s.seconds),
    baseline_refuted: s.baseline_refuted,
    codecs: Object.fromEntries(Object.entries(s.codecs).map(([k, v]) => [k, num(v)])),
    phase_seconds: Object.fromEntries(Object.entries(s.phase_seconds).map(([k, v]) => [k, num(v)])),
  };
}

function transferFromWire(t: WireOf<BlobTransfer>): BlobTransfer {
  return {
    transfer_id: t.transfer_id,
    direction: t.direction,
    member: t.member,
    key: t.key,
    version: t.version,
    kind: t.kind,
    state: t.state,
    bytes_done: num(t.bytes_done),
    bytes_total: num(t.bytes_total),
    wire_bytes: num(t.wire_bytes),
    rate_bytes_per_s: optionalNum(t.rate_bytes_per_s),
    eta_seconds: optionalNum(t.eta_seconds),
    elapsed_seconds: num(t.elapsed_seconds),
    attempt: num(t.attempt),
    resumed: num(t.resumed),
    started_at: t.started_at,
    error: t.error ?? null,
  };
}

type WirePutEvent =
  | { event: 'progress'; progress: WireOf<BlobProgress> }
  | { event: 'result'; result: { stored: WireOf<BlobValue>; ingest_seconds: Num; sent?: Parameters<typeof sendFromWire>[0] } };
type WireGetPart = { part: 'value'; value: WireOf<BlobValue> } | { part: 'data'; data: Uint8Array };

export function blobClient(t: BlobClientTransport): BlobClient {
  return {
    async put(request, onProgress) {
      let result: BlobPutResult | null = null;
      await serverStream<WirePutEvent>(t, 'Put', request, (e) => {
        if (e.event === 'progress') onProgress?.(progressFromWire(e.progress));
        else
          result = {
            stored: blobValueFromWire(e.result.stored),
            ingest_seconds: num(e.result.ingest_seconds),
            sent: e.result.sent === undefined ? null : sendFromWire(e.result.sent),
          };
      });
      if (result === null) throw new Error('Put: the daemon ended the call without a result');
      return result;
    },
    async get(key, onData, onValue) {
      let value: BlobValue | null = null;
      await serverStream<WireGetPart>(t, 'Get', { key }, async (p) => {
        if (p.part === 'value') {
          value = blobValueFromWire(p.value);
          onValue?.(value);
        } else {
          await onData(p.data);
        }
      });
      if (value === null) throw new Error('Get: the daemon sent no value metadata');
      return value;
    },
    status: async () => {
      const s = await t.unary<object, { transfers: WireOf<BlobTransfer>[]; values: WireOf<BlobValue>[]; pack_bytes: Num; packs: Num; chunks: Num }>('Status', {});
      return { transfers: s.transfers.map(transferFromWire), values: s.values.map(blobValueFromWire), pack_bytes: num(s.pack_bytes), packs: num(s.packs), chunks: num(s.chunks) };
    },
    cacheStats: async () => {
      const s = await t.unary<object, WireOf<BlobCacheStatsResponse>>('CacheStats', {});
      return {
        hits: num(s.hits),
        misses: num(s.misses),
        evictions: num(s.evictions),
        expiries: num(s.expiries),
        refuted: num(s.refuted),
        bytes_saved: num(s.bytes_saved),
        entries: num(s.entries),
        capacity: num(s.capacity),
        ttl_ms: num(s.ttl_ms),
        persist: s.persist,
        hit_ratio: optionalNum(s.hit_ratio),
      };
    },
  };
}
