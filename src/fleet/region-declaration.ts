/**
 * What this region declares to the fleet log (register-region): its
 * providers with their capacity (on-premises) or quota (clouds), their
 * prices, the region's labels, jurisdiction, compliance and trust (what
 * policies see of the region, src/policy/facts.ts), and how many migrations
 * may touch it at once. A pure
 * function of the configuration and the pricing catalog, so every restart
 * declares the same thing and a changed config re-declares.
 *
 * The fleet region is the node's name (as in the observed records): it is
 * unique in the federation and names the daemon that manages the region.
 *
 * Prices: on-premises providers are priced from their configured $/vCPU-h
 * and $/GiB-h. A cloud provider is priced per vCPU-hour at the cheapest
 * on-demand rate per vCPU the catalog lists for its region (memory then
 * costs nothing extra): a floor that ranks clouds against each other and
 * against on-premises, not a bill. A cloud region the catalog does not price
 * is declared at a high rate, so placement uses it last.
 */
import { hostCapacity, isOnPrem, type CloudProviderConfig } from '../cloud/config.ts';
import type { PricingCatalog } from '../cloud/pricing/catalog.ts';
import { FLEET_MAX_DECLARED_INSTANCES, FLEET_MAX_DECLARED_VCPUS, type FleetCommandInput, type FleetProviderKind } from './commands.ts';

/** What a cloud region without catalog prices is declared at, per vCPU-hour: dear enough to come last. */
export const UNPRICED_VCPU_HOUR_USD = 1;
const GIB = 1024 ** 3;

export interface RegionFactsConfig {
  readonly node: {
    readonly name: string;
    readonly labels?: Readonly<Record<string, string>>;
    readonly jurisdiction?: string | undefined;
    readonly compliance?: readonly string[];
    /** Resolved by the config loader (node.trust, or from the node's provider). */
    readonly trust?: 'trusted' | 'untrusted';
  };
  readonly providers: readonly CloudProviderConfig[];
  /** fleet.migration.maxConcurrentPerRegion: migrations that may touch this region at once. */
  readonly maxMigrations?: number;
}

type RegisterRegionInput = Extract<FleetCommandInput, { kind: 'register-region' }>;
type ProviderInput = RegisterRegionInput['providers'][number];

export function regionDeclaration(config: RegionFactsConfig, catalog: Pick<PricingCatalog, 'types' | 'quote'>): RegisterRegionInput {
  const { node } = config;
  return {
    kind: 'register-region',
    region: node.name,
    ...(node.jurisdiction === undefined ? {} : { jurisdiction: node.jurisdiction }),
    ...(node.trust === undefined ? {} : { trust: node.trust }),
    compliance: [...(node.compliance ?? [])],
    labels: { ...(node.labels ?? {}) },
    providers: config.providers.map((p) => providerDeclaration(p, catalog)),
    ...(config.maxMigrations === undefined ? {} : { maxMigrations: config.maxMigrations }),
  };
}

function providerDeclaration(p: CloudProviderConfig, catalog: Pick<PricingCatalog, 'types' | 'quote'>): ProviderInput {
  const kind: FleetProviderKind = p.kind;
  if (isOnPrem(p)) {
    const c = p.capacity ?? hostCapacity();
    return {
      name: p.name,
      kind,
      capacity: { vcpus: c.vcpus, memoryBytes: Math.round(c.memoryGiB * GIB), diskBytes: Math.round(c.diskGiB * GIB) },
      prices: { vcpuHourUsd: p.pricePerVcpuHour, memoryGiBHourUsd: p.pricePerGiBHour },
    };
  }
  const quota = p.quota === undefined ? undefined : { vcpus: p.quota.vcpus ?? FLEET_MAX_DECLARED_VCPUS, instances: p.quota.instances ?? FLEET_MAX_DECLARED_INSTANCES };
  return {
    name: p.name,
    kind,
    ...(quota === undefined ? {} : { quota }),
    prices: { vcpuHourUsd: cheapestVcpuHour(p.kind, p.region, catalog), memoryGiBHourUsd: 0 },
  };
}

/** The lowest on-demand $/vCPU-hour among the catalog's types of that provider and region whose size the name tells. */
function cheapestVcpuHour(provider: string, region: string, catalog: Pick<PricingCatalog, 'types' | 'quote'>): number {
  let best = Number.POSITIVE_INFINITY;
  for (const type of catalog.types(provider, region)) {
    const vcpus = vcpusFromTypeName(type);
    if (vcpus === null) continue;
    const hourly = catalog.quote({ provider, region, type, model: 'on-demand' }).hourly;
    best = Math.min(best, hourly / vcpus);
  }
  return Number.isFinite(best) ? Math.round(best * 1e6) / 1e6 : UNPRICED_VCPU_HOUR_USD;
}

/**
 * The vCPUs a well-known type name encodes (the catalog prices types, it does not size them):
 * GCE's `e2-standard-4` (the trailing number), EC2's `m5.large` family sizes.
 */
function vcpusFromTypeName(type: string): number | null {
  const gce = /-(\d+)$/.exec(type);
  if (gce) return Number(gce[1]);
  const ec2 = /\.(\d*)x?(nano|micro|small|medium|large|xlarge)$/.exec(type);
  if (!ec2) return null;
  const size = ec2[2];
  if (size === 'nano' || size === 'micro' || size === 'small' || size === 'medium' || size === 'large') return 2;
  return 4 * (ec2[1] === '' ? 1 : Number(ec2[1]));
}
