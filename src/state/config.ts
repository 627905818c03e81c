/**
 * The `state:` section of the daemon's configuration: failure detection
 * (phi-accrual over sync heartbeats), anti-entropy pacing, the bounds on what
 * one peer may have in flight, quorum deadlines and TTL garbage collection.
 * Plugged into the main schema as one field, so its defaults apply when the
 * section is absent.
 *
 * Invariant: every limit has a default and a hard range, so no setting can
 * unbound a queue or make a timer spin.
 */
import { z } from 'zod';

const millis = (max: number) => z.number().int().min(1).max(max);

export const StateSchema = z.strictObject({
  /** Heartbeats on the sync channel to every connected member, this often; they feed the failure detector. */
  heartbeatIntervalMs: millis(600_000).default(1_000),
  /** A member whose phi passes this is suspected (8: one false suspicion in 10^8 heartbeats). */
  phiThreshold: z.number().min(0.5).max(100).default(8),
  /** Heartbeat intervals the detector keeps per member. */
  phiWindow: z.number().int().min(2).max(10_000).default(100),
  /** Floor of the intervals' standard deviation, so a very steady link is not suspected after a few ms of lateness. */
  phiMinStdDevMs: z.number().min(1).max(600_000).default(100),
  /** Silence tolerated on top of the mean interval before phi rises (GC pauses, a loaded machine). */
  phiAcceptablePauseMs: z.number().min(0).max(600_000).default(500),
  /** Each connected member is reconciled (digests, then what differs) at least this often. */
  antiEntropyIntervalMs: millis(3_600_000).default(2_000),
  /** Deadline of a quorum read or write that names none. */
  quorumTimeoutMs: millis(600_000).default(5_000),
  /** Entries per push or reconcile batch. */
  maxBatchEntries: z.number().int().min(1).max(65_536).default(256),
  /** Encoded bytes per batch (a single larger entry still travels, alone). */
  maxBatchBytes: z.number().int().min(1024).max(16 * 1024 * 1024).default(256 * 1024),
  /** Pushed bytes per member not yet acknowledged; past it, changes wait (coalesced per key). */
  maxInFlightBytes: z.number().int().min(4096).max(256 * 1024 * 1024).default(1024 * 1024),
  /** Bytes one reconcile round may move each way; a round that hits it is followed by another at once. */
  maxRoundBytes: z.number().int().min(4096).max(256 * 1024 * 1024).default(4 * 1024 * 1024),
  /** An expired entry is dropped this long after its expiry (HLC time), so every region has seen it expire first. */
  gcGraceMs: millis(30 * 24 * 3_600_000).default(60_000),
  /** A remote HLC further ahead of our clock than this does not move our clock (its state still merges). */
  maxClockOffsetMs: millis(3_600_000).default(500),
});

export type StateSettings = z.infer<typeof StateSchema>;

export const DEFAULT_STATE_SETTINGS: StateSettings = StateSchema.parse({});
