/**
 * Capped exponential back-off for reconnecting to members. Pure: the caller
 * supplies the random source, so the simulator and tests replay exactly.
 *
 * The delay for attempt n (0-based) is min(max, initial * 2^n), then "equal
 * jitter": half fixed, half random, so peers that lost each other at the same
 * moment do not redial in lockstep, yet never retry sooner than half the step.
 */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
}

export function backoffDelay(attempt: number, policy: BackoffPolicy, random: () => number): number {
  const step = Math.min(policy.maxMs, policy.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(step / 2 + (step / 2) * random());
}
