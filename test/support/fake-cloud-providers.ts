/**
 * The `clouds.providers` of a daemon pointed at the fake clouds of one test:
 * EC2 + CloudWatch as `aws` (us-east-1a), Compute + Cloud Monitoring as `gcp`
 * (project dwcp-test, us-central1-a, the external-account credential file
 * whose token URL is the fake's STS), and a small `local` on-premises
 * provider (startFakeClouds starts the four fakes). Inventory syncs are slow (10 min): the tests' operations update
 * the inventory themselves.
 */
import { FakeCloudWatchServer } from '../../src/cloud/fake/cloudwatch-server.ts';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import { FakeMonitoringServer } from '../../src/cloud/fake/monitoring-server.ts';

export interface FakeClouds {
  ec2: FakeEc2Server;
  compute: FakeComputeServer;
  cloudwatch: FakeCloudWatchServer;
  monitoring: FakeMonitoringServer;
  close(): Promise<void>;
}

/** The four fakes, as the cost tests use them: transitions of 30 ms, us-east-1 and project dwcp-test in us-central1. */
export async function startFakeClouds(): Promise<FakeClouds> {
  const ec2 = await FakeEc2Server.start({ transitionDelayMs: 30 });
  const compute = await FakeComputeServer.start({ project: 'dwcp-test', region: 'us-central1', transitionDelayMs: 30 });
  const cloudwatch = await FakeCloudWatchServer.start({ region: 'us-east-1' });
  const monitoring = await FakeMonitoringServer.start({ project: 'dwcp-test' });
  return {
    ec2,
    compute,
    cloudwatch,
    monitoring,
    close: async () => {
      await Promise.all([ec2.close(), compute.close(), cloudwatch.close(), monitoring.close()]);
    },
  };
}

export interface FakeCloudUrls {
  ec2: string;
  cloudwatch: string;
  compute: string;
  monitoring: string;
  /** From writeExternalAccount (gcp-credentials.ts). */
  gcpCredentials: string;
}

export function fakeCloudProviders(urls: FakeCloudUrls): Record<string, unknown>[] {
  const compute = new URL(urls.compute);
  return [
    { kind: 'aws', region: 'us-east-1', zones: ['us-east-1a'], endpoint: urls.ec2, cloudwatchEndpoint: urls.cloudwatch, credentials: { source: 'env' }, maxAttempts: 3, inventoryIntervalMs: 600_000 },
    {
      kind: 'gcp',
      project: 'dwcp-test',
      region: 'us-central1',
      zones: ['us-central1-a'],
      apiEndpoint: compute.hostname,
      port: Number(compute.port),
      protocol: 'http',
      monitoringEndpoint: urls.monitoring,
      credentials: { source: 'keyFile', path: urls.gcpCredentials },
      inventoryIntervalMs: 600_000,
    },
    { kind: 'local', capacity: { vcpus: 4, memoryGiB: 8 }, pricePerVcpuHour: 0.01, pricePerGiBHour: 0.001, inventoryIntervalMs: 600_000 },
  ];
}
