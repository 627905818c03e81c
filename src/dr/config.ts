/**
 * The `dr:` config section: how often regions are checked, after how many
 * failed checks a region is failed, the self-fencing deadline and the DR
 * copy's hold, and the failback window. Every key has a default and a
 * range; a refusal names the field. Invariants: fenceHoldMs exceeds
 * fenceAfterMs (the hold must outlast the lost region's own fencing), and
 * leaseMs plus its watchdog's poll stays below fenceHoldMs (the hold must
 * outlast a dead daemon's guests too), which is what keeps two copies of a
 * protected VM from running at once; leaseMs is at least two checks (it
 * is renewed once per check, and a barrier may take a whole check).
 */
import { z } from 'zod';
import { watchdogPollMs } from '../cloud/qemu/guest-lease.ts';
import { DEFAULT_DR_OPTIONS } from './controller.ts';

export const DEFAULT_FENCE_AFTER_MS = 10_000;
export const DEFAULT_FENCE_HOLD_MS = 20_000;

export const DrSettingsSchema = z
  .strictObject({
    /** Each region is checked this often (the member failure detector's view of its daemon). */
    checkIntervalMs: z.number().int().min(100).max(600_000).default(DEFAULT_DR_OPTIONS.checkIntervalMs),
    /** Consecutive failed checks after which a region is failed and its protected VMs fail over. */
    failAfterChecks: z.number().int().min(2).max(100).default(DEFAULT_DR_OPTIONS.failAfterChecks),
    /** A region cut off from the federation log this long stops its protected VMs on its own. */
    fenceAfterMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_FENCE_AFTER_MS),
    /** A failed-over copy starts only this long after its region first saw the failover: above fenceAfterMs plus a reconcile pass and a stop. */
    fenceHoldMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_FENCE_HOLD_MS),
    /** How long a failed-over VM's home region must pass every check before it fails back (failback auto). */
    stabilisationMs: z.number().int().min(100).max(86_400_000).default(DEFAULT_DR_OPTIONS.stabilisationMs),
    /** A lost or refused DR proposal is made again after this long. */
    retryMs: z.number().int().min(100).max(3_600_000).default(DEFAULT_DR_OPTIONS.retryMs),
    /**
     * A protected qemu guest's lease (src/cloud/qemu/guest-lease.ts): its
     * watchdog kills it this long after its daemon last proved its view of
     * the log current. Default: three quarters of fenceHoldMs.
     */
    leaseMs: z.number().int().min(100).max(3_600_000).optional(),
    /**
     * How often, between checks, this daemon proves its view of the log
     * current (a barrier read). Self-fencing counts from the last proof, so
     * proving more often than checking keeps a short pause (a blip, a GC, a
     * slow disk) from looking like a partition. It changes no safety bound:
     * a proof asked before a failover committed still fences by then + fenceAfterMs.
     * Default: a tenth of fenceAfterMs, at least 250 ms, at most checkIntervalMs.
     */
    proveIntervalMs: z.number().int().min(100).max(600_000).optional(),
  })
  .transform((d) => ({
    ...d,
    leaseMs: d.leaseMs ?? Math.floor((d.fenceHoldMs * 3) / 4),
    proveIntervalMs: d.proveIntervalMs ?? Math.min(d.checkIntervalMs, Math.max(250, Math.floor(d.fenceAfterMs / 10))),
  }))
  .superRefine((d, ctx) => {
    if (d.proveIntervalMs > d.checkIntervalMs) ctx.addIssue({ code: 'custom', path: ['proveIntervalMs'], input: d.proveIntervalMs, params: { sentence: true }, message: `must not exceed dr.checkIntervalMs (${d.checkIntervalMs}): every check proves the log current anyway` });
    const poll = watchdogPollMs(d.leaseMs);
    if (d.leaseMs + poll >= d.fenceHoldMs) ctx.addIssue({ code: 'custom', path: ['leaseMs'], input: d.leaseMs, params: { sentence: true }, message: `plus its watchdog's poll (${poll} ms) must be below dr.fenceHoldMs (${d.fenceHoldMs}), or a dead daemon's guest may still run when its DR copy starts` });
    if (d.leaseMs < 2 * d.checkIntervalMs) ctx.addIssue({ code: 'custom', path: ['leaseMs'], input: d.leaseMs, params: { sentence: true }, message: `must be at least 2 × dr.checkIntervalMs (${2 * d.checkIntervalMs}): it is renewed once per check, and one slow check must not kill a guest` });
    if (d.fenceHoldMs <= d.fenceAfterMs) ctx.addIssue({ code: 'custom', path: ['fenceHoldMs'], input: d.fenceHoldMs, params: { sentence: true }, message: `must be above dr.fenceAfterMs (${d.fenceAfterMs}) plus a reconcile pass and a stop, or a lost region's copy may still run when the DR copy starts` });
  });

export type DrSettings = z.infer<typeof DrSettingsSchema>;
