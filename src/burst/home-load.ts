/**
 * A home region's load as the burst core reads it: what its running VMs use
 * (the newest sample each provider reported for each, through the same
 * UtilisationSource the cost collector reads) over what the region declared
 * it holds (the on-premises providers' capacity in the log).
 *
 *   cpu    = Σ (VM CPU fraction × its vCPUs)    ÷ Σ declared vCPUs
 *   memory = Σ (VM memory fraction × its MiB)   ÷ Σ declared memory
 *
 * So a full datacenter of busy VMs reads near 1, and a half-empty one reads
 * at most 0.5 however busy its VMs are: bursting is for when home has no
 * room left to grow into. A VM without a sample (too new, or a source that
 * cannot tell) adds nothing; no sample at all, or nothing declared, is no
 * reading (null), which never triggers anything.
 *
 * Pure: samples and capacity in, a RegionSample out.
 */
import type { UsageSample } from '../cloud/utilisation.ts';
import type { FleetRegion } from '../fleet/state-machine.ts';
import type { RegionSample } from './windows.ts';

const MIB = 1024 ** 2;

export interface MeasuredVm {
  readonly vcpus: number | null;
  readonly memoryMiB: number | null;
  /** The newest sample of the VM, or null. */
  readonly sample: Pick<UsageSample, 'atMs' | 'cpu' | 'memory'> | null;
}

/** The declared on-premises capacity of a region (providers that declare capacity). */
export function homeCapacity(region: FleetRegion | undefined): { vcpus: number; memoryBytes: number } {
  let vcpus = 0;
  let memoryBytes = 0;
  for (const p of region?.providers ?? []) {
    if (p.kind !== 'local' && p.kind !== 'qemu') continue;
    vcpus += p.limits.vcpus ?? 0;
    memoryBytes += p.limits.memoryBytes ?? 0;
  }
  return { vcpus, memoryBytes };
}

export function homeLoad(vms: readonly MeasuredVm[], capacity: { vcpus: number; memoryBytes: number }): RegionSample | null {
  let cpuUsed = 0;
  let memUsed = 0;
  let cpuKnown = false;
  let memKnown = false;
  let atMs = Number.POSITIVE_INFINITY;
  for (const vm of vms) {
    const s = vm.sample;
    if (s === null) continue;
    atMs = Math.min(atMs, s.atMs);
    if (s.cpu !== null && vm.vcpus !== null) {
      cpuUsed += s.cpu * vm.vcpus;
      cpuKnown = true;
    }
    if (s.memory !== null && vm.memoryMiB !== null) {
      memUsed += s.memory * vm.memoryMiB * MIB;
      memKnown = true;
    }
  }
  if (!Number.isFinite(atMs)) return null;
  return {
    atMs,
    cpu: cpuKnown && capacity.vcpus > 0 ? Math.min(1, cpuUsed / capacity.vcpus) : null,
    memory: memKnown && capacity.memoryBytes > 0 ? Math.min(1, memUsed / capacity.memoryBytes) : null,
  };
}
