/**
 * The one narrow interface through which every provider reports what its VMs
 * use: CPU as a fraction of the VM's vCPUs, memory as a fraction of its
 * memory, network bytes in and out. Sources: qemu (real, from /proc and QMP:
 * qemu/qemu-utilisation.ts), local (a simulated load per VM, deterministic
 * from a seed: local/simulated-load.ts), AWS (CloudWatch GetMetricData:
 * aws/cloudwatch.ts), GCP (Cloud Monitoring timeSeries.list:
 * gcp/monitoring.ts).
 *
 * Invariants:
 * - A sample covers [atMs − periodMs, atMs) and says what the VM used on
 *   average over it; a value the source cannot tell is null, never 0 (the
 *   clouds publish no memory use without an agent, qemu no network without a
 *   NIC).
 * - cpu and memory are in [0, 1] (sources clamp what they are given: a
 *   cloud's 100.3 % is 1); bytes are ≥ 0.
 * - A source answers for the instances it is asked about only, and may
 *   answer nothing for some (a VM too new to have a datapoint).
 * - Failures are ProviderErrors naming the provider and the call, like every
 *   other provider call (provider.ts).
 */
import type { CallOptions, CloudProvider } from './provider.ts';

export interface UsageSample {
  /** The provider's instance id (provider.ts Instance.id). */
  readonly instanceId: string;
  /** End of the period the sample covers, epoch ms. */
  readonly atMs: number;
  readonly periodMs: number;
  /** Average CPU use over the period as a fraction of the VM's vCPUs, 0..1; null when unknown. */
  readonly cpu: number | null;
  /** Average memory in use as a fraction of the VM's memory, 0..1; null when unknown. */
  readonly memory: number | null;
  /** Bytes received and sent over the period; null when unknown. */
  readonly networkInBytes: number | null;
  readonly networkOutBytes: number | null;
}

/** The instances a query asks about: enough to address each in the provider's metrics API. */
export interface UsageSubject {
  readonly id: string;
  readonly name: string;
  readonly zone: string;
  readonly vcpus: number | null;
  readonly memoryMiB: number | null;
}

export interface UsageQuery {
  readonly instances: readonly UsageSubject[];
  /** The window asked for, epoch ms: samples ending in (sinceMs, untilMs]. */
  readonly sinceMs: number;
  readonly untilMs: number;
}

export interface UtilisationSource {
  usage(query: UsageQuery, options?: CallOptions): Promise<UsageSample[]>;
}

/** Whether a provider reports utilisation (all four kinds do; a test double may not). */
export function hasUtilisation(provider: CloudProvider): provider is CloudProvider & UtilisationSource {
  return typeof (provider as Partial<UtilisationSource>).usage === 'function';
}

/** A fraction clamped to [0, 1]; null for what is not a finite number. */
export function fraction(value: number | null | undefined): number | null {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  return Math.min(1, Math.max(0, value));
}

/** Bytes: null for what is not a finite number, never negative. */
export function byteCount(value: number | null | undefined): number | null {
  if (value === null || value === undefined || !Number.isFinite(value)) return null;
  return Math.max(0, value);
}
