/**
 * The `fleet:` section's observed-state settings: how often each daemon
 * republishes its region record (the heartbeat that makes a report's age
 * meaningful) and its changed VM records, and how old a region's report may
 * be before its VMs read as `unknown`.
 *
 * Invariant: every setting has a default and a hard range; staleAfterMs is
 * refused below twice the publish interval (one late heartbeat must not
 * blank a healthy region), and the refusal names the field.
 */
import { z } from 'zod';

export const FleetObservedSchema = z
  .strictObject({
    /** The region record is republished this often (and changed VM records at the latest then). */
    publishIntervalMs: z.number().int().min(100).max(3_600_000).default(5_000),
    /** A region whose last report is older than this shows its VMs as `unknown`. Default: 3× publishIntervalMs. */
    staleAfterMs: z.number().int().min(200).max(86_400_000).optional(),
  })
  .superRefine((f, ctx) => {
    if (f.staleAfterMs !== undefined && f.staleAfterMs < 2 * f.publishIntervalMs) {
      ctx.addIssue({ code: 'custom', path: ['staleAfterMs'], input: f.staleAfterMs, params: { sentence: true }, message: `must be at least twice fleet.publishIntervalMs (${2 * f.publishIntervalMs})` });
    }
  })
  .transform((f) => ({ publishIntervalMs: f.publishIntervalMs, staleAfterMs: f.staleAfterMs ?? 3 * f.publishIntervalMs }));

export type FleetObservedSettings = z.infer<typeof FleetObservedSchema>;
