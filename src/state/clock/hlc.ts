/**
 * Hybrid logical clock (Kulkarni et al., 2014): timestamps that follow physical
 * time closely but also respect causality, so LWW winners and TTL expiry are
 * decided by the same total order in every region, whatever each region's wall
 * clock says.
 *
 * The clock is a value: its state is the last timestamp it issued, and physical
 * time is an argument (the driver reads the wall clock; this module never does).
 *
 * Invariants:
 * - Every event (local/send or receive) returns a timestamp strictly greater
 *   than the clock's previous one, whatever physical times are passed in.
 * - A receive returns a timestamp strictly greater than the remote one.
 * - `wallMs` never exceeds the largest physical time or accepted remote wall
 *   time seen; a remote more than `maxOffsetMs` ahead of our physical time is
 *   refused with HlcDriftError and the clock is left unchanged, so one region's
 *   broken clock cannot drag every other region into the future.
 */
import { readCount, readObject } from '../crdt/decode.ts';
import { DwcpError } from '../../errors.ts';

export interface Hlc {
  /** Milliseconds since the Unix epoch (the physical component). */
  readonly wallMs: number;
  /** Orders events that share a wallMs. */
  readonly logical: number;
}

export const HLC_ZERO: Hlc = { wallMs: 0, logical: 0 };

/** CockroachDB's default; regions with NTP stay well inside it. */
export const DEFAULT_MAX_OFFSET_MS = 500;

export class HlcDriftError extends DwcpError<'rejected'> {
  readonly remote: Hlc;
  readonly physicalMs: number;
  readonly maxOffsetMs: number;

  constructor(remote: Hlc, physicalMs: number, maxOffsetMs: number) {
    super('rejected', 
      `remote HLC wall time ${remote.wallMs} is ${remote.wallMs - physicalMs} ms ahead of local physical time ${physicalMs}; ` +
        `max offset is ${maxOffsetMs} ms`,
    );
    this.remote = remote;
    this.physicalMs = physicalMs;
    this.maxOffsetMs = maxOffsetMs;
  }
}

export function compareHlc(a: Hlc, b: Hlc): -1 | 0 | 1 {
  if (a.wallMs !== b.wallMs) return a.wallMs < b.wallMs ? -1 : 1;
  if (a.logical !== b.logical) return a.logical < b.logical ? -1 : 1;
  return 0;
}

export function maxHlc(a: Hlc, b: Hlc): Hlc {
  return compareHlc(a, b) >= 0 ? a : b;
}

function assertPhysical(physicalMs: number): void {
  if (!Number.isSafeInteger(physicalMs) || physicalMs < 0) {
    throw new RangeError(`physicalMs: must be a non-negative safe integer, got ${physicalMs}`);
  }
}

function bump(logical: number): number {
  if (logical >= Number.MAX_SAFE_INTEGER) throw new RangeError('HLC logical counter overflow');
  return logical + 1;
}

/** A local or send event: the timestamp to stamp it with, which is also the clock's new state. */
export function hlcSend(clock: Hlc, physicalMs: number): Hlc {
  assertPhysical(physicalMs);
  if (physicalMs > clock.wallMs) return { wallMs: physicalMs, logical: 0 };
  return { wallMs: clock.wallMs, logical: bump(clock.logical) };
}

/**
 * A receive event for a message stamped `remote`. Throws HlcDriftError when the
 * remote is more than `maxOffsetMs` ahead of `physicalMs`.
 */
export function hlcReceive(clock: Hlc, remote: Hlc, physicalMs: number, maxOffsetMs: number = DEFAULT_MAX_OFFSET_MS): Hlc {
  assertPhysical(physicalMs);
  if (!Number.isSafeInteger(maxOffsetMs) || maxOffsetMs < 0) {
    throw new RangeError(`maxOffsetMs: must be a non-negative safe integer, got ${maxOffsetMs}`);
  }
  if (remote.wallMs - physicalMs > maxOffsetMs) throw new HlcDriftError(remote, physicalMs, maxOffsetMs);
  const wallMs = Math.max(clock.wallMs, remote.wallMs, physicalMs);
  if (wallMs === clock.wallMs && wallMs === remote.wallMs) {
    return { wallMs, logical: bump(Math.max(clock.logical, remote.logical)) };
  }
  if (wallMs === clock.wallMs) return { wallMs, logical: bump(clock.logical) };
  if (wallMs === remote.wallMs) return { wallMs, logical: bump(remote.logical) };
  return { wallMs, logical: 0 };
}

/** The HLC instant `ttlMs` after `ts`: the first instant at which something written at `ts` has expired. */
export function hlcAfter(ts: Hlc, ttlMs: number): Hlc {
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 0) throw new RangeError(`ttlMs: must be a non-negative safe integer, got ${ttlMs}`);
  const wallMs = ts.wallMs + ttlMs;
  if (!Number.isSafeInteger(wallMs)) throw new RangeError(`ttlMs: ${ttlMs} overflows the HLC wall time`);
  return { wallMs, logical: 0 };
}

export function encodeHlc(ts: Hlc): { wallMs: number; logical: number } {
  return { wallMs: ts.wallMs, logical: ts.logical };
}

export function decodeHlc(raw: unknown, field = 'hlc'): Hlc {
  const record = readObject(raw, field, ['wallMs', 'logical']);
  return { wallMs: readCount(record.wallMs, `${field}.wallMs`), logical: readCount(record.logical, `${field}.logical`) };
}
