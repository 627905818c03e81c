/**
 * Builds the provider a `clouds.providers` entry describes. The AWS and
 * Google SDKs are imported only when a provider of their kind is configured:
 * loading them costs about 1 and 2.5 s of start-up, which a daemon with only
 * the local provider (every test daemon, every fresh node) must not pay.
 *
 * The local provider keeps its VMs in a snapshot and a journal of changes under the data directory (local/file-store.ts), so
 * they survive restarts; the clouds keep their own. The qemu provider keeps
 * its guests under `<dataDir>/qemu` and takes its images from the image
 * source the daemon gives it (the image catalog), or from the directory its
 * config names.
 */
import { join } from 'node:path';
import { DwcpError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { gcpEndpointUrl, hostCapacity, type CloudProviderConfig, type QemuCloudConfig } from './config.ts';
import { FileVmStore } from './local/file-store.ts';
import type { ApiCallObserver, CloudProvider } from './provider.ts';
import type { ImageSource } from './qemu/image-source.ts';
import type { QemuMetrics } from './qemu/metrics.ts';

export interface ProviderContext {
  dataDir: string;
  observer: ApiCallObserver;
  log: Logger;
  /** Where the qemu provider's images come from (the image catalog), unless the entry names an imageDir. */
  images?: ImageSource;
  qemuMetrics?: QemuMetrics;
  leasePollMs?: number;
}

/** Where the qemu provider keeps its guests. */
export function qemuDir(dataDir: string): string {
  return join(dataDir, 'qemu');
}

export type ProviderBuilder = (entry: CloudProviderConfig, context: ProviderContext) => Promise<CloudProvider>;

/** Where the cloud layer keeps the files of one configured provider. */
export function providerDir(dataDir: string, name: string): string {
  return join(dataDir, 'cloud', name);
}

export const buildProvider: ProviderBuilder = async (entry, context) => {
  const { dataDir, observer, log } = context;
  switch (entry.kind) {
    case 'aws': {
      const { AwsProvider } = await import('./aws/aws-provider.ts');
      const credentials = entry.credentials.source === 'profile' ? { source: 'chain' as const, profile: entry.credentials.profile } : entry.credentials.source === 'env' ? { source: 'env' as const } : { source: 'chain' as const };
      return new AwsProvider({
        region: entry.region,
        endpoint: entry.endpoint,
        ...(entry.cloudwatchEndpoint === undefined ? {} : { cloudwatchEndpoint: entry.cloudwatchEndpoint }),
        credentials,
        maxAttempts: entry.maxAttempts,
        waiter: entry.waiter,
        defaultZone: entry.zones[0],
        observer,
      });
    }
    case 'gcp': {
      const { GcpProvider } = await import('./gcp/gcp-provider.ts');
      return new GcpProvider({
        project: entry.project,
        region: entry.region,
        defaultZone: entry.zones[0],
        credentials: entry.credentials.source === 'keyFile' ? { source: 'file', path: entry.credentials.path } : { source: 'adc' },
        endpoint: gcpEndpointUrl(entry),
        ...(entry.monitoringEndpoint === undefined ? {} : { monitoringEndpoint: entry.monitoringEndpoint }),
        waitTimeoutMs: entry.waitTimeoutMs,
        observer,
      });
    }
    case 'local': {
      const { LocalProvider } = await import('./local/local-provider.ts');
      const path = join(providerDir(dataDir, entry.name), 'vms.json');
      const { store, problems } = await FileVmStore.open(path);
      for (const p of problems) log.error({ provider: entry.name, file: p.file, movedTo: p.movedTo, reason: p.reason }, 'local VM records unreadable; moved aside, starting from what was read before it');
      return new LocalProvider({
        region: entry.region,
        zones: entry.zones.length > 0 ? entry.zones : undefined,
        store,
        capacity: entry.capacity,
        transitionDelayMs: entry.transitionDelayMs,
        ...(entry.load === undefined ? {} : { load: entry.load }),
      });
    }
    case 'qemu':
      return buildQemuProvider(entry, context);
  }
};

async function buildQemuProvider(entry: QemuCloudConfig, { dataDir, log, images, qemuMetrics, leasePollMs }: ProviderContext): Promise<CloudProvider> {
  const [{ QemuProvider }, { DirectoryImageSource }] = await Promise.all([import('./qemu/qemu-provider.ts'), import('./qemu/directory-images.ts')]);
  const capacity = entry.capacity ?? hostCapacity();
  return QemuProvider.open({
    region: entry.region,
    zones: entry.zones,
    dir: qemuDir(dataDir),
    binary: entry.binary,
    qemuImg: entry.qemuImg,
    accel: entry.accel,
    kvmProbeKernel: entry.kvmProbeKernel,
    kvmProbeTimeoutMs: entry.kvmProbeTimeoutMs,
    capacity: { vcpus: capacity.vcpus, memoryMiB: Math.round(capacity.memoryGiB * 1024), diskGiB: capacity.diskGiB },
    ...(entry.types === undefined ? {} : { types: entry.types }),
    // An imageDir the operator configured wins over the catalog (tests and air-gapped hosts use it).
    images: entry.imageDir !== undefined ? new DirectoryImageSource(entry.imageDir) : (images ?? NO_IMAGES),
    log: log.child({ provider: entry.name }),
    ...(qemuMetrics === undefined ? {} : { metrics: qemuMetrics }),
    timeouts: { bootMs: entry.bootTimeoutMs, powerdownMs: entry.stopTimeoutMs, qmpCallMs: entry.qmpTimeoutMs, qmpConnectMs: Math.min(entry.qmpTimeoutMs, 5_000) },
    utilisationIntervalMs: entry.utilisationIntervalMs,
    serialLogMaxBytes: entry.serialLogMaxBytes,
    ...(leasePollMs === undefined ? {} : { leasePollMs }),
  });
}

/** A qemu provider with neither an image catalog nor an imageDir has no images: every create says so. */
const NO_IMAGES: ImageSource = {
  materialise: (name) => Promise.reject(new DwcpError('not_found', `no image source is configured (no image catalog, and no imageDir in the qemu provider's config), so there is no image ${name}`)),
};
