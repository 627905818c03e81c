/**
 * What `dwcpctl burst status` shows of a group, as the wire carries it (JSON
 * inside the Burst admin service's reply, validated by the client against
 * this schema): its home, state, replicas by role, the home's trigger windows
 * and the last decision with its reason. Windows and decisions are known only
 * to the node that drives the group (its home region's); elsewhere they are
 * null and `drivenBy` says where to ask.
 */
import { z } from 'zod';

const ms = z.number().nullable();

export const BurstGroupStatusSchema = z.object({
  name: z.string(),
  home: z.string(),
  min: z.number().int(),
  max: z.number().int(),
  /** The node that drives it (its home region's). */
  drivenBy: z.string(),
  drivenHere: z.boolean(),
  /** `steady` (no burst replicas), `burst` (some), `queued` (home replicas waiting for home capacity). */
  state: z.enum(['steady', 'burst', 'queued']),
  replicas: z.object({ home: z.number().int(), queued: z.number().int(), burst: z.number().int(), burstNames: z.array(z.string()) }),
  windows: z
    .object({
      sample: z.object({ atMs: z.number(), cpu: z.number().nullable(), memory: z.number().nullable() }).nullable(),
      cpuHighSince: ms,
      memoryHighSince: ms,
      quietSince: ms,
      queue: z.number().int(),
    })
    .nullable(),
  last: z
    .object({
      kind: z.enum(['scale-out', 'scale-in']),
      atMs: z.number(),
      reason: z.string(),
      vms: z.array(z.string()),
      /** What carrying it out gave: `ok`, or the failure. */
      outcome: z.string(),
    })
    .nullable(),
  /** Why the group holds now (or what it just did). */
  holding: z.string().nullable(),
});

export type BurstGroupStatus = z.infer<typeof BurstGroupStatusSchema>;
export const BurstStatusListSchema = z.array(BurstGroupStatusSchema);
