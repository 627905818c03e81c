/**
 * The qemu provider's real utilisation (VmUtilisation: cumulative CPU
 * seconds and disk bytes of each QEMU process, its RSS, the guest's own
 * memory figures) turned into the provider-neutral UsageSample
 * (src/cloud/utilisation.ts): CPU is the rate of CPU seconds between two
 * measurements of the same guest over its vCPUs; memory is what the guest
 * reports in use through the balloon device, else QEMU's RSS over the
 * guest's memory (an over-estimate: it includes QEMU itself).
 *
 * Invariants: the first measurement of a guest (or one after its QEMU
 * restarted: CPU seconds went down) gives no sample, only a baseline, so a
 * sample never spans two QEMU processes; the baselines are bounded by the
 * guests measured last time (a vanished guest's baseline is dropped).
 * Pure apart from the map it owns.
 */
import { fraction, type UsageSample } from '../utilisation.ts';
import type { VmUtilisation } from './metrics.ts';

export class QemuUsageRates {
  #previous = new Map<string, VmUtilisation>();

  /** Samples for the guests measured twice; `memoryMiB` gives each guest's configured memory (for the RSS fallback). */
  next(samples: readonly VmUtilisation[], memoryMiB: (id: string) => number | null): UsageSample[] {
    const out: UsageSample[] = [];
    const next = new Map<string, VmUtilisation>();
    for (const s of samples) {
      next.set(s.id, s);
      const before = this.#previous.get(s.id);
      if (before === undefined) continue;
      const periodMs = s.sampledAt - before.sampledAt;
      const cpuSeconds = s.cpuSeconds - before.cpuSeconds;
      if (periodMs <= 0 || cpuSeconds < 0) continue;
      const guest = s.guestMemory;
      const configured = memoryMiB(s.id);
      const memory =
        guest !== null && guest.totalBytes > 0
          ? fraction((guest.totalBytes - guest.availableBytes) / guest.totalBytes)
          : configured !== null && configured > 0
            ? fraction(s.memoryBytes / (configured * 2 ** 20))
            : null;
      const network = s.network !== null && before.network !== null ? { in: s.network.receivedBytes - before.network.receivedBytes, out: s.network.sentBytes - before.network.sentBytes } : null;
      out.push({
        instanceId: s.id,
        atMs: s.sampledAt,
        periodMs,
        cpu: fraction(cpuSeconds / ((periodMs / 1000) * Math.max(1, s.vcpus))),
        memory,
        networkInBytes: network === null || network.in < 0 ? null : network.in,
        networkOutBytes: network === null || network.out < 0 ? null : network.out,
      });
    }
    this.#previous = next;
    return out;
  }
}
