/**
 * Progress of one transfer (or ingest): bytes done of bytes total, the rate
 * and the time left, for `dwcpctl blob status`, progress bars and metrics.
 *
 * Invariants: time is passed in (`nowMs`, monotonic milliseconds) so the
 * arithmetic is testable; the rate is an EWMA over windows of at least
 * RATE_WINDOW_MS (a single batch landing says little), falling back to the
 * average since the first byte until a window has closed; the ETA is null
 * while no rate is known, and 0 once everything is done.
 */
import { Ewma } from '../codec/choice.ts';

const RATE_WINDOW_MS = 250;

export interface ProgressSnapshot {
  bytesDone: number;
  bytesTotal: number;
  /** Bytes on the wire so far (after compression); 0 where it does not apply. */
  wireBytes: number;
  /** Bytes per second, null before anything was measured. */
  rateBytesPerS: number | null;
  etaSeconds: number | null;
  elapsedSeconds: number;
}

export class TransferProgress {
  bytesTotal: number;
  bytesDone = 0;
  wireBytes = 0;
  readonly #startedMs: number;
  readonly #rate = new Ewma(0.3);
  #windowStartMs: number;
  #windowBytes = 0;

  constructor(bytesTotal: number, nowMs: number) {
    this.bytesTotal = bytesTotal;
    this.#startedMs = nowMs;
    this.#windowStartMs = nowMs;
  }

  add(rawBytes: number, wireBytes: number, nowMs: number): void {
    this.bytesDone += rawBytes;
    this.wireBytes += wireBytes;
    this.#windowBytes += rawBytes;
    const elapsed = nowMs - this.#windowStartMs;
    if (elapsed >= RATE_WINDOW_MS) {
      this.#rate.observe((this.#windowBytes * 1000) / elapsed);
      this.#windowStartMs = nowMs;
      this.#windowBytes = 0;
    }
  }

  /** Sets the total anew (e.g. a resumed attempt needs fewer bytes) keeping what is done. */
  retarget(bytesTotal: number): void {
    this.bytesTotal = bytesTotal;
  }

  snapshot(nowMs: number): ProgressSnapshot {
    const elapsedMs = Math.max(0, nowMs - this.#startedMs);
    const average = elapsedMs > 0 && this.bytesDone > 0 ? (this.bytesDone * 1000) / elapsedMs : null;
    const rate = this.#rate.value ?? average;
    const left = Math.max(0, this.bytesTotal - this.bytesDone);
    return {
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      wireBytes: this.wireBytes,
      rateBytesPerS: rate,
      etaSeconds: left === 0 ? 0 : rate === null || rate <= 0 ? null : left / rate,
      elapsedSeconds: elapsedMs / 1000,
    };
  }
}
