/**
 * The image catalog's metrics: materialisations by outcome, and how long
 * each took by where its bytes came from (a file already checked here, this
 * node's blob store, or fetched from a holder). The bytes a fetch moves are
 * the blob transfer's own metrics (dwcp_blob_*).
 *
 * Invariants: dwcp_ prefix, base units, bounded labels (the outcome is a
 * fixed set, never an image name), every label value exported as 0 from the
 * start so rate() works before the first event.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

export const MATERIALISE_RESULTS = ['ok', 'not_found', 'corrupt', 'unavailable', 'failed'] as const;
export type MaterialiseResult = (typeof MATERIALISE_RESULTS)[number];
export const MATERIALISE_SOURCES = ['file', 'store', 'fetched'] as const;
export type MaterialiseSource = (typeof MATERIALISE_SOURCES)[number];

export interface ImageMetrics {
  materialisations: Counter<'result'>;
  materialiseSeconds: Histogram<'source'>;
  /** Materialised files that failed their check when used again, and were rebuilt from the blob store. */
  filesRebuilt: Counter;
}

/** From a check of a file already here (ms) to a multi-GiB fetch over a WAN (many minutes). */
const SECONDS = [0.001, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];

export function createImageMetrics(registers: Registry[]): ImageMetrics {
  const m: ImageMetrics = {
    materialisations: new Counter({
      name: 'dwcp_image_materialisations_total',
      help: 'Guest images asked for by name and turned into checked files on this host, by result.',
      labelNames: ['result'],
      registers,
    }),
    materialiseSeconds: new Histogram({
      name: 'dwcp_image_materialise_duration_seconds',
      help: "Time to materialise an image, by where its bytes came from (file: already here and checked; store: this node's blob store; fetched: from a holder).",
      labelNames: ['source'],
      buckets: SECONDS,
      registers,
    }),
    filesRebuilt: new Counter({
      name: 'dwcp_image_files_rebuilt_total',
      help: 'Materialised image files that no longer matched their hash when used, removed and written again from the blob store.',
      registers,
    }),
  };
  for (const result of MATERIALISE_RESULTS) m.materialisations.inc({ result }, 0);
  return m;
}
