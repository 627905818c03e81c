/**
 * The burst core: per home region, its trigger windows (windows.ts); per
 * burst group, whether to add burst replicas in the clouds, remove the
 * newest, or hold. Time, state, samples in; decisions out. The driver
 * (driver.ts) carries decisions out through the scheduler and the log.
 *
 * Rules, for a group at `now` (its home's windows after this tick's sample):
 * - scale-out by `step` (at most up to max − min burst replicas) when a
 *   trigger holds: CPU above its threshold for cpuForMs, memory for
 *   memoryForMs (each window counted from the later of its start and the
 *   group's last scale-out, so new replicas get one window to take load
 *   before the next step), or the queue above queueAbove; and the last
 *   scale-in is at least cooldownMs ago.
 * - scale-in of the `step` newest burst replicas when the home has been
 *   quiet (below both scale-in thresholds, nothing queued) for cooldownMs,
 *   counted from the later of the quiet run's start and the group's last
 *   decision either way.
 *
 * Invariants (checked by the simulator, test/sim/burst-sim.test.ts):
 * - zero oscillation: a scale-out and a scale-in of one group are never
 *   less than cooldownMs apart, in either order;
 * - latency: when a trigger has held for its window (and the cooldown since
 *   the last scale-in has passed, and there is room), the decision is made
 *   on that very tick: within one evaluation tick of the window's end;
 * - the burst replica count stays within [0, max − min]; scale-in removes
 *   the newest first.
 * Where burst replicas go is placement's choice (operation `burst`:
 * policy-checked, hard budgets respected), not this module's.
 *
 * Pure: no clock, no I/O.
 */
import type { BurstThresholds } from './config.ts';
import { NO_WINDOWS, advanceWindows, type RegionSample, type TriggerWindows } from './windows.ts';

/** One group as the core needs it this tick. */
export interface GroupInput {
  readonly name: string;
  readonly home: string;
  readonly min: number;
  readonly max: number;
  /** Live burst replicas' names, oldest first. */
  readonly burst: readonly string[];
  /** Home replicas waiting for home capacity. */
  readonly queued: number;
}

export type BurstTrigger = 'cpu' | 'memory' | 'queue';

export type BurstDecision =
  | { readonly kind: 'scale-out'; readonly group: string; readonly atMs: number; readonly count: number; readonly trigger: BurstTrigger; readonly reason: string }
  | { readonly kind: 'scale-in'; readonly group: string; readonly atMs: number; readonly vms: readonly string[]; readonly reason: string };

export interface GroupMemory {
  readonly lastOutMs: number | null;
  readonly lastInMs: number | null;
  /** The last decision, or why the group holds (for `burst status`). */
  readonly last: BurstDecision | null;
  readonly holding: string;
}

export interface BurstCoreState {
  readonly regions: ReadonlyMap<string, TriggerWindows>;
  readonly groups: ReadonlyMap<string, GroupMemory>;
}

export const EMPTY_BURST_STATE: BurstCoreState = { regions: new Map(), groups: new Map() };

export interface BurstTick {
  readonly nowMs: number;
  /** The newest sample of each home region (absent or null: none). */
  readonly samples: ReadonlyMap<string, RegionSample | null>;
  readonly groups: readonly GroupInput[];
}

const NO_MEMORY: GroupMemory = { lastOutMs: null, lastInMs: null, last: null, holding: 'no evaluation yet' };

function pct(x: number): string {
  return `${Math.round(x * 1000) / 10} %`;
}

/** The windows a trigger has held for, counted from the later of its start and `from`. */
function heldFor(since: number | null, from: number | null, nowMs: number): number | null {
  if (since === null) return null;
  return nowMs - Math.max(since, from ?? Number.NEGATIVE_INFINITY);
}

/** The trigger that fires for a group, with its sentence, or null. */
function firing(w: TriggerWindows, memory: GroupMemory, nowMs: number, t: BurstThresholds): { trigger: BurstTrigger; reason: string } | null {
  const cpuHeld = heldFor(w.cpuHighSince, memory.lastOutMs, nowMs);
  if (cpuHeld !== null && cpuHeld >= t.scaleOut.cpuForMs) {
    return { trigger: 'cpu', reason: `home CPU ${pct(w.last?.cpu ?? 0)} above ${pct(t.scaleOut.cpuAbove)} for ${Math.round(cpuHeld / 1000)} s (window ${t.scaleOut.cpuForMs / 1000} s)` };
  }
  const memHeld = heldFor(w.memoryHighSince, memory.lastOutMs, nowMs);
  if (memHeld !== null && memHeld >= t.scaleOut.memoryForMs) {
    return { trigger: 'memory', reason: `home memory ${pct(w.last?.memory ?? 0)} above ${pct(t.scaleOut.memoryAbove)} for ${Math.round(memHeld / 1000)} s (window ${t.scaleOut.memoryForMs / 1000} s)` };
  }
  if (w.queue > t.scaleOut.queueAbove) return { trigger: 'queue', reason: `${w.queue} replicas queued for home capacity, above ${t.scaleOut.queueAbove}` };
  return null;
}

function decideGroup(g: GroupInput, w: TriggerWindows, memory: GroupMemory, nowMs: number, t: BurstThresholds): GroupMemory {
  const room = Math.max(0, g.max - g.min - g.burst.length);
  const fire = firing(w, memory, nowMs, t);
  if (fire !== null) {
    const sinceIn = memory.lastInMs === null ? Number.POSITIVE_INFINITY : nowMs - memory.lastInMs;
    if (room === 0) return { ...memory, holding: `${fire.reason}, but the group is at max (${g.max} replicas)` };
    if (sinceIn < t.cooldownMs) return { ...memory, holding: `${fire.reason}, but the last scale-in was ${Math.round(sinceIn / 1000)} s ago (cooldown ${t.cooldownMs / 1000} s)` };
    const decision: BurstDecision = { kind: 'scale-out', group: g.name, atMs: nowMs, count: Math.min(t.step, room), trigger: fire.trigger, reason: fire.reason };
    return { lastOutMs: nowMs, lastInMs: memory.lastInMs, last: decision, holding: 'scaled out' };
  }
  const rising = heldFor(w.cpuHighSince, memory.lastOutMs, nowMs) ?? heldFor(w.memoryHighSince, memory.lastOutMs, nowMs);
  if (rising !== null) return { ...memory, holding: `home above a scale-out threshold for ${Math.round(rising / 1000)} s, not yet a full window (counted from its start or the last scale-out)` };
  if (g.burst.length === 0) return { ...memory, holding: 'no trigger holds; no burst replicas' };
  const lastDecision = Math.max(memory.lastOutMs ?? Number.NEGATIVE_INFINITY, memory.lastInMs ?? Number.NEGATIVE_INFINITY);
  const quiet = heldFor(w.quietSince, Number.isFinite(lastDecision) ? lastDecision : null, nowMs);
  if (quiet === null) return { ...memory, holding: 'no trigger holds; home is not quiet (below the scale-in thresholds with nothing queued)' };
  if (quiet < t.cooldownMs) return { ...memory, holding: `home quiet for ${Math.round(quiet / 1000)} s of the ${t.cooldownMs / 1000} s cooldown` };
  const vms = g.burst.slice(-t.step).reverse();
  const reason = `home quiet (CPU ${pct(w.last?.cpu ?? 0)} below ${pct(t.scaleIn.cpuBelow)}, memory ${pct(w.last?.memory ?? 0)} below ${pct(t.scaleIn.memoryBelow)}, nothing queued) for ${Math.round(quiet / 1000)} s`;
  const decision: BurstDecision = { kind: 'scale-in', group: g.name, atMs: nowMs, vms, reason };
  return { lastOutMs: memory.lastOutMs, lastInMs: nowMs, last: decision, holding: 'scaled in' };
}

/** One evaluation tick: every home region's windows advance with its sample, then every group is decided. */
export function evaluateBurst(state: BurstCoreState, tick: BurstTick, t: BurstThresholds): { state: BurstCoreState; decisions: BurstDecision[] } {
  const queues = new Map<string, number>();
  for (const g of tick.groups) queues.set(g.home, (queues.get(g.home) ?? 0) + g.queued);
  const regions = new Map<string, TriggerWindows>();
  for (const [home, queue] of queues) regions.set(home, advanceWindows(state.regions.get(home) ?? NO_WINDOWS, tick.samples.get(home) ?? null, queue, tick.nowMs, t));
  const groups = new Map<string, GroupMemory>();
  const decisions: BurstDecision[] = [];
  for (const g of tick.groups) {
    const before = state.groups.get(g.name) ?? NO_MEMORY;
    const after = decideGroup(g, regions.get(g.home) ?? NO_WINDOWS, before, tick.nowMs, t);
    if (after.last !== before.last && after.last !== null) decisions.push(after.last);
    groups.set(g.name, after);
  }
  return { state: { regions, groups }, decisions };
}
