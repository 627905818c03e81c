/**
 * From this region's inventory to one cost observation (accrual.ts): which
 * VMs are billed, what each runs as (spot, reserved, on-demand; on-premises
 * by allocation) and at what rate, its labels, and the on-premises
 * capacity. Pure: the catalog, the labels and the measured use are given as
 * functions by the driver (src/cost/cost-tracker.ts).
 *
 * Rules:
 * - Billed: running or stopping (instance-hours, as the clouds bill them).
 * - Spot instances are priced at the catalog's spot rate (live where the
 *   provider publishes it). Reservations (`cost.reservations`) cover, per
 *   (provider, type), the first `count` billed on-demand instances by launch
 *   time then id, at the catalog's reserved rate. Everything else is
 *   on-demand. A type the catalog does not price has no price (accrues
 *   nothing; the driver warns once).
 * - Labels: the fleet VM's spec labels (by its `dwcp-vm` tag) when it is
 *   one, else the instance's tags without the `dwcp-` and `managed-by` ones.
 * - On-premises use: the latest utilisation sample's CPU and memory
 *   fractions × the VM's size.
 */
import type { CloudProviderConfig } from '../cloud/config.ts';
import type { Instance } from '../cloud/provider.ts';
import type { PricingModel } from '../cloud/pricing/catalog.ts';
import type { CostObservation, CostSubject, OnPremCapacity } from './accrual.ts';
import type { CostSettings } from './config.ts';

export interface SubjectInputs {
  readonly atMs: number;
  readonly providers: readonly CloudProviderConfig[];
  readonly instances: readonly { readonly provider: string; readonly instance: Instance }[];
  readonly reservations: CostSettings['reservations'];
  /** Hourly USD of (kind, region, type) under a model, or null when the catalog has none. */
  quote(kind: string, region: string, type: string, model: PricingModel): number | null;
  /** A fleet VM's spec labels by name; undefined when the name is no fleet VM. */
  fleetLabels(vm: string): Readonly<Record<string, string>> | undefined;
  /** Latest measured use (fractions), or null. */
  usage(provider: string, id: string): { cpu: number | null; memory: number | null } | null;
  /** An on-premises provider's capacity (config, else the host's). */
  capacity(entry: CloudProviderConfig): { vcpus: number; memoryGiB: number };
}

const BILLED = new Set(['running', 'stopping']);

function tagLabels(tags: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(tags)) if (!k.startsWith('dwcp-') && k !== 'managed-by' && k !== 'Name') out[k] = v;
  return out;
}

/** Keys (provider + id) of the instances reservations cover. */
export function reservedKeys(instances: SubjectInputs['instances'], reservations: SubjectInputs['reservations']): Set<string> {
  const covered = new Set<string>();
  for (const r of reservations) {
    const candidates = instances
      .filter((e) => e.provider === r.provider && e.instance.type === r.type && !e.instance.spot && BILLED.has(e.instance.state))
      .sort((a, b) => (a.instance.launchTime?.getTime() ?? 0) - (b.instance.launchTime?.getTime() ?? 0) || (a.instance.id < b.instance.id ? -1 : 1));
    for (const e of candidates.slice(0, r.count)) covered.add(`${e.provider}/${e.instance.id}`);
  }
  return covered;
}

export function costObservation(inputs: SubjectInputs): CostObservation {
  const entries = new Map(inputs.providers.map((p) => [p.name, p]));
  const reserved = reservedKeys(inputs.instances, inputs.reservations);
  const subjects: CostSubject[] = [];
  for (const { provider, instance: i } of inputs.instances) {
    const entry = entries.get(provider);
    if (entry === undefined || i.state === 'terminated') continue;
    const key = `${provider}/${i.id}`;
    const fleetVm = i.tags['dwcp-vm'];
    const labels = (fleetVm === undefined ? undefined : inputs.fleetLabels(fleetVm)) ?? tagLabels(i.tags);
    let price: CostSubject['price'] = null;
    if (entry.kind === 'local' || entry.kind === 'qemu') {
      const used = inputs.usage(provider, i.id);
      const vcpus = i.vcpus ?? 0;
      const memoryGiB = (i.memoryMiB ?? 0) / 1024;
      price = {
        model: 'on-prem',
        vcpuHourUsd: entry.pricePerVcpuHour,
        memoryGiBHourUsd: entry.pricePerGiBHour,
        vcpus,
        memoryGiB,
        usedVcpus: used?.cpu == null ? null : used.cpu * vcpus,
        usedMemoryGiB: used?.memory == null ? null : used.memory * memoryGiB,
      };
    } else {
      let model: PricingModel = i.spot ? 'spot' : reserved.has(key) ? 'reserved' : 'on-demand';
      let hourly = inputs.quote(entry.kind, i.region, i.type, model);
      // A type with no reserved price in the catalog is billed on demand even when a reservation names it.
      if (hourly === null && model === 'reserved') hourly = inputs.quote(entry.kind, i.region, i.type, (model = 'on-demand'));
      if (hourly !== null) price = { model, hourlyUsd: hourly };
    }
    subjects.push({ key, vm: fleetVm ?? i.name, provider, kind: entry.kind, location: i.region, type: i.type, labels, billed: BILLED.has(i.state), price });
  }
  const onPrem: OnPremCapacity[] = inputs.providers.flatMap((entry) => {
    if (entry.kind !== 'local' && entry.kind !== 'qemu') return [];
    const c = inputs.capacity(entry);
    return [{ provider: entry.name, kind: entry.kind, location: entry.region, vcpus: c.vcpus, memoryGiB: c.memoryGiB, vcpuHourUsd: entry.pricePerVcpuHour, memoryGiBHourUsd: entry.pricePerGiBHour }];
  });
  return { atMs: inputs.atMs, subjects, onPrem };
}
