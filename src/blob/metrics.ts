/**
 * The blob transfer's Prometheus metrics: bytes before and after the codec
 * by codec and link mode, compression ratio and codec time per frame, the
 * baseline cache's counters, transfers with their throughput, duration and
 * resumes, and hostile input refused by reason.
 *
 * Invariants: names follow the daemon's rules (dwcp_ prefix, base units,
 * _total counters, histograms); label values are bounded sets (codec labels
 * are the configured codecs and levels, link modes the three modes), and
 * every label value known up front is exported as 0 from the start so
 * rate() works before the first event (codec labels appear with their first
 * frame). The baseline cache keeps plain
 * counters; `syncCache` moves them into Prometheus by difference, so the
 * exported counters only ever grow.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { CODEC_ERROR_REASONS } from '../codec/codecs.ts';
import type { BaselineCacheStats } from './baseline-cache.ts';

/** Why a member's blob input was refused: a codec frame's reason, or a chunk, chunk list or exchange that breaks the protocol. */
export const BLOB_REJECT_REASONS = [...CODEC_ERROR_REASONS, 'chunk-hash', 'manifest', 'protocol'] as const;
export type BlobRejectReason = (typeof BLOB_REJECT_REASONS)[number];

export const TRANSFER_DIRECTIONS = ['sent', 'received'] as const;
export type TransferDirection = (typeof TRANSFER_DIRECTIONS)[number];
export const TRANSFER_KINDS = ['delta', 'full'] as const;
export type TransferKind = (typeof TRANSFER_KINDS)[number];
export const TRANSFER_RESULTS = ['ok', 'failed'] as const;

export interface BlobMetrics {
  rawBytes: Counter<'codec' | 'link_mode' | 'direction'>;
  wireBytes: Counter<'codec' | 'link_mode' | 'direction'>;
  compressionRatio: Histogram<'codec'>;
  compressSeconds: Histogram<'codec'>;
  decompressSeconds: Histogram<'codec'>;
  rejected: Counter<'reason'>;
  transfers: Counter<'direction' | 'kind' | 'result'>;
  transferSeconds: Histogram<'direction' | 'kind'>;
  transferThroughput: Histogram<'direction'>;
  resumed: Counter<'direction'>;
  activeTransfers: Gauge<'direction'>;
  cacheHits: Counter;
  cacheMisses: Counter;
  cacheEvictions: Counter;
  cacheExpiries: Counter;
  cacheRefuted: Counter;
  cacheSavedBytes: Counter;
  cacheEntries: Gauge;
  /** Moves the cache's counters into the exported ones (by difference since the last call). */
  syncCache(stats: BaselineCacheStats): void;
}

/** Per-frame codec time: ~10 µs (LZ4 on a small batch) to seconds (zstd 19 on 4 MiB on a busy machine). */
const CODEC_SECONDS = [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
/** wire / raw per frame: 0.01 (zeros) to 1 (incompressible, sent as none). */
const RATIO_BUCKETS = [0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97, 1];
const TRANSFER_SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];
/** Raw bytes per second of a whole transfer: 1 MB/s (a thin WAN link) to 4 GB/s. */
const THROUGHPUT_BUCKETS = [1e6, 4e6, 16e6, 32e6, 64e6, 128e6, 256e6, 512e6, 1e9, 2e9, 4e9];

export function createBlobMetrics(registers: Registry[]): BlobMetrics {
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) => new Counter<L>({ name, help, labelNames, registers });
  const m = {
    rawBytes: counter('dwcp_blob_raw_bytes_total', 'Chunk bytes moved by blob transfers before compression (sent) or after decompression (received), by codec, link mode and direction.', [
      'codec',
      'link_mode',
      'direction',
    ]),
    wireBytes: counter('dwcp_blob_wire_bytes_total', 'Codec frame bytes of blob transfers on the wire, by codec, link mode and direction.', ['codec', 'link_mode', 'direction']),
    compressionRatio: new Histogram({
      name: 'dwcp_codec_compression_ratio',
      help: 'Wire bytes / raw bytes of each compressed frame, by codec (1 = no gain).',
      labelNames: ['codec'],
      buckets: RATIO_BUCKETS,
      registers,
    }),
    compressSeconds: new Histogram({ name: 'dwcp_codec_compress_duration_seconds', help: 'Time to compress one frame, by codec.', labelNames: ['codec'], buckets: CODEC_SECONDS, registers }),
    decompressSeconds: new Histogram({ name: 'dwcp_codec_decompress_duration_seconds', help: 'Time to check and decompress one frame, by codec.', labelNames: ['codec'], buckets: CODEC_SECONDS, registers }),
    rejected: counter('dwcp_blob_rejected_total', 'Blob input from a member refused (transfer aborted, nothing applied), by reason.', ['reason']),
    transfers: counter('dwcp_blob_transfers_total', 'Blob transfers finished, by direction, kind (delta against a baseline, or full) and result.', ['direction', 'kind', 'result']),
    transferSeconds: new Histogram({
      name: 'dwcp_blob_transfer_duration_seconds',
      help: 'Time from offer to commit of each successful blob transfer, by direction and kind.',
      labelNames: ['direction', 'kind'],
      buckets: TRANSFER_SECONDS,
      registers,
    }),
    transferThroughput: new Histogram({
      name: 'dwcp_blob_transfer_throughput_bytes_per_second',
      help: 'Raw chunk bytes moved per second by each successful blob transfer that moved any, by direction.',
      labelNames: ['direction'],
      buckets: THROUGHPUT_BUCKETS,
      registers,
    }),
    resumed: counter('dwcp_blob_transfers_resumed_total', 'Blob transfer attempts resumed after a dropped connection, from the last acknowledged batch.', ['direction']),
    activeTransfers: new Gauge({ name: 'dwcp_blob_transfers_active', help: 'Blob transfers in progress, by direction.', labelNames: ['direction'], registers }),
    cacheHits: counter('dwcp_baseline_cache_hits_total', 'Baseline cache lookups that found the baseline a remote region holds for a key.'),
    cacheMisses: counter('dwcp_baseline_cache_misses_total', 'Baseline cache lookups that found none (absent, evicted or expired): a full transfer.'),
    cacheEvictions: counter('dwcp_baseline_cache_evictions_total', 'Baselines dropped to keep a region within the cache capacity.'),
    cacheExpiries: counter('dwcp_baseline_cache_expiries_total', 'Baselines dropped past their TTL.'),
    cacheRefuted: counter('dwcp_baseline_cache_refuted_total', 'Cache hits the receiver refuted (it no longer held the baseline), each followed by a full transfer.'),
    cacheSavedBytes: counter('dwcp_baseline_cache_saved_bytes_total', 'Value bytes a receiver took from its baseline instead of the wire.'),
    cacheEntries: new Gauge({ name: 'dwcp_baseline_cache_entries', help: 'Baselines held in the cache, over all regions.', registers }),
  };
  let last: BaselineCacheStats = { hits: 0, misses: 0, evictions: 0, expiries: 0, bytesSaved: 0, refuted: 0, entries: 0 };
  const metrics: BlobMetrics = {
    ...m,
    syncCache(stats) {
      const grow = (c: Counter, now: number, before: number) => {
        if (now > before) c.inc(now - before);
      };
      grow(m.cacheHits, stats.hits, last.hits);
      grow(m.cacheMisses, stats.misses, last.misses);
      grow(m.cacheEvictions, stats.evictions, last.evictions);
      grow(m.cacheExpiries, stats.expiries, last.expiries);
      grow(m.cacheRefuted, stats.refuted, last.refuted);
      grow(m.cacheSavedBytes, stats.bytesSaved, last.bytesSaved);
      m.cacheEntries.set(stats.entries);
      last = { ...stats };
    },
  };
  for (const reason of BLOB_REJECT_REASONS) m.rejected.inc({ reason }, 0);
  for (const direction of TRANSFER_DIRECTIONS) {
    m.resumed.inc({ direction }, 0);
    m.activeTransfers.set({ direction }, 0);
    for (const kind of TRANSFER_KINDS) for (const result of TRANSFER_RESULTS) m.transfers.inc({ direction, kind, result }, 0);
  }
  for (const c of [m.cacheHits, m.cacheMisses, m.cacheEvictions, m.cacheExpiries, m.cacheRefuted, m.cacheSavedBytes]) c.inc(0);
  return metrics;
}
