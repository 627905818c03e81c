/**
 * The `clouds:` section of the dwcpd config: which cloud providers this
 * region's daemon manages VMs in, how it authenticates to each, where their
 * APIs are (endpoint overrides for VPC endpoints and the fake servers), the
 * tags it puts on every VM it creates, how often it takes inventory, and
 * where the pricing catalog is.
 *
 * Invariants:
 * - Strict like the rest of the config: unknown keys are errors, and every
 *   error names the field (`clouds.providers[1].port: ...`). Tags are checked
 *   against the provider's own rules (EC2 tags, GCE labels) here, so a bad
 *   default tag stops the daemon at start rather than failing every create.
 * - After parsing every entry has a unique `name` (default: its kind) and its
 *   default tags always include `managed-by` (default value `dwcp`): that tag
 *   is what the inventory applies once a create is recorded, and what marks
 *   a VM as one this federation manages.
 * - At most one `qemu` provider: it owns this host's guests (its data
 *   directory is `<dataDir>/qemu`) and its capacity.
 * - With no `clouds:` section, one `local` provider is configured (simulated
 *   VMs, clearly labelled local), so `dwcpctl vm list` works on a fresh
 *   single node; `clouds: {providers: []}` turns cloud management off.
 * - Credentials never appear here: only where to find them (the AWS default
 *   chain, a named profile or the environment; Google ADC or a key file).
 */
import { cpus, totalmem } from 'node:os';
import { z } from 'zod';
import { SimulatedLoadSchema } from './local/simulated-load.ts';
import { awsTagProblem } from './aws/tags.ts';
import { gcpLabelProblem } from './gcp/labels.ts';
import { PROVIDER_KINDS } from './provider.ts';

/** The tag that says a VM is managed by dwcp; always among the default tags. */
export const MANAGED_BY_TAG = 'managed-by';
/**
 * Carried by a VM from its launch: the create's idempotency token. It ties a
 * VM to the pending-create journal entry when the create did not finish
 * (see inventory.ts). Reserved: configs and requests may not set it.
 */
export const CREATE_TOKEN_TAG = 'dwcp-create-token';

const label = z.string().regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'a lowercase DNS label (a-z, 0-9, "-", at most 63 characters)');
const regionName = z.string().regex(/^[a-z0-9-]{2,40}$/, 'a region name such as us-east-1 (lowercase letters, digits, "-")');
const zoneName = z.string().regex(/^[a-z0-9-]{2,48}$/, 'a zone name such as us-east-1a (lowercase letters, digits, "-")');
const hostName = z.string().regex(/^[A-Za-z0-9.-]{1,253}$/, 'a host name or IPv4 address, without scheme or port');
const httpUrl = z.string().refine(
  (s) => {
    try {
      return ['http:', 'https:'].includes(new URL(s).protocol);
    } catch {
      return false;
    }
  },
  { message: 'an http(s) URL such as https://ec2.us-east-1.amazonaws.com' },
);
const millis = (min: number, max: number) => z.number().int().min(min).max(max);

const common = {
  /** What dwcpctl and the metrics call this provider; default: its kind. */
  name: label.optional(),
  /** Zones VMs go to; the first is the default for creates that name none. Empty: the provider's choice. */
  zones: z.array(zoneName).max(32).default([]),
  /** Tags (GCE: labels) put on every VM this daemon creates, beyond `managed-by: dwcp`. */
  tags: z.record(z.string().min(1), z.string()).default({}),
  /** How often the inventory is synced with the provider (jittered ±20 %). */
  inventoryIntervalMs: millis(100, 86_400_000).default(60_000),
};

const AwsCredentialsSchema = z.looseObject({ source: z.enum(['default', 'profile', 'env']) }).pipe(
  z.discriminatedUnion('source', [
    /** The SDK's chain: environment, shared files, SSO, web identity, container or instance role. */
    z.strictObject({ source: z.literal('default') }),
    z.strictObject({ source: z.literal('profile'), profile: z.string().min(1).max(128) }),
    /** AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN only. */
    z.strictObject({ source: z.literal('env') }),
  ]),
);

const GcpCredentialsSchema = z.looseObject({ source: z.enum(['adc', 'keyFile']) }).pipe(
  z.discriminatedUnion('source', [
    /** Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, the metadata server. */
    z.strictObject({ source: z.literal('adc') }),
    z.strictObject({ source: z.literal('keyFile'), path: z.string().min(1) }),
  ]),
);

/**
 * An on-premises provider's declared capacity (local now, qemu later): what
 * the fleet's placement and capacity ledger count against.
 */
export const OnPremCapacitySchema = z
  .strictObject({
    vcpus: z.number().int().min(1).max(1_000_000),
    memoryGiB: z.number().positive().max(1_000_000).optional(),
    memoryMiB: z.number().int().min(1).max(1_000_000_000).optional(),
    diskGiB: z.number().int().min(1).max(1_000_000_000).default(1_000),
  })
  .superRefine((c, ctx) => {
    if (c.memoryGiB !== undefined && c.memoryMiB !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['memoryMiB'], input: c.memoryMiB, params: { sentence: true }, message: 'must not be given with memoryGiB: give memory once' });
    } else if (c.memoryGiB === undefined && c.memoryMiB === undefined) {
      ctx.addIssue({ code: 'custom', path: ['memoryGiB'], input: undefined, params: { sentence: true }, message: 'is required (the memory VMs may use in total, in GiB)' });
    }
  })
  .transform((c) => {
    const memoryMiB = c.memoryMiB ?? Math.round((c.memoryGiB ?? 0) * 1024);
    return { vcpus: c.vcpus, memoryMiB, memoryGiB: memoryMiB / 1024, diskGiB: c.diskGiB };
  });

/** On-premises VMs have no catalog price: the operator states what a vCPU-hour and a GiB-hour of memory cost (USD). */
export const DEFAULT_PRICE_PER_VCPU_HOUR = 0.02;
export const DEFAULT_PRICE_PER_GIB_HOUR = 0.003;
export const onPremPrices = {
  pricePerVcpuHour: z.number().min(0).max(1_000).default(DEFAULT_PRICE_PER_VCPU_HOUR),
  pricePerGiBHour: z.number().min(0).max(1_000).default(DEFAULT_PRICE_PER_GIB_HOUR),
};

/** A cloud account's limits in the provider's region (the fleet reports them; the cloud enforces them). */
const QuotaSchema = z.strictObject({
  vcpus: z.number().int().min(1).max(100_000_000).optional(),
  instances: z.number().int().min(1).max(100_000_000).optional(),
});

const AwsEntrySchema = z.strictObject({
  kind: z.literal('aws'),
  ...common,
  region: regionName,
  quota: QuotaSchema.optional(),
  credentials: AwsCredentialsSchema.default({ source: 'default' }),
  /** EC2 endpoint override (VPC endpoint, test server). */
  endpoint: httpUrl.optional(),
  /** CloudWatch endpoint override (utilisation; VPC endpoint, test server). */
  cloudwatchEndpoint: httpUrl.optional(),
  /** Attempts per call including the first, for the SDK's standard retry mode (throttling back-off). */
  maxAttempts: z.number().int().min(1).max(20).default(5),
  /** The SDK waiters' polling for state changes. */
  waiter: z
    .strictObject({
      minDelaySeconds: z.number().min(0.01).max(600),
      maxDelaySeconds: z.number().min(0.01).max(3_600),
      maxWaitSeconds: z.number().min(1).max(86_400),
    })
    .partial()
    .optional(),
});

const GcpEntrySchema = z.strictObject({
  kind: z.literal('gcp'),
  ...common,
  project: z.string().regex(/^[a-z][a-z0-9-]{4,28}[a-z0-9]$/, 'a GCP project id (6 to 30 characters: a-z, 0-9, "-")'),
  region: regionName,
  quota: QuotaSchema.optional(),
  credentials: GcpCredentialsSchema.default({ source: 'adc' }),
  /**
   * Compute endpoint override, all three or none: the client library always
   * sends a port (443 unless told), so a host alone would still go to 443.
   */
  apiEndpoint: hostName.optional(),
  port: z.number().int().min(1).max(65_535).optional(),
  protocol: z.enum(['http', 'https']).optional(),
  /** Cloud Monitoring endpoint override (utilisation; a test server), e.g. http://127.0.0.1:8086. */
  monitoringEndpoint: httpUrl.optional(),
  /** Longest wait for one zone operation (create, start, stop, delete). */
  waitTimeoutMs: millis(1_000, 3_600_000).default(600_000),
});

const LocalEntrySchema = z.strictObject({
  kind: z.literal('local'),
  ...common,
  region: regionName.default('local'),
  /**
   * What the simulated VMs that are not stopped may use in total, and what the
   * fleet publishes as this provider's capacity. Memory as memoryGiB (the
   * fleet's unit) or memoryMiB (the older spelling), not both. Absent: the
   * fleet declares the host's CPUs and memory (src/fleet/observed-publisher.ts).
   */
  capacity: OnPremCapacitySchema.optional(),
  ...onPremPrices,
  /** How long simulated pending and stopping states last. */
  transitionDelayMs: millis(0, 600_000).default(500),
  /** The simulated load its VMs report (constant, diurnal, bursty; src/cloud/local/simulated-load.ts); default a constant 20 % CPU. */
  load: SimulatedLoadSchema.optional(),
});

const QemuTypeSchema = z.strictObject({
  vcpus: z.number().int().min(1).max(1_024),
  memoryMiB: z.number().int().min(64).max(16 * 1024 * 1024),
  /** The guest's disk: a blank data disk for kernel images, at least the base image's size for disk images. */
  diskGiB: z.number().int().min(1).max(1_000_000).default(10),
});

const QemuEntrySchema = z.strictObject({
  kind: z.literal('qemu'),
  ...common,
  region: regionName.default('onprem'),
  /** The QEMU system emulator: a path, or a name looked up on PATH. */
  binary: z.string().min(1).default('qemu-system-x86_64'),
  qemuImg: z.string().min(1).default('qemu-img'),
  /** auto: KVM when a probe boot proves it works (src/cloud/qemu/accel.ts), else TCG, with a log line saying why. */
  accel: z.enum(['auto', 'kvm', 'tcg']).default('auto'),
  /** The kernel the KVM probe boots; default the newest /boot/vmlinuz-*. */
  kvmProbeKernel: z.string().min(1).optional(),
  kvmProbeTimeoutMs: millis(1_000, 600_000).default(10_000),
  /**
   * What the guests may use in total (vCPUs and memory of guests not stopped,
   * disks of guests not terminated), and what the fleet publishes as this
   * provider's capacity. Absent: the host's CPUs and memory, 100 GiB of disk.
   */
  capacity: OnPremCapacitySchema.optional(),
  /** Instance types by name; absent: qemu.micro (1 vCPU, 256 MiB), qemu.small, qemu.medium, qemu.large. */
  types: z.record(z.string().regex(/^[a-z0-9][a-z0-9.-]{0,62}$/, 'a type name (lowercase letters, digits, ".", "-")'), QemuTypeSchema).optional(),
  ...onPremPrices,
  /**
   * Guest images as directories (`<imageDir>/<name>/image.json`, what
   * `npm run guest-image -- --out` writes), used when the daemon has no image
   * catalog to give the provider.
   */
  imageDir: z.string().min(1).optional(),
  /** From spawning QEMU until its QMP socket answers. */
  bootTimeoutMs: millis(1_000, 600_000).default(60_000),
  /** How long a stop waits for the guest to power off (ACPI) before it quits QEMU. */
  stopTimeoutMs: millis(0, 3_600_000).default(30_000),
  /** One QMP command, and one QMP connection's greeting. */
  qmpTimeoutMs: millis(100, 600_000).default(10_000),
  /** How often each guest's CPU, memory and disk use is sampled for the metrics; 0: never in the background. */
  utilisationIntervalMs: z.number().int().min(0).max(86_400_000).default(15_000),
  /** A guest's serial log past this many bytes is rotated to serial.log.1 (checked every minute): at most ~2× this per guest. */
  serialLogMaxBytes: z.number().int().min(4096).max(1024 ** 4).default(16 * 1024 * 1024),
});

const ProviderEntrySchema = z
  .looseObject({ kind: z.enum(PROVIDER_KINDS) })
  .pipe(z.discriminatedUnion('kind', [AwsEntrySchema, GcpEntrySchema, LocalEntrySchema, QemuEntrySchema]));

const CloudsObjectSchema = z
  .strictObject({
    /** Directory of pricing files; default: the catalog shipped with dwcp (config/pricing). */
    pricingDir: z.string().min(1).optional(),
    /** How often live spot prices are read from providers that publish them (AWS); 0: never. */
    spotRefreshMs: z.number().int().min(0).max(604_800_000).default(3_600_000),
    providers: z.array(ProviderEntrySchema).max(32).default(() => [LocalEntrySchema.parse({ kind: 'local' })]),
  })
  .superRefine((clouds, ctx) => {
    const issue = (path: PropertyKey[], input: unknown, message: string) => ctx.addIssue({ code: 'custom', path, input, params: { sentence: true }, message });
    const names = new Map<string, number>();
    let qemu: number | null = null;
    clouds.providers.forEach((entry, i) => {
      const at = ['providers', i];
      const name = entry.name ?? entry.kind;
      const clash = names.get(name);
      if (clash !== undefined) issue([...at, 'name'], name, `is already the name of providers[${clash}]; give each provider of the same kind a name`);
      names.set(name, i);
      if (CREATE_TOKEN_TAG in entry.tags) issue([...at, 'tags', CREATE_TOKEN_TAG], entry.tags[CREATE_TOKEN_TAG], 'is reserved for the create token dwcp sets itself');
      const problem = entry.kind === 'aws' ? awsTagProblem(defaultTags(entry.tags)) : entry.kind === 'gcp' ? gcpLabelProblem(defaultTags(entry.tags)) : null;
      if (problem !== null) issue([...at, 'tags'], entry.tags, `is refused: ${problem}`);
      if (entry.kind === 'qemu') {
        if (qemu !== null) issue([...at, 'kind'], entry.kind, `is given twice (providers[${qemu}] is the qemu provider already): one qemu provider runs a host's guests`);
        qemu = i;
      }
      if (!isOnPrem(entry)) {
        entry.zones.forEach((zone, z) => {
          if (!zone.startsWith(entry.region)) issue([...at, 'zones', z], zone, `is not a zone of region ${entry.region}`);
        });
      }
      if (entry.kind === 'gcp') {
        const given = (['apiEndpoint', 'port', 'protocol'] as const).filter((k) => entry[k] !== undefined);
        if (given.length > 0 && given.length < 3) {
          const missing = (['apiEndpoint', 'port', 'protocol'] as const).filter((k) => entry[k] === undefined);
          const why = `(${given.join(' and ')} given: apiEndpoint, port and protocol go together, as the client always sends a port, 443 unless told)`;
          issue([...at, missing[0] ?? 'apiEndpoint'], undefined, why);
        }
      }
    });
  })
  .transform((clouds) => ({
    pricingDir: clouds.pricingDir,
    spotRefreshMs: clouds.spotRefreshMs,
    providers: clouds.providers.map((entry) => ({ ...entry, name: entry.name ?? entry.kind, tags: defaultTags(entry.tags) })),
  }));

/** The `clouds:` field of the config file; absent means one local provider. */
export const CloudsSchema = CloudsObjectSchema.default(() => CloudsObjectSchema.parse({}));

export type CloudsConfig = z.infer<typeof CloudsSchema>;
export type CloudProviderConfig = CloudsConfig['providers'][number];
export type AwsCloudConfig = Extract<CloudProviderConfig, { kind: 'aws' }>;
export type GcpCloudConfig = Extract<CloudProviderConfig, { kind: 'gcp' }>;
export type LocalCloudConfig = Extract<CloudProviderConfig, { kind: 'local' }>;
export type QemuCloudConfig = Extract<CloudProviderConfig, { kind: 'qemu' }>;
export type OnPremCloudConfig = LocalCloudConfig | QemuCloudConfig;

/** What an on-premises provider (local, qemu) without a configured capacity holds: this host's CPUs and memory, 100 GiB of disk. */
export function hostCapacity(): { vcpus: number; memoryGiB: number; diskGiB: number } {
  return { vcpus: Math.max(1, cpus().length), memoryGiB: Math.floor(totalmem() / 2 ** 30), diskGiB: 100 };
}

/** On-premises providers (local, qemu): capacity and prices come from the config, not from a cloud. */
export function isOnPrem<T extends { kind: string }>(entry: T): entry is Extract<T, { kind: 'local' | 'qemu' }> {
  return entry.kind === 'local' || entry.kind === 'qemu';
}

/** The configured tags with `managed-by: dwcp` unless they set managed-by themselves. */
function defaultTags(tags: Record<string, string>): Record<string, string> {
  return { [MANAGED_BY_TAG]: 'dwcp', ...tags };
}

/** The Compute endpoint as one URL, when the config overrides it. */
export function gcpEndpointUrl(entry: GcpCloudConfig): string | undefined {
  if (entry.apiEndpoint === undefined || entry.port === undefined || entry.protocol === undefined) return undefined;
  return `${entry.protocol}://${entry.apiEndpoint}:${entry.port}`;
}
