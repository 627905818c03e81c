/**
 * The `burst:` config section: when a home region bursts into the clouds
 * and when it comes back (issue 18), how often the driver evaluates, and
 * burst groups proposed to the federation log at start.
 *
 * Defaults are the issue's: CPU above 90 % for 5 minutes, memory above 85 %
 * for 5 minutes, more than 100 replicas queued for home capacity; back when
 * CPU is below 50 % and memory below 60 % with nothing queued for the
 * cooldown (10 minutes).
 *
 * Invariants: every setting has a default and a hard range; a lower
 * threshold must sit below its upper one (else a region could be "high" and
 * "low" at once and flap); refusals name the field (`burst.scaleIn.cpuBelow`).
 */
import { z } from 'zod';
import { BurstGroupSpecSchema, MAX_BURST_GROUPS } from './group.ts';

const ratio = z.number().min(0).max(1);
const windowMs = z.number().int().min(0).max(86_400_000);

export const BurstSettingsSchema = z
  .strictObject({
    /** The driver evaluates every group this often (its tick). */
    evaluateIntervalMs: z.number().int().min(100).max(3_600_000).default(30_000),
    /** A region sample older than this is no sample: the windows reset rather than decide on old data. */
    sampleMaxAgeMs: z.number().int().min(1_000).max(3_600_000).default(600_000),
    scaleOut: z
      .strictObject({
        /** Home CPU (used vCPUs ÷ declared vCPUs) above this for cpuForMs triggers a burst. */
        cpuAbove: ratio.default(0.9),
        cpuForMs: windowMs.default(300_000),
        /** Home memory (used ÷ declared) above this for memoryForMs triggers a burst. */
        memoryAbove: ratio.default(0.85),
        memoryForMs: windowMs.default(300_000),
        /** More burst-group replicas than this waiting for home capacity triggers a burst at once. */
        queueAbove: z.number().int().min(0).max(1_000_000).default(100),
      })
      .default({ cpuAbove: 0.9, cpuForMs: 300_000, memoryAbove: 0.85, memoryForMs: 300_000, queueAbove: 100 }),
    scaleIn: z
      .strictObject({
        /** Home CPU and memory below these, nothing queued, for cooldownMs: one step back. */
        cpuBelow: ratio.default(0.5),
        memoryBelow: ratio.default(0.6),
      })
      .default({ cpuBelow: 0.5, memoryBelow: 0.6 }),
    /** Quiet time before a scale-in, and the least time between a scale-out and a scale-in (either order). */
    cooldownMs: windowMs.default(600_000),
    /** Burst replicas added or removed per decision. */
    step: z.number().int().min(1).max(1_000).default(1),
    /** How long one burst replica's placement may take (the scheduler's request timeout). */
    placeTimeoutMs: z.number().int().min(1_000).max(600_000).default(60_000),
    /** Burst groups proposed to the log at start (as `dwcpctl burst set` does). */
    groups: z.array(BurstGroupSpecSchema).max(MAX_BURST_GROUPS).default([]),
  })
  .superRefine((s, ctx) => {
    if (s.scaleIn.cpuBelow >= s.scaleOut.cpuAbove) {
      ctx.addIssue({ code: 'custom', path: ['scaleIn', 'cpuBelow'], input: s.scaleIn.cpuBelow, params: { sentence: true }, message: `must be below scaleOut.cpuAbove (${s.scaleOut.cpuAbove}), or a region could be high and low at once` });
    }
    if (s.scaleIn.memoryBelow >= s.scaleOut.memoryAbove) {
      ctx.addIssue({ code: 'custom', path: ['scaleIn', 'memoryBelow'], input: s.scaleIn.memoryBelow, params: { sentence: true }, message: `must be below scaleOut.memoryAbove (${s.scaleOut.memoryAbove}), or a region could be high and low at once` });
    }
    const names = new Map<string, number>();
    s.groups.forEach((g, i) => {
      const clash = names.get(g.name);
      if (clash !== undefined) ctx.addIssue({ code: 'custom', path: ['groups', i, 'name'], input: g.name, params: { sentence: true }, message: `is already the name of groups[${clash}]` });
      names.set(g.name, i);
    });
  });

export type BurstSettings = z.infer<typeof BurstSettingsSchema>;
export type BurstThresholds = Pick<BurstSettings, 'scaleOut' | 'scaleIn' | 'cooldownMs' | 'step' | 'sampleMaxAgeMs'>;
export const DEFAULT_BURST_SETTINGS: BurstSettings = BurstSettingsSchema.parse({});
