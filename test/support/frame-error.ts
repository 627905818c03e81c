/**
 * Assertion shared by the framing and schema tests: a call must fail with a
 * FrameError of one reason, which is returned for checks on its message.
 */
import { expect } from 'vitest';
import { FrameError } from '../../src/net/framing.ts';
import type { FrameRejectReason } from '../../src/metrics/metrics.ts';

/** Expects `fn` to throw a FrameError with `reason` and returns it. */
export function frameErrorOf(fn: () => unknown, reason: FrameRejectReason): FrameError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).reason).toBe(reason);
    return err as FrameError;
  }
  throw new Error(`expected a ${reason} FrameError`);
}
