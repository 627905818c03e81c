/**
 * Builds the provider a `clouds.providers` entry describes. The AWS and
 * Google SDKs are imported only when a provider of their kind is configured:
 * loading them costs about 1 and 2.5 s of start-up, which a daemon with only
 * the local provider (every test daemon, every fresh node) must not pay.
 *
 * The local provider keeps its VMs in a file under the data directory, so
 * they survive restarts; the clouds keep their own.
 */
import { join } from 'node:path';
import type { Logger } from '../log.ts';
import { gcpEndpointUrl, type CloudProviderConfig } from './config.ts';
import { FileVmStore } from './local/file-store.ts';
import type { ApiCallObserver, CloudProvider } from './provider.ts';

export interface ProviderContext {
  dataDir: string;
  observer: ApiCallObserver;
  log: Logger;
}

export type ProviderBuilder = (entry: CloudProviderConfig, context: ProviderContext) => Promise<CloudProvider>;

/** Where the cloud layer keeps the files of one configured provider. */
export function providerDir(dataDir: string, name: string): string {
  return join(dataDir, 'cloud', name);
}

export const buildProvider: ProviderBuilder = async (entry, { dataDir, observer, log }) => {
  switch (entry.kind) {
    case 'aws': {
      const { AwsProvider } = await import('./aws/aws-provider.ts');
      const credentials = entry.credentials.source === 'profile' ? { source: 'chain' as const, profile: entry.credentials.profile } : entry.credentials.source === 'env' ? { source: 'env' as const } : { source: 'chain' as const };
      return new AwsProvider({
        region: entry.region,
        endpoint: entry.endpoint,
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
        waitTimeoutMs: entry.waitTimeoutMs,
        observer,
      });
    }
    case 'local': {
      const { LocalProvider } = await import('./local/local-provider.ts');
      const path = join(providerDir(dataDir, entry.name), 'vms.json');
      const { store, corrupt } = await FileVmStore.open(path);
      if (corrupt) log.error({ provider: entry.name, file: path, movedTo: corrupt.movedTo, reason: corrupt.reason }, 'local VM records unreadable; moved aside, starting with none');
      return new LocalProvider({
        region: entry.region,
        zones: entry.zones.length > 0 ? entry.zones : undefined,
        store,
        capacity: entry.capacity,
        transitionDelayMs: entry.transitionDelayMs,
      });
    }
  }
};
